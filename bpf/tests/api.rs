//! Engine API tests: the real eBPF engine through the Db API, no filesystem.

use bpfdb::{Db, NewMeta, Options, SetFlags, abi};

fn db_with(max_keys: u32, value_mem_bytes: u64) -> Db {
    let opts = Options {
        max_keys,
        value_mem_bytes,
        slots: 4,
        ..Options::default()
    };
    Db::open(&opts).unwrap_or_else(|e| panic!("open engine: {e}"))
}

fn small_db() -> Db {
    db_with(4096, 16 << 20)
}

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        uid: 1,
        gid: 2,
        mtime_ns: 3,
        ctime_ns: 4,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn set_get_delete_roundtrip() {
    let db = small_db();
    let mut s = db.session();
    let mut out = Vec::new();
    s.set(b"greeting", b"hello\n", meta(), SetFlags::default())
        .unwrap();
    let st = s.get(b"greeting", &mut out).unwrap();
    assert_eq!(out, b"hello\n");
    assert_eq!(st.meta.len, 6);
    assert_eq!(
        (st.meta.mode, st.meta.uid, st.meta.gid, st.meta.mtime_ns),
        (0o100644, 1, 2, 3)
    );
    s.delete(b"greeting").unwrap();
    assert_eq!(
        s.get(b"greeting", &mut out).unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(s.delete(b"greeting").unwrap_err().errno, libc::ENOENT);
}

#[test]
fn every_storage_class_roundtrips() {
    let db = small_db();
    let mut s = db.session();
    let mut out = Vec::new();
    let lens = [
        0,
        1,
        8,
        9,
        24,
        25,
        64,
        65,
        100,
        127,
        128,
        129,
        4095,
        4096,
        4097,
        8192,
        3 * 4096 + 1,
        65536,
        (1 << 20) - 1,
        1 << 20,
    ];
    for len in lens {
        let v = pattern(len, len as u8);
        s.set(b"k", &v, meta(), SetFlags::default()).unwrap();
        s.get(b"k", &mut out).unwrap();
        assert_eq!(out.len(), len);
        assert!(out == v, "value of {len} bytes differs");
        // Overwrites freed every old value: only this one is in use, and it
        // takes what its size class says.
        let st = db.stats();
        let (small, pages) = abi::value_storage(len);
        assert_eq!(
            (
                st.small_used * abi::GRANULE as u64,
                st.pages_used * abi::PAGE_SIZE as u64
            ),
            (small as u64, pages as u64),
            "storage of a value of {len} bytes"
        );
    }
    s.delete(b"k").unwrap();
    let st = db.stats();
    assert_eq!(
        (st.pages_used, st.small_used, st.keys, st.records),
        (0, 0, 0, 0)
    );
}

#[test]
fn limits_give_clear_errnos() {
    let db = small_db();
    let mut s = db.session();
    let long = vec![b'a'; 256];
    assert_eq!(
        s.set(&long, b"x", meta(), SetFlags::default())
            .unwrap_err()
            .errno,
        libc::ENAMETOOLONG
    );
    s.set(&long[..255], b"x", meta(), SetFlags::default())
        .unwrap();
    // '/' is allowed in engine keys (the daemon's directories use it);
    // file names are checked by `check_name`.
    s.set(b"a/b", b"x", meta(), SetFlags::default()).unwrap();
    assert_eq!(bpfdb::check_name(b"a/b").unwrap_err().errno, libc::EINVAL);
    assert_eq!(
        s.set(b"a\0b", b"x", meta(), SetFlags::default())
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    assert_eq!(
        s.set(b"", b"x", meta(), SetFlags::default())
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    let big = vec![0u8; (1 << 20) + 1];
    assert_eq!(
        s.set(b"big", &big, meta(), SetFlags::default())
            .unwrap_err()
            .errno,
        libc::EFBIG
    );
    let no_replace = SetFlags {
        no_replace: true,
        ..SetFlags::default()
    };
    assert_eq!(
        s.set(&long[..255], b"y", meta(), no_replace)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    let must_exist = SetFlags {
        must_exist: true,
        ..SetFlags::default()
    };
    assert_eq!(
        s.set(b"nope", b"y", meta(), must_exist).unwrap_err().errno,
        libc::ENOENT
    );
}

#[test]
fn key_table_full_is_enospc_and_keeps_data() {
    let db = db_with(16, 8 << 20);
    let mut s = db.session();
    let mut n = 0;
    let err = loop {
        match s.set(
            format!("k{n}").as_bytes(),
            b"v",
            meta(),
            SetFlags::default(),
        ) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000, "key table never filled");
    };
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
    assert!(n >= 16);
    let mut out = Vec::new();
    for i in 0..n {
        s.get(format!("k{i}").as_bytes(), &mut out).unwrap();
        assert_eq!(out, b"v");
    }
    s.delete(b"k0").unwrap();
    s.set(b"again", b"w", meta(), SetFlags::default()).unwrap();
}

#[test]
fn value_memory_full_is_enospc_and_keeps_data() {
    // 2 MiB of pages: two 1 MiB values (256 pages each) fit, a third does not.
    let db = db_with(64, 2 << 20);
    let mut s = db.session();
    let v1 = pattern(1 << 20, 1);
    s.set(b"one", &v1, meta(), SetFlags::default()).unwrap();
    s.set(b"two", &pattern(1 << 20, 2), meta(), SetFlags::default())
        .unwrap();
    let err = s
        .set(b"three", &pattern(1 << 20, 3), meta(), SetFlags::default())
        .unwrap_err();
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
    // Overwriting needs room for both versions at once: refused, old kept.
    assert_eq!(
        s.set(b"one", &pattern(1 << 20, 4), meta(), SetFlags::default())
            .unwrap_err()
            .errno,
        libc::ENOSPC
    );
    let mut out = Vec::new();
    s.get(b"one", &mut out).unwrap();
    assert!(out == v1);
    assert_eq!(s.get(b"three", &mut out).unwrap_err().errno, libc::ENOENT);
    s.delete(b"one").unwrap();
    s.set(b"three", &pattern(1 << 20, 3), meta(), SetFlags::default())
        .unwrap();
}

#[test]
fn rename_moves_and_replaces_atomically() {
    let db = small_db();
    let mut s = db.session();
    let mut out = Vec::new();
    s.set(b"a", &pattern(5000, 7), meta(), SetFlags::default())
        .unwrap();
    s.set(b"b", b"old", meta(), SetFlags::default()).unwrap();
    assert_eq!(s.rename(b"a", b"b", true).unwrap_err().errno, libc::EEXIST);
    s.rename(b"a", b"b", false).unwrap();
    assert_eq!(s.get(b"a", &mut out).unwrap_err().errno, libc::ENOENT);
    s.get(b"b", &mut out).unwrap();
    assert!(out == pattern(5000, 7));
    s.rename(b"b", b"b", false).unwrap();
    s.get(b"b", &mut out).unwrap();
    assert_eq!(out.len(), 5000);
    assert_eq!(
        s.rename(b"missing", b"c", false).unwrap_err().errno,
        libc::ENOENT
    );
    s.delete(b"b").unwrap();
    let st = db.stats();
    assert_eq!((st.pages_used, st.small_used, st.keys), (0, 0, 0), "{st:?}");
}

#[test]
fn set_meta_keeps_value() {
    let db = small_db();
    let mut s = db.session();
    let mut out = Vec::new();
    s.set(b"f", &pattern(300, 1), meta(), SetFlags::default())
        .unwrap();
    let m = NewMeta {
        mode: 0o100600,
        uid: 1234,
        gid: 5678,
        mtime_ns: 99,
        ctime_ns: 100,
    };
    s.set_meta(b"f", m).unwrap();
    let st = s.get(b"f", &mut out).unwrap();
    assert!(out == pattern(300, 1));
    assert_eq!(
        (st.meta.mode, st.meta.uid, st.meta.gid, st.meta.mtime_ns),
        (0o100600, 1234, 5678, 99)
    );
    assert_eq!(s.set_meta(b"g", m).unwrap_err().errno, libc::ENOENT);
    s.delete(b"f").unwrap();
    assert_eq!(db.stats().pages_used, 0);
}

#[test]
fn scan_lists_every_live_key() {
    let db = db_with(20_000, 16 << 20);
    let mut s = db.session();
    for i in 0..10_000 {
        s.set(
            format!("key-{i:05}").as_bytes(),
            b"",
            meta(),
            SetFlags::default(),
        )
        .unwrap();
    }
    s.delete(b"key-00042").unwrap();
    let mut names = Vec::new();
    s.scan(|n| names.push(String::from_utf8(n.to_vec()).unwrap()))
        .unwrap();
    names.sort();
    assert_eq!(names.len(), 9_999);
    assert!(!names.contains(&"key-00042".to_string()));
    assert_eq!(names[0], "key-00000");
}

#[test]
fn two_engines_in_one_process_are_independent() {
    let a = small_db();
    let b = small_db();
    let mut sa = a.session();
    let mut sb = b.session();
    sa.set(b"k", b"from a", meta(), SetFlags::default())
        .unwrap();
    sb.set(b"k", b"from b", meta(), SetFlags::default())
        .unwrap();
    let mut out = Vec::new();
    sa.get(b"k", &mut out).unwrap();
    assert_eq!(out, b"from a");
    sb.get(b"k", &mut out).unwrap();
    assert_eq!(out, b"from b");
    assert_eq!(a.stats().keys, 1);
    assert_eq!(b.stats().keys, 1);
}

#[test]
fn concurrent_writers_and_readers_never_see_torn_values() {
    let db = db_with(4096, 64 << 20);
    const WRITERS: usize = 3;
    const ROUNDS: usize = 300;
    // Every value written to "shared" is one byte repeated; a torn read
    // would mix bytes or have a length no writer used.
    std::thread::scope(|sc| {
        for w in 0..WRITERS {
            let db = &db;
            sc.spawn(move || {
                let mut s = db.session();
                for r in 0..ROUNDS {
                    let len = [10, 200, 5000, 70_000][r % 4];
                    let v = vec![b'a' + w as u8; len];
                    s.set(b"shared", &v, meta(), SetFlags::default()).unwrap();
                    s.set(
                        format!("own-{w}-{r}").as_bytes(),
                        &v,
                        meta(),
                        SetFlags::default(),
                    )
                    .unwrap();
                }
            });
        }
        let db = &db;
        sc.spawn(move || {
            let mut s = db.session();
            let mut out = Vec::new();
            for _ in 0..ROUNDS * 4 {
                match s.get(b"shared", &mut out) {
                    Ok(_) => {
                        assert!(
                            [10, 200, 5000, 70_000].contains(&out.len()),
                            "torn length {}",
                            out.len()
                        );
                        assert!(out.iter().all(|&b| b == out[0]), "mixed bytes");
                    }
                    Err(e) => assert_eq!(e.errno, libc::ENOENT, "{e}"),
                }
            }
        });
    });
    assert_eq!(db.stats().keys as usize, 1 + WRITERS * ROUNDS);
}

/// A lock-free GET of a key that exists the whole time finds it, even when
/// writers replace it and GC reclaims the version the reader's clock
/// pointed at, all between the reader's first two loads. The engine's test
/// pause (`read_pause_loops`) holds the reader in that window; the writer
/// waits until the engine has counted the reader's GET (it is inside, its
/// clock read), replaces the key three times (GC reclaims the versions
/// ended behind it), then stands still until the GET returns, so nothing
/// changes after the window.
#[test]
fn a_key_that_always_exists_is_never_missing_to_a_reader_that_gc_overtakes() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let db = Db::open(&Options {
        max_keys: 1024,
        value_mem_bytes: 8 << 20,
        slots: 4,
        read_pause_loops: 2_000_000,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("open engine: {e}"));
    const ROUNDS: u64 = 20;
    const OVERWRITES: u64 = 3;
    let gets = || db.stats().ops[bpfdb::abi::Op::Get as usize];
    let mut s = db.session();
    s.set(b"k", b"first", meta(), SetFlags::default()).unwrap();
    // The round the reader is in, and the GET count it was at before it.
    let round = AtomicU64::new(0);
    let gets_before = AtomicU64::new(0);
    let missing = std::thread::scope(|sc| {
        let (db, round, gets_before, gets) = (&db, &round, &gets_before, &gets);
        sc.spawn(move || {
            let mut w = db.session();
            for r in 1..=ROUNDS {
                while round.load(SeqCst) < r {
                    std::hint::spin_loop();
                }
                while gets() <= gets_before.load(SeqCst) {
                    std::hint::spin_loop();
                }
                for n in 0..OVERWRITES {
                    w.set(
                        b"k",
                        &(r * 10 + n).to_le_bytes(),
                        meta(),
                        SetFlags::default(),
                    )
                    .unwrap();
                }
            }
        });
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for r in 1..=ROUNDS {
            gets_before.store(gets(), SeqCst);
            round.store(r, SeqCst);
            match s.get(b"k", &mut out) {
                Ok(_) => {}
                Err(e) if e.errno == libc::ENOENT => missing.push(r),
                Err(e) => panic!("round {r}: {e}"),
            }
        }
        missing
    });
    assert!(
        missing.is_empty(),
        "rounds {missing:?} of {ROUNDS} found an existing key missing"
    );
}
