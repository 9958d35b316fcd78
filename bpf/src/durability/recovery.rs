//! Recovery.
//!
//! Start-up loads the checkpoint (if any; `checkpoint` streams it), then replays every log segment
//! from the one it names, into the kernel maps, before anything is served.
//! A torn or corrupt tail of the last segment ends replay at the last good
//! record and is cut off; corruption followed by valid records refuses to
//! start unless `allow_corrupt_log` is set.

use std::path::Path;
use std::time::Instant;

use log::{info, warn};

use crate::durability::checkpoint;
use crate::durability::format::{self as wal, LogOp};
use crate::durability::writer::read_file;
use crate::error::{Error, Result};

/// Applies a batch of ops, in order, with a session of its own: called
/// from several threads at once (each with ops of other keys).
pub(crate) type ApplyBatch<'a> = &'a (dyn Fn(&[LogOp]) -> Result<()> + Sync);
/// Whether the engine has room for a window of ops applied in any order
/// across keys: the records and the value memory of every PUT in it on top
/// of what is used now. Applied in log order, a DELETE frees room before a
/// later PUT of another key takes it; across threads it may not have yet.
pub(crate) type AnyOrder<'a> = &'a (dyn Fn(&[LogOp]) -> bool + Sync);

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

/// Where the log starts after a checkpoint: the segment replay begins
/// with, and the seq its first record has (None: a version 1 checkpoint,
/// which did not say).
struct LogStart {
    segment: u64,
    first_seq: Option<u64>,
}

/// A data dir without a checkpoint: the log as it began.
const LOG_BEGINS: LogStart = LogStart {
    segment: 1,
    first_seq: Some(1),
};

/// The ops of whole commits waiting to be applied, in log order.
#[derive(Default)]
struct Window {
    ops: Vec<LogOp>,
    bytes: usize,
}

impl Window {
    fn push(&mut self, commit: wal::Commit) {
        for op in commit.ops {
            if let LogOp::Put { key, value, .. } = &op {
                self.bytes += key.len() + value.len();
            }
            self.ops.push(op);
        }
    }

    fn full(&self) -> bool {
        self.ops.len() >= wal::REPLAY_WINDOW_OPS || self.bytes >= wal::REPLAY_WINDOW_BYTES
    }

    /// Applies and empties the window: split by key over `threads`
    /// threads, each key's ops in log order, when `any_order` says the
    /// engine has room for them in any order; else in log order by one.
    fn apply(
        &mut self,
        apply: ApplyBatch<'_>,
        any_order: AnyOrder<'_>,
        threads: usize,
    ) -> Result<()> {
        let ops = std::mem::take(&mut self.ops);
        self.bytes = 0;
        if threads < 2 || ops.len() < 2 || !any_order(&ops) {
            return apply(&ops);
        }
        let mut parts: Vec<Vec<LogOp>> = (0..threads).map(|_| Vec::new()).collect();
        for op in ops {
            let key = match &op {
                LogOp::Put { key, .. } | LogOp::Del { key } => key,
            };
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(key, &mut h);
            parts[(std::hash::Hasher::finish(&h) % threads as u64) as usize].push(op);
        }
        std::thread::scope(|sc| {
            let others: Vec<_> = parts[1..]
                .iter()
                .map(|part| sc.spawn(move || apply(part)))
                .collect();
            let mine = apply(&parts[0]);
            others
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(Error::new(libc::EIO, "replay thread panicked")))
                })
                .fold(mine, |first, r| first.and(r))
        })
    }
}

/// Applies the checkpoint of `dir`, if any, streamed (see `checkpoint`):
/// its crc is checked over the whole file before the first entry is
/// applied. Returns where the log goes on, and whether there was one.
fn load_checkpoint(apply: ApplyBatch<'_>, dir: &Path) -> Result<(LogStart, bool)> {
    let t = Instant::now();
    let Some(ckpt) = checkpoint::open(dir)? else {
        return Ok((LOG_BEGINS, false));
    };
    let n = ckpt.apply_parallel(apply, recovery_threads())?;
    info!(
        "recovery: checkpoint of {n} keys loaded in {:?}; replaying from segment {}",
        t.elapsed(),
        ckpt.segment
    );
    let start = LogStart {
        segment: ckpt.segment,
        first_seq: ckpt.first_seq,
    };
    Ok((start, true))
}

