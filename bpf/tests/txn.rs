//! Transaction tests on the real engine: visibility, isolation anomalies,
//! conflicts, snapshots, GC, limits, and a concurrent bank.

use bpfdb::{Db, NewMeta, Options, SetFlags, TxnState};

/// Phantoms of a scan: the lock on the top-level keys.
#[path = "txn/phantoms.rs"]
mod phantoms;

fn db() -> Db {
    let opts = Options {
        max_keys: 4096,
        value_mem_bytes: 16 << 20,
        slots: 8,
        ..Options::default()
    };
    Db::open(&opts).unwrap_or_else(|e| panic!("open engine: {e}"))
}

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    }
}

fn put(db: &Db, k: &str, v: &str) {
    db.session()
        .set(k.as_bytes(), v.as_bytes(), meta(), SetFlags::default())
        .unwrap();
}

fn get(db: &Db, k: &str) -> Option<String> {
    let mut out = Vec::new();
    match db.session().get(k.as_bytes(), &mut out) {
        Ok(_) => Some(String::from_utf8(out).unwrap()),
        Err(e) if e.errno == libc::ENOENT => None,
        Err(e) => panic!("get {k}: {e}"),
    }
}

fn tget(t: &bpfdb::Txn, k: &str) -> Result<Option<String>, i32> {
    let mut out = Vec::new();
    match t.get(k.as_bytes(), &mut out) {
        Ok(_) => Ok(Some(String::from_utf8(out).unwrap())),
        Err(e) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e.errno),
    }
}

fn tset(t: &bpfdb::Txn, k: &str, v: &str) -> Result<(), i32> {
    t.set(k.as_bytes(), v.as_bytes(), meta(), SetFlags::default())
        .map(|_| ())
        .map_err(|e| e.errno)
}

#[test]
fn commit_publishes_all_writes_at_once_and_abort_none() {
    let db = db();
    put(&db, "alice", "100");
    put(&db, "bob", "0");
    let t = db.begin(false).unwrap();
    tset(&t, "alice", "50").unwrap();
    tset(&t, "bob", "50").unwrap();
    tset(&t, "carol", "new").unwrap();
    t.delete(b"bob").unwrap();
    // Own writes visible inside, nothing outside.
    assert_eq!(tget(&t, "alice"), Ok(Some("50".into())));
    assert_eq!(tget(&t, "bob"), Ok(None));
    assert_eq!(get(&db, "alice").as_deref(), Some("100"));
    assert_eq!(get(&db, "bob").as_deref(), Some("0"));
    assert_eq!(get(&db, "carol"), None);
    let mut names = Vec::new();
    t.scan(|n| names.push(String::from_utf8(n.to_vec()).unwrap()))
        .unwrap();
    names.sort();
    assert_eq!(names, ["alice", "carol"]);
    let ts = t.commit().unwrap();
    assert_eq!(t.state(), TxnState::Committed { ts });
    assert_eq!(get(&db, "alice").as_deref(), Some("50"));
    assert_eq!(get(&db, "bob"), None);
    assert_eq!(get(&db, "carol").as_deref(), Some("new"));
    assert_eq!(db.stats().keys, 2);

    let before = db.stats();
    let t = db.begin(false).unwrap();
    tset(&t, "alice", &"x".repeat(9000)).unwrap();
    tset(&t, "dave", "d").unwrap();
    t.delete(b"carol").unwrap();
    t.abort().unwrap();
    assert_eq!(tget(&t, "alice"), Err(libc::ECANCELED));
    assert_eq!(get(&db, "alice").as_deref(), Some("50"));
    assert_eq!(get(&db, "carol").as_deref(), Some("new"));
    assert_eq!(get(&db, "dave"), None);
    let after = db.stats();
    assert_eq!(
        (after.pages_used, after.small_used, after.keys),
        (before.pages_used, before.small_used, before.keys)
    );
}

#[test]
fn dirty_read_is_prevented() {
    let db = db();
    put(&db, "x", "1");
    let t1 = db.begin(false).unwrap();
    tset(&t1, "x", "2").unwrap();
    let t2 = db.begin(false).unwrap();
    assert_eq!(
        tget(&t2, "x"),
        Err(libc::EBUSY),
        "read of an uncommitted write must conflict"
    );
    assert!(matches!(t2.state(), TxnState::Aborted { .. }));
    assert_eq!(tget(&t2, "x"), Err(libc::ECANCELED));
    // Autocommit readers and snapshots see the committed value, never "2".
    assert_eq!(get(&db, "x").as_deref(), Some("1"));
    let s = db.begin(true).unwrap();
    assert_eq!(tget(&s, "x"), Ok(Some("1".into())));
    t1.commit().unwrap();
    assert_eq!(tget(&s, "x"), Ok(Some("1".into())), "snapshot is stable");
    assert_eq!(get(&db, "x").as_deref(), Some("2"));
}

