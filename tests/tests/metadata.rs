//! `stat`/`ls -l` metadata (docs/SEMANTICS.md: Metadata).

use bpfdb_tests::{Mount, lines};

/// Seconds since the epoch, from `date` (the same clock the daemon stamps commits with).
fn now(m: &Mount) -> i64 {
    m.ok("date +%s").trim().parse().expect("date +%s")
}

/// A `stat -c %.9Y`-style time as nanoseconds.
fn ns(s: &str) -> i128 {
    let (secs, frac) = s.trim().split_once('.').expect("seconds.nanoseconds");
    secs.parse::<i128>().expect("seconds") * 1_000_000_000 + frac.parse::<i128>().expect("ns")
}

#[track_caller]
fn assert_near_now(m: &Mount, secs: i64, what: &str) {
    let now = now(m);
    assert!(
        (now - secs).abs() <= 5,
        "{what}: {secs} is not within 5 s of now ({now})"
    );
}

#[test]
fn size_mode_owner_and_links_at_creation() {
    let m = Mount::new();
    m.ok("umask 027
         echo hello > k
         touch e
         printf x >> a
         truncate -s 3 t
         dd if=/dev/null of=d 2>/dev/null");
    assert_eq!(
        m.ok("stat -c '%n %s %a %u %g %h %F' k e a t d"),
        "k 6 640 0 0 1 regular file\n\
         e 0 640 0 0 1 regular empty file\n\
         a 1 640 0 0 1 regular file\n\
         t 3 640 0 0 1 regular file\n\
         d 0 640 0 0 1 regular empty file\n"
    );
    m.ok("umask 077 && echo x > p && umask 0 && echo x > z && umask 022 && touch n");
    assert_eq!(m.ok("stat -c '%n %a' p z n"), "p 600\nz 666\nn 644\n");
    // The size follows every kind of change.
    m.ok("head -c 300000 /dev/zero >> k");
    assert_eq!(m.ok("stat -c %s k"), "300006\n");
    m.ok("truncate -s 7 k");
    assert_eq!(m.ok("stat -c %s k"), "7\n");
}

#[test]
fn chmod_is_kept_per_key() {
    let m = Mount::new();
    m.ok("umask 022 && echo v > k && echo w > other");
    m.ok("chmod 600 k");
    assert_eq!(m.ok("stat -c %a k other"), "600\n644\n");
    // Rewriting, appending, truncating and touching the value keep the mode.
    m.ok("echo new > k && echo more >> k && truncate -s 2 k && touch k");
    assert_eq!(m.ok("stat -c '%a %s' k && cat k"), "600 2\nne");
    m.ok("chmod 751 k");
    assert_eq!(m.ok("stat -c %a k"), "751\n");
    // The key keeps its mode when renamed.
    m.ok("mv k renamed");
    assert_eq!(m.ok("stat -c %a renamed"), "751\n");
    assert_eq!(m.ok("stat -c %A renamed"), "-rwxr-x--x\n");
}

#[test]
fn chown_is_kept_per_key() {
    let m = Mount::new();
    m.ok("echo v > k");
    m.ok("chown 1234:5678 k");
    assert_eq!(m.ok("stat -c '%u %g' k"), "1234 5678\n");
    m.ok("echo new > k && echo more >> k && touch k");
    assert_eq!(m.ok("stat -c '%u %g' k && cat k"), "1234 5678\nnew\nmore\n");
    m.ok("chown 0 k");
    assert_eq!(m.ok("stat -c '%u %g' k"), "0 5678\n");
    m.ok("chgrp 42 k");
    assert_eq!(m.ok("stat -c '%u %g' k"), "0 42\n");
    m.ok("mv k moved");
    assert_eq!(m.ok("stat -c '%u %g' moved"), "0 42\n");
}

#[test]
fn mtime_is_the_commit_time_and_atime_ctime_equal_it() {
    let m = Mount::new();
    m.ok("echo v > k");
    let t: Vec<String> = m
        .ok("stat -c '%.9X %.9Y %.9Z' k")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0], t[1], "atime != mtime");
    assert_eq!(t[2], t[1], "ctime != mtime");
    let secs: i64 = m.ok("stat -c %Y k").trim().parse().expect("mtime");
    assert_near_now(&m, secs, "mtime after a write");

    // A later write moves mtime forward; a read does not move it.
    m.ok("sleep 0.1 && echo w > k");
    let t2 = m.ok("stat -c %.9Y k");
    assert!(ns(&t2) > ns(&t[1]), "mtime {t2} not after {}", t[1]);
    m.ok("cat k > /dev/null && sleep 0.1 && cat k > /dev/null");
    assert_eq!(m.ok("stat -c %.9Y k"), t2);
    let t3: Vec<String> = m
        .ok("stat -c '%.9X %.9Y %.9Z' k")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(t3, [t2.trim(), t2.trim(), t2.trim()]);
    // Appending is a write too.
    m.ok("sleep 0.1 && echo x >> k");
    let t4 = m.ok("stat -c %.9Y k");
    assert!(ns(&t4) > ns(&t2), "append did not move mtime: {t4} vs {t2}");
}

