//! Durability on the real engine: log, group commit, recovery, checkpoints,
//! torn tails, corruption, and formats.

use std::collections::BTreeMap;
use std::path::Path;

use bpfdb::{Db, NewMeta, Options, SetFlags, SyncMode};

fn opts(dir: &Path) -> Options {
    Options {
        max_keys: 4096,
        value_mem_bytes: 32 << 20,
        slots: 8,
        data_dir: Some(dir.to_path_buf()),
        wal_buffer_bytes: 8 << 20,
        ..Options::default()
    }
}

fn meta(mode: u32, mtime_ns: u64) -> NewMeta {
    NewMeta {
        mode,
        uid: 7,
        gid: 8,
        mtime_ns,
        ctime_ns: mtime_ns + 1,
    }
}

/// Every key with its value, mode, uid, gid, mtime and ctime.
type Dump = BTreeMap<Vec<u8>, (Vec<u8>, u32, u32, u32, u64, u64)>;

fn dump(db: &Db) -> Dump {
    let mut s = db.session();
    let mut names = Vec::new();
    s.scan(|n| names.push(n.to_vec())).unwrap();
    let mut out = BTreeMap::new();
    for n in names {
        let mut v = Vec::new();
        let st = s.get(&n, &mut v).unwrap();
        let m = st.meta;
        out.insert(n, (v, m.mode, m.uid, m.gid, m.mtime_ns, m.ctime_ns));
    }
    out
}

fn workload(db: &Db) {
    let mut s = db.session();
    for i in 0..50u32 {
        let v: Vec<u8> = (0..(i as usize * 997) % 20_000)
            .map(|j| (j as u32 ^ i) as u8)
            .collect();
        s.set(
            format!("k{i}").as_bytes(),
            &v,
            meta(0o100600 + i, i as u64 * 1000),
            SetFlags::default(),
        )
        .unwrap();
    }
    s.delete(b"k3").unwrap();
    s.rename(b"k4", b"k3", false).unwrap();
    s.rename(b"k5", b"moved", false).unwrap();
    s.set_meta(b"k6", meta(0o100444, 42)).unwrap();
    s.set(
        b"big",
        &vec![0xab; 1 << 20],
        meta(0o100644, 9),
        SetFlags::default(),
    )
    .unwrap();
    drop(s);
    let t = db.begin(false).unwrap();
    t.set(b"txn-a", b"alpha", meta(0o100644, 1), SetFlags::default())
        .unwrap();
    t.set(
        b"k7",
        b"rewritten in txn",
        meta(0o100644, 2),
        SetFlags::default(),
    )
    .unwrap();
    t.delete(b"k8").unwrap();
    t.commit().unwrap();
    let aborted = db.begin(false).unwrap();
    aborted
        .set(b"never", b"x", meta(0o100644, 1), SetFlags::default())
        .unwrap();
    aborted.abort().unwrap();
}

#[test]
fn reopen_restores_every_key_value_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let db = Db::open(&opts(dir.path())).unwrap();
        workload(&db);
        dump(&db)
    };
    assert!(before.contains_key(b"txn-a".as_slice()) && !before.contains_key(b"never".as_slice()));
    let db = Db::open(&opts(dir.path())).unwrap();
    assert!(dump(&db) == before, "state after log replay differs");
    // And again through a checkpoint, with more log after it.
    db.checkpoint().unwrap();
    db.session()
        .set(b"after", b"ckpt", meta(0o100644, 5), SetFlags::default())
        .unwrap();
    let mut want = dump(&db);
    drop(db);
    let db = Db::open(&opts(dir.path())).unwrap();
    assert!(dump(&db) == want, "state after checkpoint + log differs");
    assert_eq!(
        bpfdb::wal::segments(dir.path()).unwrap().len(),
        1,
        "old segments removed"
    );
    want.remove(b"after".as_slice());
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let n = *bpfdb::wal::segments(dir).unwrap().last().unwrap();
    bpfdb::wal::segment_path(dir, n)
}

/// Offsets where each record of a segment ends.
fn record_ends(buf: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut off = bpfdb::wal::HEADER_BYTES;
    while let bpfdb::wal::Next::Record { end, .. } = bpfdb::wal::record_at(buf, off) {
        ends.push(end);
        off = end;
    }
    ends
}

/// Writes three commits to a fresh data dir; returns the state after each.
fn three_commits(dir: &Path) -> Vec<Dump> {
    let db = Db::open(&opts(dir)).unwrap();
    let mut s = db.session();
    let mut states = Vec::new();
    for i in 0..3u32 {
        s.set(
            format!("t{i}").as_bytes(),
            &vec![i as u8; 300 + i as usize],
            meta(0o100644, 1),
            SetFlags::default(),
        )
        .unwrap();
        states.push(dump(&db));
    }
    states
}

