//! Listings and checkpoints under churn: a key that exists, unchanged, for a
//! whole scan is returned exactly once (POSIX readdir's rule), in the root,
//! in a snapshot and in a read-write transaction, and a checkpoint taken
//! while other keys come and go contains every key committed before it.
//!
//! The untouched keys have long names so that a listing needs many batches,
//! and churn threads create and delete other keys during every scan (each
//! scan checks that churn commits happened while it ran).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bpfdb::{Db, NewMeta, Options, SetFlags};

/// Untouched keys, with ~195-byte names: several scan batches.
const KEYS: usize = 10_000;
/// Longest a scan waits, at its first key, for a churn commit to land.
const OVERLAP_WAIT: Duration = Duration::from_secs(10);
/// Scans per view (root, snapshot, transaction).
const SCANS: usize = 8;
/// Checkpoints under churn (the bug this guards against lost a key in
/// about one checkpoint of 25).
const CHECKPOINTS: usize = 60;
/// Keys each churn thread cycles through.
const CHURN_KEYS: usize = 500;
const CHURN_THREADS: usize = 2;

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    }
}

/// The untouched keys sit below a '/', like the churn: records live in
/// two maps by that (the top-level keys' and the others'), and the churn
/// must move the elements of the map that holds the untouched keys.
fn long_name(i: usize) -> Vec<u8> {
    format!("keep/{i:06}-{}", "x".repeat(183)).into_bytes()
}

fn fill(db: &Db) {
    let mut s = db.session();
    for i in 0..KEYS {
        s.set(&long_name(i), b"v", meta(), SetFlags::default())
            .unwrap_or_else(|e| panic!("set key {i}: {e}"));
    }
}

/// Threads creating `churn<w>/<i % CHURN_KEYS>` and deleting every other
/// one, until dropped; `commits` counts what they did. The names hold a
/// '/': a read-write transaction's scan locks the top-level keys (no '/')
/// against inserts and removals, which would hold this churn off during
/// that scan, and keys below a '/' share the untouched keys' map.
struct Churn {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Churn {
    fn start(db: &Db) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let threads = (0..CHURN_THREADS)
            .map(|w| {
                let (db, stop, commits) = (db.clone(), stop.clone(), commits.clone());
                std::thread::spawn(move || {
                    // Every key is created; every other one is deleted
                    // again, so elements keep entering and leaving the map.
                    for i in 0usize.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let name = format!("churn{w}/{}", i % CHURN_KEYS).into_bytes();
                        let mut s = db.session();
                        s.set(&name, b"c", meta(), SetFlags::default())
                            .unwrap_or_else(|e| panic!("churn {w} set: {e}"));
                        if i % 2 == 1 {
                            s.delete(&name)
                                .unwrap_or_else(|e| panic!("churn {w} delete: {e}"));
                        }
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Churn {
            stop,
            commits,
            threads,
        }
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Checks one listing: every untouched key exactly once.
fn check_listing(what: &str, names: &[Vec<u8>]) {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for n in names {
        *counts.entry(n.as_slice()).or_default() += 1;
    }
    let missing: Vec<usize> = (0..KEYS)
        .filter(|&i| !counts.contains_key(long_name(i).as_slice()))
        .collect();
    let twice: Vec<usize> = (0..KEYS)
        .filter(|&i| counts.get(long_name(i).as_slice()).is_some_and(|&c| c > 1))
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{what}: {} untouched keys missing (first {:?}), {} listed twice (first {:?})",
        missing.len(),
        missing.first(),
        twice.len(),
        twice.first()
    );
}

/// Runs `scan` while churn commits. The scan is made to overlap commits on
/// purpose, not by luck of scheduling: at its first key it waits (at most
/// `OVERLAP_WAIT`) until a churn commit has landed since it began.
fn scan_during_churn(what: &str, churn: &Churn, scan: impl Fn(&mut dyn FnMut(&[u8]))) {
    let before = churn.commits();
    let mut names = Vec::new();
    let mut overlapped = false;
    scan(&mut |n| {
        if !overlapped {
            let deadline = Instant::now() + OVERLAP_WAIT;
            while churn.commits() == before && Instant::now() < deadline {
                std::thread::yield_now();
            }
            overlapped = true;
        }
        names.push(n.to_vec());
    });
    let during = churn.commits() - before;
    assert!(
        during > 0,
        "{what}: no churn commit ran during the scan in {OVERLAP_WAIT:?}"
    );
    check_listing(what, &names);
}

#[test]
fn scans_under_churn_return_every_untouched_key_once() {
    let db = Db::open(&Options {
        max_keys: 16_384,
        value_mem_bytes: 16 << 20,
        slots: 8,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("open engine: {e}"));
    fill(&db);
    let churn = Churn::start(&db);
    for round in 0..SCANS {
        scan_during_churn(&format!("root scan {round}"), &churn, |f| {
            db.session().scan(f).unwrap_or_else(|e| panic!("scan: {e}"))
        });
        let snap = db.begin(true).unwrap_or_else(|e| panic!("snapshot: {e}"));
        scan_during_churn(&format!("snapshot scan {round}"), &churn, |f| {
            snap.scan(f)
                .unwrap_or_else(|e| panic!("snapshot scan: {e}"))
        });
        drop(snap);
        let txn = db.begin(false).unwrap_or_else(|e| panic!("begin: {e}"));
        scan_during_churn(&format!("transaction scan {round}"), &churn, |f| {
            txn.scan(f)
                .unwrap_or_else(|e| panic!("transaction scan: {e}"))
        });
        txn.abort().unwrap_or_else(|e| panic!("abort: {e}"));
    }
}

#[test]
fn checkpoints_under_churn_keep_every_untouched_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let opts = Options {
        max_keys: 16_384,
        value_mem_bytes: 16 << 20,
        slots: 8,
        data_dir: Some(dir.path().to_path_buf()),
        // Churn commits without waiting for fsync: many more of them land
        // while a checkpoint walks the map.
        sync: bpfdb::SyncMode::None,
        ..Options::default()
    };
    {
        let db = Db::open(&opts).unwrap_or_else(|e| panic!("open engine: {e}"));
        fill(&db);
        let churn = Churn::start(&db);
        for round in 0..CHECKPOINTS {
            let before = churn.commits();
            let report = db
                .checkpoint()
                .unwrap_or_else(|e| panic!("checkpoint {round}: {e}"));
            assert!(
                churn.commits() > before,
                "checkpoint {round}: no churn commit ran during it"
            );
            assert!(
                report.keys >= KEYS as u64,
                "checkpoint {round} holds {} keys, fewer than the {KEYS} untouched ones",
                report.keys
            );
        }
    }
    // Only the checkpoint holds the untouched keys now: their log segments
    // are gone.
    let db = Db::open(&opts).unwrap_or_else(|e| panic!("reopen: {e}"));
    let mut out = Vec::new();
    let mut s = db.session();
    let missing: Vec<usize> = (0..KEYS)
        .filter(|&i| s.get(&long_name(i), &mut out).is_err() || out != b"v")
        .collect();
    assert!(
        missing.is_empty(),
        "{} untouched keys lost after checkpoints under churn (first {:?})",
        missing.len(),
        missing.first()
    );
}
