//! Isolation anomalies that strict two-phase locking (no-wait) and snapshots must prevent, each
//! as a concrete interleaving of two or more transactions driven one step at a time from the
//! test: every step is one shell command, so the order is exactly the one written here.
//!
//! Writes whose exit status matters go through coreutils `echo` (`env echo`): dash's builtin
//! `echo` never reports an error of the `close` that commits a value.

use bpfdb_tests::{Mount, msg};

#[test]
fn dirty_read_is_prevented() {
    let m = Mount::new();
    m.ok("echo 100 > alice");
    m.ok("mkdir .txn/t1 .txn/t2");
    // t1 writes alice but has not committed.
    m.ok("env echo 50 > .txn/t1/alice");
    // t2 cannot read the uncommitted value: its read hits t1's lock.
    m.fails("cat .txn/t2/alice", msg::EBUSY);
    m.assert_aborted("t2");
    // The root reads the last committed value, without blocking.
    assert_eq!(m.ok("cat alice"), "100\n");
    // t1 aborts: the value nobody saw never existed.
    m.ok("env echo abort > .txn/t1/.ctl");
    assert_eq!(m.ok("cat alice"), "100\n");
    // A fresh transaction reads the committed value.
    m.ok("mkdir .txn/t3");
    assert_eq!(m.ok("cat .txn/t3/alice"), "100\n");
    m.ok("rmdir .txn/t1 .txn/t2 .txn/t3");
}

#[test]
fn lost_update_is_prevented() {
    let m = Mount::new();
    m.ok("echo 10 > counter");
    m.ok("mkdir .txn/t1 .txn/t2");
    // Both read the counter (shared locks).
    assert_eq!(m.ok("cat .txn/t1/counter"), "10\n");
    assert_eq!(m.ok("cat .txn/t2/counter"), "10\n");
    // The first to write conflicts with the other's read lock and is aborted.
    m.fails("env echo 11 > .txn/t1/counter", msg::EBUSY);
    m.assert_aborted("t1");
    // That released t1's read lock: t2's increment goes through.
    m.ok("env echo 11 > .txn/t2/counter");
    m.ok("env echo commit > .txn/t2/.ctl");
    m.assert_committed("t2");
    assert_eq!(m.ok("cat counter"), "11\n");
    // t1 cannot commit its stale increment ...
    m.fails("env echo commit > .txn/t1/.ctl", msg::ECANCELED);
    assert_eq!(m.ok("cat counter"), "11\n");
    // ... and its retry reads the new value: no increment is lost.
    m.ok("rmdir .txn/t1 && mkdir .txn/t1");
    assert_eq!(m.ok("cat .txn/t1/counter"), "11\n");
    m.ok("env echo 12 > .txn/t1/counter && env echo commit > .txn/t1/.ctl");
    assert_eq!(m.ok("cat counter"), "12\n");
    m.ok("rmdir .txn/t1 .txn/t2");
}

#[test]
fn write_skew_is_prevented() {
    // Two doctors on call; the rule is that at least one stays on call. Each transaction checks
    // that the other is on call and takes itself off.
    let m = Mount::new();
    m.ok("echo on > alice && echo on > bob");
    m.ok("mkdir .txn/t1 .txn/t2");
    assert_eq!(m.ok("cat .txn/t1/alice .txn/t1/bob"), "on\non\n");
    assert_eq!(m.ok("cat .txn/t2/alice .txn/t2/bob"), "on\non\n");
    // t1 takes alice off: t2 read alice, so this conflicts.
    m.fails("env echo off > .txn/t1/alice", msg::EBUSY);
    m.assert_aborted("t1");
    // t2 takes bob off; t1's locks are gone, so it works and commits.
    m.ok("env echo off > .txn/t2/bob && env echo commit > .txn/t2/.ctl");
    m.fails("env echo commit > .txn/t1/.ctl", msg::ECANCELED);
    assert_eq!(m.ok("cat alice bob"), "on\noff\n");
    // t1's retry sees bob off and must leave alice on.
    m.ok("rmdir .txn/t1 && mkdir .txn/t1");
    assert_eq!(m.ok("cat .txn/t1/bob"), "off\n");
    m.ok("env echo commit > .txn/t1/.ctl");
    assert_eq!(m.ok("cat alice bob"), "on\noff\n");
    m.ok("rmdir .txn/t1 .txn/t2");
}

