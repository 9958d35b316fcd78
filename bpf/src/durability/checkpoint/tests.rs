//! Unit tests of the checkpoint writer and reader, on files only (no engine).

use super::*;

fn meta(i: u64) -> NewMeta {
    NewMeta {
        mode: 0o100644,
        uid: i as u32,
        gid: 3,
        mtime_ns: i * 10,
        ctime_ns: i * 10 + 1,
    }
}

/// Writes `keys` (name, value) in batches of `batch` through the
/// streaming writer.
fn write(dir: &Path, keys: &[(Vec<u8>, Vec<u8>)], batch: usize) -> Result<u64> {
    let mut chunks = keys.chunks(batch.max(1));
    let mut next = |names: &mut Names| {
        if let Some(c) = chunks.next() {
            c.iter().for_each(|(n, _)| names.push(n));
        }
        Ok(chunks.len() > 0)
    };
    let mut get = |name: &[u8], value: &mut Vec<u8>| {
        let i = keys.iter().position(|(n, _)| n == name).unwrap();
        value.clear();
        value.extend_from_slice(&keys[i].1);
        Ok(meta(i as u64))
    };
    write_checkpoint(&mut next, &mut get, dir, 7, 99)
}

/// The image the whole-buffer writer this one replaced made.
fn whole_image(keys: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut body = wal::file_header(wal::CKPT_MAGIC, wal::CHECKPOINT_VERSION).to_vec();
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(&99u64.to_le_bytes());
    body.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for (i, (n, v)) in keys.iter().enumerate() {
        wal::put_op(&mut body, n, &meta(i as u64), v);
    }
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fn keys(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = [0, 1, 128, 129, 4096, 70_000][i % 6];
            (format!("k{i}").into_bytes(), vec![i as u8; len])
        })
        .collect()
}

fn read(dir: &Path) -> Result<(Checkpoint, Vec<LogOp>)> {
    let c = open(dir)?.expect("a checkpoint");
    let mut ops = Vec::new();
    c.apply(&mut |op| {
        ops.push(op.clone());
        Ok(())
    })?;
    Ok((c, ops))
}

#[test]
fn the_streamed_file_is_the_whole_image_byte_for_byte() {
    for (n, batch) in [(0, 1), (1, 1), (100, 7), (100, 100), (100, 1000)] {
        let d = tempfile::tempdir().unwrap();
        let k = keys(n);
        assert_eq!(write(d.path(), &k, batch).unwrap(), n as u64);
        let got = std::fs::read(wal::checkpoint_path(d.path())).unwrap();
        assert!(got == whole_image(&k), "{n} keys in batches of {batch}");
        assert!(!d.path().join("checkpoint.tmp").exists());
        let (c, ops) = read(d.path()).unwrap();
        assert_eq!((c.segment, c.first_seq, c.n), (7, Some(99), n as u64));
        for (i, op) in ops.iter().enumerate() {
            let want = LogOp::Put {
                key: k[i].0.clone(),
                meta: meta(i as u64),
                value: k[i].1.clone(),
            };
            assert_eq!(op, &want);
        }
    }
}

#[test]
fn a_failed_write_leaves_the_old_checkpoint_and_no_temp_file() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &keys(3), 2).unwrap();
    let before = std::fs::read(wal::checkpoint_path(d.path())).unwrap();
    let calls = std::cell::Cell::new(0);
    let mut next = |names: &mut Names| {
        names.push(b"a");
        calls.set(calls.get() + 1);
        Ok(true)
    };
    let mut get = |_: &[u8], _: &mut Vec<u8>| -> Result<NewMeta> {
        if calls.get() > 2 {
            Err(Error::new(libc::EIO, "snapshot read failed"))
        } else {
            Ok(meta(0))
        }
    };
    let err = write_checkpoint(&mut next, &mut get, d.path(), 1, 1).unwrap_err();
    assert!(err.msg.contains("snapshot read failed"), "{err}");
    assert_eq!(
        std::fs::read(wal::checkpoint_path(d.path())).unwrap(),
        before
    );
    assert!(!d.path().join("checkpoint.tmp").exists());
}

#[test]
fn any_flipped_byte_or_cut_is_refused_before_an_entry_is_applied() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &keys(12), 5).unwrap();
    let path = wal::checkpoint_path(d.path());
    let good = std::fs::read(&path).unwrap();
    for pos in (0..good.len()).step_by(97).chain([good.len() - 1]) {
        let mut bad = good.clone();
        bad[pos] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        let r = open(d.path());
        assert!(r.is_err(), "flip at {pos} of {} accepted", good.len());
    }
    for cut in [1, 4, 5, 200, good.len() - 40, good.len() - 1] {
        std::fs::write(&path, &good[..good.len() - cut]).unwrap();
        assert!(open(d.path()).is_err(), "cut of {cut} accepted");
    }
}

#[test]
fn a_bad_entry_behind_a_good_crc_is_refused_by_the_first_pass() {
    // Only a writer's bug can make these: the crc is recomputed.
    let d = tempfile::tempdir().unwrap();
    let path = wal::checkpoint_path(d.path());
    let rewrite = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut img = whole_image(&keys(3));
        img.truncate(img.len() - 4);
        f(&mut img);
        let crc = crc32c::crc32c(&img);
        img.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, img).unwrap();
        // Refused by the first pass: nothing is handed to apply.
        open(d.path()).map(|_| ()).unwrap_err().msg
    };
    let msg = rewrite(&|img| img[32] = 4); // n_keys 3 -> 4
    assert!(msg.contains("entry 3 of 4: cut short"), "{msg}");
    let msg = rewrite(&|img| img[32] = 2);
    assert!(msg.contains("bytes after its 2 entries"), "{msg}");
    let msg = rewrite(&|img| img[HEAD_BYTES] = wal::OP_DEL);
    assert!(msg.contains("entry 0 of 3: op kind 3"), "{msg}");
}
