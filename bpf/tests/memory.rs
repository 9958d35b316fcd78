//! Kernel memory follows the data: an empty database holds little besides
//! its log ring, records and value pools grow with the keys, deleted keys'
//! memory is reused, and names longer than a record holds inline keep
//! working everywhere a name goes (reads, listing, rename, log, recovery).

use std::collections::BTreeMap;

use bpfdb::abi;
use bpfdb::{AHEAD_SEGMENTS, Db, NewMeta, Options, SetFlags};

const MIB: u64 = 1 << 20;

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        uid: 1,
        gid: 2,
        mtime_ns: 3,
        ctime_ns: 4,
    }
}

fn open(opts: &Options) -> Db {
    Db::open(opts).unwrap_or_else(|e| panic!("open engine: {e}"))
}

#[test]
fn an_empty_database_with_default_options_holds_at_most_32_mib_besides_its_log_ring() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    });
    let m = db.memory().unwrap();
    let maps = db.map_memory().unwrap();
    assert!(
        m.total - m.wal <= 32 * MIB,
        "{} MiB besides the log ring: {maps:?}",
        (m.total - m.wal) >> 20
    );
    // One segment per pool, ready for the first writers; no more.
    assert_eq!(
        (m.small.segments, m.pages.segments),
        (1, 1),
        "pools before any value: {m:?}"
    );
}

/// Segments a pool may hold after `ids` were handed out: what they need,
/// plus the ones the housekeeping thread keeps ready ahead of the writers.
fn most_segments(ids: u64, seg: u32) -> u64 {
    ids.div_ceil(seg as u64) + bpfdb::AHEAD_SEGMENTS
}

#[test]
fn records_and_pools_grow_with_the_keys_and_deleted_keys_memory_is_reused() {
    let db = open(&Options {
        max_keys: 200_000,
        value_mem_bytes: 256 * MIB,
        slots: 4,
        ..Options::default()
    });
    let before = db.memory().unwrap();
    let n = 40_000u64;
    let value = [7u8; 100];
    let mut s = db.session();
    for i in 0..n {
        s.set(
            format!("k{i:09}").as_bytes(),
            &value,
            meta(),
            SetFlags::default(),
        )
        .unwrap();
    }
    for i in 0..64 {
        s.set(
            format!("p{i}").as_bytes(),
            &[1u8; 5000],
            meta(),
            SetFlags::default(),
        )
        .unwrap();
    }
    let full = db.memory().unwrap();
    // A 112-byte run per 100-byte value; a page, an index run and a tail
    // run per 5000-byte value.
    let granules = |len| (abi::value_storage(len).0 / abi::GRANULE) as u64;
    let small = n * granules(100) + 64 * granules(5000);
    assert!(
        full.small.handed_out >= small,
        "{small} granules needed: {full:?}"
    );
    assert!(
        full.small.segments >= small.div_ceil(abi::SMALL_SEG as u64),
        "{full:?}"
    );
    assert!(
        full.small.segments <= most_segments(small, abi::SMALL_SEG),
        "{full:?}"
    );
    assert!(
        full.pages.segments <= most_segments(64, abi::PAGE_SEG),
        "{full:?}"
    );
    assert!(full.pages.segments >= 1, "{full:?}");
    // A record is one 440-byte value in a 512-byte element: grown by about
    // that per key, not preallocated for max_keys.
    let per_key = (full.records - before.records) / (n + 64);
    assert!(
        (400..=640).contains(&per_key),
        "{per_key} bytes per record: {full:?}"
    );
    assert!(
        before.records < 200_000 * 64,
        "records preallocated: {before:?}"
    );

    for i in 0..n {
        s.delete(format!("k{i:09}").as_bytes()).unwrap();
    }
    for i in 0..n {
        s.set(
            format!("j{i:09}").as_bytes(),
            &value,
            meta(),
            SetFlags::default(),
        )
        .unwrap();
    }
    let again = db.memory().unwrap();
    assert_eq!(
        again.small.handed_out, full.small.handed_out,
        "freed runs were not reused: {full:?} then {again:?}"
    );
    // The housekeeping thread may still have been adding its segments
    // ahead when `full` was read, but never more than that.
    assert!(
        again.small.segments
            <= full.small.handed_out.div_ceil(abi::SMALL_SEG as u64) + AHEAD_SEGMENTS,
        "{full:?} then {again:?}"
    );
    assert!(
        again.records <= full.records + full.records / 10,
        "{full:?} then {again:?}"
    );
}

/// Names of every length class: inline, exactly inline, just over, longest.
fn long_names() -> Vec<Vec<u8>> {
    [1, abi::NAME_INLINE, abi::NAME_INLINE + 1, 200, abi::KEY_MAX]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut name = vec![b'a' + i as u8; len];
            name[len - 1] = b'z';
            name
        })
        .collect()
}

