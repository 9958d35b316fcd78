//! Checkpoints, streamed both ways in bounded user memory.
//!
//! The file (`DATA_DIR/checkpoint`, layout in `format` and docs/FORMAT.md)
//! is `header | next_segment u64 | first_seq u64 | n_keys u64 | PUT op* |
//! crc32c u32`. Its bytes are those of format version 3, whichever way they
//! were made; only how they are made and read changed:
//!
//! - Writing (`write_checkpoint`) walks the snapshot one scan batch at a
//!   time, reads each value and writes its entry through a buffered writer,
//!   the crc of the entries kept as they go. `n_keys` is known only at the
//!   end: it is written as 0, then patched in place, and the crc of the
//!   head (with the real count) is combined with that of the entries
//!   (`crc32c_combine`), so the crc covers the same bytes as always. The
//!   file is `checkpoint.tmp` until it is whole, fsynced and renamed over
//!   `checkpoint`, and the directory fsynced: a crash at any point leaves
//!   the previous checkpoint.
//! - Reading (`open`, then `Checkpoint::apply`) takes two passes over one
//!   open file: the first streams every byte through the crc, parses
//!   every entry (keeping none) and compares the crc with the stored one;
//!   only then does the second stream the entries to the engine. A
//!   damaged checkpoint is refused before any of its entries is applied.
//!
//! User memory, whatever the number of keys (3.6 MiB at most,
//! `format::CHECKPOINT_MEMORY_BOUND`): writing holds one scan batch (the
//! cursor's buffers, 1.1 MiB, and at most `abi::SCAN_BATCH` names of up to
//! 255 bytes, 0.5 MiB), one value (at most 1 MiB) and the 1 MiB write
//! buffer; reading holds one 1 MiB read buffer, one key and one value (at
//! most 1 MiB), and, while the entries are applied by several threads
//! (`apply_parallel`), at most 3 x threads + 1 batches of 256 KiB of
//! entries (each may overshoot by one entry): 3.6 MiB with 2 threads of
//! 100-byte values.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::info;

use crate::durability::format::{self as wal, LogOp};
use crate::durability::writer::sync_dir;
use crate::error::{Error, Result};
use crate::kernel::abi;
use crate::types::NewMeta;

use wal::CHECKPOINT_IO_BUFFER as IO_BUFFER;

/// Bytes before the entries: file header, next_segment, first_seq, n_keys
/// (version 1: no first_seq).
const HEAD_BYTES: usize = wal::HEADER_BYTES + 24;
const HEAD_BYTES_V1: usize = wal::HEADER_BYTES + 16;

/// The names of one scan batch, back to back in one buffer.
pub(crate) struct Names {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Names {
    pub(crate) fn push(&mut self, name: &[u8]) {
        self.bytes.extend_from_slice(name);
        self.ends.push(self.bytes.len());
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

/// Fills the names of the next batch of the snapshot a checkpoint writes;
/// false once its walk is done (the names it filled still count).
pub(crate) type NextBatch<'a> = &'a mut dyn FnMut(&mut Names) -> Result<bool>;

/// Reads one key of that snapshot: its value into the buffer, and its
/// metadata.
pub(crate) type Get<'a> = &'a mut dyn FnMut(&[u8], &mut Vec<u8>) -> Result<NewMeta>;

/// Writes a checkpoint of the keys of one snapshot, walked batch by batch
/// through `next_batch` and read through `get`, in at most
/// `wal::CHECKPOINT_MEMORY_BOUND` bytes of user memory, atomically (temp
/// file, fsync, rename, fsync of the directory). Replay then starts at
/// `next_segment`, whose first record has seq `first_seq`. Returns the
/// number of keys written.
pub(crate) fn write_checkpoint(
    next_batch: NextBatch<'_>,
    get: Get<'_>,
    dir: &Path,
    next_segment: u64,
    first_seq: u64,
) -> Result<u64> {
    let mut out = Writer::create(dir, next_segment, first_seq)?;
    // Sized once for the largest batch and value: they never grow.
    let mut names = Names {
        bytes: Vec::with_capacity(abi::SCAN_BATCH * abi::KEY_MAX),
        ends: Vec::with_capacity(abi::SCAN_BATCH),
    };
    let mut value = Vec::with_capacity(abi::VALUE_LIMIT);
    loop {
        names.clear();
        let more = next_batch(&mut names)?;
        for name in names.iter() {
            let meta = get(name, &mut value)?;
            out.put(name, &meta, &value)?;
        }
        if !more {
            return out.finish();
        }
    }
}

/// A checkpoint being written to `checkpoint.tmp`; the temp file is
/// removed unless `finish` renamed it (a partial file would only hold space
/// a full disk needs).
struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    head: [u8; HEAD_BYTES],
    /// crc32c of the entries written, and their bytes.
    crc: u32,
    bytes: u64,
    n: u64,
    entry: Vec<u8>,
    renamed: bool,
}

impl Writer {
    fn create(dir: &Path, next_segment: u64, first_seq: u64) -> Result<Writer> {
        let tmp = dir.join("checkpoint.tmp");
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp.display().to_string(), &e))?;
        let mut head = [0u8; HEAD_BYTES];
        head[..wal::HEADER_BYTES]
            .copy_from_slice(&wal::file_header(wal::CKPT_MAGIC, wal::CHECKPOINT_VERSION));
        head[16..24].copy_from_slice(&next_segment.to_le_bytes());
        head[24..32].copy_from_slice(&first_seq.to_le_bytes());
        // n_keys stays 0 until `finish` knows it.
        let mut w = Writer {
            dir: dir.to_path_buf(),
            tmp,
            out: BufWriter::with_capacity(IO_BUFFER, file),
            head,
            crc: 0,
            bytes: 0,
            n: 0,
            entry: Vec::with_capacity(2 + abi::KEY_MAX + 32),
            renamed: false,
        };
        let head = w.head;
        w.write(&head)?;
        Ok(w)
    }