#[test]
fn torn_tail_at_every_offset_ends_at_the_last_whole_record() {
    // The log reader at every cut of the last two records (no engine needed
    // for each cut: the scan is a pure function of the bytes).
    let dir = tempfile::tempdir().unwrap();
    three_commits(dir.path());
    let full = std::fs::read(last_segment(dir.path())).unwrap();
    let ends = record_ends(&full);
    assert_eq!(ends.len(), 3);
    for cut in ends[0]..=full.len() {
        let mut seen = Vec::new();
        let scan = bpfdb::wal::scan_segment(&full[..cut], 1, |c, _| {
            seen.push(c.ts);
            Ok(())
        })
        .unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(seen.len(), whole, "cut at {cut}");
        assert_eq!(scan.end, ends[whole - 1], "cut at {cut}");
        assert_eq!(scan.bad.is_some(), cut != ends[whole - 1], "cut at {cut}");
        assert!(
            !scan.bad.is_some_and(|b| b.2),
            "cut at {cut} looks like mid-log corruption"
        );
    }
    // Every flipped byte of the last record is caught by the checksum.
    for pos in ends[1]..ends[2] {
        let mut bad = full.clone();
        bad[pos] ^= 0x55;
        let scan = bpfdb::wal::scan_segment(&bad, 1, |_, _| Ok(())).unwrap();
        assert_eq!((scan.commits, scan.end), (2, ends[1]), "flip at {pos}");
    }
}

#[test]
fn recovery_cuts_a_torn_tail_and_keeps_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let states = three_commits(dir.path());
    let full = std::fs::read(last_segment(dir.path())).unwrap();
    let ends = record_ends(&full);
    // Through the engine at a few cuts: inside the last header, inside its
    // payload, one byte short; and a flipped byte.
    for cut in [ends[1] + 3, ends[1] + 40, ends[2] - 1] {
        let d = tempfile::tempdir().unwrap();
        let seg = bpfdb::wal::segment_path(d.path(), 1);
        std::fs::write(&seg, &full[..cut]).unwrap();
        let db = Db::open(&opts(d.path())).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(dump(&db) == states[1], "cut at {cut}");
        // The tail is cut off and new commits append after the good prefix.
        assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, ends[1]);
        db.session()
            .set(b"after", b"x", meta(0o100644, 1), SetFlags::default())
            .unwrap();
        drop(db);
        let db = Db::open(&opts(d.path())).unwrap();
        assert_eq!(
            dump(&db).len(),
            3,
            "cut at {cut}: prefix plus the new commit"
        );
    }
}

#[test]
fn corruption_in_the_middle_refuses_to_start_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(&opts(dir.path())).unwrap();
        let mut s = db.session();
        for i in 0..5u32 {
            s.set(
                format!("m{i}").as_bytes(),
                b"value",
                meta(0o100644, 1),
                SetFlags::default(),
            )
            .unwrap();
        }
    }
    let path = last_segment(dir.path());
    let mut buf = std::fs::read(&path).unwrap();
    let ends = record_ends(&buf);
    buf[ends[1] + 18] ^= 0xff; // inside record 3 of 5
    std::fs::write(&path, &buf).unwrap();
    let err = Db::open(&opts(dir.path())).map(|_| ()).unwrap_err();
    assert_eq!(err.errno, libc::EIO);
    assert!(err.msg.contains("refusing to start"), "{err}");
    let db = Db::open(&Options {
        allow_corrupt_log: true,
        ..opts(dir.path())
    })
    .unwrap();
    assert_eq!(
        dump(&db).len(),
        2,
        "the commits before the corruption survive"
    );
}

#[test]
fn unknown_format_version_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    drop(Db::open(&opts(dir.path())).unwrap());
    let path = last_segment(dir.path());
    let mut buf = std::fs::read(&path).unwrap();
    buf[8] = 99;
    std::fs::write(&path, &buf).unwrap();
    let err = Db::open(&opts(dir.path())).map(|_| ()).unwrap_err();
    assert!(err.msg.contains("format version 99"), "{err}");
}

