//! A full disk under the log: DATA_DIR on a 2 MiB tmpfs. A commit that cannot be logged fails
//! with ENOSPC (after the daemon gives up on the stalled log, about 2 s), reads go on, and once
//! space is freed the database takes writes again and a restart has every acknowledged one.

use std::time::{Duration, Instant};

use bpfdb_tests::{Mount, msg};

const VALUES: usize = 100;
const VALUE_BYTES: usize = 32 << 10;

/// `cmp` of the keys that were acknowledged, and the state of the one that failed: absent,
/// empty (its `open(O_CREAT)` committed) or the whole attempted value.
#[track_caller]
fn check(m: &Mount, stored: usize, when: &str) {
    m.ok(&format!(
        "for i in $(seq 1 {stored}); do cmp k$i $T/v$i || exit 1; done"
    ));
    let failed = stored + 1;
    let out = m.ok(&format!(
        "if [ ! -e k{failed} ]; then echo absent
         elif [ ! -s k{failed} ]; then echo empty
         elif cmp -s k{failed} $T/v{failed}; then echo whole
         else echo other; fi"
    ));
    assert_ne!(
        out, "other\n",
        "{when}: the key whose commit failed holds neither its old nor its new value"
    );
    let txn = m.ok(&format!(
        "if [ ! -e txn-big ]; then echo absent
         elif cmp -s txn-big $T/v{}; then echo whole
         else echo other; fi",
        VALUES - 1
    ));
    assert_ne!(
        txn, "other\n",
        "{when}: the transaction whose commit failed left txn-big half there"
    );
    assert_eq!(m.ok("cat new-small"), "small\n", "{when}");
    m.ok(&format!("cmp new-big $T/v{VALUES}"));
}

/// Fills the log's disk (2 MiB tmpfs, 1.25 MiB of it a filler file) with values of
/// [`VALUE_BYTES`] until a write fails with ENOSPC; returns how many were stored.
#[track_caller]
fn fill(m: &Mount) -> usize {
    m.ok("head -c 1310720 /dev/zero > $D/../filler");
    m.ok(&format!(
        "for i in $(seq 1 {VALUES}); do head -c {VALUE_BYTES} /dev/urandom > $T/v$i; done"
    ));
    let out = m.sh(&format!(
        "i=1
         while [ $i -le {VALUES} ]; do
           cp $T/v$i k$i || {{ echo $((i-1)); exit 0; }}
           i=$((i+1))
         done
         echo never"
    ));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stored: usize = stdout.parse().unwrap_or_else(|_| {
        panic!(
            "no write failed on a full disk ({stdout}); stderr: {stderr}\n{}",
            m.log_tail()
        )
    });
    assert!(
        stderr.contains(msg::ENOSPC),
        "the failing write did not report ENOSPC: {stderr}\n{}",
        m.log_tail()
    );
    // 0.75 MiB of log holds some 32 KiB values, far from all.
    assert!(
        (5..VALUES - 1).contains(&stored),
        "{stored} values of {VALUE_BYTES} bytes stored before ENOSPC"
    );
    stored
}

#[test]
fn a_shutdown_checkpoint_that_does_not_fit_exits_1_and_loses_nothing() {
    let mut m = Mount::builder().tmpfs_data_dir("2m").start();
    let disk = m.tmpfs_dir().expect("tmpfs").to_owned();
    let stored = fill(&m);
    // No room for the checkpoint: the daemon says why and exits 1.
    m.umount_expect_exit(1);
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.to_lowercase().contains("checkpoint") && l.contains(msg::ENOSPC)),
        "the daemon log does not say that the shutdown checkpoint failed for lack of space:\n{log}"
    );
    // The log still holds every acknowledged commit.
    std::fs::remove_file(disk.join("filler")).expect("rm filler");
    m.start_again();
    m.ok(&format!(
        "for i in $(seq 1 {stored}); do cmp k$i $T/v$i || exit 1; done"
    ));
}

#[test]
fn a_full_log_disk_gives_enospc_and_the_database_recovers_when_space_is_freed() {
    let mut m = Mount::builder().tmpfs_data_dir("2m").start();
    let disk = m.tmpfs_dir().expect("tmpfs").to_owned();
    let started = Instant::now();
    let stored = fill(&m);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "filling the disk took {took:?}: the failing commit hung"
    );
    // Reads go on while the log cannot be written.
    m.ok(&format!(
        "for i in $(seq 1 {stored}); do cmp k$i $T/v$i || exit 1; done"
    ));
    // A transaction's commit fails the same way, through the write to its .ctl.
    m.ok(&format!(
        "mkdir .txn/full && cp $T/v{} .txn/full/txn-big",
        VALUES - 1
    ));
    m.fails("env echo commit > .txn/full/.ctl", msg::ENOSPC);
    m.ok("rmdir .txn/full");
    // A checkpoint cannot be written either: `echo checkpoint > .ctl` fails, and in bounded
    // time. (Which errno is not specified; this daemon gives EIO.)
    let out = m.sh("timeout 20 env echo checkpoint > .ctl");
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "a checkpoint on a full disk: {out:?}\n{}",
        m.log_tail()
    );

    // Free the space: the database takes writes again.
    std::fs::remove_file(disk.join("filler")).expect("rm filler");
    m.ok("env echo small > new-small");
    m.ok("env echo checkpoint > .ctl");
    m.ok(&format!("cp $T/v{VALUES} new-big"));
    check(&m, stored, "after freeing space");

    // Everything acknowledged survives a crash and a clean restart.
    m.kill9();
    m.start_again();
    check(&m, stored, "after kill -9 and restart");
    m.restart();
    check(&m, stored, "after a clean restart");
}

#[test]
fn a_shell_redirection_into_a_failing_log_fails_at_open_and_leaves_no_trace() {
    let m = Mount::builder().tmpfs_data_dir("2m").start();
    let disk = m.tmpfs_dir().expect("tmpfs").to_owned();
    let stored = fill(&m);
    // The shell never checks close(2), so the open (or the write) must fail: at once, with
    // the log's errno, for a new key, a rewrite and an append alike.
    for script in ["echo 9 > k1", "echo 9 >> k1", "echo 9 > brand-new"] {
        let started = Instant::now();
        let out = m
            .command(&format!("bash -c '{script}'"))
            .output()
            .expect("bash");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(msg::ENOSPC),
            "`{script}` with the log's disk full: {out:?}\n{}",
            m.log_tail()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "`{script}` took {:?} to fail: it waited for the log instead of failing at open",
            started.elapsed()
        );
        let out = m.sh(script);
        assert!(
            !out.status.success(),
            "sh -c '{script}' exited 0 with the log failing"
        );
    }
    // No ghost key, the old values kept.
    m.fails("ls brand-new", msg::ENOENT);
    m.ok(&format!(
        "for i in $(seq 1 {stored}); do cmp k$i $T/v$i || exit 1; done"
    ));
    // Once space is freed, the next redirection works at once.
    std::fs::remove_file(disk.join("filler")).expect("rm filler");
    m.ok("echo 9 > brand-new && echo 10 >> brand-new");
    assert_eq!(m.ok("cat brand-new"), "9\n10\n");
}
