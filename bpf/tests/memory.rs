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
    // One small chunk per 100-byte value; two pages per 5000-byte value.
    assert!(
        full.small.segments >= n.div_ceil(abi::SMALL_SEG as u64),
        "{full:?}"
    );
    assert!(
        full.small.segments <= most_segments(n, abi::SMALL_SEG),
        "{full:?}"
    );
    assert!(
        full.pages.segments <= most_segments(128, abi::PAGE_SEG),
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
        "freed chunks were not reused: {full:?} then {again:?}"
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