    fn io(&self, e: &std::io::Error) -> Error {
        Error::io(&self.tmp.display().to_string(), e)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|e| self.io(&e))
    }

    fn put(&mut self, key: &[u8], meta: &NewMeta, value: &[u8]) -> Result<()> {
        let mut entry = std::mem::take(&mut self.entry);
        entry.clear();
        wal::put_op_head(&mut entry, key, meta, value.len());
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &entry), value);
        self.bytes += (entry.len() + value.len()) as u64;
        self.n += 1;
        let r = self.write(&entry).and_then(|_| self.write(value));
        self.entry = entry;
        r
    }

    /// Patches the count in, appends the crc, and makes the file the
    /// checkpoint.
    fn finish(mut self) -> Result<u64> {
        let at = HEAD_BYTES - 8;
        self.head[at..].copy_from_slice(&self.n.to_le_bytes());
        let crc = crc32c::crc32c_combine(crc32c::crc32c(&self.head), self.crc, self.bytes as usize);
        self.write(&crc.to_le_bytes())?;
        self.out.flush().map_err(|e| self.io(&e))?;
        let file = self.out.get_ref();
        file.write_all_at(&self.head[at..], at as u64)
            .and_then(|_| file.sync_all())
            .map_err(|e| self.io(&e))?;
        std::fs::rename(&self.tmp, wal::checkpoint_path(&self.dir))
            .map_err(|e| Error::io("rename checkpoint", &e))?;
        self.renamed = true;
        sync_dir(&self.dir)?;
        Ok(self.n)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A checkpoint file whose crc matched and whose entries all parse: where
/// the log goes on from it, and its entries, still on disk.
pub(crate) struct Checkpoint {
    file: File,
    what: String,
    /// The segment replay begins with, and the seq its first record has
    /// (None: a version 1 checkpoint, which did not say).
    pub segment: u64,
    pub first_seq: Option<u64>,
    pub n: u64,
    /// Where the entries are in the file.
    entries: std::ops::Range<u64>,
}

/// Opens the checkpoint of `dir`, if there is one, and checks it whole,
/// reading it through once (in a `IO_BUFFER` buffer, one key and one
/// value): its header, its crc, and that its `n_keys` entries parse and
/// end at the crc. A damaged file is refused here, so `apply` never sees
/// one.
pub(crate) fn open(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = wal::checkpoint_path(dir);
    let what = path.display().to_string();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&format!("open {what}"), &e)),
    };
    let read_err = |e: std::io::Error| Error::io(&format!("read {what}"), &e);
    let len = file.metadata().map_err(|e| Error::io("stat", &e))?.len();
    let mut head = [0u8; HEAD_BYTES];
    let got = (len as usize).min(HEAD_BYTES);
    file.read_exact_at(&mut head[..got], 0).map_err(read_err)?;
    let versions = [wal::CHECKPOINT_V1, 2, 3, wal::CHECKPOINT_VERSION];
    let version = wal::check_header(&head[..got], wal::CKPT_MAGIC, &versions, &what)?;
    let corrupt = |why: &str| Error::new(libc::EIO, format!("{what}: {why}; refusing to start"));
    let head_bytes = if version == wal::CHECKPOINT_V1 {
        HEAD_BYTES_V1
    } else {
        HEAD_BYTES
    };
    if len < (head_bytes + 4) as u64 {
        return Err(corrupt("truncated"));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let body = len - 4;
    let n = u64_at(head_bytes - 8);
    // Every byte before the crc goes through the crc as the buffer fills.
    let span = Span {
        file: &file,
        pos: 0,
        end: body,
    };
    let mut r = BufReader::with_capacity(
        IO_BUFFER,
        Crc {
            inner: span,
            crc: 0,
        },
    );
    r.read_exact(&mut [0u8; HEAD_BYTES][..head_bytes])
        .map_err(read_err)?;
    let malformed = match walk(&mut r, n, &mut |_, _| Ok(())) {
        Ok(()) => None,
        Err(Bad::Malformed(why)) => Some(why),
        Err(Bad::Io(e)) => return Err(read_err(e)),
        Err(Bad::Apply(e)) => return Err(e),
    };
    // What is left after the entries (or after the one that failed).
    let after = std::io::copy(&mut r, &mut std::io::sink()).map_err(read_err)?;
    let mut stored = [0u8; 4];
    file.read_exact_at(&mut stored, body).map_err(read_err)?;
    // Damage shows as a checksum mismatch, whatever else it broke.
    if r.get_ref().crc != u32::from_le_bytes(stored) {
        return Err(corrupt("checksum mismatch"));
    }
    if let Some(why) = malformed {
        return Err(corrupt(&format!("malformed {why}")));
    }
    if after > 0 {
        return Err(corrupt(&format!("{after} bytes after its {n} entries")));
    }
    drop(r);
    let first_seq = (version != wal::CHECKPOINT_V1).then(|| u64_at(24));
    Ok(Some(Checkpoint {
        file,
        what,
        segment: u64_at(16),
        first_seq,
        n,
        entries: head_bytes as u64..body,
    }))
}