fn dump(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = Vec::new();
    db.session().scan(|n| names.push(n.to_vec())).unwrap();
    let mut s = db.session();
    names
        .into_iter()
        .map(|n| {
            let mut v = Vec::new();
            s.get(&n, &mut v)
                .unwrap_or_else(|e| panic!("get {}: {e}", n.len()));
            (n, v)
        })
        .collect()
}

#[test]
fn names_longer_than_a_record_holds_work_in_every_op_and_survive_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_keys: 1024,
        value_mem_bytes: 16 * MIB,
        slots: 4,
        data_dir: Some(dir.path().to_path_buf()),
        wal_buffer_bytes: 8 * MIB,
        ..Options::default()
    };
    let names = long_names();
    let mut want = BTreeMap::new();
    {
        let db = open(&opts);
        let mut s = db.session();
        for (i, name) in names.iter().enumerate() {
            let v = vec![i as u8; 10 + i * 1000];
            s.set(name, &v, meta(), SetFlags::default()).unwrap();
            want.insert(name.clone(), v);
        }
        // Two long names that share their first NAME_INLINE bytes are
        // different keys.
        let mut twin = names[4].clone();
        twin[abi::KEY_MAX - 2] = b'y';
        s.set(&twin, b"twin", meta(), SetFlags::default()).unwrap();
        want.insert(twin.clone(), b"twin".to_vec());
        let mut out = Vec::new();
        s.get(&names[4], &mut out).unwrap();
        assert_eq!(out, want[&names[4]]);
        assert_eq!(dump(&db), want);

        // Rename long -> long, long -> short, short -> long.
        let mut moved = names[3].clone();
        moved[0] = b'M';
        s.rename(&names[3], &moved, false).unwrap();
        let v = want.remove(&names[3]).unwrap();
        want.insert(moved.clone(), v);
        s.rename(&twin, b"short", false).unwrap();
        let v = want.remove(&twin).unwrap();
        want.insert(b"short".to_vec(), v);
        s.rename(&names[0], &twin, false).unwrap();
        let v = want.remove(&names[0]).unwrap();
        want.insert(twin.clone(), v);
        assert_eq!(s.get(&names[3], &mut out).unwrap_err().errno, libc::ENOENT);

        // A transaction writes and deletes long names; its commit logs them.
        let t = db.begin(false).unwrap();
        t.set(&names[2], b"in txn", meta(), SetFlags::default())
            .unwrap();
        t.delete(&names[4]).unwrap();
        t.commit().unwrap();
        want.insert(names[2].clone(), b"in txn".to_vec());
        want.remove(&names[4]);
        assert_eq!(dump(&db), want);
    }
    // Replayed from the log.
    let db = open(&opts);
    assert_eq!(dump(&db), want);
    // From a checkpoint.
    db.checkpoint().unwrap();
    drop(db);
    let db = open(&opts);
    assert_eq!(dump(&db), want);
    // Deleting a long-named key frees its long name with its record.
    let mut s = db.session();
    for name in want.keys() {
        s.delete(name).unwrap();
    }
    let mut left = 0;
    s.scan(|_| left += 1).unwrap();
    assert_eq!(left, 0);
}

