//! Checkpoints on the real engine, streamed to disk and back: every value
//! size and the longest names round-trip through a restart; a damaged
//! checkpoint is refused before any of its entries reaches the engine; the
//! checkpoints earlier versions wrote (3, 2 and 1) are still read. The
//! memory bound is checked in `checkpoint_memory.rs`, alone in its process.
//!
//! The checkpoint's bytes are read and built here by code of this file
//! only (`parse` and `old_image`, the whole-image writer the streaming one
//! replaced), not by the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bpfdb::{Db, NewMeta, Options, SetFlags, SyncMode, wal};
use libbpf_rs::{MapCore, MapHandle};

fn opts(dir: &Path) -> Options {
    Options {
        max_keys: 16_384,
        value_mem_bytes: 96 << 20,
        slots: 4,
        data_dir: Some(dir.to_path_buf()),
        sync: SyncMode::None,
        wal_buffer_bytes: 8 << 20,
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    }
}

fn meta(i: u64) -> NewMeta {
    NewMeta {
        mode: 0o100600 + (i % 64) as u32,
        uid: i as u32,
        gid: 1000 + (i % 7) as u32,
        mtime_ns: 1_700_000_000_000_000_000 + i,
        ctime_ns: 1_700_000_000_000_000_000 + 2 * i,
    }
}

/// Every key with its value and metadata.
type Dump = BTreeMap<Vec<u8>, (Vec<u8>, NewMeta)>;

fn dump(db: &Db) -> Dump {
    let mut s = db.session();
    let mut names = Vec::new();
    s.scan(|n| names.push(n.to_vec())).unwrap();
    names
        .into_iter()
        .map(|n| {
            let mut v = Vec::new();
            let st = s.get(&n, &mut v).unwrap();
            (n, (v, NewMeta::of(&st.meta)))
        })
        .collect()
}

/// One entry of a checkpoint: name, metadata, value.
type Entry = (Vec<u8>, NewMeta, Vec<u8>);

/// A checkpoint's fields as the file has them.
#[derive(Debug, PartialEq)]
struct Parsed {
    version: u32,
    next_segment: u64,
    first_seq: Option<u64>,
    entries: Vec<Entry>,
}

/// Reads a checkpoint image the way the whole-image reader did: crc over
/// everything but the last 4 bytes, then the head, then `n_keys` PUT ops
/// (kind 4, or kind 2 without ctime_ns) that must end at the crc.
fn parse(buf: &[u8]) -> Parsed {
    assert!(
        buf.len() >= 36 && &buf[..8] == b"BPFDBCKP",
        "not a checkpoint"
    );
    let (body, crc) = buf.split_at(buf.len() - 4);
    assert_eq!(
        crc32c::crc32c(body).to_le_bytes(),
        crc,
        "checksum of the checkpoint"
    );
    let mut at = 8;
    let mut take = |n: usize| {
        let s = &body[at..at + n];
        at += n;
        s
    };
    let u32_ = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
    let u64_ = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    let version = u32_(take(4));
    take(4);
    let next_segment = u64_(take(8));
    let first_seq = (version != 1).then(|| u64_(take(8)));
    let n = u64_(take(8));
    let mut entries = Vec::new();
    for _ in 0..n {
        let kind = take(1)[0];
        assert!(kind == wal::OP_PUT || kind == wal::OP_PUT_V1, "kind {kind}");
        let klen = take(1)[0] as usize;
        let key = take(klen).to_vec();
        let (mode, uid, gid, mtime_ns) =
            (u32_(take(4)), u32_(take(4)), u32_(take(4)), u64_(take(8)));
        let ctime_ns = if kind == wal::OP_PUT {
            u64_(take(8))
        } else {
            mtime_ns
        };
        let len = u32_(take(4)) as usize;
        let m = NewMeta {
            mode,
            uid,
            gid,
            mtime_ns,
            ctime_ns,
        };
        entries.push((key, m, take(len).to_vec()));
    }
    assert_eq!(at, body.len(), "bytes after the last entry");
    Parsed {
        version,
        next_segment,
        first_seq,
        entries,
    }
}