/// Reads a file from `pos` up to `end` (positioned reads: the file's
/// offset is not used).
struct Span<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Span<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A reader that keeps the crc32c of every byte read through it.
struct Crc<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}

/// Progress is logged every this many keys of a checkpoint applied.
const PROGRESS_KEYS: u64 = 1 << 20;

/// Why the entries could not be walked.
enum Bad {
    Io(std::io::Error),
    Malformed(String),
    /// What the entries were handed to failed.
    Apply(Error),
}

impl From<std::io::Error> for Bad {
    fn from(e: std::io::Error) -> Bad {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Bad::Malformed("cut short".into())
        } else {
            Bad::Io(e)
        }
    }
}

/// Reads `n` PUT entries from `r`, handing each, with its index, to
/// `each`; holds one key and one value (at most 1 MiB) at a time.
fn walk(
    r: &mut impl Read,
    n: u64,
    each: &mut dyn FnMut(u64, &LogOp) -> Result<()>,
) -> std::result::Result<(), Bad> {
    let mut key = Vec::with_capacity(abi::KEY_MAX);
    let mut value = Vec::with_capacity(abi::VALUE_LIMIT);
    let mut meta = NewMeta::default();
    for i in 0..n {
        read_put(r, &mut key, &mut meta, &mut value).map_err(|e| match e {
            Bad::Malformed(why) => Bad::Malformed(format!("entry {i} of {n}: {why}")),
            e => e,
        })?;
        let op = LogOp::Put {
            key: std::mem::take(&mut key),
            meta,
            value: std::mem::take(&mut value),
        };
        each(i, &op).map_err(Bad::Apply)?;
        if let LogOp::Put {
            key: k, value: v, ..
        } = op
        {
            (key, value) = (k, v);
        }
    }
    Ok(())
}

/// Reads one PUT entry into `key`, `meta` and `value`.
fn read_put(
    r: &mut impl Read,
    key: &mut Vec<u8>,
    meta: &mut NewMeta,
    value: &mut Vec<u8>,
) -> std::result::Result<(), Bad> {
    let mut kind_len = [0u8; 2];
    r.read_exact(&mut kind_len)?;
    let [kind, key_len] = kind_len;
    if kind != wal::OP_PUT && kind != wal::OP_PUT_V1 {
        return Err(Bad::Malformed(format!("op kind {kind}, not a put")));
    }
    key.resize(key_len as usize, 0);
    r.read_exact(key)?;
    // mode, uid, gid, mtime_ns, [ctime_ns,] len
    let mut fixed = [0u8; 32];
    let fixed = &mut fixed[..if kind == wal::OP_PUT { 32 } else { 24 }];
    r.read_exact(fixed)?;
    let mut f = wal::Reader::new(fixed);
    let (mode, uid, gid, mtime_ns) = (f.u32(), f.u32(), f.u32(), f.u64());
    let ctime_ns = if kind == wal::OP_PUT {
        f.u64()
    } else {
        mtime_ns
    };
    let len = f.u32();
    let (Some(mode), Some(uid), Some(gid), Some(mtime_ns), Some(ctime_ns), Some(len)) =
        (mode, uid, gid, mtime_ns, ctime_ns, len)
    else {
        return Err(Bad::Malformed("short fields".into()));
    };
    *meta = NewMeta {
        mode,
        uid,
        gid,
        mtime_ns,
        ctime_ns,
    };
    let len = len as usize;
    if len > abi::VALUE_LIMIT {
        return Err(Bad::Malformed(format!(
            "a value of {len} bytes, over the limit of {}",
            abi::VALUE_LIMIT
        )));
    }
    value.resize(len, 0);
    r.read_exact(value)?;
    Ok(())
}