#[test]
fn concurrent_committers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&Options {
        sync: SyncMode::Commit,
        ..opts(dir.path())
    })
    .unwrap();
    std::thread::scope(|sc| {
        for w in 0..4 {
            let db = &db;
            sc.spawn(move || {
                let mut s = db.session();
                for i in 0..100 {
                    s.set(
                        format!("w{w}-{i}").as_bytes(),
                        b"v",
                        meta(0o100644, 1),
                        SetFlags::default(),
                    )
                    .unwrap();
                }
            });
        }
    });
    drop(db);
    let db = Db::open(&opts(dir.path())).unwrap();
    assert_eq!(dump(&db).len(), 400);
}

/// A bpffs directory for one test, unpinned when the test ends either way.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = bpfdb::unpin(&self.0);
        }
    }
}

fn pin_dir(tag: &str) -> PinDir {
    let name = format!("/sys/fs/bpf/bpfdb-test-{tag}-{}", std::process::id());
    PinDir(std::path::PathBuf::from(name))
}

#[test]
fn hot_restart_reuses_pinned_maps_without_replaying() {
    let dir = tempfile::tempdir().unwrap();
    let guard = pin_dir("hot");
    let pin = guard.0.clone();
    let pinned = Options {
        pin_dir: Some(pin.clone()),
        hash_seed: 0x1234_5678,
        ..opts(dir.path())
    };
    let before = {
        let db = Db::open(&pinned).unwrap();
        workload(&db);
        dump(&db)
    };
    assert!(pin.join("records").exists(), "maps are pinned");
    // Remove the log: whatever the next start has, it got from the maps.
    for n in bpfdb::wal::segments(dir.path()).unwrap() {
        std::fs::remove_file(bpfdb::wal::segment_path(dir.path(), n)).unwrap();
    }
    // Another seed is ignored: the pinned maps are keyed by the first one.
    let db = Db::open(&Options {
        hash_seed: 99,
        ..pinned.clone()
    })
    .unwrap();
    assert!(dump(&db) == before, "pinned state differs");
    assert_eq!(
        db.stats().keys as usize,
        before.len(),
        "statistics carried over"
    );
    // The restart wrote a checkpoint, so the log alone recovers it too.
    db.session()
        .set(b"after", b"restart", meta(0o100644, 3), SetFlags::default())
        .unwrap();
    let want = dump(&db);
    drop(db);
    bpfdb::unpin(&pin).unwrap();
    let db = Db::open(&opts(dir.path())).unwrap();
    assert!(dump(&db) == want, "log after a hot restart differs");
}

#[test]
fn pinned_state_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let guard = pin_dir("layout");
    let pin = guard.0.clone();
    drop(
        Db::open(&Options {
            pin_dir: Some(pin.clone()),
            ..opts(dir.path())
        })
        .unwrap(),
    );
    let err = Db::open(&Options {
        pin_dir: Some(pin.clone()),
        max_keys: 8192,
        ..opts(dir.path())
    })
    .map(|_| ())
    .unwrap_err();
    bpfdb::unpin(&pin).unwrap();
    assert!(err.msg.contains("pinned state"), "{err}");
}

#[test]
fn without_pinning_nothing_is_left_in_bpffs() {
    let dir = tempfile::tempdir().unwrap();
    let listing = || {
        std::fs::read_dir("/sys/fs/bpf")
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let before = listing();
    let db = Db::open(&opts(dir.path())).unwrap();
    db.session()
        .set(b"k", b"v", meta(0o100644, 1), SetFlags::default())
        .unwrap();
    drop(db);
    let mut after = listing();
    // Other tests pin concurrently under their own names; ours add none.
    after.retain(|n| !n.to_string_lossy().starts_with("bpfdb-test-"));
    let mut before = before;
    before.retain(|n| !n.to_string_lossy().starts_with("bpfdb-test-"));
    assert_eq!(before, after);
}

#[test]
fn checkpoints_run_while_users_hold_every_transaction_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&opts(dir.path())).unwrap();
    db.session()
        .set(b"k", b"v", meta(0o100644, 1), SetFlags::default())
        .unwrap();
    let held: Vec<_> = (0..db.options().max_txns)
        .map(|_| db.begin(true).unwrap())
        .collect();
    assert_eq!(db.begin(true).unwrap_err().errno, libc::EAGAIN);
    let aborts = db.stats().txn_aborts;
    let r = db.checkpoint().unwrap();
    assert_eq!(r.keys, 1);
    assert_eq!(
        db.stats().txn_aborts,
        aborts,
        "ending the checkpoint's snapshot is no abort"
    );
    drop(held);
    assert_eq!(
        db.stats().txn_aborts,
        aborts,
        "dropping snapshots is no abort"
    );
}

