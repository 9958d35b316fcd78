//! The log is one sequence: records' seq numbers run on without a gap
//! within and across segments, segments are numbered without a gap from
//! the one the checkpoint names, and the checkpoint says which seq that
//! segment starts at. A missing or stale segment, or a gap, refuses to
//! start and says where.

use std::path::{Path, PathBuf};

use bpfdb::wal::{self, Next};
use bpfdb::{Db, NewMeta, Options, SetFlags};

fn opts(dir: &Path) -> Options {
    Options {
        max_keys: 1024,
        value_mem_bytes: 16 << 20,
        slots: 4,
        data_dir: Some(dir.to_path_buf()),
        wal_buffer_bytes: 1 << 20,
        ..Options::default()
    }
}

fn set(db: &Db, key: &str, value: &str) {
    db.session()
        .set(
            key.as_bytes(),
            value.as_bytes(),
            NewMeta {
                mode: 0o100644,
                ..NewMeta::default()
            },
            SetFlags::default(),
        )
        .unwrap();
}

fn get(db: &Db, key: &str) -> Option<String> {
    let mut out = Vec::new();
    match db.session().get(key.as_bytes(), &mut out) {
        Ok(_) => Some(String::from_utf8(out).unwrap()),
        Err(e) if e.errno == libc::ENOENT => None,
        Err(e) => panic!("get {key}: {e}"),
    }
}

fn seg(dir: &Path, n: u64) -> PathBuf {
    wal::segment_path(dir, n)
}

/// Seq numbers of a segment's records.
fn seqs(path: &Path) -> Vec<u64> {
    let buf = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = wal::HEADER_BYTES;
    while let Next::Record { seq, end, .. } = wal::record_at(&buf, off) {
        out.push(seq);
        off = end;
    }
    out
}

/// Every key the log of `dir` holds.
const KEYS: [&str; 6] = ["a", "b", "c1", "c2", "d", "e"];

/// A data dir whose checkpoint names segment 2, with segments 2, 3 and 4
/// after it (checkpoints that rotated, then crashed before their own
/// checkpoint replaced the first: what recovery replays then). Returns
/// the dir and an older copy of segment 3 (before "c2").
fn three_segments() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::open(&opts(d)).unwrap();
    set(&db, "a", "1");
    db.checkpoint().unwrap();
    let ckpt = std::fs::read(wal::checkpoint_path(d)).unwrap();
    set(&db, "b", "2");
    let seg2 = std::fs::read(seg(d, 2)).unwrap();
    db.checkpoint().unwrap();
    set(&db, "c1", "3");
    let seg3_old = std::fs::read(seg(d, 3)).unwrap();
    set(&db, "c2", "4");
    let seg3 = std::fs::read(seg(d, 3)).unwrap();
    db.checkpoint().unwrap();
    set(&db, "d", "5");
    set(&db, "e", "6");
    drop(db);
    std::fs::write(wal::checkpoint_path(d), ckpt).unwrap();
    std::fs::write(seg(d, 2), seg2).unwrap();
    std::fs::write(seg(d, 3), seg3).unwrap();
    assert_eq!(wal::segments(d).unwrap(), vec![2, 3, 4]);
    (dir, seg3_old)
}

#[test]
fn a_log_across_segments_recovers_everything() {
    let (dir, _) = three_segments();
    let (s2, s3, s4) = (
        seqs(&seg(dir.path(), 2)),
        seqs(&seg(dir.path(), 3)),
        seqs(&seg(dir.path(), 4)),
    );
    assert_eq!(s3.first(), Some(&(s2.last().unwrap() + 1)), "seq runs on");
    assert_eq!(s4.first(), Some(&(s3.last().unwrap() + 1)), "seq runs on");
    let db = Db::open(&opts(dir.path())).unwrap();
    for k in KEYS {
        assert!(get(&db, k).is_some(), "{k} lost");
    }
    // And the log written after this recovery goes on from there.
    set(&db, "f", "7");
    drop(db);
    let db = Db::open(&opts(dir.path())).unwrap();
    assert_eq!(get(&db, "f").as_deref(), Some("7"));
    assert_eq!(get(&db, "e").as_deref(), Some("6"));
}