#[test]
fn write_skew_with_the_second_writer_first_is_prevented_too() {
    let m = Mount::new();
    m.ok("echo on > alice && echo on > bob");
    m.ok("mkdir .txn/t1 .txn/t2");
    assert_eq!(m.ok("cat .txn/t1/alice .txn/t1/bob"), "on\non\n");
    assert_eq!(m.ok("cat .txn/t2/alice .txn/t2/bob"), "on\non\n");
    // This time t2 writes first and is the one aborted; t1 then finishes.
    m.fails("env echo off > .txn/t2/bob", msg::EBUSY);
    m.assert_aborted("t2");
    m.ok("env echo off > .txn/t1/alice && env echo commit > .txn/t1/.ctl");
    assert_eq!(m.ok("cat alice bob"), "off\non\n");
    m.ok("rmdir .txn/t1 .txn/t2");
}

#[test]
fn read_skew_is_prevented_by_a_snapshot() {
    let m = Mount::new();
    m.ok("echo 50 > x && echo 50 > y");
    m.ok("mkdir .snap/s1");
    assert_eq!(m.ok("cat .snap/s1/x"), "50\n");
    // A transfer of 30 from x to y commits between the snapshot's two reads.
    m.ok("mkdir .txn/t1");
    assert_eq!(m.ok("cat .txn/t1/x .txn/t1/y"), "50\n50\n");
    m.ok("env echo 20 > .txn/t1/x && env echo 80 > .txn/t1/y && env echo commit > .txn/t1/.ctl");
    // The snapshot still sees the pair of one moment: the sum stays 100.
    assert_eq!(m.ok("cat .snap/s1/y"), "50\n");
    assert_eq!(m.ok("cat .snap/s1/x .snap/s1/y"), "50\n50\n");
    // The root and a new snapshot see the transfer whole.
    assert_eq!(m.ok("cat x y"), "20\n80\n");
    m.ok("mkdir .snap/s2");
    assert_eq!(m.ok("cat .snap/s2/x .snap/s2/y"), "20\n80\n");
    m.ok("rmdir .snap/s1 .snap/s2 .txn/t1");
}

#[test]
fn read_skew_is_prevented_in_a_read_write_transaction() {
    let m = Mount::new();
    m.ok("echo 50 > x && echo 50 > y");
    m.ok("mkdir .txn/reader .txn/mover");
    assert_eq!(m.ok("cat .txn/reader/x"), "50\n");
    // The transfer cannot take x while the reader holds it ...
    assert_eq!(m.ok("cat .txn/mover/y"), "50\n");
    m.fails("env echo 20 > .txn/mover/x", msg::EBUSY);
    m.assert_aborted("mover");
    // ... nor can an autocommit write.
    m.fails("env echo 20 > x", msg::EBUSY);
    // So the reader's second read matches its first.
    assert_eq!(m.ok("cat .txn/reader/y"), "50\n");
    m.ok("env echo commit > .txn/reader/.ctl");
    m.ok("rmdir .txn/reader .txn/mover");
}