#[test]
fn a_commit_larger_than_the_log_buffer_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&Options {
        wal_buffer_bytes: 64 << 10,
        ..opts(dir.path())
    })
    .unwrap();
    let mut s = db.session();
    s.set(
        b"k",
        &vec![1u8; 16 << 10],
        meta(0o100644, 1),
        SetFlags::default(),
    )
    .unwrap();
    let err = s
        .set(
            b"k",
            &vec![2u8; 100 << 10],
            meta(0o100644, 1),
            SetFlags::default(),
        )
        .unwrap_err();
    assert_eq!(err.errno, libc::EFBIG, "{err}");
    assert!(err.msg.contains("wal_buffer"), "{err}");
    // Many commits that each fit pass through a small buffer one after
    // another: committers wait for the log writer to drain it.
    for i in 0..200u32 {
        s.set(
            format!("m{i}").as_bytes(),
            &vec![3u8; 8 << 10],
            meta(0o100644, 1),
            SetFlags::default(),
        )
        .unwrap();
    }
    let mut out = Vec::new();
    s.get(b"k", &mut out).unwrap();
    assert_eq!(
        out,
        vec![1u8; 16 << 10],
        "the refused commit left the old value"
    );
    drop(s);
    drop(db);
    let db = Db::open(&opts(dir.path())).unwrap();
    assert_eq!(dump(&db).len(), 201);
}

/// Commits whose durability is left to a callback (`defer_durability`,
/// `when_durable`): one thread commits for 64 clients at once, as the FUSE
/// daemon does, and is never held by an fsync.
mod deferred {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    const CLIENTS: usize = 64;
    const ROUNDS: usize = 20;
    /// Longest a test waits for an acknowledgement before calling it lost.
    const ACK_TIMEOUT: Duration = Duration::from_secs(20);

    fn set_deferred(db: &Db, key: &str, value: &[u8]) -> u64 {
        let (r, ts) = db.defer_durability(|| {
            db.session().set(
                key.as_bytes(),
                value,
                meta(0o100644, 1),
                SetFlags::default(),
            )
        });
        let st = r.unwrap();
        assert_eq!(ts, Some(st.ts), "the commit's wait was left to the caller");
        st.ts
    }

    /// Every round, one thread commits a new value for each of 64 clients
    /// and leaves a callback for each; a callback must come only once its
    /// record is in the log file, and exactly once. A round's commits
    /// share fsyncs: far fewer fsyncs than commits.
    #[test]
    fn one_thread_commits_for_many_clients_and_each_ack_follows_its_log_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&Options {
            sync: SyncMode::Commit,
            ..opts(dir.path())
        })
        .unwrap();
        let seg = last_segment(dir.path());
        let (tx, rx) = mpsc::channel();
        let before = db.log_counters();
        for round in 0..ROUNDS {
            for c in 0..CLIENTS {
                let value = format!("r{round:03}-c{c:02}-value");
                let ts = set_deferred(&db, &format!("c{c}"), value.as_bytes());
                let (tx, seg) = (tx.clone(), seg.clone());
                db.when_durable(ts, move |r| {
                    // Runs on the thread that saw the fsync: the record is
                    // in the file by now.
                    let log = std::fs::read(&seg).unwrap();
                    let logged = log.windows(value.len()).any(|w| w == value.as_bytes());
                    tx.send((r, logged, value)).unwrap();
                });
            }
            for _ in 0..CLIENTS {
                let (r, logged, value) = rx.recv_timeout(ACK_TIMEOUT).expect("an ack was lost");
                r.unwrap();
                assert!(
                    logged,
                    "{value} acknowledged before its record was in the log"
                );
            }
        }
        assert!(rx.try_recv().is_err(), "an ack ran twice");
        let after = db.log_counters();
        let (commits, fsyncs) = (
            after.commits_logged - before.commits_logged,
            after.fsyncs - before.fsyncs,
        );
        assert_eq!(commits, (CLIENTS * ROUNDS) as u64);
        assert!(
            fsyncs * 4 <= commits,
            "{commits} commits took {fsyncs} fsyncs: deferred commits did not share them"
        );
        assert_eq!(after.acks_waiting, 0);
        drop(db);
        let db = Db::open(&opts(dir.path())).unwrap();
        let d = dump(&db);
        assert_eq!(d.len(), CLIENTS);
        assert!(
            d.values()
                .all(|v| v.0.starts_with(format!("r{:03}", ROUNDS - 1).as_bytes()))
        );
    }

    /// Outside `defer_durability` nothing changes: a commit waits itself,
    /// and a callback for a durable commit runs at once, on the caller.
    #[test]
    fn without_deferral_commits_wait_and_late_callbacks_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&Options {
            sync: SyncMode::Commit,
            ..opts(dir.path())
        })
        .unwrap();
        let st = db
            .session()
            .set(b"k", b"v", meta(0o100644, 1), SetFlags::default())
            .unwrap();
        let me = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        db.when_durable(st.ts, move |r| {
            tx.send((r, std::thread::current().id())).unwrap();
        });
        let (r, on) = rx
            .try_recv()
            .expect("a durable commit's callback runs at once");
        r.unwrap();
        assert_eq!(on, me);
        // Nested scopes: the inner one (set_deferred's) keeps its commits
        // to itself.
        let (ts, outer) = db.defer_durability(|| set_deferred(&db, "x", b"1"));
        assert_eq!(outer, None);
        db.wait_durable(ts).unwrap();
    }

    /// Callbacks still waiting when the database closes run once each: Ok
    /// if the last fsync made them durable, an error otherwise; never lost.
    #[test]
    fn closing_the_database_runs_every_waiting_callback_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&Options {
            sync: SyncMode::Commit,
            ..opts(dir.path())
        })
        .unwrap();
        let (tx, rx) = mpsc::channel();
        for c in 0..CLIENTS {
            let ts = set_deferred(&db, &format!("c{c}"), b"v");
            let tx = tx.clone();
            db.when_durable(ts, move |r| tx.send(r).unwrap());
        }
        drop(tx);
        drop(db);
        let outcomes: Vec<_> = rx.iter().collect();
        assert_eq!(outcomes.len(), CLIENTS, "every callback ran exactly once");
        let acked = outcomes.iter().filter(|r| r.is_ok()).count();
        let db = Db::open(&opts(dir.path())).unwrap();
        assert!(
            dump(&db).len() >= acked,
            "{acked} acknowledged, fewer recovered"
        );
    }
}

