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
        ctime_ns: mtime_ns,
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

// ---- a random workload under random faults, against a model ----

/// Rounds of the workload (each ends with a restart) and ops in each.
const ROUNDS: usize = 4;
const OPS_PER_ROUND: usize = 150;
const KEYS: u64 = 12;

/// splitmix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// What a key holds: its value and the mtime that names the write.
type Entry = Option<(Vec<u8>, u64)>;
type Model = std::collections::BTreeMap<String, (Vec<u8>, u64)>;

/// One commit the engine made visible, with the keys it changed.
struct Visible {
    acked: bool,
    changes: Vec<(String, Entry)>,
}

fn apply(model: &mut Model, changes: &[(String, Entry)]) {
    for (k, e) in changes {
        match e {
            Some(v) => model.insert(k.clone(), v.clone()),
            None => model.remove(k),
        };
    }
}

fn read(db: &Db, key: &str) -> Entry {
    let mut out = Vec::new();
    match db.session().get(key.as_bytes(), &mut out) {
        Ok(st) => Some((out, st.meta.mtime_ns)),
        Err(e) if e.errno == libc::ENOENT => None,
        Err(e) => panic!("get {key}: {e}"),
    }
}

fn dump(db: &Db) -> Model {
    let mut names = Vec::new();
    db.session()
        .scan(|n| names.push(String::from_utf8_lossy(n).into_owned()))
        .unwrap();
    names
        .into_iter()
        .filter_map(|n| read(db, &n).map(|e| (n, e)))
        .collect()
}

fn random_value(rng: &mut Rng) -> Vec<u8> {
    // Every shape of a value: empty, one small fragment, one page, several.
    let len = match rng.below(4) {
        0 => 0,
        1 => 1 + rng.below(128),
        2 => 129 + rng.below(4096 - 128),
        _ => 4097 + rng.below(16_000),
    } as usize;
    let salt = rng.next() as u8;
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt)
        .collect()
}

/// Arms a random fault (or clears them all). `lossy`: whether a failed
/// fsync may lose data, which only sync `commit` promises to survive.
fn toggle_fault(rng: &mut Rng, faults: &LogFaults, lossy: bool) -> &'static str {
    let errno = if rng.one_in(2) {
        libc::ENOSPC
    } else {
        libc::EIO
    };
    match rng.below(16) {
        0..=3 => {
            faults.clear();
            "clear"
        }
        4 | 5 => {
            faults.fail_writes(1 + rng.below(3) as u32, errno);
            "fail writes"
        }
        6 => {
            faults.short_writes(1);
            "short write"
        }
        7 => {
            faults.short_writes(1);
            faults.fail_writes(1 + rng.below(2) as u32, errno);
            faults.fail_set_len(rng.below(3) as u32);
            "short write, then failing writes and cuts"
        }
        8 | 9 => {
            faults.fail_syncs(1 + rng.below(3) as u32, libc::EIO);
            "fail fsyncs"
        }
        10 if lossy => {
            faults.fail_syncs_losing_data(1 + rng.below(2) as u32);
            "fail fsyncs, losing data"
        }
        11 => {
            faults.fail_consumes(1 + rng.below(2) as u32);
            "fail ringbuf reads"
        }
        12 => {
            faults.fail_opens(1);
            "fail a segment open"
        }
        13 => {
            faults.fail_set_len(1 + rng.below(2) as u32);
            faults.fail_writes(1, errno);
            "a failing write whose cut fails"
        }
        14 => {
            faults.fail_writes(FOREVER, libc::ENOSPC);
            faults.fail_set_len(rng.below(2) as u32 * FOREVER);
            "disk full until cleared"
        }
        _ => {
            faults.fail_syncs(FOREVER, libc::EIO);
            "fsync failing until cleared"
        }
    }
}

