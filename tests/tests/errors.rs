//! Every errno of the table in docs/SEMANTICS.md ("Errors"), as the shell tools report it, and
//! that a failed operation leaves the previous value in place.
//!
//! The transaction rows (`EBUSY`, `ECANCELED`, `EROFS`) are checked in transactions.rs and
//! isolation.rs; a name with NUL cannot cross the kernel's C-string interface at all.

use std::ffi::OsStr;

use bpfdb_tests::{Mount, RENAME_EXCHANGE, RENAME_NOREPLACE, assert_errno, msg, renameat2_sh};

#[test]
fn missing_keys_give_enoent() {
    let m = Mount::new();
    m.fails("cat nope", msg::ENOENT);
    m.fails("rm nope", msg::ENOENT);
    m.fails("mv nope other", msg::ENOENT);
    m.fails("stat nope", msg::ENOENT);
    assert_eq!(
        m.ok("truncate -c -s 0 nope; [ ! -e nope ] && echo none"),
        "none\n"
    );
    m.fails("ls nope", msg::ENOENT);
    // A failed mv creates nothing.
    assert_eq!(m.ok("ls -A"), ".ctl\n.snap\n.stats\n.txn\n");
    // A transaction or snapshot that is not open.
    m.fails("cat .txn/nope/.ctl", msg::ENOENT);
    m.fails("ls .txn/nope", msg::ENOENT);
    m.fails("ls .snap/nope", msg::ENOENT);
    m.fails("rmdir .txn/nope", msg::ENOENT);
    m.fails("rmdir .snap/nope", msg::ENOENT);
}

fn long_name(len: usize) -> String {
    // Distinct first byte so a truncated comparison cannot pass by accident.
    let mut s = String::from("L");
    s.push_str(&"n".repeat(len - 1));
    s
}

#[test]
fn names_up_to_255_bytes_work_and_256_give_enametoolong() {
    let m = Mount::new();
    let n255 = long_name(255);
    let n256 = long_name(256);
    let env = [("N255", OsStr::new(&n255)), ("N256", OsStr::new(&n256))];
    let out = m.sh_env(
        "echo v > \"$N255\" && cat \"$N255\" && ls && stat -c %s \"$N255\"",
        &env,
    );
    assert_eq!(
        bpfdb_tests::assert_ok(&out, "255-byte name"),
        format!("v\n{n255}\n2\n")
    );
    for script in [
        "echo v > \"$N256\"",
        "touch \"$N256\"",
        "cat \"$N256\"",
        "stat \"$N256\"",
        "rm \"$N256\"",
        "mv \"$N255\" \"$N256\"",
        "truncate -s 1 \"$N256\"",
    ] {
        assert_errno(&m.sh_env(script, &env), msg::ENAMETOOLONG, script);
    }
    // The failed mv left the 255-byte key alone.
    let out = m.sh_env("cat \"$N255\" && ls", &env);
    assert_eq!(
        bpfdb_tests::assert_ok(&out, "after"),
        format!("v\n{n255}\n")
    );
    assert_eq!(m.stat_keys(), 1);
    let out = m.sh_env("rm \"$N255\" && ls", &env);
    assert_eq!(bpfdb_tests::assert_ok(&out, "rm 255"), "");
}

#[test]
fn values_over_max_value_give_efbig_and_keep_the_old_value() {
    // 4K also checks the K suffix.
    let m = Mount::builder().max_value("4K").start();
    // Exactly max_value is fine.
    m.ok("head -c 4096 /dev/zero > full");
    assert_eq!(m.ok("stat -c %s full"), "4096\n");

    m.ok("printf old > k");
    // One write of max_value + 1 bytes at offset 0, without O_TRUNC.
    m.fails(
        "dd if=/dev/zero of=k bs=4097 count=1 conv=notrunc",
        msg::EFBIG,
    );
    assert_eq!(m.ok("cat k"), "old");
    // Appending past the limit.
    m.fails("head -c 4094 /dev/zero >> k", msg::EFBIG);
    assert_eq!(m.ok("cat k"), "old");
    // A write at an offset past the limit.
    m.fails("printf x | dd of=k bs=1 seek=4096 conv=notrunc", msg::EFBIG);
    assert_eq!(m.ok("cat k"), "old");
    // Growing by truncate.
    m.fails("truncate -s 4097 k", msg::EFBIG);
    assert_eq!(m.ok("cat k && stat -c %s k"), "old3\n");
    // A key at exactly the limit cannot grow by one byte.
    // (dash's builtin printf reports only "I/O error"; the external one names the errno.)
    m.fails("env printf x >> full", msg::EFBIG);
    assert_eq!(m.ok("stat -c %s full"), "4096\n");
    // Up to the limit by append still works.
    m.ok("head -c 4093 /dev/zero >> k");
    assert_eq!(m.ok("stat -c %s k"), "4096\n");
}