/// The log is replayed in windows whose keys are applied by several
/// threads, each key's ops in log order: overwrites, deletes, renames and
/// transactions over a few hundred keys, across several windows, replay to
/// the state they were written in.
#[test]
fn a_log_replayed_by_several_threads_ends_in_the_state_it_was_written_in() {
    let dir = tempfile::tempdir().unwrap();
    let ops = 3 * bpfdb::wal::REPLAY_WINDOW_OPS as u32;
    let before = {
        let db = Db::open(&opts(dir.path())).unwrap();
        let mut s = db.session();
        for i in 0..ops {
            let k = format!("k{}", (i * 7919) % 300);
            match i % 10 {
                0 => drop(s.delete(k.as_bytes())),
                1 => drop(s.rename(k.as_bytes(), format!("r{}", i % 50).as_bytes(), false)),
                2 => s
                    .set_meta(k.as_bytes(), meta(0o100600, i as u64))
                    .map_or((), drop),
                _ => {
                    let v = format!("{i}:{}", "v".repeat((i % 200) as usize));
                    s.set(
                        k.as_bytes(),
                        v.as_bytes(),
                        meta(0o100644, i as u64),
                        SetFlags::default(),
                    )
                    .unwrap();
                }
            }
        }
        drop(s);
        dump(&db)
    };
    let db = Db::open(&opts(dir.path())).unwrap();
    assert!(dump(&db) == before, "state after log replay differs");
}

/// A key table kept full, each new key made after an old one was deleted,
/// replays: a window whose PUTs could not all fit on top of what is stored
/// is applied in log order by one thread, where each delete makes room for
/// the next key before it is made.
#[test]
fn a_full_key_table_is_replayed_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    const KEYS: u32 = 64;
    let small = |dir: &Path| Options {
        max_keys: KEYS,
        ..opts(dir)
    };
    let before = {
        let db = Db::open(&small(dir.path())).unwrap();
        let mut s = db.session();
        let put = |s: &mut bpfdb::Session, i: u32| {
            s.set(
                format!("a{i}").as_bytes(),
                b"v",
                meta(0o100644, 1),
                SetFlags::default(),
            )
            .unwrap()
        };
        for i in 0..KEYS {
            put(&mut s, i);
        }
        for i in 0..4 * bpfdb::wal::REPLAY_WINDOW_OPS as u32 {
            s.delete(format!("a{i}").as_bytes()).unwrap();
            put(&mut s, i + KEYS);
        }
        drop(s);
        dump(&db)
    };
    assert_eq!(before.len(), KEYS as usize);
    let db = Db::open(&small(dir.path())).unwrap_or_else(|e| panic!("replay: {e}"));
    assert!(dump(&db) == before, "state after log replay differs");
}