impl Checkpoint {
    /// Streams the entries to `apply` (the second pass: `open` checked
    /// them all), in one `IO_BUFFER` buffer, one key and one value;
    /// returns the number applied.
    pub(crate) fn apply(&self, apply: &mut dyn FnMut(&LogOp) -> Result<()>) -> Result<u64> {
        let t = Instant::now();
        let span = Span {
            file: &self.file,
            pos: self.entries.start,
            end: self.entries.end,
        };
        let mut r = BufReader::with_capacity(IO_BUFFER, span);
        let n = self.n;
        let mut each = |i: u64, op: &LogOp| {
            apply(op)?;
            if (i + 1).is_multiple_of(PROGRESS_KEYS) {
                info!(
                    "recovery: {} of the checkpoint's {n} keys applied ({:.0}%)",
                    i + 1,
                    (i + 1) as f64 * 100.0 / n as f64
                );
            }
            Ok(())
        };
        walk(&mut r, n, &mut each).map_err(|e| match e {
            Bad::Apply(e) => e,
            Bad::Io(e) => Error::io(&format!("read {}", self.what), &e),
            // Only if the file changed since `open` checked it.
            Bad::Malformed(why) => Error::new(
                libc::EIO,
                format!("{}: malformed {why}; refusing to start", self.what),
            ),
        })?;
        info!(
            "recovery: checkpoint of {n} keys applied in {:?}",
            t.elapsed()
        );
        Ok(n)
    }
}

impl Checkpoint {
    /// `apply`, with the entries handed in batches to `threads` threads
    /// that each apply theirs with `apply_batch` (a checkpoint's keys are
    /// distinct, so the order does not matter): replay is the engine's SET
    /// per key, and this uses every CPU for it. Batches are bounded by
    /// `CHECKPOINT_APPLY_BATCH_KEYS` / `_BYTES`, and two per thread wait at
    /// most. On an error the reader stops, the threads drain what is queued
    /// without applying it, and the first error is returned.
    pub(crate) fn apply_parallel(
        &self,
        apply_batch: &(dyn Fn(&[LogOp]) -> Result<()> + Sync),
        threads: usize,
    ) -> Result<u64> {
        let threads = threads.max(1);
        let failed = std::sync::Mutex::new(None::<Error>);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<LogOp>>(2 * threads);
        let rx = std::sync::Mutex::new(rx);
        let applied = std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| {
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(batch) = next else { return };
                        let mut first = failed.lock().unwrap_or_else(|p| p.into_inner());
                        if first.is_some() {
                            continue; // drained, not applied
                        }
                        drop(first);
                        if let Err(e) = apply_batch(&batch) {
                            first = failed.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert(e);
                        }
                    }
                });
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            let stopped = || Error::new(libc::ECANCELED, "checkpoint apply stopped");
            let read = self.apply(&mut |op| {
                if let LogOp::Put { key, value, .. } = op {
                    bytes += key.len() + value.len();
                }
                batch.push(op.clone());
                if batch.len() >= wal::CHECKPOINT_APPLY_BATCH_KEYS
                    || bytes >= wal::CHECKPOINT_APPLY_BATCH_BYTES
                {
                    // A thread failed: stop reading (checked once a batch).
                    if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return Err(stopped());
                    }
                    bytes = 0;
                    tx.send(std::mem::take(&mut batch)).map_err(|_| stopped())?;
                }
                Ok(())
            });
            let read = read.and_then(|n| {
                if !batch.is_empty() {
                    tx.send(std::mem::take(&mut batch)).map_err(|_| stopped())?;
                }
                Ok(n)
            });
            drop(tx);
            read
        });
        // The threads have joined: a failure of theirs is the cause of any
        // stop the reader saw.
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => applied,
        }
    }
}

#[cfg(test)]
mod tests;