#[test]
fn default_max_value_is_1mib() {
    let m = Mount::new();
    m.ok("head -c 1048576 /dev/zero > max");
    m.fails("head -c 1048577 /dev/zero > over", msg::EFBIG);
    m.ok("printf old > k");
    m.fails("head -c 1048574 /dev/zero >> k", msg::EFBIG);
    assert_eq!(m.ok("cat k"), "old");
}

#[test]
fn a_full_key_table_gives_enospc_and_keeps_existing_keys() {
    let m = Mount::builder().max_keys(8).start();
    let out = m.sh("i=1
         while [ $i -le 20 ]; do printf \"v$i\" > k$i || break; i=$((i+1)); done
         echo \"created $((i-1))\"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "created 8\n", "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("cannot create k9: {}", msg::ENOSPC)),
        "stderr: {stderr}"
    );
    assert_eq!(m.stat_keys(), 8);
    // The key that did not fit does not exist; all the others are intact.
    m.fails("cat k9", msg::ENOENT);
    assert_eq!(
        m.ok("for i in 1 2 3 4 5 6 7 8; do cat k$i; echo; done"),
        "v1\nv2\nv3\nv4\nv5\nv6\nv7\nv8\n"
    );
    assert_eq!(m.ok("ls"), "k1\nk2\nk3\nk4\nk5\nk6\nk7\nk8\n");
    m.fails("touch k10", msg::ENOSPC);
    m.fails("echo x >> k10", msg::ENOSPC);
    m.fails("echo x > k10", msg::ENOSPC);
    // Existing keys can still be rewritten while the table is full.
    m.ok("printf new > k3 && printf more >> k4 && truncate -s 1 k5");
    assert_eq!(m.ok("cat k3 k4 k5"), "newv4morev");
    // Freeing a key makes room for exactly one more.
    m.ok("rm k1");
    m.ok("printf v9 > k9");
    m.fails("printf v10 > k10", msg::ENOSPC);
    // mv onto an existing key frees the source's entry.
    m.ok("mv k2 k6");
    m.ok("printf v10 > k10");
    assert_eq!(m.stat_keys(), 8);
    assert_eq!(
        m.ok("ls && cat k6 k9 k10"),
        "k10\nk3\nk4\nk5\nk6\nk7\nk8\nk9\nv2v9v10"
    );
}

#[test]
fn full_value_memory_gives_enospc_and_keeps_existing_values() {
    // The smallest round size that holds one 1 MiB value (the engine's minimum).
    let m = Mount::builder().value_mem("2M").start();
    m.ok("for i in $(seq 1 20); do head -c 262144 /dev/urandom > $T/r$i; done");
    let out = m.sh("i=1
         while [ $i -le 20 ]; do cp $T/r$i v$i || break; i=$((i+1)); done
         echo $((i-1))");
    let stored: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("count");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 2 MiB of value memory holds at least four 256 KiB values and never twenty.
    assert!(
        (4..20).contains(&stored),
        "stored {stored} values of 256 KiB in 2 MiB; stderr: {stderr}"
    );
    assert!(stderr.contains(msg::ENOSPC), "stderr: {stderr}");
    let failed = stored + 1;
    // Every stored value is intact; the key whose first write was refused is gone again
    // (cp's create made it; a failed copy leaves no empty key behind).
    m.ok(&format!(
        "for i in $(seq 1 {stored}); do cmp v$i $T/r$i || exit 1; done"
    ));
    m.fails(&format!("ls v{failed}"), msg::ENOENT);
    // Rewriting a stored key with a bigger value fails and keeps the old value.
    m.ok("head -c 1048576 /dev/urandom > $T/big");
    m.fails("cp $T/big v1", msg::ENOSPC);
    m.ok("cmp v1 $T/r1");
    m.fails("head -c 524288 $T/big >> v2", msg::ENOSPC);
    m.ok("cmp v2 $T/r2");
    // The write(2) that does not fit fails, and so does an fsync of the same handle after it
    // (perl: fsync on a handle that stays open): the refused buffer is never committed.
    let out = m.fails(
        r#"perl -MIO::Handle -e '
             open(my $f, ">>", "v3") or die "open: $!\n";
             open(my $big, "<", "$ENV{T}/big") or die;
             read($big, my $buf, 524288) == 524288 or die;
             defined(syswrite($f, $buf)) and die "the write succeeded\n";
             print STDERR "write: $!\n";
             $f->sync and die "the fsync succeeded\n";
             die "fsync: $!\n";'"#,
        &format!("fsync: {}", msg::ENOSPC),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("write: {}", msg::ENOSPC)), "{err}");
    m.ok("cmp v3 $T/r3");
    // rm gives the memory back.
    m.ok("rm v1 v2");
    m.ok(&format!(
        "cp $T/r{failed} v{failed} && cmp v{failed} $T/r{failed}"
    ));
    m.ok("cp $T/r1 v1 && cmp v1 $T/r1");
    m.ok(&format!(
        "for i in $(seq 3 {failed}); do cmp v$i $T/r$i || exit 1; done"
    ));
}