/// Runs one random operation; returns the commit it made visible, if any.
fn random_op(
    rng: &mut Rng,
    db: &Db,
    mem: &Model,
    op_no: u64,
    outcome: &mut [u64; 2],
) -> Option<Visible> {
    let key = |rng: &mut Rng| format!("k{}", rng.below(KEYS));
    let mut changes: Vec<(String, Entry)> = Vec::new();
    // mtime names the op, so that every write changes what a key holds.
    let meta = meta(op_no);
    let result = match rng.below(20) {
        0 => {
            let r = db.checkpoint();
            outcome[r.is_err() as usize] += 1;
            return None;
        }
        1..=9 => {
            let (k, v) = (key(rng), random_value(rng));
            changes.push((k.clone(), Some((v.clone(), op_no))));
            db.session()
                .set(k.as_bytes(), &v, meta, SetFlags::default())
                .map(drop)
        }
        10..=13 => {
            let k = key(rng);
            if !mem.contains_key(&k) {
                return None; // ENOENT changes nothing
            }
            changes.push((k.clone(), None));
            db.session().delete(k.as_bytes()).map(drop)
        }
        _ => {
            let t = db.begin(false).unwrap();
            let mut view = mem.clone();
            for _ in 0..2 + rng.below(3) {
                let k = key(rng);
                let staged = if view.contains_key(&k) && rng.one_in(3) {
                    view.remove(&k);
                    changes.push((k.clone(), None));
                    t.delete(k.as_bytes()).map(drop)
                } else {
                    let v = random_value(rng);
                    view.insert(k.clone(), (v.clone(), op_no));
                    changes.push((k.clone(), Some((v.clone(), op_no))));
                    t.set(k.as_bytes(), &v, meta, SetFlags::default()).map(drop)
                };
                staged.unwrap_or_else(|e| panic!("staging in a transaction: {e}"));
            }
            t.commit().map(drop)
        }
    };
    outcome[result.is_err() as usize] += 1;
    if result.is_ok() {
        return Some(Visible {
            acked: true,
            changes,
        });
    }
    // Not acknowledged: the commit may or may not have become visible in
    // the engine, but never in part.
    let mut after = mem.clone();
    apply(&mut after, &changes);
    let keys: std::collections::BTreeSet<&String> = changes.iter().map(|c| &c.0).collect();
    let now: Vec<Entry> = keys.iter().map(|k| read(db, k)).collect();
    let in_model = |m: &Model| -> Vec<Entry> { keys.iter().map(|k| m.get(*k).cloned()).collect() };
    if now == in_model(&after) {
        Some(Visible {
            acked: false,
            changes,
        })
    } else if now == in_model(mem) {
        None
    } else {
        panic!("op {op_no} ({result:?}) left part of its commit visible");
    }
}