#[test]
fn lost_update_is_prevented() {
    let db = db();
    put(&db, "counter", "10");
    let t1 = db.begin(false).unwrap();
    let t2 = db.begin(false).unwrap();
    assert_eq!(tget(&t1, "counter"), Ok(Some("10".into())));
    assert_eq!(tget(&t2, "counter"), Ok(Some("10".into())));
    // Both read 10; the first to write cannot upgrade past the other reader.
    assert_eq!(tset(&t1, "counter", "11"), Err(libc::EBUSY));
    assert!(matches!(t1.state(), TxnState::Aborted { .. }));
    tset(&t2, "counter", "11").unwrap();
    t2.commit().unwrap();
    assert_eq!(get(&db, "counter").as_deref(), Some("11"));
}

#[test]
fn write_skew_is_prevented() {
    // Invariant: at least one doctor on call. Each txn checks the other and
    // takes itself off; serializable execution lets only one succeed.
    let db = db();
    put(&db, "alice_on_call", "1");
    put(&db, "bob_on_call", "1");
    let t1 = db.begin(false).unwrap();
    let t2 = db.begin(false).unwrap();
    assert_eq!(tget(&t1, "bob_on_call"), Ok(Some("1".into())));
    assert_eq!(tget(&t2, "alice_on_call"), Ok(Some("1".into())));
    let r1 = tset(&t1, "alice_on_call", "0");
    let r2 = tset(&t2, "bob_on_call", "0");
    // t2 read alice (S); t1 writing alice conflicts. Then t2 writes bob,
    // which t1 read: whichever came second fails.
    assert_eq!(r1, Err(libc::EBUSY));
    assert_eq!(r2, Ok(()));
    t2.commit().unwrap();
    let on_call = [get(&db, "alice_on_call"), get(&db, "bob_on_call")];
    assert!(on_call.contains(&Some("1".to_string())), "{on_call:?}");
}

#[test]
fn read_skew_is_prevented_by_snapshots() {
    let db = db();
    put(&db, "a", "50");
    put(&db, "b", "50");
    let snap = db.begin(true).unwrap();
    assert_eq!(tget(&snap, "a"), Ok(Some("50".into())));
    // A transfer commits between the snapshot's two reads.
    let t = db.begin(false).unwrap();
    tset(&t, "a", "0").unwrap();
    tset(&t, "b", "100").unwrap();
    t.commit().unwrap();
    assert_eq!(
        tget(&snap, "b"),
        Ok(Some("50".into())),
        "snapshot must not see half of history"
    );
    assert_eq!(tset(&snap, "a", "1"), Err(libc::EROFS));
    snap.commit().unwrap();
}

#[test]
fn phantom_insert_of_a_read_missing_key_conflicts() {
    let db = db();
    let t1 = db.begin(false).unwrap();
    assert_eq!(tget(&t1, "ghost"), Ok(None));
    let err = db
        .session()
        .set(b"ghost", b"boo", meta(), SetFlags::default())
        .unwrap_err();
    assert_eq!(err.errno, libc::EBUSY, "{err}");
    t1.commit().unwrap();
    put(&db, "ghost", "boo");
    assert_eq!(db.stats().records, 1);
}

#[test]
fn autocommit_writes_conflict_with_transactions() {
    let db = db();
    put(&db, "k", "v");
    let t = db.begin(false).unwrap();
    tset(&t, "k", "w").unwrap();
    let mut s = db.session();
    assert_eq!(
        s.set(b"k", b"z", meta(), SetFlags::default())
            .unwrap_err()
            .errno,
        libc::EBUSY
    );
    assert_eq!(s.delete(b"k").unwrap_err().errno, libc::EBUSY);
    assert_eq!(s.rename(b"k", b"k2", false).unwrap_err().errno, libc::EBUSY);
    drop(s);
    t.commit().unwrap();
    assert_eq!(get(&db, "k").as_deref(), Some("w"));
}

#[test]
fn snapshots_keep_old_versions_until_they_end() {
    let db = db();
    put(&db, "k", "v0");
    let snap = db.begin(true).unwrap();
    for i in 1..4 {
        put(&db, "k", &format!("v{i}"));
    }
    // Versions: v0 (seen by snap), v3 current; v1 and v2, seen by no
    // snapshot, reclaimed although older snapshots are open.
    assert_eq!(tget(&snap, "k"), Ok(Some("v0".into())));
    assert_eq!(db.stats().small_used, 2);
    let snap2 = db.begin(true).unwrap();
    put(&db, "k", "v4");
    let snap3 = db.begin(true).unwrap();
    put(&db, "k", "v5");
    // v0, v3, v4, v5 all needed: the array is full.
    let err = db
        .session()
        .set(b"k", b"v6", meta(), SetFlags::default())
        .unwrap_err();
    assert_eq!(err.errno, libc::EBUSY);
    assert!(err.msg.contains("still needed"), "{err}");
    assert_eq!(tget(&snap2, "k"), Ok(Some("v3".into())));
    assert_eq!(tget(&snap3, "k"), Ok(Some("v4".into())));
    drop(snap);
    drop(snap2);
    drop(snap3);
    put(&db, "k", "v6");
    put(&db, "k", "v7");
    assert_eq!(get(&db, "k").as_deref(), Some("v7"));
    assert_eq!(
        db.stats().small_used,
        1,
        "old versions reclaimed once no snapshot needs them"
    );
}