/// The whole-image writer the streaming one replaced (`write_checkpoint`
/// of bpf/src/durability/recovery.rs before it streamed), for versions 4
/// and 3 (the same bytes), 2 (PUT_V1 ops, no ctime_ns) and 1 (also no
/// first_seq).
fn old_image(version: u32, next_segment: u64, first_seq: u64, entries: &[Entry]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 << 20);
    body.extend_from_slice(b"BPFDBCKP");
    body.extend_from_slice(&version.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&next_segment.to_le_bytes());
    if version != 1 {
        body.extend_from_slice(&first_seq.to_le_bytes());
    }
    body.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, m, value) in entries {
        body.push(if version >= 3 {
            wal::OP_PUT
        } else {
            wal::OP_PUT_V1
        });
        body.push(key.len() as u8);
        body.extend_from_slice(key);
        body.extend_from_slice(&m.mode.to_le_bytes());
        body.extend_from_slice(&m.uid.to_le_bytes());
        body.extend_from_slice(&m.gid.to_le_bytes());
        body.extend_from_slice(&m.mtime_ns.to_le_bytes());
        if version >= 3 {
            body.extend_from_slice(&m.ctime_ns.to_le_bytes());
        }
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(value);
    }
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// Value sizes at every boundary the engine and the log have: empty, the
/// log's small fragment (128) and one past it, a page (4096, the largest
/// run) and one past it, the 1 MiB limit.
const EDGE_SIZES: [usize; 8] = [0, 1, 128, 129, 4096, 4097, (1 << 20) - 1, 1 << 20];

/// Keys over many scan batches (10,000 keys, `abi::SCAN_BATCH` is 2048),
/// with every edge size, 255-byte names and names of one byte.
fn many_keys() -> Vec<Entry> {
    let mut keys = Vec::new();
    for (i, &size) in EDGE_SIZES.iter().enumerate() {
        let name = format!("edge-{size}-{}", "n".repeat(200));
        keys.push((name.into_bytes(), meta(i as u64), pattern(size, i)));
    }
    for i in 0..10_000usize {
        let name = match i % 5 {
            0 => format!("{i:08}-{}", "x".repeat(255 - 9)),
            _ => format!("k{i}"),
        };
        let size = [0, 3, 128, 129, 700][i % 5];
        keys.push((name.into_bytes(), meta(100 + i as u64), pattern(size, i)));
    }
    keys.push((b"z".to_vec(), meta(7), b"one-byte name".to_vec()));
    keys
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j.wrapping_mul(31) ^ seed.wrapping_mul(7)) as u8)
        .collect()
}

fn fill(db: &Db, keys: &[Entry]) {
    for chunk in keys.chunks(64) {
        let t = db.begin(false).unwrap();
        for (k, m, v) in chunk {
            t.set(k, v, *m, SetFlags::default()).unwrap();
        }
        t.commit().unwrap();
    }
}

fn as_dump(entries: &[Entry]) -> Dump {
    entries
        .iter()
        .map(|(k, m, v)| (k.clone(), (v.clone(), *m)))
        .collect()
}

fn ckpt(dir: &Path) -> PathBuf {
    wal::checkpoint_path(dir)
}

/// The segments of `dir` hold no record: a start recovers from the
/// checkpoint alone.
fn assert_log_is_empty(dir: &Path) {
    for n in wal::segments(dir).unwrap() {
        let len = std::fs::metadata(wal::segment_path(dir, n)).unwrap().len();
        assert_eq!(len, wal::HEADER_BYTES as u64, "segment {n} holds records");
    }
}

