//! Transactions and snapshots through the mount, one state transition and one errno at a time:
//! `mkdir .txn/NAME` begins, `.txn/NAME/.ctl` commits, aborts and reports the state, `rmdir`
//! forgets; a lock conflict gives `EBUSY` and leaves the transaction aborted, after which every
//! operation in it gives `ECANCELED`; `.snap/NAME` is a read-only snapshot (`EROFS`).
//!
//! Writes whose exit status matters go through coreutils `echo` (`env echo`): dash's builtin
//! `echo` never reports an error of the `close` that commits a value.

use bpfdb_tests::{Mount, msg, renameat2_sh};

#[test]
fn mkdir_begins_a_transaction_that_ls_lists_and_rmdir_forgets() {
    let m = Mount::new();
    assert_eq!(m.stat("txn_active"), 0);
    m.ok("mkdir .txn/t1");
    assert_eq!(m.ok("ls .txn"), "t1\n");
    assert_eq!(m.ok("stat -c %F .txn/t1"), "directory\n");
    assert_eq!(m.txn_state("t1"), "active");
    assert_eq!(m.stat("txn_active"), 1);
    m.ok("mkdir .txn/t2");
    assert_eq!(m.ok("ls .txn"), "t1\nt2\n");
    assert_eq!(m.stat("txn_active"), 2);
    m.ok("rmdir .txn/t1");
    assert_eq!(m.ok("ls .txn"), "t2\n");
    m.ok("rmdir .txn/t2");
    assert_eq!(m.ok("ls .txn"), "");
    assert_eq!(m.stat("txn_active"), 0);
    m.fails("cat .txn/t1/.ctl", msg::ENOENT);
    // Nothing of it reached the key space.
    assert_eq!(m.ok("ls"), "");
    assert_eq!(m.stat_keys(), 0);
}

#[test]
fn staged_writes_deletes_and_renames_are_invisible_until_commit() {
    let m = Mount::new();
    m.ok("echo 100 > alice && echo 7 > bob && echo A > a");
    m.ok("mkdir .txn/t1");
    // A read inside t1 sees the committed value.
    assert_eq!(m.ok("cat .txn/t1/alice"), "100\n");
    m.ok("env echo 50 > .txn/t1/alice");
    m.ok("env echo new > .txn/t1/fresh");
    m.ok("rm .txn/t1/bob");
    m.ok("mv .txn/t1/a .txn/t1/b");

    // t1's view: committed keys plus its own writes.
    assert_eq!(m.ok("ls .txn/t1"), "alice\nb\nfresh\n");
    assert_eq!(
        m.ok("cat .txn/t1/alice .txn/t1/b .txn/t1/fresh"),
        "50\nA\nnew\n"
    );
    assert_eq!(m.ok("stat -c %s .txn/t1/alice"), "3\n");
    m.fails("cat .txn/t1/bob", msg::ENOENT);
    m.fails("cat .txn/t1/a", msg::ENOENT);

    // Nobody else sees any of it: not the root, not a snapshot.
    assert_eq!(m.ok("ls"), "a\nalice\nbob\n");
    assert_eq!(m.ok("cat alice bob a"), "100\n7\nA\n");
    m.fails("cat fresh", msg::ENOENT);
    m.fails("cat b", msg::ENOENT);
    m.ok("mkdir .snap/before");
    assert_eq!(m.ok("ls .snap/before"), "a\nalice\nbob\n");
    // Another transaction can neither read a key t1 wrote nor list the root t1 changed the
    // names of (either would see t1's work or miss it before t1 decides): both are conflicts,
    // which abort it.
    m.ok("mkdir .txn/t2 .txn/t3");
    m.fails("cat .txn/t2/fresh", msg::EBUSY);
    m.assert_aborted("t2");
    m.fails("ls .txn/t3", msg::EBUSY);
    m.assert_aborted("t3");
    m.ok("rmdir .txn/t2 .txn/t3");
    assert_eq!(m.stat_keys(), 3);
    assert_eq!(m.txn_state("t1"), "active");

    // COMMIT: all of it at once.
    m.ok("env echo commit > .txn/t1/.ctl");
    let ts = m.assert_committed("t1");
    assert_eq!(m.ok("ls"), "alice\nb\nfresh\n");
    assert_eq!(m.ok("cat alice b fresh"), "50\nA\nnew\n");
    m.fails("cat bob", msg::ENOENT);
    m.fails("cat a", msg::ENOENT);
    assert_eq!(m.stat_keys(), 3);
    // The snapshot taken before still sees the moment it was taken.
    assert_eq!(m.ok("ls .snap/before"), "a\nalice\nbob\n");
    assert_eq!(m.ok("cat .snap/before/alice .snap/before/bob"), "100\n7\n");
    m.ok("rmdir .snap/before");
    m.ok("rmdir .txn/t1");
    assert_eq!(m.ok("ls .txn"), "");

    // A later transaction commits at a later timestamp.
    m.ok("mkdir .txn/t3 && env echo 1 > .txn/t3/x && env echo commit > .txn/t3/.ctl");
    let ts3 = m.assert_committed("t3");
    assert!(ts3 > ts, "second commit at {ts3}, first at {ts}");
    m.ok("rmdir .txn/t3");
    assert_eq!(m.ok("cat x"), "1\n");
}