#[test]
fn lock_set_limit_aborts_with_clear_error() {
    let db = db();
    let t = db.begin(false).unwrap();
    for i in 0..128 {
        tset(&t, &format!("k{i}"), "v").unwrap();
    }
    let err = t
        .set(b"k128", b"v", meta(), SetFlags::default())
        .unwrap_err();
    assert_eq!(err.errno, libc::ENOSPC);
    assert!(matches!(t.state(), TxnState::Aborted { .. }));
    assert_eq!(db.stats().keys, 0);
    assert_eq!(db.stats().records, 0, "placeholder records released");
}

#[test]
fn rename_inside_a_transaction() {
    let db = db();
    put(&db, "a", "value");
    let t = db.begin(false).unwrap();
    t.rename(b"a", b"b", false).unwrap();
    assert_eq!(tget(&t, "a"), Ok(None));
    assert_eq!(tget(&t, "b"), Ok(Some("value".into())));
    assert_eq!(get(&db, "a").as_deref(), Some("value"));
    t.commit().unwrap();
    assert_eq!(get(&db, "a"), None);
    assert_eq!(get(&db, "b").as_deref(), Some("value"));
}

#[test]
fn transaction_table_is_bounded() {
    let opts = Options {
        max_keys: 64,
        value_mem_bytes: 4 << 20,
        slots: 2,
        max_txns: 3,
        ..Options::default()
    };
    let db = Db::open(&opts).unwrap();
    let held: Vec<_> = (0..3).map(|_| db.begin(true).unwrap()).collect();
    assert_eq!(db.begin(false).unwrap_err().errno, libc::EAGAIN);
    drop(held);
    db.begin(false).unwrap();
}

#[test]
fn bank_transfers_keep_the_total() {
    const ACCOUNTS: usize = 8;
    const WORKERS: usize = 3;
    const TRANSFERS: usize = 300;
    let db = db();
    for a in 0..ACCOUNTS {
        put(&db, &format!("acct{a}"), "100");
    }
    let total = (ACCOUNTS * 100) as i64;
    let committed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for w in 0..WORKERS {
            let (db, committed) = (&db, &committed);
            sc.spawn(move || {
                let mut done = 0;
                let mut attempt = 0u64;
                while done < TRANSFERS {
                    attempt += 1;
                    let from = (attempt as usize * 7 + w) % ACCOUNTS;
                    let to = (attempt as usize * 3 + w + 1) % ACCOUNTS;
                    if from == to {
                        continue;
                    }
                    let amount = (attempt % 13) as i64 + 1;
                    let t = db.begin(false).unwrap();
                    let run = || -> Result<u64, i32> {
                        let f: i64 = tget(&t, &format!("acct{from}"))?.unwrap().parse().unwrap();
                        let g: i64 = tget(&t, &format!("acct{to}"))?.unwrap().parse().unwrap();
                        tset(&t, &format!("acct{from}"), &(f - amount).to_string())?;
                        tset(&t, &format!("acct{to}"), &(g + amount).to_string())?;
                        t.commit().map_err(|e| e.errno)
                    };
                    match run() {
                        Ok(ts) => {
                            committed.lock().unwrap().push((ts, from, to, amount));
                            done += 1;
                        }
                        Err(e) => assert!(e == libc::EBUSY || e == libc::ECANCELED, "errno {e}"),
                    }
                }
            });
        }
        let db = &db;
        sc.spawn(move || {
            for _ in 0..300 {
                let s = db.begin(true).unwrap();
                let sum: i64 = (0..ACCOUNTS)
                    .map(|a| {
                        tget(&s, &format!("acct{a}"))
                            .unwrap()
                            .unwrap()
                            .parse::<i64>()
                            .unwrap()
                    })
                    .sum();
                assert_eq!(sum, total, "snapshot saw a partial transfer");
            }
        });
    });
    // Replay the committed transfers in commit order against a model.
    let mut log = committed.into_inner().unwrap();
    log.sort();
    let mut model = [100i64; ACCOUNTS];
    for (_, from, to, amount) in &log {
        model[*from] -= amount;
        model[*to] += amount;
    }
    for (a, want) in model.iter().enumerate() {
        assert_eq!(get(&db, &format!("acct{a}")), Some(want.to_string()));
    }
    assert_eq!(log.len(), WORKERS * TRANSFERS);
    assert_eq!(db.stats().txn_active, 0);
}

