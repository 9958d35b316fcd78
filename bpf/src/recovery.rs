//! Recovery and checkpoints.
//!
//! Start-up loads the checkpoint (if any), then replays every log segment
//! from the one it names, into the kernel maps, before anything is served.
//! A torn or corrupt tail of the last segment ends replay at the last good
//! record and is cut off; corruption followed by valid records refuses to
//! start unless `allow_corrupt_log` is set.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use log::{info, warn};

use crate::db::{Db, NewMeta, SetFlags};
use crate::error::{Error, Result};
use crate::wal::{self, LogOp};
use crate::wal_writer::{read_file, sync_dir};

/// Progress is logged every this many bytes of log replayed.
const PROGRESS_BYTES: usize = 64 << 20;

/// Cuts a log segment at `offset` (a torn tail) durably.
fn cut(path: &Path, offset: usize) -> Result<()> {
    let what = path.display().to_string();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(&what, &e))?;
    f.set_len(offset as u64)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&what, &e))
}

/// Where the log writer continues after recovery.
pub(crate) struct Recovered {
    pub segment: u64,
    pub next_seq: u64,
}

fn apply(db: &Db, op: &LogOp) -> Result<()> {
    let mut s = db.session();
    match op {
        LogOp::Put { key, meta, value } => {
            s.set(key, value, *meta, SetFlags::default()).map(|_| ())
        }
        LogOp::Del { key } => match s.delete(key) {
            Err(e) if e.errno != libc::ENOENT => Err(e),
            _ => Ok(()),
        },
    }
}

fn load_checkpoint(db: &Db, dir: &Path) -> Result<u64> {
    let path = wal::checkpoint_path(dir);
    if !path.exists() {
        return Ok(1);
    }
    let t = Instant::now();
    let buf = read_file(&path)?;
    let what = path.display().to_string();
    wal::check_header(&buf, wal::CKPT_MAGIC, &what)?;
    let corrupt = |why: &str| Error::new(libc::EIO, format!("{what}: {why}; refusing to start"));
    if buf.len() < wal::HEADER_BYTES + 20 {
        return Err(corrupt("truncated"));
    }
    let (body, tail) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = wal::Reader::new(&body[wal::HEADER_BYTES..]);
    let (Some(next_segment), Some(n)) = (r.u64(), r.u64()) else {
        return Err(corrupt("truncated header"));
    };
    for _ in 0..n {
        let op = r.op().ok_or_else(|| corrupt("malformed entry"))?;
        apply(db, &op)?;
    }
    info!(
        "recovery: checkpoint of {n} keys loaded in {:?}; replaying from segment {next_segment}",
        t.elapsed()
    );
    Ok(next_segment)
}

