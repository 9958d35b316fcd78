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
