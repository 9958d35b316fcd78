//! With `--allow-other` other local users reach the mount, and the modes
//! and owners bpfdb records are enforced for them (the kernel's
//! `default_permissions` checks): keys, the root directory (shared like
//! /tmp: mode 1777), `.ctl`, `.txn` and `.snap`. Driven as an unprivileged
//! user with setpriv.

use std::os::unix::fs::PermissionsExt;

use bpfdb_tests::Mount;

/// Runs `script` in the mount as user and group 65534 (nobody) and prints,
/// per line of `checks`, `ok` or `denied`.
fn as_nobody(m: &Mount, checks: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut script = String::new();
    for (name, cmd) in checks {
        script.push_str(&format!(
            "if setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '{cmd}' >/dev/null 2>&1; then echo '{name} ok'; else echo '{name} denied'; fi\n"
        ));
    }
    m.ok(&script)
        .lines()
        .map(|l| {
            let (n, r) = l.rsplit_once(' ').unwrap_or((l, ""));
            (n.to_owned(), r.to_owned())
        })
        .collect()
}

#[test]
fn other_users_obey_modes_and_owners() {
    let m = Mount::builder().arg("--allow-other").start();
    // Let nobody reach the mountpoint through the test's private directory.
    let top = m.path().parent().unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    m.ok("umask 022; echo secret > private && chmod 600 private && echo pub > public && mkdir .txn/t && mkdir .snap/s");
    let got = as_nobody(
        &m,
        &[
            ("list", "ls"),
            ("read public", "cat public"),
            ("read private", "cat private"),
            ("rewrite public", "echo x > public"),
            ("append public", "echo x >> public"),
            ("chmod public", "chmod 666 public"),
            ("remove public", "rm -f public"),
            ("rename", "mv public moved"),
            ("create", "echo new > fresh && chmod 600 fresh && cat fresh"),
            ("remove own", "rm fresh"),
            ("checkpoint", "echo checkpoint > .ctl"),
            ("begin", "mkdir .txn/mine"),
            ("write in txn", "echo x > .txn/t/public"),
            ("commit txn", "echo commit > .txn/t/.ctl"),
            ("snapshot", "mkdir .snap/mine"),
            ("read snapshot", "cat .snap/s/public"),
        ],
    );
    let want = [
        ("list", "ok"),
        ("read public", "ok"),
        ("read private", "denied"),
        ("rewrite public", "denied"),
        ("append public", "denied"),
        ("chmod public", "denied"),
        ("remove public", "denied"),
        ("rename", "denied"),
        ("create", "ok"),
        ("remove own", "ok"),
        ("checkpoint", "denied"),
        ("begin", "denied"),
        ("write in txn", "denied"),
        ("commit txn", "denied"),
        ("snapshot", "denied"),
        ("read snapshot", "ok"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    // Nothing the other user tried changed anything.
    assert_eq!(m.ok("cat public private"), "pub\nsecret\n");
    assert_eq!(m.ok("stat -c %a public"), "644\n");
    assert_eq!(m.ok("ls"), "private\npublic\n");
    assert_eq!(m.txn_state("t"), "active");
}

/// POSIX (as Linux does it): a write by a process without CAP_FSETID clears set-user-ID, and
/// set-group-ID when group-execute is set; chmod by a non-member of the file's group drops
/// set-group-ID.
#[test]
fn a_write_by_another_user_clears_setuid_and_chmod_by_a_non_member_drops_setgid() {
    let m = Mount::builder().arg("--allow-other").start();
    let top = m.path().parent().unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    m.ok("echo v > both && chmod 6777 both && echo v > uid-only && chmod 6767 uid-only");
    m.ok("echo v > nobodys && chown 65534:0 nobodys");
    let nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    m.ok(&format!(
        "{nobody} sh -c 'echo w >> both && echo w >> uid-only'"
    ));
    assert_eq!(
        m.ok("stat -c '%a %n' both uid-only"),
        "777 both\n2767 uid-only\n",
        "a write by user 65534 must clear set-user-ID (and set-group-ID with group-execute)"
    );
    assert_eq!(m.ok("cat both uid-only"), "v\nw\nv\nw\n");
    // nobody owns `nobodys` but is not in its group (0): chmod keeps the rest, not g+s.
    m.ok(&format!("{nobody} chmod 2755 nobodys"));
    assert_eq!(m.ok("stat -c %a nobodys"), "755\n");
    // Root keeps both, on write and on chmod.
    m.ok("chmod 6755 nobodys && echo r >> nobodys");
    assert_eq!(m.ok("stat -c %a nobodys"), "6755\n");
}

/// The set-ID bits go at the write itself, as on Linux, not at close: the writer's fstat and
/// every other process's stat show them gone while the file is still open (pjdfstest
/// chmod/12.t found them still set until close).
#[test]
fn a_write_by_another_user_clears_set_id_bits_before_close() {
    let m = Mount::builder().arg("--allow-other").start();
    let top = m.path().parent().unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    m.ok("echo v > both && chmod 6777 both && echo v > uid-only && chmod 6767 uid-only");
    let nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    // Written through O_WRONLY (no append, no truncation) and still open: the writer's fstat,
    // then another process's stat of the path.
    let open_view = |f: &str| {
        m.ok(&format!(
            "{nobody} perl -MFcntl -e 'sysopen(F, $ARGV[0], O_WRONLY) or die \"$!\"; \
             syswrite(F, \"w\") == 1 or die \"$!\"; printf(\"%o\\n\", (stat(F))[2] & 07777); \
             system(\"stat\", \"-c\", \"%a\", $ARGV[0]) == 0 or die' {f}"
        ))
    };
    assert_eq!(open_view("both"), "777\n777\n");
    assert_eq!(open_view("uid-only"), "2767\n2767\n");
    assert_eq!(m.ok("cat both uid-only"), "w\nw\n");
    // A chmod while the file is open for writing with a write not yet committed (perl's own
    // chmod: no child process, whose exec would close the file and commit): the writer's fstat
    // shows it at once too, and the writer's commit keeps it.
    assert_eq!(
        m.ok(
            "perl -MFcntl -e 'sysopen(F, $ARGV[0], O_WRONLY) or die \"$!\"; \
              syswrite(F, \"x\") == 1 or die \"$!\"; chmod(0640, $ARGV[0]) == 1 or die \"$!\"; \
              printf(\"%o\\n\", (stat(F))[2] & 07777)' both && stat -c %a both"
        ),
        "640\n640\n"
    );
}