#[test]
fn a_streamed_checkpoint_round_trips_every_value_size_and_long_names_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = many_keys();
    assert!(keys.iter().any(|k| k.0.len() == 255));
    let want = as_dump(&keys);
    assert_eq!(want.len(), keys.len(), "names are distinct");
    {
        let db = Db::open(&opts(dir.path())).unwrap();
        fill(&db, &keys);
        assert!(dump(&db) == want, "state before the checkpoint");
        let r = db.checkpoint().unwrap();
        assert_eq!(r.keys as usize, keys.len());
    }
    assert!(!dir.path().join("checkpoint.tmp").exists());
    assert_log_is_empty(dir.path());
    // The file holds every key once, with its value and metadata, in the
    // layout of version 3 (4 is 3's bytes, with keys that may hold '/');
    // and byte for byte what the whole-image writer made of the same
    // entries in the same order.
    let bytes = std::fs::read(ckpt(dir.path())).unwrap();
    let p = parse(&bytes);
    assert_eq!(p.version, wal::CHECKPOINT_VERSION);
    assert_eq!(p.version, 4);
    let in_file: Dump = as_dump(&p.entries);
    assert_eq!(in_file.len(), p.entries.len(), "a key written twice");
    assert!(
        in_file == want,
        "the checkpoint's entries differ from the keys"
    );
    let old = old_image(4, p.next_segment, p.first_seq.unwrap(), &p.entries);
    assert!(
        old == bytes,
        "the streamed file differs from the whole image"
    );
    // A restart recovers everything from it; so does the one after, from
    // the checkpoint that restart's own checkpoint wrote.
    let db = Db::open(&opts(dir.path())).unwrap();
    assert!(dump(&db) == want, "state after the restart differs");
    db.checkpoint().unwrap();
    drop(db);
    assert_log_is_empty(dir.path());
    let db = Db::open(&opts(dir.path())).unwrap();
    assert!(dump(&db) == want, "state after a second round differs");
    assert_eq!(db.stats().keys as usize, keys.len());
}

/// A bpffs directory for one test, unpinned when the test ends either way.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = bpfdb::unpin(&self.0);
        }
    }
}

/// Every file of a data dir, by name.
fn save(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Makes `dir` hold exactly the files `save` found.
fn restore(dir: &Path, saved: &[(std::ffi::OsString, Vec<u8>)]) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, bytes) in saved {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn a_damaged_checkpoint_is_refused_before_any_entry_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<Entry> = (0..3000usize)
        .map(|i| {
            let v = pattern([10, 200, 5000][i % 3], i);
            (format!("d{i}").into_bytes(), meta(i as u64), v)
        })
        .collect();
    {
        let db = Db::open(&opts(dir.path())).unwrap();
        fill(&db, &keys);
        db.checkpoint().unwrap();
    }
    assert_log_is_empty(dir.path());
    // A start on the pinned maps below takes a checkpoint, which replaces
    // the file and the segments: each case starts from this copy.
    let saved = save(dir.path());
    let path = ckpt(dir.path());
    let good = std::fs::read(&path).unwrap();
    let len = good.len();
    let mid = {
        let mut b = good.clone();
        b[len / 2] ^= 0x10;
        b
    };
    // n_keys one more than the entries, the crc made to match: only a
    // writer's bug makes one, and its entries must not be applied either.
    let one_more = {
        let mut b = good[..len - 4].to_vec();
        let n = u64::from_le_bytes(b[32..40].try_into().unwrap());
        b[32..40].copy_from_slice(&(n + 1).to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    };
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("a byte flipped in the middle", mid, "checksum mismatch"),
        (
            "half the crc cut off",
            good[..len - 2].to_vec(),
            "checksum mismatch",
        ),
        (
            "the crc cut off",
            good[..len - 4].to_vec(),
            "checksum mismatch",
        ),
        (
            "the last entry cut short",
            good[..len - 100].to_vec(),
            "checksum mismatch",
        ),
        ("cut inside the head", good[..30].to_vec(), "truncated"),
        (
            "n_keys past its entries",
            one_more,
            "malformed entry 3000 of 3001: cut short",
        ),
    ];
    for (i, (what, bytes, why)) in cases.into_iter().enumerate() {
        restore(dir.path(), &saved);
        std::fs::write(&path, &bytes).unwrap();
        // The engine's maps are pinned as it loads, before recovery runs:
        // they outlive the refused start and show what it applied.
        let pin = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/bpfdb-test-ckpt-damaged-{i}-{}",
            std::process::id()
        )));
        let pinned = Options {
            pin_dir: Some(pin.0.clone()),
            ..opts(dir.path())
        };
        let err = Db::open(&pinned).map(|_| ()).unwrap_err();
        assert_eq!(err.errno, libc::EIO, "{what}: {err}");
        assert!(
            err.msg.contains(&path.display().to_string())
                && err.msg.contains(why)
                && err.msg.contains("refusing to start"),
            "{what}: the error does not say which file and why: {err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}: file changed");
        assert!(
            pin.0.join("records").exists(),
            "{what}: the maps were not pinned"
        );
        // The pinned records maps hold what the refused start applied,
        // which must be nothing. (A next start would discard these maps,
        // marked as not recovered into, and recover from the data dir.)
        let applied: usize = ["records_top", "records_below"]
            .iter()
            .map(|m| {
                let records = MapHandle::from_pinned_path(pin.0.join(m)).unwrap();
                records.keys().count()
            })
            .sum();
        assert_eq!(
            applied,
            0,
            "{what}: {applied} of {} entries reached the engine before the refusal",
            keys.len()
        );
        drop(pin);
    }
    // Undamaged, it is read whole.
    restore(dir.path(), &saved);
    let db = Db::open(&opts(dir.path())).unwrap();
    assert!(dump(&db) == as_dump(&keys));
}