/// A run popped off a size class's free list is never handed out twice,
/// even when, between the pop's read of the list and its CAS, other
/// writers take the top run and the one below it and give the top one
/// back: the list's head then names the same run as before, and only the
/// count of changes in the head tells the pop that the run below is no
/// longer free. The test hook `alloc_pause_loops` holds the allocation of
/// a value of `alloc_pause_len` bytes in that window; the other writer
/// starts once the engine counted the pause (`Stats::alloc_pauses`).
#[test]
fn a_run_taken_and_given_back_during_a_pop_is_not_handed_out_twice() {
    const PAUSED: usize = 4000; // the paused write: class 4096, like the others
    const ROUNDS: u64 = 8;
    let db = open(&Options {
        max_keys: 1024,
        value_mem_bytes: 8 * MIB,
        slots: 4,
        alloc_pause_loops: 3_000_000,
        alloc_pause_len: PAUSED as u32,
        ..Options::default()
    });
    let page = |b: u8| vec![b; abi::PAGE_SIZE];
    let set = |s: &mut bpfdb::Session, k: &str, v: &[u8]| {
        s.set(k.as_bytes(), v, meta(), SetFlags::default()).unwrap()
    };
    let mut s = db.session();
    let mut out = Vec::new();
    for round in 0..ROUNDS {
        // The class's free list: the runs of "x", "y", "w", top down (a
        // pop claims a run in the list's count first, so the other writer
        // can take two of three while the paused pop holds its claim).
        set(&mut s, "x", &page(1));
        set(&mut s, "y", &page(2));
        set(&mut s, "w", &page(7));
        s.delete(b"w").unwrap();
        s.delete(b"y").unwrap();
        s.delete(b"x").unwrap();
        let pauses = db.stats().alloc_pauses;
        std::thread::scope(|sc| {
            let db = &db;
            sc.spawn(move || {
                let mut w = db.session();
                while db.stats().alloc_pauses == pauses {
                    std::hint::spin_loop();
                }
                // The pop holds (x's run, below it y's): take both, give x's back.
                set(&mut w, "q", &page(3));
                set(&mut w, "r", &page(4));
                w.delete(b"q").unwrap();
            });
            set(&mut s, "p", &[5u8; PAUSED]);
        });
        // Whatever run "p" got, the next write of the class must get another.
        set(&mut s, "z", &page(6));
        for (k, v) in [("p", vec![5u8; PAUSED]), ("r", page(4)), ("z", page(6))] {
            s.get(k.as_bytes(), &mut out).unwrap();
            assert!(
                out == v,
                "round {round}: {k} was overwritten by another key's value"
            );
        }
        for k in ["p", "r", "z"] {
            s.delete(k.as_bytes()).unwrap();
        }
        let st = db.stats();
        assert_eq!(
            (st.small_used, st.runs_lost),
            (0, 0),
            "round {round}: runs leaked"
        );
    }
}

/// Writers filling the database as fast as one thread can seldom wait for a
/// segment: the housekeeping thread adds them ahead of need. Before
/// 2153536 it added none (its top-up went through the writers' `grow`,
/// which found ids left and returned), so every segment was added by a
/// writer that had run out, a wait of an RCU grace period (5-8 ms) each.
#[test]
fn the_housekeeping_thread_adds_the_segments_a_fill_needs_ahead_of_the_writers() {
    let n = 200_000u64;
    let db = open(&Options {
        max_keys: n as u32 + 1024,
        value_mem_bytes: 64 * MIB,
        slots: 4,
        ..Options::default()
    });
    let mut s = db.session();
    for i in 0..n {
        s.set(
            format!("k{i:09}").as_bytes(),
            &[7u8; 100],
            meta(),
            SetFlags::default(),
        )
        .unwrap();
    }
    let small = db.memory().unwrap().small;
    // 200,000 runs of 112 bytes: about 11 segments. On a machine this
    // loaded the keeper may lag now and then; half would mean it does not
    // keep up at all.
    assert!(small.segments >= 10, "{small:?}");
    assert!(
        small.added_by_writers * 2 <= small.segments,
        "writers added {} of {} segments: {small:?}",
        small.added_by_writers,
        small.segments
    );
}

/// A value a reservation admits is one the engine then stores (the
/// daemon reserves at `write(2)` what a commit at `close(2)` will take, and
/// a shell never checks close). Near the small pool's cap, with only runs
/// freed by 4000-byte values left, the engine stores smaller values in
/// pieces of those runs; a reservation counts free runs only where the
/// engine can use them.
#[test]
fn near_the_cap_a_reserved_value_is_one_the_engine_stores() {
    let db = open(&Options {
        max_keys: 2048,
        value_mem_bytes: MIB,
        slots: 2,
        ..Options::default()
    });
    let mut s = db.session();
    let set = |s: &mut bpfdb::Session, k: &str, len: usize| {
        s.set(k.as_bytes(), &vec![3u8; len], meta(), SetFlags::default())
    };
    // Fill the small pool with 4000-byte values (runs of 4096), then free them.
    let mut big = 0;
    while big < 2048 {
        match set(&mut s, &format!("b{big}"), 4000) {
            Ok(_) => big += 1,
            Err(e) if e.errno == libc::ENOSPC => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!((100..2048).contains(&big), "{big} values of 4000 bytes");
    for i in 0..big {
        s.delete(format!("b{i}").as_bytes()).unwrap();
    }
    let (mut stored, mut refused) = (0, 0);
    for (i, len) in [100usize, 3000, 1, 600, 4000, 20, 129, 2048]
        .iter()
        .cycle()
        .take(3000)
        .enumerate()
    {
        let mut r = bpfdb::Reservation::default();
        match db.reserve(&mut r, *len) {
            Ok(()) => {
                set(&mut s, &format!("v{}", i % 1500), *len).unwrap_or_else(|e| {
                    panic!("a value of {len} bytes was reserved, then not stored: {e}")
                });
                stored += 1;
            }
            Err(e) if e.errno == libc::ENOSPC => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        stored >= big,
        "stored {stored}, refused {refused}: {:?}",
        db.stats()
    );
}
