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