#[test]
fn hard_links_give_eperm_and_special_files_are_keys() {
    let mut m = Mount::new();
    m.ok("echo v > k");
    m.fails("ln k hard", msg::EPERM);
    m.ok("ln -s k sym && ln -s /etc/passwd abs && mkfifo fifo && mknod pipe p && mknod chr c 1 3");
    assert_eq!(
        m.ok("stat -c '%n %F' abs chr fifo pipe sym && readlink sym abs && cat sym && stat -c '%t,%T' chr"),
        "abs symbolic link\nchr character special file\nfifo fifo\npipe fifo\nsym symbolic link\nk\n/etc/passwd\nv\n1,3\n"
    );
    // They survive a restart; removed, they leave k alone (and the root's
    // list of its entries that are not regular files, one key).
    m.restart();
    assert_eq!(
        m.ok("ls -A | tr '\\n' ' ' && readlink sym"),
        ".ctl .snap .stats .txn abs chr fifo k pipe sym k\n"
    );
    m.ok("rm sym abs fifo pipe chr");
    assert_eq!(m.ok("ls -A && cat k"), ".ctl\n.snap\n.stats\n.txn\nk\nv\n");
    assert_eq!(m.stat_keys(), 2);
}

#[test]
fn reserved_names_cannot_be_created_removed_or_renamed_onto() {
    let m = Mount::new();
    m.ok("echo v > k");
    // Removing them.
    m.fails("rm .ctl", msg::EPERM);
    m.fails("rm .stats", msg::EPERM);
    m.fails("rm -f .stats", msg::EPERM);
    m.fails("rmdir .txn", msg::EPERM);
    m.fails("rmdir .snap", msg::EPERM);
    m.fails("rm -rf .txn", msg::EPERM);
    // Renaming onto or away from them.
    m.fails("mv k .ctl", msg::EPERM);
    m.fails("mv .ctl ctl", msg::EPERM);
    m.fails("mv k .stats", msg::EPERM);
    m.fails("mv .stats stats", msg::EPERM);
    m.fails("mv .txn txn", msg::EPERM);
    m.fails("mv .snap snap", msg::EPERM);
    // Everything is as it was.
    assert_eq!(m.ok("ls -A && cat k"), ".ctl\n.snap\n.stats\n.txn\nk\nv\n");
    assert_eq!(
        m.ok("[ -f .stats ] && [ -f .ctl ] && [ -d .txn ] && [ -d .snap ] && echo same"),
        "same\n"
    );
    assert_eq!(m.stat_keys(), 1);
}

#[test]
fn an_unknown_ctl_command_gives_einval() {
    let m = Mount::new();
    // coreutils echo: dash's builtin reports a failed write only as "I/O error".
    m.fails("env echo x > .ctl", msg::EINVAL);
    m.fails("env echo bogus > .ctl", msg::EINVAL);
    m.ok("mkdir .txn/t");
    m.fails("env echo checkpoint > .txn/t/.ctl", msg::EINVAL);
    m.fails("env echo bogus > .txn/t/.ctl", msg::EINVAL);
    assert_eq!(m.txn_state("t"), "active");
    m.ok("env echo checkpoint > .ctl");
    m.ok("rmdir .txn/t");
}

