//! The log under injected faults (`Options::log_faults`): full disks, failing
//! and short writes, failing truncations, failing and lossy fsyncs, a
//! ringbuf that cannot be read, an fsync that never returns. Every fault is
//! hit by the real writer, on the real engine; what a test checks is what
//! a user sees: which commits were acknowledged, and what a restart
//! recovers.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bpfdb::{Db, Error, FOREVER, LogFaults, NewMeta, Options, SetFlags, SyncMode};

/// Time bounds the tests give the log, so failures surface quickly.
const STALL: Duration = Duration::from_millis(300);
const WAIT_LIMIT: Duration = Duration::from_secs(3);
/// Longest a test waits for an operation it runs on another thread before
/// calling it hung.
const HUNG: Duration = Duration::from_secs(20);

fn opts(dir: &Path, faults: &Arc<LogFaults>) -> Options {
    faults.set_time_bounds(STALL, WAIT_LIMIT);
    Options {
        max_keys: 1024,
        value_mem_bytes: 16 << 20,
        slots: 8,
        data_dir: Some(dir.to_path_buf()),
        wal_buffer_bytes: 1 << 20,
        sync: SyncMode::Commit,
        log_faults: Some(faults.clone()),
        ..Options::default()
    }
}

/// Options to reopen a data dir with, without faults.
fn plain(dir: &Path) -> Options {
    Options {
        log_faults: None,
        ..opts(dir, &LogFaults::new())
    }
}

fn meta(mtime_ns: u64) -> NewMeta {
    NewMeta {
        mode: 0o100644,
        uid: 1,
        gid: 2,
        mtime_ns,
    }
}

fn set(db: &Db, key: &str, value: &[u8]) -> bpfdb::Result<()> {
    db.session()
        .set(key.as_bytes(), value, meta(1), SetFlags::default())
        .map(drop)
}

fn get(db: &Db, key: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match db.session().get(key.as_bytes(), &mut out) {
        Ok(_) => Some(out),
        Err(e) if e.errno == libc::ENOENT => None,
        Err(e) => panic!("get {key}: {e}"),
    }
}

/// Runs `f` on another thread and returns what it returned, or fails the
/// test if it takes longer than HUNG (a wait that never ends).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HUNG)
        .unwrap_or_else(|_| panic!("{what} did not return within {HUNG:?}"))
}

#[test]
fn a_ringbuf_that_cannot_be_read_fails_commits_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let db = Db::open(&opts(dir.path(), &faults)).unwrap();
    set(&db, "before", b"1").unwrap();
    faults.fail_consumes(FOREVER);
    let t = Instant::now();
    let d = db.clone();
    let r: Result<(), Error> = bounded("a commit while the ringbuf cannot be read", move || {
        set(&d, "during", b"2")
    });
    let err = r.expect_err("a commit the log never read was acknowledged");
    assert!(t.elapsed() < WAIT_LIMIT + STALL, "took {:?}", t.elapsed());
    assert_eq!(err.errno, libc::EIO, "{err}");
    assert!(err.msg.contains("consume"), "{err}");
    // Once the ringbuf can be read again, the log catches up.
    faults.clear();
    set(&db, "after", b"3").unwrap();
    drop(db);
    let db = Db::open(&plain(dir.path())).unwrap();
    assert_eq!(get(&db, "before").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&db, "after").as_deref(), Some(&b"3"[..]));
}

#[test]
fn a_commit_waiting_on_an_fsync_that_never_returns_gets_etimedout() {
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let db = Db::open(&opts(dir.path(), &faults)).unwrap();
    faults.hold_syncs();
    // The first committer (or the background thread) runs the writer and
    // sticks in the fsync; it answers only once the fsync returns.
    let d = db.clone();
    let first = std::thread::spawn(move || set(&d, "first", b"1"));
    assert!(
        faults.wait_sync_held(HUNG),
        "no fsync reached the disk within {HUNG:?}"
    );
    // A second committer finds the writer busy and waits: not forever.
    let t = Instant::now();
    let d = db.clone();
    let r = bounded("a commit behind a stuck fsync", move || {
        set(&d, "second", b"2")
    });
    let waited = t.elapsed();
    faults.release_syncs();
    let err = r.expect_err("a commit behind a stuck fsync was acknowledged");
    assert_eq!(err.errno, libc::ETIMEDOUT, "{err}");
    assert!(err.msg.contains("not durable"), "{err}");
    assert!(
        waited >= WAIT_LIMIT && waited < WAIT_LIMIT + Duration::from_secs(2),
        "gave up after {waited:?}, the bound is {WAIT_LIMIT:?}"
    );
    // The stuck fsync returns; the first commit is acknowledged or not, and
    // the log goes on.
    let _ = first.join().unwrap();
    set(&db, "third", b"3").unwrap();
    drop(db);
    let db = Db::open(&plain(dir.path())).unwrap();
    assert_eq!(get(&db, "third").as_deref(), Some(&b"3"[..]));
}

