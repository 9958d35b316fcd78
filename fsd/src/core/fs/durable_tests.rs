//! `Fs::durably` on a real engine and log, with fsyncs held back on
//! purpose (`LogFaults::hold_syncs`): what waits for the disk, and what
//! does not.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bpfdb::{LogFaults, Options, SyncMode};

use super::tests::{CREATE, WHO, cat, fs_on, put, small_options};
use super::*;

/// Short bounds, so a wait that should not happen fails the test quickly.
const STALL: Duration = Duration::from_millis(500);
const WAIT_LIMIT: Duration = Duration::from_secs(5);
/// Longest a test waits for an fsync to be reached or a reply to come.
const HUNG: Duration = Duration::from_secs(20);

fn logged_fs(dir: &std::path::Path, faults: &std::sync::Arc<LogFaults>) -> Fs {
    faults.set_time_bounds(STALL, WAIT_LIMIT);
    let opts = Options {
        data_dir: Some(dir.to_path_buf()),
        sync: SyncMode::Commit,
        log_faults: Some(faults.clone()),
        ..small_options(1 << 20)
    };
    fs_on(&opts, DEFAULT_TXN_TIMEOUT)
}

/// Where a reply lands, for the test to look at.
fn replies<T: Send + 'static>() -> (
    impl FnOnce(Result<T>) + Send + 'static,
    mpsc::Receiver<Result<T>>,
) {
    let (tx, rx) = mpsc::channel();
    (move |r| tx.send(r).unwrap(), rx)
}

#[test]
fn a_close_waiting_for_its_fsync_holds_no_thread() {
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let fs = logged_fs(dir.path(), &faults);
    put(&fs, "other", b"old");
    let (_, o) = fs
        .create(ROOT_INO, b"k", 0o644, 0o022, CREATE, WHO)
        .unwrap();
    fs.write(o.fh, 0, b"new").unwrap();
    faults.hold_syncs();
    let (reply, rx) = replies();
    let t = Instant::now();
    fs.durably(|fs| fs.flush(o.fh), reply);
    assert!(
        t.elapsed() < STALL,
        "the flush held its thread for {:?}",
        t.elapsed()
    );
    assert!(
        faults.wait_sync_held(HUNG),
        "no fsync reached the disk within {HUNG:?}"
    );
    // The commit is in the engine; its reply waits for the fsync, while
    // this same thread goes on serving others.
    assert_eq!(cat(&fs, "other").unwrap(), b"old");
    assert_eq!(cat(&fs, "k").unwrap(), b"new");
    assert!(rx.try_recv().is_err(), "acknowledged before its fsync");
    faults.release_syncs();
    rx.recv_timeout(HUNG).expect("the reply was lost").unwrap();
    fs.release(o.fh);
}

#[test]
fn a_create_waits_for_no_fsync_and_its_close_waits_for_the_create() {
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let fs = logged_fs(dir.path(), &faults);
    put(&fs, "warm", b"up");
    faults.hold_syncs();
    // `touch new`: the create answers at once, without an fsync...
    let (reply, created) = replies();
    fs.durably(
        |fs| fs.create(ROOT_INO, b"new", 0o644, 0o022, CREATE, WHO),
        reply,
    );
    let (_, o) = created
        .try_recv()
        .expect("the create waited for the disk")
        .unwrap();
    // ...and its close is acknowledged only once the create is durable.
    let (reply, closed) = replies();
    fs.durably(|fs| fs.flush(o.fh), reply);
    assert!(
        faults.wait_sync_held(HUNG),
        "no fsync reached the disk within {HUNG:?}"
    );
    assert!(
        closed.try_recv().is_err(),
        "close acknowledged an empty create before its fsync"
    );
    faults.release_syncs();
    closed
        .recv_timeout(HUNG)
        .expect("the reply was lost")
        .unwrap();
    fs.release(o.fh);
    // `echo v > newN`: one fsync covers the create and the value. (The
    // background thread's periodic step may sync a create on its own once
    // in a while: one spare.)
    const ECHOES: u64 = 5;
    let before = fs.db.log_counters();
    for i in 0..ECHOES {
        let name = format!("new{i}");
        let (reply, created) = replies();
        fs.durably(
            |fs| fs.create(ROOT_INO, name.as_bytes(), 0o644, 0o022, CREATE, WHO),
            reply,
        );
        let (_, o) = created.try_recv().expect("the create waited").unwrap();
        fs.write(o.fh, 0, b"v").unwrap();
        let (reply, closed) = replies();
        fs.durably(|fs| fs.flush(o.fh), reply);
        closed.recv_timeout(HUNG).expect("lost").unwrap();
        fs.release(o.fh);
    }
    let after = fs.db.log_counters();
    let fsyncs = after.fsyncs - before.fsyncs;
    assert_eq!(after.commits_logged - before.commits_logged, 2 * ECHOES);
    assert!(
        fsyncs <= ECHOES + 1,
        "{fsyncs} fsyncs for {ECHOES} echoes into new keys"
    );
}
