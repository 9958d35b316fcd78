//! Random operations run against the engine and a BTreeMap model, compared
//! after every step.

use std::collections::BTreeMap;

use bpfdb::{Db, NewMeta, Options, SetFlags};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Set(u8, usize, u8),
    Delete(u8),
    Rename(u8, u8),
    Get(u8),
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

fn step() -> impl Strategy<Value = Step> {
    // Lengths cover every storage class: empty, small, one page, multi-page.
    let len = prop_oneof![
        Just(0usize),
        1..=128usize,
        129..=4096usize,
        4097..=20_000usize
    ];
    prop_oneof![
        4 => (0..12u8, len, any::<u8>()).prop_map(|(k, l, b)| Step::Set(k, l, b)),
        2 => (0..12u8).prop_map(Step::Delete),
        2 => (0..12u8, 0..12u8).prop_map(|(a, b)| Step::Rename(a, b)),
        2 => (0..12u8).prop_map(Step::Get),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_btreemap(steps in proptest::collection::vec(step(), 1..120)) {
        let opts = Options { max_keys: 256, value_mem_bytes: 8 << 20, slots: 2, ..Options::default() };
        let db = Db::open(&opts).unwrap();
        let mut s = db.session();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let meta = NewMeta { mode: 0o100644, ..NewMeta::default() };
        let mut out = Vec::new();
        for st in steps {
            match st {
                Step::Set(k, len, b) => {
                    let v = vec![b; len];
                    s.set(&key(k), &v, meta, SetFlags::default()).unwrap();
                    model.insert(key(k), v);
                }
                Step::Delete(k) => {
                    let r = s.delete(&key(k));
                    prop_assert_eq!(r.is_ok(), model.remove(&key(k)).is_some());
                }
                Step::Rename(a, b) => {
                    let r = s.rename(&key(a), &key(b), false);
                    match model.remove(&key(a)) {
                        Some(v) => { prop_assert!(r.is_ok()); model.insert(key(b), v); }
                        None => prop_assert_eq!(r.unwrap_err().errno, libc::ENOENT),
                    }
                }
                Step::Get(k) => {
                    let r = s.get(&key(k), &mut out);
                    match model.get(&key(k)) {
                        Some(v) => { prop_assert!(r.is_ok()); prop_assert_eq!(&out, v); }
                        None => prop_assert_eq!(r.unwrap_err().errno, libc::ENOENT),
                    }
                }
            }
            let mut names = Vec::new();
            s.scan(|n| names.push(n.to_vec())).unwrap();
            names.sort();
            prop_assert_eq!(&names, &model.keys().cloned().collect::<Vec<_>>());
        }
        for (k, v) in &model {
            s.get(k, &mut out).unwrap();
            prop_assert_eq!(&out, v);
        }
        let stats = db.stats();
        prop_assert_eq!(stats.keys as usize, model.len());
        prop_assert_eq!(stats.value_bytes as usize, model.values().map(Vec::len).sum::<usize>());
    }
}

#[derive(Clone, Debug)]
enum TxnStep {
    Set(u8, usize, u8),
    Delete(u8),
    Get(u8),
    Rename(u8, u8),
    Commit,
    Abort,
}

fn txn_step() -> impl Strategy<Value = TxnStep> {
    let len = prop_oneof![Just(0usize), 1..=128usize, 129..=6000usize];
    prop_oneof![
        4 => (0..10u8, len, any::<u8>()).prop_map(|(k, l, b)| TxnStep::Set(k, l, b)),
        2 => (0..10u8).prop_map(TxnStep::Delete),
        2 => (0..10u8).prop_map(TxnStep::Get),
        1 => (0..10u8, 0..10u8).prop_map(|(a, b)| TxnStep::Rename(a, b)),
        1 => Just(TxnStep::Commit),
        1 => Just(TxnStep::Abort),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Transactions against a model: a committed map, plus the open
    /// transaction's view. Outside readers must only ever see committed.
    #[test]
    fn transactions_match_model(steps in proptest::collection::vec(txn_step(), 1..100)) {
        let opts = Options { max_keys: 256, value_mem_bytes: 8 << 20, slots: 2, ..Options::default() };
        let db = Db::open(&opts).unwrap();
        let meta = NewMeta { mode: 0o100644, ..NewMeta::default() };
        let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut view = committed.clone();
        let mut txn = db.begin(false).unwrap();
        let mut out = Vec::new();
        for st in steps {
            match st {
                TxnStep::Set(k, len, b) => {
                    let v = vec![b; len];
                    txn.set(&key(k), &v, meta, SetFlags::default()).unwrap();
                    view.insert(key(k), v);
                }
                TxnStep::Delete(k) => {
                    let r = txn.delete(&key(k));
                    prop_assert_eq!(r.is_ok(), view.remove(&key(k)).is_some());
                }
                TxnStep::Get(k) => {
                    let r = txn.get(&key(k), &mut out);
                    match view.get(&key(k)) {
                        Some(v) => { prop_assert!(r.is_ok()); prop_assert_eq!(&out, v); }
                        None => prop_assert_eq!(r.unwrap_err().errno, libc::ENOENT),
                    }
                }
                TxnStep::Rename(a, b) => {
                    let r = txn.rename(&key(a), &key(b), false);
                    match view.remove(&key(a)) {
                        Some(v) => { prop_assert!(r.is_ok(), "{:?}", r); view.insert(key(b), v); }
                        None => prop_assert_eq!(r.unwrap_err().errno, libc::ENOENT),
                    }
                }
                TxnStep::Commit => {
                    txn.commit().unwrap();
                    committed = view.clone();
                    txn = db.begin(false).unwrap();
                }
                TxnStep::Abort => {
                    txn.abort().unwrap();
                    view = committed.clone();
                    txn = db.begin(false).unwrap();
                }
            }
            // The transaction's listing is its view.
            let mut names = Vec::new();
            txn.scan(|n| names.push(n.to_vec())).unwrap();
            names.sort();
            prop_assert_eq!(&names, &view.keys().cloned().collect::<Vec<_>>());
            // A snapshot sees exactly the committed state.
            let snap = db.begin(true).unwrap();
            let mut snap_names = Vec::new();
            snap.scan(|n| snap_names.push(n.to_vec())).unwrap();
            snap_names.sort();
            prop_assert_eq!(&snap_names, &committed.keys().cloned().collect::<Vec<_>>());
            for (k, v) in &committed {
                snap.get(k, &mut out).unwrap();
                prop_assert_eq!(&out, v);
            }
        }
        drop(txn);
        let stats = db.stats();
        prop_assert_eq!(stats.keys as usize, committed.len());
        prop_assert_eq!(stats.value_bytes as usize, committed.values().map(Vec::len).sum::<usize>());
        prop_assert_eq!(stats.txn_active, 0);
    }
}

/// A key's value and the mode its metadata carries.
type Entry = (Vec<u8>, u32);

#[derive(Clone, Debug)]
enum FullStep {
    /// key, length, fill byte, flags (0: plain, 1: no_replace, 2: must_exist)
    Set(u8, usize, u8, u8),
    SetMeta(u8, u16),
    Delete(u8),
    Rename(u8, u8, bool),
    /// Hold a snapshot of this moment (at most MAX_SNAPS held).
    Snapshot,
    /// Stop holding the snapshot with this index (mod the held count).
    EndSnapshot(u8),
    /// Create or delete BULK_KEYS long-named keys: listings need several
    /// batches.
    Bulk(bool),
    Checkpoint,
    Restart,
}

const MAX_SNAPS: usize = 3;
/// More than one scan batch (2048 keys).
const BULK_KEYS: usize = 2100;

fn bulk_key(i: usize) -> Vec<u8> {
    format!("bulk{i:05}-{}", "b".repeat(200)).into_bytes()
}

fn full_step() -> impl Strategy<Value = FullStep> {
    let len = prop_oneof![
        Just(0usize),
        1..=128usize,
        129..=4096usize,
        4097..=12_000usize
    ];
    prop_oneof![
        6 => (0..10u8, len, any::<u8>(), 0..3u8).prop_map(|(k, l, b, f)| FullStep::Set(k, l, b, f)),
        2 => (0..10u8, any::<u16>()).prop_map(|(k, m)| FullStep::SetMeta(k, m)),
        2 => (0..10u8).prop_map(FullStep::Delete),
        2 => (0..10u8, 0..10u8, any::<bool>()).prop_map(|(a, b, n)| FullStep::Rename(a, b, n)),
        2 => Just(FullStep::Snapshot),
        1 => any::<u8>().prop_map(FullStep::EndSnapshot),
        1 => any::<bool>().prop_map(FullStep::Bulk),
        1 => Just(FullStep::Checkpoint),
        1 => Just(FullStep::Restart),
    ]
}

/// Names and contents `view` shows (a snapshot, or autocommit reads).
fn check_view(
    what: &str,
    scan: impl FnOnce(&mut dyn FnMut(&[u8])) -> bpfdb::Result<()>,
    mut get: impl FnMut(&[u8], &mut Vec<u8>) -> bpfdb::Result<bpfdb::Stat>,
    model: &BTreeMap<Vec<u8>, Entry>,
) -> Result<(), TestCaseError> {
    let mut names = Vec::new();
    scan(&mut |n| names.push(n.to_vec()))
        .map_err(|e| TestCaseError::fail(format!("{what}: scan: {e}")))?;
    names.sort();
    let want: Vec<Vec<u8>> = model.keys().cloned().collect();
    prop_assert!(
        names == want,
        "{}: listing has {} names, model {}",
        what,
        names.len(),
        want.len()
    );
    let mut out = Vec::new();
    // Values of the small keys (bulk keys all hold the same byte).
    for (k, (v, mode)) in model.iter().filter(|(k, _)| !k.starts_with(b"bulk")) {
        let st = get(k, &mut out).map_err(|e| TestCaseError::fail(format!("{what}: get: {e}")))?;
        prop_assert_eq!(
            &out,
            v,
            "{}: value of {:?}",
            what,
            String::from_utf8_lossy(k)
        );
        prop_assert_eq!(
            st.meta.mode,
            *mode,
            "{}: mode of {:?}",
            what,
            String::from_utf8_lossy(k)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Snapshots held across writes (GC and storage shared by metadata-only
    /// writes and renames), metadata-only writes, the no-replace and
    /// must-exist flags, listings of many batches, checkpoints and restarts
    /// (recovery from checkpoint and log), against a model.
    #[test]
    fn engine_with_snapshots_and_restarts_matches_model(
        steps in proptest::collection::vec(full_step(), 1..60)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            max_keys: 8192,
            value_mem_bytes: 16 << 20,
            slots: 2,
            data_dir: Some(dir.path().to_path_buf()),
            sync: bpfdb::SyncMode::None,
            ..Options::default()
        };
        let mut db = Db::open(&opts).unwrap();
        let mut model: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut snaps: Vec<(bpfdb::Txn, BTreeMap<Vec<u8>, Entry>)> = Vec::new();
        let meta = |mode: u32| NewMeta { mode, ..NewMeta::default() };
        for st in steps {
            match st {
                FullStep::Set(k, len, b, f) => {
                    let v = vec![b; len];
                    let flags = SetFlags { no_replace: f == 1, must_exist: f == 2 };
                    let r = db.session().set(&key(k), &v, meta(0o100644), flags);
                    let exists = model.contains_key(&key(k));
                    if flags.no_replace && exists {
                        prop_assert_eq!(r.unwrap_err().errno, libc::EEXIST);
                    } else if flags.must_exist && !exists {
                        prop_assert_eq!(r.unwrap_err().errno, libc::ENOENT);
                    } else {
                        prop_assert!(r.is_ok(), "set: {:?}", r);
                        model.insert(key(k), (v, 0o100644));
                    }
                }
                FullStep::SetMeta(k, m) => {
                    let mode = 0o100000 | u32::from(m & 0o7777);
                    let r = db.session().set_meta(&key(k), meta(mode));
                    match model.get_mut(&key(k)) {
                        Some(e) => { prop_assert!(r.is_ok(), "set_meta: {:?}", r); e.1 = mode; }
                        None => prop_assert_eq!(r.unwrap_err().errno, libc::ENOENT),
                    }
                }
                FullStep::Delete(k) => {
                    let r = db.session().delete(&key(k));
                    prop_assert_eq!(r.is_ok(), model.remove(&key(k)).is_some());
                }
                FullStep::Rename(a, b, no_replace) => {
                    let r = db.session().rename(&key(a), &key(b), no_replace);
                    if !model.contains_key(&key(a)) {
                        prop_assert_eq!(r.unwrap_err().errno, libc::ENOENT);
                    } else if a == b {
                        prop_assert!(r.is_ok());
                    } else if no_replace && model.contains_key(&key(b)) {
                        prop_assert_eq!(r.unwrap_err().errno, libc::EEXIST);
                    } else {
                        prop_assert!(r.is_ok(), "rename: {:?}", r);
                        let e = model.remove(&key(a)).unwrap();
                        model.insert(key(b), e);
                    }
                }
                FullStep::Snapshot => {
                    if snaps.len() < MAX_SNAPS {
                        snaps.push((db.begin(true).unwrap(), model.clone()));
                    }
                }
                FullStep::EndSnapshot(i) => {
                    if !snaps.is_empty() {
                        let i = usize::from(i) % snaps.len();
                        drop(snaps.remove(i));
                    }
                }
                FullStep::Bulk(create) => {
                    let mut s = db.session();
                    for i in 0..BULK_KEYS {
                        let k = bulk_key(i);
                        if create {
                            s.set(&k, b"x", meta(0o100644), SetFlags::default()).unwrap();
                            model.insert(k, (b"x".to_vec(), 0o100644));
                        } else if model.remove(&k).is_some() {
                            s.delete(&k).unwrap();
                        }
                    }
                }
                FullStep::Checkpoint => {
                    db.checkpoint().unwrap();
                }
                FullStep::Restart => {
                    // Snapshots end with the daemon that held them.
                    snaps.clear();
                    drop(db);
                    db = Db::open(&opts).unwrap();
                }
            }
            check_view("autocommit", |f| db.session().scan(f), |k, o| db.session().get(k, o), &model)?;
            for (i, (snap, frozen)) in snaps.iter().enumerate() {
                check_view(&format!("snapshot {i}"), |f| snap.scan(f), |k, o| snap.get(k, o), frozen)?;
            }
        }
        snaps.clear();
        let stats = db.stats();
        prop_assert_eq!(stats.keys as usize, model.len());
        prop_assert_eq!(stats.value_bytes as usize, model.values().map(|e| e.0.len()).sum::<usize>());
    }
}