#[test]
fn touch_sets_mtime_and_keeps_the_value() {
    let m = Mount::new();
    m.ok("echo v > k");
    m.ok("touch -d @1000000000 k");
    assert_eq!(
        m.ok("stat -c '%X %Y %s' k && cat k"),
        "1000000000 1000000000 2\nv\n"
    );
    m.ok("touch -m -d @1234567890 k");
    assert_eq!(m.ok("stat -c '%X %Y' k"), "1234567890 1234567890\n");
    // Plain touch: now.
    m.ok("touch k");
    let secs: i64 = m.ok("stat -c %Y k").trim().parse().expect("mtime");
    assert_near_now(&m, secs, "mtime after touch");
    assert_eq!(m.ok("cat k"), "v\n");
    // touch -d on a fresh key creates it with that mtime.
    m.ok("touch -d @1000000000 fresh");
    assert_eq!(m.ok("stat -c '%Y %s' fresh"), "1000000000 0\n");
}

#[test]
fn closing_an_unchanged_writer_commits_nothing() {
    let m = Mount::new();
    m.ok("echo v > k && touch -d @1000000000 k");
    // Open for append and close; open for writing without O_TRUNC and close; read.
    m.ok("exec 3>> k; exec 3>&-; : >> k; dd if=/dev/null of=k conv=notrunc 2>/dev/null; cat k > /dev/null");
    assert_eq!(m.ok("stat -c '%Y %s' k && cat k"), "1000000000 2\nv\n");
}