#[test]
fn phantom_a_key_read_as_missing_cannot_be_created_until_the_reader_ends() {
    let m = Mount::new();
    m.ok("mkdir .txn/t1");
    m.fails("cat .txn/t1/ghost", msg::ENOENT);
    // Autocommit creation of the key t1 saw missing: EBUSY, and nothing is created.
    m.fails("env echo boo > ghost", msg::EBUSY);
    m.fails("touch ghost", msg::EBUSY);
    m.ok("echo other > other");
    m.fails("mv other ghost", msg::EBUSY);
    assert_eq!(m.ok("ls"), "other\n");
    // Nor can another transaction create it.
    m.ok("mkdir .txn/t2");
    m.fails("env echo boo > .txn/t2/ghost", msg::EBUSY);
    m.assert_aborted("t2");
    // t1 still sees it missing.
    m.fails("cat .txn/t1/ghost", msg::ENOENT);
    m.ok("env echo commit > .txn/t1/.ctl");
    // Once t1 ended the key can be created.
    m.ok("env echo boo > ghost");
    assert_eq!(m.ok("ls && cat ghost"), "ghost\nother\nboo\n");
    m.ok("rmdir .txn/t1 .txn/t2");
}

#[test]
fn three_readers_share_a_lock_that_no_writer_can_take() {
    let m = Mount::new();
    m.ok("echo 1 > k");
    m.ok("mkdir .txn/r1 .txn/r2 .txn/r3 .txn/w");
    for r in ["r1", "r2", "r3"] {
        assert_eq!(m.ok(&format!("cat .txn/{r}/k")), "1\n");
    }
    m.fails("env echo 2 > k", msg::EBUSY);
    m.fails("env echo 2 > .txn/w/k", msg::EBUSY);
    m.assert_aborted("w");
    // The lock lasts until the last reader ends, whichever way.
    m.ok("env echo commit > .txn/r1/.ctl");
    m.fails("env echo 2 > k", msg::EBUSY);
    m.ok("env echo abort > .txn/r2/.ctl");
    m.fails("env echo 2 > k", msg::EBUSY);
    m.ok("rmdir .txn/r3");
    m.ok("env echo 2 > k");
    assert_eq!(m.ok("cat k"), "2\n");
    m.ok("rmdir .txn/r1 .txn/r2 .txn/w");
}

#[test]
fn an_aborted_transaction_releases_its_locks_for_the_others() {
    // t1 holds x; t2 holds y and then asks for x: t2 is aborted, so t3 can take y.
    let m = Mount::new();
    m.ok("echo x0 > x && echo y0 > y");
    m.ok("mkdir .txn/t1 .txn/t2 .txn/t3");
    m.ok("env echo x1 > .txn/t1/x");
    assert_eq!(m.ok("cat .txn/t2/y"), "y0\n");
    m.fails("cat .txn/t2/x", msg::EBUSY);
    m.assert_aborted("t2");
    m.ok("env echo y3 > .txn/t3/y");
    m.ok("env echo commit > .txn/t3/.ctl");
    m.ok("env echo commit > .txn/t1/.ctl");
    assert_eq!(m.ok("cat x y"), "x1\ny3\n");
    m.ok("rmdir .txn/t1 .txn/t2 .txn/t3");
}

#[test]
fn disjoint_transactions_all_commit_and_each_becomes_visible_whole() {
    let m = Mount::new();
    let names = ["t1", "t2", "t3", "t4"];
    for t in names {
        m.ok(&format!("mkdir .txn/{t}"));
    }
    for t in names {
        m.ok(&format!(
            "env echo {t} > .txn/{t}/{t}-a && env echo {t} > .txn/{t}/{t}-b"
        ));
    }
    assert_eq!(m.ok("ls"), "");
    for (i, t) in names.iter().enumerate() {
        m.ok(&format!("env echo commit > .txn/{t}/.ctl"));
        // Exactly the committed ones are visible, each with both keys.
        let want: String = names[..=i]
            .iter()
            .flat_map(|t| [format!("{t}-a\n"), format!("{t}-b\n")])
            .collect();
        assert_eq!(m.ok("ls"), want);
    }
    for t in names {
        m.assert_committed(t);
        m.ok(&format!("rmdir .txn/{t}"));
    }
}