#[test]
fn a_missing_segment_refuses_to_start() {
    let (dir, _) = three_segments();
    std::fs::remove_file(seg(dir.path(), 3)).unwrap();
    let err = Db::open(&opts(dir.path())).map(drop).unwrap_err();
    eprintln!("refused: {err}");
    assert_eq!(err.errno, libc::EIO, "{err}");
    assert!(
        err.msg.contains("segment 3") && err.msg.contains("missing"),
        "{err}"
    );
    // Allowed, replay ends before the gap and the segments after it go.
    let db = Db::open(&Options {
        allow_corrupt_log: true,
        ..opts(dir.path())
    })
    .unwrap();
    assert_eq!(get(&db, "b").as_deref(), Some("2"));
    assert_eq!(get(&db, "d"), None);
    assert_eq!(wal::segments(dir.path()).unwrap(), vec![2]);
    set(&db, "f", "7");
    drop(db);
    let db = Db::open(&opts(dir.path())).unwrap();
    assert_eq!(get(&db, "f").as_deref(), Some("7"));
}

#[test]
fn the_segment_a_checkpoint_names_missing_refuses_to_start() {
    let (dir, _) = three_segments();
    std::fs::remove_file(seg(dir.path(), 2)).unwrap();
    let err = Db::open(&opts(dir.path())).map(drop).unwrap_err();
    eprintln!("refused: {err}");
    assert!(
        err.msg.contains("segment 2") && err.msg.contains("missing"),
        "{err}"
    );
}

#[test]
fn a_stale_segment_refuses_to_start() {
    let (dir, seg3_old) = three_segments();
    std::fs::write(seg(dir.path(), 3), seg3_old).unwrap();
    let err = Db::open(&opts(dir.path())).map(drop).unwrap_err();
    eprintln!("refused: {err}");
    assert_eq!(err.errno, libc::EIO, "{err}");
    assert!(
        err.msg.contains("wal-00000004.log") && err.msg.contains("does not continue"),
        "{err}"
    );
}

#[test]
fn a_seq_gap_inside_a_segment_refuses_to_start() {
    let (dir, _) = three_segments();
    // Segment 3 re-framed with its second record's seq one too high: every
    // checksum is right, only the sequence is broken.
    let path = seg(dir.path(), 3);
    let buf = std::fs::read(&path).unwrap();
    let mut out = buf[..wal::HEADER_BYTES].to_vec();
    let mut off = wal::HEADER_BYTES;
    let mut i = 0;
    while let Next::Record { seq, payload, end } = wal::record_at(&buf, off) {
        wal::frame(&mut out, if i == 1 { seq + 1 } else { seq }, payload);
        off = end;
        i += 1;
    }
    assert_eq!(i, 2);
    std::fs::write(&path, out).unwrap();
    let err = Db::open(&opts(dir.path())).map(drop).unwrap_err();
    eprintln!("refused: {err}");
    assert!(
        err.msg.contains("wal-00000003.log") && err.msg.contains("gap"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_of_an_unknown_version_refuses_to_start() {
    let (dir, _) = three_segments();
    let path = wal::checkpoint_path(dir.path());
    let mut buf = std::fs::read(&path).unwrap();
    buf[8] = 99;
    std::fs::write(&path, buf).unwrap();
    let err = Db::open(&opts(dir.path())).map(drop).unwrap_err();
    eprintln!("refused: {err}");
    assert!(err.msg.contains("format version 99"), "{err}");
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

#[test]
fn a_hot_restart_goes_on_with_the_seq_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let pin = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/bpfdb-test-seq-{}",
        std::process::id()
    )));
    let pinned = Options {
        pin_dir: Some(pin.0.clone()),
        ..opts(dir.path())
    };
    let db = Db::open(&pinned).unwrap();
    for k in ["a", "b", "c"] {
        set(&db, k, "1");
    }
    // Ends with an empty segment: where the log goes on is in the
    // checkpoint only.
    db.checkpoint().unwrap();
    let before = wal::segments(dir.path()).unwrap();
    drop(db);
    let last_seq = 3;
    let db = Db::open(&pinned).unwrap();
    set(&db, "d", "2");
    drop(db);
    let n = *wal::segments(dir.path()).unwrap().last().unwrap();
    assert!(n > *before.last().unwrap(), "the restart checkpointed");
    let s = seqs(&seg(dir.path(), n));
    assert!(
        s.first().is_some_and(|&f| f > last_seq),
        "the log after a hot restart starts over at seq {s:?}"
    );
    bpfdb::unpin(&pin.0).unwrap();
    let db = Db::open(&opts(dir.path())).unwrap();
    for k in ["a", "b", "c", "d"] {
        assert!(get(&db, k).is_some(), "{k} lost");
    }
}