#[test]
fn a_short_write_whose_cut_fails_leaves_no_hole_in_the_log() {
    // A write that runs out of space part-way leaves part of a record in the
    // file; the writer cuts it off, and here the cut fails too. What it
    // writes next must not land after that fragment.
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let db = Db::open(&opts(dir.path(), &faults)).unwrap();
    set(&db, "a", &[1u8; 3000]).unwrap();
    faults.short_writes(1);
    faults.fail_writes(1, libc::ENOSPC);
    faults.fail_set_len(1);
    let b = set(&db, "b", &[2u8; 3000]);
    assert!(faults.injected() >= 3, "the faults were hit");
    set(&db, "c", &[3u8; 3000]).unwrap();
    drop(db);
    let db = Db::open(&plain(dir.path()))
        .unwrap_or_else(|e| panic!("recovery refused a log a failed write left: {e}"));
    assert_eq!(get(&db, "a"), Some(vec![1u8; 3000]));
    assert_eq!(get(&db, "c"), Some(vec![3u8; 3000]));
    if b.is_ok() {
        assert_eq!(
            get(&db, "b"),
            Some(vec![2u8; 3000]),
            "acknowledged, then lost"
        );
    }
}

#[test]
fn a_failed_fsync_is_not_forgotten_by_the_next_one() {
    // Linux may drop the pages a failed writeback could not write and then
    // report success for the next fsync ("fsyncgate"). The fault here does
    // the same: the bytes since the last good fsync are lost. A commit may
    // only be acknowledged once an fsync that covers its record succeeded
    // after its record was (re)written.
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let db = Db::open(&opts(dir.path(), &faults)).unwrap();
    set(&db, "a", b"1").unwrap();
    faults.fail_syncs_losing_data(1);
    let b = set(&db, "b", b"2");
    assert!(faults.injected() >= 1, "the fault was hit");
    set(&db, "c", b"3").unwrap();
    drop(db);
    let db = Db::open(&plain(dir.path()))
        .unwrap_or_else(|e| panic!("recovery refused the log after a failed fsync: {e}"));
    assert_eq!(get(&db, "a").as_deref(), Some(&b"1"[..]));
    assert_eq!(
        get(&db, "c").as_deref(),
        Some(&b"3"[..]),
        "acknowledged, then lost"
    );
    if b.is_ok() {
        assert_eq!(
            get(&db, "b").as_deref(),
            Some(&b"2"[..]),
            "acknowledged, then lost"
        );
    }
}

#[test]
fn a_segment_header_cut_short_is_written_again() {
    // Rotation (a checkpoint) creates the next segment and writes its
    // header; here that write stops half-way. The next attempt must not
    // take the half header for a whole one.
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let db = Db::open(&opts(dir.path(), &faults)).unwrap();
    set(&db, "a", b"1").unwrap();
    faults.short_writes(1);
    faults.fail_writes(1, libc::ENOSPC);
    let first = db.checkpoint();
    assert!(faults.injected() >= 2, "the faults were hit");
    faults.clear();
    if let Err(e) = first {
        eprintln!("first checkpoint: {e}");
        db.checkpoint().unwrap();
    }
    set(&db, "b", b"2").unwrap();
    drop(db);
    let db = Db::open(&plain(dir.path()))
        .unwrap_or_else(|e| panic!("recovery refused a segment whose header was retried: {e}"));
    assert_eq!(get(&db, "a").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&db, "b").as_deref(), Some(&b"2"[..]));
}