/// Replays the checkpoint and the log into the engine (log emission off).
pub(crate) fn recover(db: &Db, dir: &Path, allow_corrupt: bool) -> Result<Recovered> {
    let start = load_checkpoint(db, dir)?;
    let segments: Vec<u64> = wal::segments(dir)?
        .into_iter()
        .filter(|&n| n >= start)
        .collect();
    let total: u64 = segments
        .iter()
        .map(|&n| {
            std::fs::metadata(wal::segment_path(dir, n))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let t = Instant::now();
    let (mut done, mut next_seq, mut commits) = (0usize, 1u64, 0u64);
    let mut next_report = PROGRESS_BYTES;
    for (i, &n) in segments.iter().enumerate() {
        let path = wal::segment_path(dir, n);
        let buf = read_file(&path)?;
        let what = path.display().to_string();
        if buf.len() < wal::HEADER_BYTES {
            warn!("recovery: {what} has a torn header; starting it afresh");
            std::fs::remove_file(&path).map_err(|e| Error::io(&what, &e))?;
            continue;
        }
        wal::check_header(&buf, wal::WAL_MAGIC, &what)?;
        let scan = wal::scan_segment(&buf, next_seq, |commit, end| {
            for op in &commit.ops {
                apply(db, op)?;
            }
            if done + end >= next_report {
                next_report += PROGRESS_BYTES;
                let pct = (done + end) as f64 * 100.0 / total.max(1) as f64;
                info!(
                    "recovery: replayed {} MiB of {} MiB ({pct:.0}%)",
                    (done + end) >> 20,
                    total >> 20
                );
            }
            Ok(())
        })?;
        next_seq = scan.next_seq;
        commits += scan.commits;
        if let Some((offset, why, more)) = scan.bad {
            let last = i + 1 == segments.len();
            if (more || !last) && !allow_corrupt {
                return Err(Error::new(
                    libc::EIO,
                    format!(
                        "{what}: corrupt record at byte {offset} ({why}) with valid records after it; \
                         refusing to start (allow_corrupt_log discards everything from there)"
                    ),
                ));
            }
            warn!(
                "recovery: {what}: {why} at byte {offset}; log ends there, cutting {} bytes",
                buf.len() - offset
            );
            cut(&path, offset)?;
            for &later in &segments[i + 1..] {
                let p = wal::segment_path(dir, later);
                warn!("recovery: discarding {}", p.display());
                std::fs::remove_file(&p).map_err(|e| Error::io(&p.display().to_string(), &e))?;
            }
            info!("recovery: {commits} commits replayed in {:?}", t.elapsed());
            return Ok(Recovered {
                segment: n,
                next_seq,
            });
        }
        done += buf.len();
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = if total >= 1 << 20 {
        format!(" ({:.1} s/GiB)", secs * (1u64 << 30) as f64 / total as f64)
    } else {
        String::new()
    };
    info!(
        "recovery: {commits} commits, {} MiB of log replayed in {secs:.3} s{rate}",
        total >> 20
    );
    Ok(Recovered {
        segment: segments.last().copied().unwrap_or(start),
        next_seq,
    })
}

/// Finds where the log continues without replaying it (hot restart: the
/// kernel state is current). A torn tail of the last segment is cut.
pub(crate) fn resume(dir: &Path) -> Result<Recovered> {
    let Some(&n) = wal::segments(dir)?.last() else {
        return Ok(Recovered {
            segment: 1,
            next_seq: 1,
        });
    };
    let path = wal::segment_path(dir, n);
    let buf = read_file(&path)?;
    let what = path.display().to_string();
    if buf.len() < wal::HEADER_BYTES {
        return Ok(Recovered {
            segment: n,
            next_seq: 1,
        });
    }
    wal::check_header(&buf, wal::WAL_MAGIC, &what)?;
    let scan = wal::scan_segment(&buf, 1, |_, _| Ok(()))?;
    if let Some((offset, why, _)) = scan.bad {
        warn!("hot restart: {what}: {why} at byte {offset}; cutting the tail");
        cut(&path, offset)?;
    }
    Ok(Recovered {
        segment: n,
        next_seq: scan.next_seq,
    })
}

/// Writes a checkpoint of the snapshot `snap` atomically: temp file, fsync,
/// rename, fsync of the directory. Replay then starts at `next_segment`.
pub(crate) fn write_checkpoint(snap: &crate::Txn, dir: &Path, next_segment: u64) -> Result<u64> {
    let mut names = Vec::new();
    snap.scan(|n| names.push(n.to_vec()))?;
    let mut body = Vec::with_capacity(1 << 20);
    body.extend_from_slice(&wal::file_header(wal::CKPT_MAGIC));
    body.extend_from_slice(&next_segment.to_le_bytes());
    body.extend_from_slice(&(names.len() as u64).to_le_bytes());
    let mut value = Vec::new();
    for name in &names {
        let st = snap.get(name, &mut value)?;
        let m = st.meta;
        let meta = NewMeta {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime_ns: m.mtime_ns,
        };
        wal::put_op(&mut body, name, &meta, &value);
    }
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("checkpoint.tmp");
    let what = tmp.display().to_string();
    let written =
        File::create(&tmp).and_then(|mut f| f.write_all(&body).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        // A partial temp file would only hold space a full disk needs.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&what, &e));
    }
    std::fs::rename(&tmp, wal::checkpoint_path(dir))
        .map_err(|e| Error::io("rename checkpoint", &e))?;
    sync_dir(dir)?;
    Ok(names.len() as u64)
}