#[test]
fn a_version_1_checkpoint_is_still_read() {
    // Version 1 had no first_seq: the first record of its segment sets it.
    let (dir, _) = three_segments();
    let path = wal::checkpoint_path(dir.path());
    let v2 = std::fs::read(&path).unwrap();
    let mut v1 = v2[..wal::HEADER_BYTES + 8].to_vec();
    v1[8..12].copy_from_slice(&wal::CHECKPOINT_V1.to_le_bytes());
    v1.extend_from_slice(&v2[wal::HEADER_BYTES + 16..v2.len() - 4]);
    let crc = crc32c::crc32c(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, v1).unwrap();
    let db = Db::open(&opts(dir.path())).unwrap();
    for k in KEYS {
        assert!(get(&db, k).is_some(), "{k} lost");
    }
    // The next checkpoint is written in the current version.
    db.checkpoint().unwrap();
    let buf = std::fs::read(&path).unwrap();
    assert_eq!(buf[8..12], wal::CHECKPOINT_VERSION.to_le_bytes());
}

#[test]
fn a_version_1_log_is_still_read_and_its_ctime_is_its_mtime() {
    // A segment as version 1 wrote it: PUT_V1 ops, without ctime_ns.
    let dir = tempfile::tempdir().unwrap();
    let mut payload = Vec::new();
    payload.extend_from_slice(&5u64.to_le_bytes()); // ts
    payload.extend_from_slice(&1u32.to_le_bytes()); // n_ops
    payload.extend_from_slice(&[wal::OP_PUT_V1, 3]);
    payload.extend_from_slice(b"old");
    for v in [0o100640u32, 7, 8] {
        payload.extend_from_slice(&v.to_le_bytes());
    }
    payload.extend_from_slice(&1234u64.to_le_bytes()); // mtime_ns
    payload.extend_from_slice(&2u32.to_le_bytes());
    payload.extend_from_slice(b"hi");
    let mut segment = wal::file_header(wal::WAL_MAGIC, 1).to_vec();
    wal::frame(&mut segment, 1, &payload);
    std::fs::write(seg(dir.path(), 1), segment).unwrap();

    let db = Db::open(&opts(dir.path())).unwrap();
    let mut out = Vec::new();
    let st = db.session().get(b"old", &mut out).unwrap();
    assert_eq!(out, b"hi");
    assert_eq!((st.meta.mode, st.meta.uid, st.meta.gid), (0o100640, 7, 8));
    assert_eq!((st.meta.mtime_ns, st.meta.ctime_ns), (1234, 1234));
    // The log goes on in the current version, and both are read back.
    set(&db, "new", "2");
    drop(db);
    let db = Db::open(&opts(dir.path())).unwrap();
    assert_eq!(get(&db, "old").as_deref(), Some("hi"));
    assert_eq!(get(&db, "new").as_deref(), Some("2"));
}