#[test]
fn txn_and_snap_hold_only_their_directories() {
    let m = Mount::new();
    assert_eq!(m.ok("ls -A .txn && ls -A .snap"), "");
    m.fails("touch .txn/x", msg::EPERM);
    m.fails("env echo x > .txn/x", msg::EPERM);
    m.fails("touch .snap/x", msg::EPERM);
    m.fails("env echo x > .snap/x", msg::EPERM);
    // Their directories cannot be renamed; inside, a transaction stages
    // directories and a snapshot is read-only.
    m.ok("mkdir .txn/t .snap/s");
    m.fails("mv .txn/t .txn/u", msg::EPERM);
    m.fails("mv .snap/s .snap/u", msg::EPERM);
    m.ok("mkdir .txn/t/d && rmdir .txn/t/d");
    m.fails("mkdir .snap/s/d", msg::EROFS);
    // A name already open: EEXIST.
    m.fails("mkdir .txn/t", msg::EEXIST);
    m.fails("mkdir .snap/s", msg::EEXIST);
    m.ok("rmdir .txn/t .snap/s");
    assert_eq!(m.ok("ls -A .txn && ls -A .snap && ls"), "");
}

#[test]
fn writing_stats_gives_eacces() {
    let m = Mount::new();
    m.fails("echo x > .stats", msg::EACCES);
    m.fails("echo x >> .stats", msg::EACCES);
    m.fails("truncate -s 0 .stats", msg::EACCES);
    m.fails("printf x | dd of=.stats conv=notrunc", msg::EACCES);
    // Still readable and unchanged in shape.
    assert_eq!(m.stat_keys(), 0);
}

#[test]
fn o_excl_on_an_existing_key_gives_eexist() {
    let m = Mount::new();
    m.ok("echo old > k");
    // noclobber makes the shell open with O_CREAT|O_EXCL.
    m.fails("set -C; echo new > k", msg::EEXIST);
    assert_eq!(m.ok("cat k"), "old\n");
    assert_eq!(m.ok("set -C; echo fresh > n && cat n"), "fresh\n");
}

#[test]
fn rename_noreplace_onto_an_existing_key_gives_eexist() {
    let m = Mount::new();
    m.ok("echo A > a && echo B > b");
    m.fails(
        &format!("{}renameat2 a b {RENAME_NOREPLACE}", renameat2_sh()),
        msg::EEXIST,
    );
    assert_eq!(m.ok("cat a b"), "A\nB\n");
    // mv -n tries RENAME_NOREPLACE and skips quietly on EEXIST.
    m.ok("mv -n a b");
    assert_eq!(m.ok("cat a b"), "A\nB\n");
    // Onto a missing name it renames.
    m.ok(&format!(
        "{}renameat2 a c {RENAME_NOREPLACE}",
        renameat2_sh()
    ));
    assert_eq!(m.ok("ls && cat c"), "b\nc\nA\n");
}

#[test]
fn rename_exchange_gives_einval() {
    let m = Mount::new();
    m.ok("echo A > a && echo B > b");
    m.fails(
        &format!("{}renameat2 a b {RENAME_EXCHANGE}", renameat2_sh()),
        msg::EINVAL,
    );
    assert_eq!(m.ok("cat a b && ls"), "A\nB\na\nb\n");
}

#[test]
fn errors_are_written_to_the_daemon_log_with_the_key() {
    let m = Mount::builder().max_value("4K").start();
    m.fails("cat missing-probe", msg::ENOENT);
    m.fails("mkdir dir-probe/sub", msg::ENOENT);
    m.fails("head -c 5000 /dev/zero > big-probe", msg::EFBIG);
    m.fails("echo x > .stats", msg::EACCES);
    let log = m.log();
    let unlogged: Vec<&str> = ["missing-probe", "dir-probe", "big-probe", ".stats"]
        .into_iter()
        .filter(|key| !log.lines().any(|l| l.contains(key)))
        .collect();
    assert!(
        unlogged.is_empty(),
        "no log line names the failed keys {unlogged:?}; log:\n{log}"
    );
}