/// Writes `image` as the checkpoint of a fresh data dir, with the segment
/// it names holding one commit after it (seq `first_seq`): a PUT of
/// `after`.
fn data_dir_with(image: &[u8], first_seq: u64, after: &Entry) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(ckpt(dir.path()), image).unwrap();
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u64.to_le_bytes()); // ts
    payload.extend_from_slice(&1u32.to_le_bytes()); // n_ops
    wal::put_op(&mut payload, &after.0, &after.1, &after.2);
    let mut segment = wal::file_header(wal::WAL_MAGIC, wal::FORMAT_VERSION).to_vec();
    wal::frame(&mut segment, first_seq, &payload);
    std::fs::write(wal::segment_path(dir.path(), 4), segment).unwrap();
    dir
}

#[test]
fn checkpoints_of_versions_3_2_and_1_are_still_read() {
    let mut keys: Vec<Entry> = EDGE_SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let name = format!("{size:07}-{}", "o".repeat(247));
            (name.into_bytes(), meta(i as u64), pattern(size, i))
        })
        .collect();
    keys.extend((0..5000usize).map(|i| {
        (
            format!("old{i}").into_bytes(),
            meta(i as u64),
            pattern(i % 300, i),
        )
    }));
    let after: Entry = (b"after".to_vec(), meta(9), b"logged after".to_vec());
    for version in [3u32, 2, 1] {
        let image = old_image(version, 4, 77, &keys);
        let dir = data_dir_with(&image, 77, &after);
        let db = Db::open(&opts(dir.path())).unwrap_or_else(|e| panic!("version {version}: {e}"));
        let mut want = as_dump(&keys);
        if version != 3 {
            // PUT_V1 had no ctime: it reads as the mtime.
            for (_, m) in want.values_mut() {
                m.ctime_ns = m.mtime_ns;
            }
        }
        want.insert(after.0.clone(), (after.2.clone(), after.1));
        assert!(dump(&db) == want, "version {version}: state differs");
        // The next checkpoint is streamed in version 4, and holds the same.
        db.checkpoint().unwrap();
        drop(db);
        let p = parse(&std::fs::read(ckpt(dir.path())).unwrap());
        assert_eq!(p.version, 4, "version {version}: rewritten as");
        assert!(as_dump(&p.entries) == want, "version {version}: rewritten");
        let db = Db::open(&opts(dir.path())).unwrap();
        assert!(dump(&db) == want, "version {version}: after rewriting");
    }
}

/// The checkpoint's entries are applied by several threads at once, with
/// one session each, also when the database has a single slot; when the
/// engine refuses an entry (here: more keys than the reopened database's
/// max_keys), the start fails with that error instead of hanging or going
/// on with part of the keys.
#[test]
fn a_checkpoint_applied_by_several_threads_restores_every_key_or_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let keys = 20_000u64;
    let mut want = Dump::new();
    {
        let db = Db::open(&Options {
            max_keys: 32_768,
            ..opts(dir.path())
        })
        .unwrap();
        let mut s = db.session();
        for i in 0..keys {
            let (k, v) = (format!("key-{i}").into_bytes(), i.to_le_bytes().to_vec());
            s.set(&k, &v, meta(i), SetFlags::default()).unwrap();
            want.insert(k, (v, meta(i)));
        }
        db.checkpoint().unwrap();
    }
    let one_slot = Options {
        max_keys: 32_768,
        slots: 1,
        ..opts(dir.path())
    };
    let db = Db::open(&one_slot).unwrap();
    assert_eq!(dump(&db), want);
    drop(db);
    let err = match Db::open(&Options {
        max_keys: 8_192,
        ..opts(dir.path())
    }) {
        Ok(_) => panic!("{keys} keys restored into a database of 8192"),
        Err(e) => e,
    };
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
}