/// Removes log segments that cannot be replayed (allow_corrupt_log).
fn discard(dir: &Path, segments: &[u64]) -> Result<()> {
    for &n in segments {
        let p = wal::segment_path(dir, n);
        warn!("recovery: discarding {}", p.display());
        std::fs::remove_file(&p).map_err(|e| Error::io(&p.display().to_string(), &e))?;
    }
    Ok(())
}

/// The segments replay goes through: numbered without a gap from the
/// checkpoint's. A gap refuses to start, unless `allow_corrupt` (then the
/// segments after it are discarded).
fn replayed_segments(dir: &Path, start: u64, ckpt: bool, allow_corrupt: bool) -> Result<Vec<u64>> {
    let mut segments: Vec<u64> = wal::segments(dir)?
        .into_iter()
        .filter(|&n| n >= start)
        .collect();
    // Without a checkpoint and without segments the data dir is new; a
    // checkpoint's segment was made durable before the checkpoint was.
    if segments.is_empty() && !ckpt {
        return Ok(segments);
    }
    let run = (0..)
        .zip(&segments)
        .take_while(|&(i, &n)| n == start + i)
        .count();
    if run < segments.len() || segments.is_empty() {
        let missing = start + run as u64;
        let after = if ckpt {
            format!("the checkpoint starts replay at segment {start}")
        } else {
            "there is no checkpoint".to_string()
        };
        let msg = format!(
            "log segment {missing} ({}) is missing: {after}, and the log has segments {:?}",
            wal::segment_path(dir, missing).display(),
            segments
        );
        if !allow_corrupt {
            return Err(Error::new(
                libc::EIO,
                format!(
                    "{msg}; refusing to start (allow_corrupt_log discards the segments after it)"
                ),
            ));
        }
        warn!("recovery: {msg}");
        discard(dir, &segments[run..])?;
        segments.truncate(run);
    }
    Ok(segments)
}

/// Threads that apply a checkpoint's entries or a window of the log.
fn recovery_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(wal::RECOVERY_THREADS)
}