#[test]
fn a_1mib_binary_value_written_in_a_transaction_commits_whole() {
    let m = Mount::new();
    m.ok("dd if=/dev/urandom of=$T/rand bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("printf old > blob && mkdir .txn/t1");
    m.ok("cp $T/rand .txn/t1/blob && cmp .txn/t1/blob $T/rand");
    assert_eq!(m.ok("cat blob"), "old");
    m.ok("env echo commit > .txn/t1/.ctl");
    m.ok("cmp blob $T/rand");
    assert_eq!(m.ok("stat -c %s blob"), "1048576\n");
}

#[test]
fn abort_discards_every_staged_change_and_later_ops_give_ecanceled() {
    let m = Mount::new();
    m.ok("echo 100 > alice && echo 7 > bob");
    m.ok("mkdir .txn/t1");
    m.ok("env echo 50 > .txn/t1/alice && rm .txn/t1/bob && env echo x > .txn/t1/new");
    m.ok("env echo abort > .txn/t1/.ctl");
    m.assert_aborted("t1");
    assert_eq!(m.ok("ls && cat alice bob"), "alice\nbob\n100\n7\n");
    // Every later operation in t1 is refused.
    m.fails("cat .txn/t1/alice", msg::ECANCELED);
    m.fails("env echo 1 > .txn/t1/alice", msg::ECANCELED);
    m.fails("env echo 1 > .txn/t1/other", msg::ECANCELED);
    m.fails("rm .txn/t1/alice", msg::ECANCELED);
    m.fails("env echo commit > .txn/t1/.ctl", msg::ECANCELED);
    m.assert_aborted("t1");
    // None of it ever was, and its locks are gone: autocommit writes of the same keys work.
    assert_eq!(m.ok("ls && cat alice bob"), "alice\nbob\n100\n7\n");
    m.ok("env echo 60 > alice && rm bob && env echo y > new");
    assert_eq!(m.ok("ls && cat alice new"), "alice\nnew\n60\ny\n");
    m.ok("rmdir .txn/t1");
    assert_eq!(m.ok("ls .txn"), "");
}

#[test]
fn rmdir_of_an_active_transaction_aborts_it_and_releases_its_locks() {
    let m = Mount::new();
    m.ok("echo 1 > k && echo 1 > r");
    m.ok("mkdir .txn/t1 && cat .txn/t1/r && env echo 2 > .txn/t1/k && env echo 2 > .txn/t1/n");
    m.fails("env echo 3 > k", msg::EBUSY);
    m.ok("rmdir .txn/t1");
    assert_eq!(m.ok("ls .txn"), "");
    assert_eq!(m.ok("ls && cat k r"), "k\nr\n1\n1\n");
    // The write lock on k and the read lock on r are gone.
    m.ok("env echo 3 > k && env echo 3 > r");
    assert_eq!(m.ok("cat k r"), "3\n3\n");
    // The name can be used again, for a fresh transaction.
    m.ok("mkdir .txn/t1");
    assert_eq!(m.txn_state("t1"), "active");
    assert_eq!(m.ok("cat .txn/t1/k"), "3\n");
    m.fails("cat .txn/t1/n", msg::ENOENT);
    m.ok("rmdir .txn/t1");
}

#[test]
fn a_conflict_gives_ebusy_then_the_transaction_is_aborted_and_gives_ecanceled() {
    let m = Mount::new();
    m.ok("echo 1 > k && echo 1 > other");
    let conflicts = m.stat("txn_aborts_conflict");
    m.ok("mkdir .txn/t1 .txn/t2");
    m.ok("env echo t1 > .txn/t1/k");
    // t2 hits t1's exclusive lock.
    m.fails("env echo t2 > .txn/t2/k", msg::EBUSY);
    let reason = m.assert_aborted("t2");
    assert_eq!(m.stat("txn_aborts_conflict"), conflicts + 1);
    // Every later operation in t2 fails with ECANCELED, also on keys nobody locked.
    m.fails("cat .txn/t2/other", msg::ECANCELED);
    m.fails("env echo x > .txn/t2/other", msg::ECANCELED);
    m.fails("env echo x > .txn/t2/brand-new", msg::ECANCELED);
    m.fails("rm .txn/t2/other", msg::ECANCELED);
    m.fails("env echo commit > .txn/t2/.ctl", msg::ECANCELED);
    assert_eq!(m.assert_aborted("t2"), reason, "the abort reason changed");
    // t1 is unaffected and commits.
    assert_eq!(m.txn_state("t1"), "active");
    m.ok("env echo commit > .txn/t1/.ctl");
    m.assert_committed("t1");
    assert_eq!(m.ok("cat k other"), "t1\n1\n");
    m.fails("cat brand-new", msg::ENOENT);
    m.ok("rmdir .txn/t1 .txn/t2");
}

#[test]
fn rm_and_mv_of_a_locked_key_conflict_in_a_transaction() {
    let m = Mount::new();
    m.ok("echo k > k && echo j > j");
    m.ok("mkdir .txn/reader && cat .txn/reader/k");
    // Deleting, renaming away and renaming onto a key another transaction read: EBUSY.
    m.ok("mkdir .txn/del .txn/away .txn/onto");
    m.fails("rm .txn/del/k", msg::EBUSY);
    m.assert_aborted("del");
    // rename(2) itself, through perl: after the EBUSY of rename, `mv` stats the source again
    // and so reports the ECANCELED of the now aborted transaction instead.
    let rename = renameat2_sh();
    m.fails(
        &format!("{rename}renameat2 .txn/away/k .txn/away/k2 0"),
        msg::EBUSY,
    );
    m.assert_aborted("away");
    m.fails(
        &format!("{rename}renameat2 .txn/onto/j .txn/onto/k 0"),
        msg::EBUSY,
    );
    m.assert_aborted("onto");
    // A second reader shares the lock.
    m.ok("mkdir .txn/reader2");
    assert_eq!(m.ok("cat .txn/reader2/k"), "k\n");
    m.ok("rmdir .txn/reader .txn/reader2 .txn/del .txn/away .txn/onto");
    assert_eq!(m.ok("ls && cat k j"), "j\nk\nk\nj\n");
}

#[test]
fn autocommit_writes_of_a_locked_key_give_ebusy_and_root_reads_never_block() {
    let m = Mount::new();
    m.ok("echo r0 > r && echo w0 > w && echo z0 > z");
    let modes = m.ok("stat -c %a r w");
    m.ok("mkdir .txn/t1 && cat .txn/t1/r > /dev/null && env echo w1 > .txn/t1/w");
    for (key, old) in [("r", "r0"), ("w", "w0")] {
        m.fails(&format!("env echo x > {key}"), msg::EBUSY);
        m.fails(&format!("env echo x >> {key}"), msg::EBUSY);
        m.fails(&format!("rm {key}"), msg::EBUSY);
        m.fails(&format!("mv {key} moved"), msg::EBUSY);
        m.fails(&format!("mv z {key}"), msg::EBUSY);
        m.fails(&format!("chmod 600 {key}"), msg::EBUSY);
        m.fails(&format!("touch {key}"), msg::EBUSY);
        // Root reads take no lock and see the last committed value.
        assert_eq!(m.ok(&format!("cat {key}")), format!("{old}\n"));
    }
    assert_eq!(m.ok("ls"), "r\nw\nz\n");
    assert_eq!(m.ok("stat -c %a r w"), modes);
    // The transaction did not suffer from the refused writes.
    assert_eq!(m.txn_state("t1"), "active");
    m.ok("env echo commit > .txn/t1/.ctl");
    assert_eq!(m.ok("cat r w z"), "r0\nw1\nz0\n");
    // Its locks ended with it.
    m.ok("env echo r2 > r && env echo w2 > w && mv z moved");
    assert_eq!(m.ok("ls && cat r w moved"), "moved\nr\nw\nr2\nw2\nz0\n");
    m.ok("rmdir .txn/t1");
}

#[test]
fn emptying_a_locked_key_by_redirection_gives_ebusy() {
    // Found by fs_model: `cat /dev/null > key` (O_TRUNC, nothing written, close) of a key a
    // transaction holds exited 0 while the key kept its value: the daemon commits such a
    // truncation only at RELEASE, where the EBUSY reaches nobody (it logs "no caller is left to
    // report it to"). The open or cat's close must report it. (Not `: > key`: dash ignores the
    // close errors of a builtin's redirection, so only a refused open could show there.)
    let m = Mount::new();
    m.ok("printf hello > w && printf hello > r");
    m.ok("mkdir .txn/t && truncate -s 2 .txn/t/w && cat .txn/t/r > /dev/null");
    for key in ["w", "r"] {
        m.fails(&format!("cat /dev/null > {key}"), msg::EBUSY);
        assert_eq!(m.ok(&format!("cat {key}")), "hello");
    }
    m.ok("rmdir .txn/t");
}

#[test]
fn a_snapshot_sees_one_moment_takes_no_locks_and_is_read_only() {
    let m = Mount::new();
    m.ok("echo 1 > x && echo 2 > y");
    m.ok("mkdir .snap/s1");
    assert_eq!(m.ok("ls .snap"), "s1\n");
    // Later autocommit changes do not reach the snapshot.
    m.ok("echo 10 > x && rm y && echo 3 > z");
    assert_eq!(m.ok("ls .snap/s1"), "x\ny\n");
    assert_eq!(m.ok("cat .snap/s1/x .snap/s1/y"), "1\n2\n");
    m.fails("cat .snap/s1/z", msg::ENOENT);
    assert_eq!(m.ok("ls && cat x z"), "x\nz\n10\n3\n");

    // A snapshot takes no locks: it reads a key a transaction is writing, and that
    // transaction (and autocommit) can still write what the snapshot read.
    m.ok("mkdir .txn/t1 && env echo 20 > .txn/t1/x");
    assert_eq!(m.ok("cat .snap/s1/x"), "1\n");
    m.ok("mkdir .snap/s2");
    assert_eq!(m.ok("cat .snap/s2/x"), "10\n");
    m.ok("env echo commit > .txn/t1/.ctl");
    m.ok("env echo 4 > z");
    assert_eq!(
        m.ok("cat .snap/s1/x .snap/s2/x .snap/s2/z x z"),
        "1\n10\n3\n20\n4\n"
    );

    // Every write in a snapshot gives EROFS and changes nothing.
    for script in [
        "env echo v > .snap/s1/x",
        "env echo v >> .snap/s1/x",
        "env echo v > .snap/s1/new",
        "touch .snap/s1/new",
        "touch .snap/s1/x",
        "rm .snap/s1/x",
        "mv .snap/s1/x .snap/s1/w",
        "truncate -s 0 .snap/s1/x",
        "chmod 600 .snap/s1/x",
    ] {
        m.fails(script, msg::EROFS);
    }
    assert_eq!(m.ok("ls .snap/s1 && cat .snap/s1/x"), "x\ny\n1\n");
    assert_eq!(m.ok("ls && cat x"), "x\nz\n20\n");

    m.ok("rmdir .snap/s1");
    assert_eq!(m.ok("ls .snap"), "s2\n");
    m.ok("rmdir .snap/s2");
    assert_eq!(m.ok("ls .snap"), "");
    m.ok("rmdir .txn/t1");
}

#[test]
fn a_snapshot_taken_before_the_first_commit_sees_no_later_commit() {
    // Found by fs_model: on a database that never committed, a snapshot listed nothing but
    // read every key committed after it.
    let m = Mount::new();
    m.ok("mkdir .snap/s");
    m.ok("env echo x > k");
    assert_eq!(m.ok("ls .snap/s"), "");
    m.fails("cat .snap/s/k", msg::ENOENT);
    m.fails("stat .snap/s/k", msg::ENOENT);
    assert_eq!(m.ok("cat k"), "x\n");
    m.ok("rmdir .snap/s");
}

#[test]
fn a_snapshot_keeps_a_1mib_value_that_the_root_rewrites_and_deletes() {
    let m = Mount::new();
    m.ok("dd if=/dev/urandom of=$T/old bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("dd if=/dev/urandom of=$T/new bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("cp $T/old blob && mkdir .snap/s");
    m.ok("cp $T/new blob && cmp blob $T/new && cmp .snap/s/blob $T/old");
    m.ok("rm blob && cmp .snap/s/blob $T/old");
    m.ok("rmdir .snap/s");
}

#[test]
fn mv_onto_a_name_whose_old_version_outlived_its_snapshot_makes_the_key() {
    // Found by fs_model (seed 1796440643202100953): `mv w k` succeeded, then `cat k` gave
    // ENOENT and w's value was gone. k's only version (made by a rename, so the first of its
    // record) ended while a snapshot needed it; once the snapshot was gone, the next rename onto
    // k collected that version and put the new one in its place, then stamped the end of the
    // version it had looked at before collecting: the new one.
    let m = Mount::new();
    m.ok("echo old > a && mv a k");
    m.ok("mkdir .snap/s && mv k x && rmdir .snap/s");
    m.ok("echo new > w && mv w k");
    assert_eq!(m.ok("cat k x"), "new\nold\n");
    m.fails("cat w", msg::ENOENT);
    assert_eq!(m.ok("ls"), "k\nx\n");
    assert_eq!(m.stat_keys(), 2);
}

#[test]
fn an_idle_transaction_is_aborted_after_txn_timeout_and_a_busy_one_is_not() {
    let m = Mount::builder().arg("--txn-timeout").arg("1").start();
    m.ok("echo 1 > k && echo 1 > busy");
    m.ok("mkdir .txn/idle .txn/live .snap/s");
    // The idle transaction's last operation, and a clock reading from before it: its idle time
    // starts no earlier than $T/t0.
    m.ok("date +%s%N > $T/t0 && env echo 2 > .txn/idle/k && env echo 2 > .txn/live/busy");
    // The live transaction works every 200 ms; the idle one only holds its lock on k, which
    // autocommit tries to take every 200 ms until the idle transaction is aborted.
    let out = m.ok("i=0
         while [ $i -lt 40 ]; do
           cat .txn/live/busy > /dev/null || { echo \"live failed at $i\"; exit 1; }
           if env echo 3 > k 2>/dev/null; then
             echo \"freed after $(( ($(date +%s%N) - $(cat $T/t0)) / 1000000 )) ms\"; exit 0
           fi
           sleep 0.2; i=$((i+1))
         done
         echo 'never freed'");
    let ms: u64 = out
        .trim()
        .strip_prefix("freed after ")
        .and_then(|n| n.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("idle transaction was not aborted: {out}"));
    // Not before the timeout, measured from before its last operation.
    assert!(
        ms >= 1000,
        "k was freed {ms} ms after the idle transaction's last operation, before the 1 s timeout"
    );
    m.assert_aborted("idle");
    m.fails("cat .txn/idle/k", msg::ECANCELED);
    assert_eq!(m.ok("cat k"), "3\n");
    // The one that kept working is still active and commits.
    assert_eq!(m.txn_state("live"), "active");
    m.ok("env echo commit > .txn/live/.ctl");
    assert_eq!(m.ok("cat busy"), "2\n");
    // Snapshots do not time out.
    assert_eq!(m.ok("cat .snap/s/k .snap/s/busy"), "1\n1\n");
    m.ok("rmdir .txn/idle .txn/live .snap/s");
}

#[test]
fn stats_count_commits_aborts_conflicts_and_active_transactions() {
    let m = Mount::new();
    let s0 = m.stats();
    for name in [
        "txn_commits",
        "txn_aborts",
        "txn_aborts_conflict",
        "txn_active",
        "oldest_snapshot_age_ms",
        "log_bytes",
        "versions_reclaimed",
    ] {
        assert!(s0.contains_key(name), ".stats has no `{name}`: {s0:?}");
    }
    assert_eq!(s0["txn_active"], 0);
    m.ok("mkdir .txn/t1 .txn/t2");
    assert_eq!(m.stat("txn_active"), 2);
    m.ok("env echo v > .txn/t1/k && env echo commit > .txn/t1/.ctl");
    assert_eq!(m.stat("txn_commits"), s0["txn_commits"] + 1);
    m.ok("env echo abort > .txn/t2/.ctl");
    assert_eq!(m.stat("txn_aborts"), s0["txn_aborts"] + 1);
    // (Whether a committed or aborted transaction still counts as active until its rmdir is
    // left open; once every directory is gone none is.)
    m.ok("mkdir .txn/t3 .txn/t4 && env echo 3 > .txn/t3/j");
    m.fails("env echo 4 > .txn/t4/j", msg::EBUSY);
    assert_eq!(m.stat("txn_aborts_conflict"), s0["txn_aborts_conflict"] + 1);
    m.ok("rmdir .txn/t1 .txn/t2 .txn/t3 .txn/t4");
    assert_eq!(m.stat("txn_active"), 0);
    assert_eq!(m.stat("txn_commits"), s0["txn_commits"] + 1);

    // An open snapshot ages.
    m.ok("mkdir .snap/s && sleep 0.5");
    let age = m.stat("oldest_snapshot_age_ms");
    assert!(
        (400..60_000).contains(&age),
        "oldest_snapshot_age_ms {age} with a snapshot open for 0.5 s"
    );
    m.ok("rmdir .snap/s");

    // Old versions nobody can see any more are reclaimed.
    let reclaimed = m.stat("versions_reclaimed");
    m.ok("for i in $(seq 1 20); do env echo $i > churn || exit 1; done");
    let now = m.stat("versions_reclaimed");
    assert!(
        now >= reclaimed + 10,
        "versions_reclaimed went from {reclaimed} to {now} over 20 rewrites of one key"
    );

    // The log grows by at least the bytes committed.
    let before = m.stat("log_bytes");
    m.ok("head -c 100000 /dev/urandom > big");
    let after = m.stat("log_bytes");
    assert!(
        after >= before + 100_000,
        "log_bytes went from {before} to {after} after a 100000-byte commit"
    );
}

#[test]
fn after_a_commit_every_operation_in_the_transaction_gives_ecanceled() {
    let m = Mount::new();
    m.ok("echo 1 > k && mkdir .txn/t1 && env echo 2 > .txn/t1/k && env echo commit > .txn/t1/.ctl");
    let ts = m.assert_committed("t1");
    m.fails("cat .txn/t1/k", msg::ECANCELED);
    m.fails("env echo 3 > .txn/t1/k", msg::ECANCELED);
    m.fails("env echo commit > .txn/t1/.ctl", msg::ECANCELED);
    m.fails("env echo abort > .txn/t1/.ctl", msg::ECANCELED);
    // Still committed, at the same timestamp, and its value stays.
    assert_eq!(m.assert_committed("t1"), ts);
    assert_eq!(m.ok("cat k"), "2\n");
    m.ok("rmdir .txn/t1");
}

#[test]
fn renames_between_the_root_transactions_and_snapshots_give_exdev() {
    let m = Mount::new();
    m.ok("echo r > r && mkdir .txn/t1 .txn/t2 .snap/s");
    m.ok("env echo t > .txn/t1/t");
    // rename(2) itself (`mv` would fall back to copy and delete). Destinations are names nobody
    // locked: the kernel looks the destination up first, and a lookup takes a lock.
    let rename = renameat2_sh();
    for (from, to) in [
        ("r", ".txn/t1/r2"),
        (".txn/t1/t", "t"),
        (".txn/t1/t", ".txn/t2/u"),
        (".snap/s/r", "r3"),
    ] {
        m.fails(
            &format!("{rename}renameat2 {from} {to} 0"),
            "Invalid cross-device link",
        );
    }
    assert_eq!(m.ok("ls"), "r\n");
    assert_eq!(m.txn_state("t1"), "active");
    m.ok("env echo commit > .txn/t1/.ctl");
    assert_eq!(m.ok("ls && cat t"), "r\nt\nt\n");
    m.ok("rmdir .txn/t1 .txn/t2 .snap/s");
}

#[test]
fn chmod_chown_in_a_transaction_give_eperm() {
    let m = Mount::new();
    m.ok("echo v > k && mkdir .txn/t1");
    let modes = m.ok("stat -c '%a %u %g' k");
    m.fails("chmod 600 .txn/t1/k", msg::EPERM);
    m.fails("chown 1234 .txn/t1/k", msg::EPERM);
    m.fails("ln .txn/t1/k .txn/t1/hard", msg::EPERM);
    assert_eq!(m.ok("stat -c '%a %u %g' k"), modes);
    m.ok("rmdir .txn/t1");
}

#[test]
fn a_transaction_locks_at_most_128_keys() {
    let m = Mount::new();
    m.ok("for i in $(seq 1 129); do : > k$i || exit 1; done");
    m.ok("mkdir .txn/t1");
    // 128 reads take 128 locks.
    m.ok("for i in $(seq 1 128); do cat .txn/t1/k$i || exit 1; done");
    assert_eq!(m.txn_state("t1"), "active");
    // One more: ENOSPC, and the transaction is aborted.
    m.fails("cat .txn/t1/k129", msg::ENOSPC);
    m.assert_aborted("t1");
    m.fails("cat .txn/t1/k1", msg::ECANCELED);
    // Its locks are gone.
    m.ok("env echo x > k1 && env echo x > k128");
    m.ok("rmdir .txn/t1");
}

#[test]
fn when_all_64_entries_are_in_use_mkdir_gives_eagain() {
    let m = Mount::new();
    m.ok("for i in $(seq 1 32); do mkdir .txn/t$i .snap/s$i || exit 1; done");
    m.fails("mkdir .txn/one-more", "Resource temporarily unavailable");
    m.fails("mkdir .snap/one-more", "Resource temporarily unavailable");
    // Checkpoints have an entry of their own, and autocommit needs none.
    m.ok("env echo checkpoint > .ctl");
    m.ok("env echo v > k && cat k");
    // rmdir frees an entry, whatever the state of what it held.
    m.ok("env echo commit > .txn/t1/.ctl && rmdir .txn/t1");
    m.ok("mkdir .txn/one-more && rmdir .txn/one-more");
    m.ok("env echo abort > .txn/t2/.ctl && rmdir .txn/t2");
    m.ok("env echo checkpoint > .ctl");
    m.ok("cd .txn && rmdir t*");
    m.ok("cd .snap && rmdir s*");
    assert_eq!(m.ok("ls .txn .snap"), ".snap:\n\n.txn:\n");
}

#[test]
fn reading_ctl_does_not_keep_an_idle_transaction_alive() {
    let m = Mount::builder().arg("--txn-timeout").arg("1").start();
    m.ok("echo 1 > k && mkdir .txn/idle && env echo 2 > .txn/idle/k");
    let out = m.ok("i=0
         while [ $i -lt 40 ]; do
           s=$(cat .txn/idle/.ctl)
           case \"$s\" in aborted*) echo \"$s\"; exit 0;; esac
           sleep 0.2; i=$((i+1))
         done
         echo \"still $s\"");
    assert!(
        out.starts_with("aborted: ") && out.contains("idle"),
        "a transaction whose .ctl is read every 200 ms but idle otherwise: {out:?}"
    );
    m.ok("env echo 3 > k && rmdir .txn/idle");
}

#[test]
fn appends_offset_writes_truncates_and_touch_are_staged_too() {
    let m = Mount::new();
    m.ok("printf abc > k && printf 0123456789 > t && echo m > old");
    m.ok("touch -d '2001-01-01 00:00:00' old");
    let mtime = m.ok("stat -c %y old");
    m.ok("mkdir .txn/t1");
    m.ok("env echo y >> .txn/t1/k");
    m.ok("printf XY | dd of=.txn/t1/k bs=1 seek=1 conv=notrunc 2>/dev/null");
    m.ok("truncate -s 4 .txn/t1/t");
    m.ok("touch -d '2002-02-02 02:02:02' .txn/t1/old");
    assert_eq!(m.ok_bytes("cat .txn/t1/k .txn/t1/t"), b"aXYy\n0123");
    assert!(
        m.ok("stat -c %y .txn/t1/old")
            .starts_with("2002-02-02 02:02:02"),
        "touch in the transaction: {}",
        m.ok("stat -c %y .txn/t1/old")
    );
    // Nothing of it at the root yet.
    assert_eq!(m.ok_bytes("cat k t"), b"abc0123456789");
    assert_eq!(m.ok("stat -c %y old"), mtime);
    m.ok("env echo commit > .txn/t1/.ctl");
    assert_eq!(m.ok_bytes("cat k t"), b"aXYy\n0123");
    assert!(
        m.ok("stat -c %y old").starts_with("2002-02-02 02:02:02"),
        "touch in the transaction did not commit its mtime: {}",
        m.ok("stat -c %y old")
    );
    m.ok("rmdir .txn/t1");
}

#[test]
fn data_not_yet_closed_at_commit_is_not_committed_and_its_close_gives_ecanceled() {
    let m = Mount::new();
    m.ok("echo old > k && mkdir .txn/t1");
    // perl holds the file open, written but not closed, while another process commits, then
    // reports the error of its close. (Not system() from perl: the exec would close, and so
    // flush, the inherited descriptor.)
    let out = m.ok(r#"perl -e '
             open(my $f, ">", ".txn/t1/k") or die "open: $!\n";
             syswrite($f, "unflushed\n") == 10 or die "write: $!\n";
             open(my $o, ">", "$ENV{T}/opened") or die; close($o);
             for (1..400) { last if -e "$ENV{T}/go"; select(undef, undef, undef, 0.05) }
             if (close($f)) { print "close ok\n" } else { print "close: $!\n" }' &
           for i in $(seq 1 400); do [ -e $T/opened ] && break; sleep 0.05; done
           env echo commit > .txn/t1/.ctl || echo 'commit failed'
           touch $T/go
           wait"#);
    assert_eq!(out, format!("close: {}\n", msg::ECANCELED));
    m.assert_committed("t1");
    // What was committed is what was staged at open: O_TRUNC staged an empty value.
    assert_eq!(m.ok("cat k"), "");
    m.ok("rmdir .txn/t1");
}