#[test]
fn storage_shared_by_rename_and_chmod_outlives_old_snapshots() {
    let db = db();
    let value = "p".repeat(6000);
    put(&db, "a", &value);
    let snap = db.begin(true).unwrap();
    let mut s = db.session();
    // chmod hands the storage to a new version; rename hands it to "b".
    s.set_meta(
        b"a",
        NewMeta {
            mode: 0o100600,
            ..meta()
        },
    )
    .unwrap();
    s.rename(b"a", b"b", false).unwrap();
    // Overwrite b twice: its versions end; the storage must survive for
    // the snapshot, which still reads the original "a".
    s.set(b"b", b"second", meta(), SetFlags::default()).unwrap();
    s.set(b"b", b"third", meta(), SetFlags::default()).unwrap();
    s.set(
        b"filler",
        "f".repeat(6000).as_bytes(),
        meta(),
        SetFlags::default(),
    )
    .unwrap();
    drop(s);
    assert!(
        tget(&snap, "a") == Ok(Some(value.clone())),
        "snapshot read reclaimed storage"
    );
    assert_eq!(tget(&snap, "b"), Ok(None));
    drop(snap);
    put(&db, "b", "fourth");
    put(&db, "b", "fifth");
    // Only what filler and b's "fifth" take is left.
    let st = db.stats();
    let (f, b) = (
        bpfdb::abi::value_storage(6000),
        bpfdb::abi::value_storage(5),
    );
    assert_eq!(
        (
            st.small_used * bpfdb::abi::GRANULE as u64,
            st.pages_used * bpfdb::abi::PAGE_SIZE as u64
        ),
        ((f.0 + b.0) as u64, (f.1 + b.1) as u64),
        "shared storage freed once the snapshot ended: {st:?}"
    );
}

#[test]
fn rename_onto_a_key_whose_ended_version_gc_reclaims_makes_the_key() {
    // k's only version, the first of its record (a rename made it), ends while a snapshot needs
    // it. Once the snapshot is gone, a rename onto k reclaims that version and may take its
    // index for the new one: the commit must not end the new version as if it were the old.
    let db = db();
    let mut s = db.session();
    put(&db, "a", "old");
    s.rename(b"a", b"k", false).unwrap();
    let snap = db.begin(true).unwrap();
    s.rename(b"k", b"x", false).unwrap();
    drop(snap);
    put(&db, "w", "new");
    s.rename(b"w", b"k", false).unwrap();
    drop(s);
    assert_eq!(get(&db, "k").as_deref(), Some("new"));
    assert_eq!(get(&db, "x").as_deref(), Some("old"));
    assert_eq!(get(&db, "w"), None);
    assert_eq!(db.stats().keys, 2);
}

/// Readers only: transactions taking shared locks on one key never conflict
/// with each other, whether the key exists or not (reading a missing key
/// locks a placeholder record, which its last reader removes). Contention on
/// the lock word (many readers' CAS at once) must be retried, not reported as
/// a lock held by a transaction (which aborted the reader). Threads release
/// the key and take it again in a tight loop so their CAS attempts collide.
fn readers_never_abort(key: &str, present: bool) {
    const THREADS: usize = 4;
    const ROUNDS: usize = 4000;
    let db = Db::open(&Options {
        max_keys: 4096,
        value_mem_bytes: 16 << 20,
        slots: 8,
        // One CAS attempt: any reader arriving at the same moment wins.
        lock_cas_tries: 1,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("open engine: {e}"));
    if present {
        put(&db, key, "v");
    }
    let aborted: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut aborted = 0;
                    for _ in 0..ROUNDS {
                        let t = db.begin(false).unwrap_or_else(|e| panic!("begin: {e}"));
                        match tget(&t, key) {
                            Ok(v) => assert_eq!(v.is_some(), present),
                            Err(_) => aborted += 1,
                        }
                        if t.state() == TxnState::Active {
                            t.commit().unwrap_or_else(|e| panic!("commit: {e}"));
                        }
                    }
                    aborted
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        aborted.iter().sum::<usize>(),
        0,
        "readers of {key} aborted by contention among readers: {aborted:?} of {ROUNDS} per thread"
    );
}

#[test]
fn shared_lock_contention_never_aborts_readers() {
    readers_never_abort("hot", true);
}

#[test]
fn shared_lock_contention_on_a_missing_key_never_aborts_readers() {
    readers_never_abort("missing", false);
}