#[test]
fn a_random_workload_under_faults_loses_no_acknowledged_commit() {
    let seed = std::env::var("BPFDB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (replay with BPFDB_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut durable = Model::new();
    let mut op_no = 1u64;
    for round in 0..ROUNDS {
        let sync = match rng.below(3) {
            0 => SyncMode::Interval(2),
            1 => SyncMode::None,
            _ => SyncMode::Commit,
        };
        let faults = LogFaults::new();
        let db = Db::open(&Options {
            sync,
            ..opts(dir.path(), &faults)
        })
        .unwrap_or_else(|e| panic!("seed {seed} round {round}: open: {e}"));
        assert!(
            dump(&db) == durable,
            "seed {seed} round {round}: reopened state"
        );
        let mut mem = durable.clone();
        let mut history: Vec<Visible> = Vec::new();
        let mut outcome = [0u64; 2];
        // Ops left before a fault armed FOREVER is cleared: each op it
        // fails costs a stall timeout.
        let mut persistent_left = 0;
        for _ in 0..OPS_PER_ROUND {
            if persistent_left > 0 {
                persistent_left -= 1;
                if persistent_left == 0 {
                    faults.clear();
                    eprintln!("round {round} op {op_no}: clear");
                }
            } else if rng.one_in(6) {
                let f = toggle_fault(&mut rng, &faults, sync == SyncMode::Commit);
                if f.ends_with("until cleared") {
                    persistent_left = 1 + rng.below(4);
                }
                eprintln!("round {round} op {op_no}: {f}");
            }
            if let Some(v) = random_op(&mut rng, &db, &mem, op_no, &mut outcome) {
                apply(&mut mem, &v.changes);
                history.push(v);
            }
            op_no += 1;
        }
        assert!(
            dump(&db) == mem,
            "seed {seed} round {round}: engine and model"
        );
        let cleared = rng.one_in(2);
        if cleared {
            faults.clear();
        }
        eprintln!(
            "round {round} ({sync:?}): {} ok, {} failed, {} visible unacknowledged, {} faults \
             injected, faults {} at shutdown",
            outcome[0],
            outcome[1],
            history.iter().filter(|v| !v.acked).count(),
            faults.injected(),
            if cleared { "cleared" } else { "kept" }
        );
        drop(db);
        // Recovery must start, and hold a prefix of the visible commits
        // that includes every acknowledged one (a commit is one record:
        // never half a transaction).
        let db = Db::open(&plain(dir.path()))
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery refused: {e}"));
        let recovered = dump(&db);
        drop(db);
        let must = history.iter().rposition(|v| v.acked).map_or(0, |i| i + 1);
        let mut state = durable.clone();
        let mut matched = None;
        for c in 0..=history.len() {
            if c >= must && state == recovered {
                matched = Some(c);
            }
            if let Some(v) = history.get(c) {
                apply(&mut state, &v.changes);
            }
        }
        let Some(c) = matched else {
            panic!(
                "seed {seed} round {round}: the recovered state is no prefix of the commits \
                 that includes the {must} up to the last acknowledged one"
            );
        };
        if cleared {
            // A log that can be written again writes everything before the
            // shutdown ends.
            assert_eq!(
                c,
                history.len(),
                "seed {seed} round {round}: commits left unwritten"
            );
        }
        durable = recovered;
    }
}

#[test]
fn a_deferred_ack_behind_an_fsync_that_never_returns_gets_etimedout() {
    // The background thread runs the step for a deferred commit and sticks
    // in the fsync; the callback must still come, within the wait limit,
    // from the thread that expires callbacks.
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let db = Db::open(&opts(dir.path(), &faults)).unwrap();
    faults.hold_syncs();
    let (r, ts) = db.defer_durability(|| set(&db, "deferred", b"1"));
    r.unwrap();
    let ts = ts.expect("the commit's wait was left to the caller");
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    db.when_durable(ts, move |r| tx.send(r).unwrap());
    assert!(
        faults.wait_sync_held(HUNG),
        "no fsync reached the disk within {HUNG:?}"
    );
    let r = rx.recv_timeout(HUNG).expect("the callback never ran");
    let waited = t.elapsed();
    faults.release_syncs();
    let err = r.expect_err("a commit behind a stuck fsync was acknowledged");
    assert_eq!(err.errno, libc::ETIMEDOUT, "{err}");
    assert!(
        waited >= WAIT_LIMIT && waited < WAIT_LIMIT + Duration::from_secs(2),
        "gave up after {waited:?}, the bound is {WAIT_LIMIT:?}"
    );
    set(&db, "after", b"2").unwrap();
}

#[test]
fn a_panic_inside_defer_durability_leaves_the_thread_waiting_again() {
    // A thread left in a deferring scope would acknowledge commits nobody
    // waits for. After a panic inside the scope, a commit on the same
    // thread must wait again: behind an fsync that never returns, it gets
    // ETIMEDOUT instead of Ok.
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    let db = Db::open(&opts(dir.path(), &faults)).unwrap();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.defer_durability(|| panic!("inside the scope"))
    }));
    assert!(unwound.is_err());
    faults.hold_syncs();
    // Another committer takes the writer and sticks in the fsync.
    let d = db.clone();
    let first = std::thread::spawn(move || set(&d, "first", b"1"));
    assert!(
        faults.wait_sync_held(HUNG),
        "no fsync reached the disk within {HUNG:?}"
    );
    let r = set(&db, "after-panic", b"2");
    faults.release_syncs();
    let _ = first.join().unwrap();
    let err = r.expect_err("acknowledged without its fsync");
    assert_eq!(err.errno, libc::ETIMEDOUT, "{err}");
}