/// Replays the checkpoint and then the log through `apply_batch`, from
/// several threads (log emission off): each key's ops in log order, and
/// every op of the log in log order where `any_order` says a window of it
/// would not fit otherwise.
pub(crate) fn recover(
    apply_batch: ApplyBatch<'_>,
    any_order: AnyOrder<'_>,
    dir: &Path,
    allow_corrupt: bool,
) -> Result<Recovered> {
    let (start, ckpt) = load_checkpoint(apply_batch, dir)?;
    let segments = replayed_segments(dir, start.segment, ckpt, allow_corrupt)?;
    let total: u64 = segments
        .iter()
        .map(|&n| {
            std::fs::metadata(wal::segment_path(dir, n))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let t = Instant::now();
    // The seq the next record must have; a version 1 checkpoint did not
    // record it: then the first record found sets it.
    let mut next_seq = start.first_seq;
    let (mut done, mut commits) = (0usize, 0u64);
    let mut next_report = PROGRESS_BYTES;
    let threads = recovery_threads();
    let mut window = Window::default();
    for (i, &n) in segments.iter().enumerate() {
        let path = wal::segment_path(dir, n);
        let buf = read_file(&path)?;
        let what = path.display().to_string();
        let last = i + 1 == segments.len();
        if buf.len() < wal::HEADER_BYTES {
            // Only the newest segment can be caught before its header is
            // durable: the writer rotates only after it is.
            if !last && !allow_corrupt {
                return Err(Error::new(
                    libc::EIO,
                    format!("{what}: torn header with segments after it; refusing to start"),
                ));
            }
            warn!("recovery: {what} has a torn header; starting it afresh");
            std::fs::remove_file(&path).map_err(|e| Error::io(&what, &e))?;
            discard(dir, &segments[i + 1..])?;
            return Ok(Recovered {
                segment: n,
                next_seq: next_seq.unwrap_or(1),
            });
        }
        wal::check_header(&buf, wal::WAL_MAGIC, &wal::FORMAT_VERSIONS, &what)?;
        let expected = next_seq.or_else(|| wal::first_seq(&buf)).unwrap_or(1);
        let scan = wal::scan_segment(&buf, expected, |commit, end| {
            window.push(commit);
            if window.full() {
                window.apply(apply_batch, any_order, threads)?;
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
        // What a segment holds is applied before it is judged or cut.
        window.apply(apply_batch, any_order, threads)?;
        next_seq = Some(scan.next_seq);
        commits += scan.commits;
        if let Some((offset, why, more)) = scan.bad {
            if (more || !last) && !allow_corrupt {
                let hint = match (why.starts_with("record seq"), offset == wal::HEADER_BYTES) {
                    (true, true) if i == 0 => {
                        ": the segment does not start where the checkpoint says; it is stale"
                    }
                    (true, true) => {
                        ": the segment does not continue the one before; a segment is missing \
                         or stale"
                    }
                    (true, false) => ": a gap in the log's sequence",
                    _ => "",
                };
                return Err(Error::new(
                    libc::EIO,
                    format!(
                        "{what}: {why} at byte {offset}{hint}; valid records follow, so this is \
                         no torn tail; refusing to start (allow_corrupt_log discards everything \
                         from there)"
                    ),
                ));
            }
            warn!(
                "recovery: {what}: {why} at byte {offset}; log ends there, cutting {} bytes",
                buf.len() - offset
            );
            cut(&path, offset)?;
            discard(dir, &segments[i + 1..])?;
            info!("recovery: {commits} commits replayed in {:?}", t.elapsed());
            return Ok(Recovered {
                segment: n,
                next_seq: scan.next_seq,
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
        segment: segments.last().copied().unwrap_or(start.segment),
        next_seq: next_seq.unwrap_or(1),
    })
}

/// Finds where the log continues without replaying it (hot restart: the
/// kernel state is current): after the last record of the newest segment
/// that has one, else at the seq the checkpoint gives. A torn tail is cut.
pub(crate) fn resume(dir: &Path) -> Result<Recovered> {
    let ckpt = checkpoint::open(dir)?;
    let start = ckpt.as_ref().map_or(1, |c| c.segment);
    let segments = wal::segments(dir)?;
    let segment = segments.last().copied().unwrap_or(start);
    for &n in segments.iter().rev().take_while(|&&n| n >= start) {
        let path = wal::segment_path(dir, n);
        let buf = read_file(&path)?;
        let what = path.display().to_string();
        if buf.len() < wal::HEADER_BYTES {
            continue;
        }
        wal::check_header(&buf, wal::WAL_MAGIC, &wal::FORMAT_VERSIONS, &what)?;
        let Some(first) = wal::first_seq(&buf) else {
            if buf.len() > wal::HEADER_BYTES {
                warn!("hot restart: {what}: no whole record; cutting the tail");
                cut(&path, wal::HEADER_BYTES)?;
            }
            continue;
        };
        let scan = wal::scan_segment(&buf, first, |_, _| Ok(()))?;
        if let Some((offset, why, _)) = scan.bad {
            warn!("hot restart: {what}: {why} at byte {offset}; cutting the tail");
            cut(&path, offset)?;
        }
        return Ok(Recovered {
            segment,
            next_seq: scan.next_seq,
        });
    }
    let next_seq = ckpt.and_then(|c| c.first_seq).unwrap_or(1);
    Ok(Recovered { segment, next_seq })
}