#[test]
fn ls_l_shows_mode_links_owner_size_mtime() {
    let m = Mount::new();
    m.ok("umask 022
         printf hello > k
         chmod 640 k
         touch -d @1000000000 k
         touch e
         chmod 600 e
         chown 1234:5678 e
         touch -d @1234567890 e");
    let out = m.ok("ls -l --time-style=+%s");
    let entries: Vec<&str> = lines(&out)
        .into_iter()
        .filter(|l| !l.starts_with("total "))
        .collect();
    assert_eq!(
        entries,
        [
            "-rw------- 1 1234 5678 0 1234567890 e",
            "-rw-r----- 1 root root 5 1000000000 k"
        ]
    );
    let out = m.ok("ls -ln --time-style=+%s k");
    assert_eq!(out, "-rw-r----- 1 0 0 5 1000000000 k\n");
}

#[test]
fn uid_and_gid_are_those_of_the_creating_process() {
    let m = Mount::builder().arg("--allow-other").start();
    m.ok(
        "setpriv --reuid=1234 --regid=5678 --clear-groups sh -c 'umask 027; echo mine > k && touch e'",
    );
    assert_eq!(
        m.ok("stat -c '%n %u %g %a' k e && cat k"),
        "k 1234 5678 640\ne 1234 5678 640\nmine\n"
    );
    // Rewriting by another user keeps the key's owner.
    m.ok("echo root > k");
    assert_eq!(m.ok("stat -c '%u %g' k"), "1234 5678\n");
}

/// Modes bind other users (docs/SEMANTICS.md: Metadata); root keeps its
/// usual override, as on any filesystem.
#[test]
fn permission_bits_bind_other_users_and_not_root() {
    let m = Mount::builder().arg("--allow-other").start();
    m.ok("echo secret > k && chmod 000 k");
    assert_eq!(m.ok("stat -c %a k"), "0\n");
    assert_eq!(
        m.ok("cat k && echo more >> k && cat k"),
        "secret\nsecret\nmore\n"
    );
    m.ok("chmod 600 k");
    m.fails(
        "setpriv --reuid=4321 --regid=4321 --clear-groups cat k",
        "Permission denied",
    );
    m.ok("chmod 644 k");
    assert_eq!(
        m.ok("setpriv --reuid=4321 --regid=4321 --clear-groups cat k"),
        "secret\nmore\n"
    );
    assert_eq!(m.ok("stat -c '%a %u %g' k"), "644 0 0\n");
}

/// fstat, stat and lseek(SEEK_END) through a process's own open writer report what it wrote
/// or truncated (fsx and pjdfstest check this after every write); every other process keeps
/// seeing the committed size until the commit. The other process is forked before the open:
/// a child forked after it would share the descriptor, and its exec closes it (a commit).
#[test]
fn a_writer_sees_its_own_size_and_others_see_the_committed_one() {
    let m = Mount::new();
    m.ok("printf old > k");
    m.ok(r#"perl -e '
        use IO::Handle;
        use Fcntl qw(O_WRONLY O_TRUNC SEEK_SET SEEK_END);
        pipe(my $ask, my $asked) or die; pipe(my $told, my $tell) or die;
        $asked->autoflush(1); $tell->autoflush(1);
        if (fork() == 0) {
            close $asked; close $told;
            while (<$ask>) { print $tell `stat -c %s k`; }
            exit 0;
        }
        close $ask; close $tell;
        sub other { print $asked "stat
"; my $s = <$told>; chomp $s; $s }
        sysopen(my $f, "k", O_WRONLY | O_TRUNC) or die "open: $!
";
        sub check {
            my ($want, $what) = @_;
            my $fstat = (stat($f))[7];
            my $end = 0 + sysseek($f, 0, SEEK_END);
            my $path = (stat("k"))[7];
            "$fstat $end $path" eq "$want $want $want"
                or die "$what: fstat, lseek(SEEK_END), stat say $fstat, $end, $path; want $want
";
            my $other = other();
            $other eq "3" or die "$what: another process sees size $other, not the committed 3
";
        }
        check(0, "after O_TRUNC");
        sysseek($f, 0, SEEK_SET); syswrite($f, "hello") == 5 or die "write: $!
";
        check(5, "after write(5)");
        sysseek($f, 9, SEEK_SET); syswrite($f, "x") == 1 or die "write: $!
";
        check(10, "after a write past the end");
        truncate($f, 2) or die "ftruncate: $!
";
        check(2, "after ftruncate(2)");
        close($f) or die "close: $!
";
        (stat("k"))[7] == 2 or die "after close: size ", (stat("k"))[7], "
";
        other() eq "2" or die "after close: another process does not see the commit
";
        close $asked;'"#);
    assert_eq!(m.ok("cat k | od -An -c | tr -s ' '"), " h e\n");
}

/// `cp -p` and `cp -a` set the times and mode through the file they are writing (futimens,
/// fchmod) before they close it: the commit at close keeps them.
#[test]
fn times_and_modes_set_through_an_open_writer_survive_its_commit() {
    let m = Mount::new();
    m.ok("printf data > $T/src && chmod 640 $T/src && touch -d @1000000000 $T/src");
    m.ok("cp -p $T/src p && cp -a $T/src a");
    assert_eq!(
        m.ok("stat -c '%a %Y %s %n' p a"),
        "640 1000000000 4 p\n640 1000000000 4 a\n"
    );
    // futimes after a write wins; a write after futimes moves mtime again.
    m.ok(r#"perl -e '
        open(my $f, ">", "k") or die "open: $!\n";
        syswrite($f, "one") == 3 or die "write: $!\n";
        utime(1200000000, 1200000000, $f) or die "futimes: $!\n";
        close($f) or die "close: $!\n";
        open($f, ">>", "k2") or die;
        utime(1200000000, 1200000000, $f) or die "futimes: $!\n";
        syswrite($f, "two") == 3 or die "write: $!\n";
        close($f) or die "close: $!\n";'"#);
    assert_eq!(m.ok("stat -c '%Y %s' k && cat k"), "1200000000 3\none");
    let secs: i64 = m.ok("stat -c %Y k2").trim().parse().expect("mtime");
    assert_near_now(&m, secs, "mtime of a write after futimes");
}

/// ctime is the time of the last change of any kind: chmod, chown and touch move it (and not
/// mtime); a write moves both.
#[test]
fn chmod_chown_and_touch_move_ctime_and_a_write_moves_both() {
    let m = Mount::new();
    m.ok("echo v > k");
    let times = |m: &Mount| -> (i128, i128) {
        let t = m.ok("stat -c '%.9Y %.9Z' k");
        let (y, z) = t.trim().split_once(' ').expect("two times");
        (ns(y), ns(z))
    };
    let (m0, c0) = times(&m);
    assert_eq!(
        m0, c0,
        "after a write, mtime and ctime are that write's time"
    );
    for cmd in ["chmod 600 k", "chown 1:1 k", "touch -m -d @1000000000 k"] {
        let (_, before) = times(&m);
        m.ok(cmd);
        let (mt, ct) = times(&m);
        assert!(ct > before, "{cmd} did not move ctime ({ct} vs {before})");
        if cmd.starts_with("ch") {
            assert_eq!(mt, m0, "{cmd} moved mtime");
        }
    }
    let secs: i64 = m.ok("stat -c %Z k").trim().parse().expect("ctime");
    assert_near_now(&m, secs, "ctime after touch -d");
    m.ok("echo w > k");
    let (mt, ct) = times(&m);
    assert_eq!(mt, ct, "a write sets mtime and ctime alike");
    assert!(mt > m0);
}

/// Creating, removing or renaming a key changes the root directory: its mtime and ctime move.
#[test]
fn create_remove_and_rename_move_the_root_directorys_times() {
    let m = Mount::new();
    let dir_times = |m: &Mount| m.ok("stat -c '%.9Y %.9Z' .");
    for cmd in ["echo v > k", "mv k k2", "rm k2", "touch t"] {
        let before = dir_times(&m);
        m.ok(cmd);
        let after = dir_times(&m);
        let (b, a): (Vec<i128>, Vec<i128>) = (
            before.split_whitespace().map(ns).collect(),
            after.split_whitespace().map(ns).collect(),
        );
        assert!(
            a[0] > b[0] && a[1] > b[1],
            "{cmd}: root times {before} -> {after}"
        );
    }
    // Rewriting an existing key leaves the directory alone.
    let before = dir_times(&m);
    m.ok("echo again > t");
    assert_eq!(
        dir_times(&m),
        before,
        "rewriting a key changed the directory"
    );
}
