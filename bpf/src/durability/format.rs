//! The on-disk formats: log segments and checkpoints.
//!
//! A log segment `wal-NNNNNNNN.log` is a header followed by records:
//!
//! ```text
//! header  "BPFDBWAL" | version u32 | reserved u32
//! record  len u32 | crc32c u32 | seq u64 | payload (len bytes)
//! ```
//!
//! The crc covers seq and payload. A payload is one commit: `ts u64 |
//! n_ops u32 | op*`, an op being `kind u8 | key_len u8 | key | [PUT: mode
//! u32 | uid u32 | gid u32 | mtime_ns u64 | ctime_ns u64 | len u32 | value]`
//! (kind PUT; version 1 wrote kind PUT_V1, without ctime_ns). A checkpoint
//! `checkpoint` is `"BPFDBCKP" | version u32 | reserved u32 | next_segment
//! u64 | first_seq u64 | n_keys u64 | PUT op* | crc32c u32` (crc over
//! everything before it; version 1 had no first_seq). All integers are
//! little endian.
//!
//! The log is one sequence: every record's seq is one more than the one
//! before it, in the same segment or the segment before; segments are
//! numbered without a gap from the checkpoint's `next_segment`, whose first
//! record has seq `first_seq`. Recovery checks all three, so a segment
//! that is missing, or stale (an older copy), is found, not skipped.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::kernel::abi;
use crate::types::NewMeta;

pub const WAL_MAGIC: &[u8; 8] = b"BPFDBWAL";
pub const CKPT_MAGIC: &[u8; 8] = b"BPFDBCKP";
/// Format version of log segments. 3: keys may hold '/' (the daemon's
/// directories), so a bpfdb from before them, which would refuse those
/// keys halfway through a replay, refuses the file at its header instead.
/// The bytes are those of version 2.
pub const FORMAT_VERSION: u32 = 3;
/// Segment versions read: 1 logged PUT_V1 ops (no ctime).
pub const FORMAT_VERSIONS: [u32; 3] = [1, 2, FORMAT_VERSION];
/// Format version of checkpoints written (4: keys may hold '/', the bytes
/// of version 3); CHECKPOINT_V1 (no first_seq), 2 (PUT_V1 ops) and 3 are
/// still read.
pub const CHECKPOINT_VERSION: u32 = 4;
pub const CHECKPOINT_V1: u32 = 1;
/// Bytes buffered between a checkpoint and its file, each way.
pub const CHECKPOINT_IO_BUFFER: usize = 1 << 20;
/// Most user memory a checkpoint takes to write, at any number of keys
/// (`checkpoint.rs` streams it): one scan batch (the cursor's buffers of
/// `abi::SCAN_BATCH` keys and records, and as many names of up to 255
/// bytes with their ends), one value and the write buffer; 3.6 MiB.
/// Reading one takes less: the read buffer, one key and one value.
pub const CHECKPOINT_MEMORY_BOUND: usize = abi::SCAN_BATCH
    * (std::mem::size_of::<abi::HKey>()
        + abi::RECORD_SIZE
        + abi::KEY_MAX
        + std::mem::size_of::<usize>())
    + abi::VALUE_LIMIT
    + CHECKPOINT_IO_BUFFER;
/// A checkpoint's entries are applied by up to this many threads at once
/// (its keys are distinct, so their order does not matter), each with its
/// own engine session.
pub const RECOVERY_THREADS: usize = 4;
/// Entries handed to an applying thread at a time: at most this many, and
/// no more once their values reach CHECKPOINT_APPLY_BATCH_BYTES. Two such
/// batches per thread wait in the queue, so reading holds at most
/// (3 x threads + 1) batches besides the read buffer.
pub const CHECKPOINT_APPLY_BATCH_KEYS: usize = 1024;
pub const CHECKPOINT_APPLY_BATCH_BYTES: usize = 256 << 10;
/// The log is replayed in windows of whole commits: at most this many ops,
/// and no more once their values reach REPLAY_WINDOW_BYTES (a commit larger
/// than that is a window of its own). A window's keys are applied by up to
/// RECOVERY_THREADS threads, the ops of each key in log order by one.
pub const REPLAY_WINDOW_OPS: usize = 8192;
pub const REPLAY_WINDOW_BYTES: usize = 8 << 20;
pub const HEADER_BYTES: usize = 16;
pub const RECORD_HEADER_BYTES: usize = 16;
/// Largest payload a reader accepts: what one transaction can log.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// A PUT of format version 1: no ctime_ns.
pub const OP_PUT_V1: u8 = 2;
pub const OP_PUT: u8 = 4;
pub const OP_DEL: u8 = 3;

/// One logical change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    Put {
        key: Vec<u8>,
        meta: NewMeta,
        value: Vec<u8>,
    },
    Del {
        key: Vec<u8>,
    },
}

pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("wal-{n:08}.log"))
}

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

/// Segment numbers present in `dir`, ascending.
pub fn segments(dir: &Path) -> Result<Vec<u64>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(&format!("read {}", dir.display()), &e))?;
    let mut out: Vec<u64> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("wal-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

pub fn file_header(magic: &[u8; 8], version: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h
}

/// Checks a file header and returns its version, one of `versions` (the
/// newest last); another version is refused with a clear message.
pub fn check_header(bytes: &[u8], magic: &[u8; 8], versions: &[u32], what: &str) -> Result<u32> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != magic {
        return Err(Error::new(
            libc::EINVAL,
            format!("{what}: not a bpfdb file (bad magic)"),
        ));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !versions.contains(&version) {
        let known: Vec<String> = versions.iter().map(u32::to_string).collect();
        return Err(Error::new(
            libc::EINVAL,
            format!(
                "{what}: format version {version}, this bpfdb reads version {}",
                known.join(" or ")
            ),
        ));
    }
    Ok(version)
}

pub fn put_op(out: &mut Vec<u8>, key: &[u8], meta: &NewMeta, value: &[u8]) {
    put_op_head(out, key, meta, value.len());
    out.extend_from_slice(value);
}

/// A PUT op up to its value, which is `len` bytes and goes right after.
pub fn put_op_head(out: &mut Vec<u8>, key: &[u8], meta: &NewMeta, len: usize) {
    out.push(OP_PUT);
    out.push(key.len() as u8);
    out.extend_from_slice(key);
    out.extend_from_slice(&meta.mode.to_le_bytes());
    out.extend_from_slice(&meta.uid.to_le_bytes());
    out.extend_from_slice(&meta.gid.to_le_bytes());
    out.extend_from_slice(&meta.mtime_ns.to_le_bytes());
    out.extend_from_slice(&meta.ctime_ns.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

pub fn del_op(out: &mut Vec<u8>, key: &[u8]) {
    out.push(OP_DEL);
    out.push(key.len() as u8);
    out.extend_from_slice(key);
}

/// Frames a payload as a record.
pub fn frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A cursor over bytes that fails instead of panicking on short input.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// A reader of `buf` from byte `pos` on: a field at a known offset.
    pub fn at(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { buf, pos }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    /// One op (PUT or DEL); None on malformed input.
    pub fn op(&mut self) -> Option<LogOp> {
        let kind = self.u8()?;
        let key_len = self.u8()? as usize;
        let key = self.bytes(key_len)?.to_vec();
        match kind {
            OP_PUT | OP_PUT_V1 => {
                let mut meta = NewMeta {
                    mode: self.u32()?,
                    uid: self.u32()?,
                    gid: self.u32()?,
                    mtime_ns: self.u64()?,
                    ctime_ns: 0,
                };
                // Before ctime was kept, the last change was the last write.
                meta.ctime_ns = if kind == OP_PUT {
                    self.u64()?
                } else {
                    meta.mtime_ns
                };
                let len = self.u32()? as usize;
                let value = self.bytes(len)?.to_vec();
                Some(LogOp::Put { key, meta, value })
            }
            OP_DEL => Some(LogOp::Del { key }),
            _ => None,
        }
    }
}

/// One commit decoded from a record payload.
pub struct Commit {
    pub ts: u64,
    pub ops: Vec<LogOp>,
}

pub fn decode_commit(payload: &[u8]) -> Option<Commit> {
    let mut r = Reader::new(payload);
    let ts = r.u64()?;
    let n = r.u32()?;
    let mut ops = Vec::new();
    for _ in 0..n {
        ops.push(r.op()?);
    }
    r.done().then_some(Commit { ts, ops })
}

/// Seq of the first record of a segment's bytes, if it has a whole one.
pub fn first_seq(buf: &[u8]) -> Option<u64> {
    if buf.len() < HEADER_BYTES {
        return None;
    }
    match record_at(buf, HEADER_BYTES) {
        Next::Record { seq, .. } => Some(seq),
        _ => None,
    }
}

/// Outcome of reading a segment's records.
pub enum Next<'a> {
    Record {
        seq: u64,
        payload: &'a [u8],
        end: usize,
    },
    /// Clean end of the file.
    End,
    /// A record that is cut short or fails its checksum at this offset.
    Bad { offset: usize, why: &'static str },
}

/// The record at `offset` of a segment's bytes.
pub fn record_at(buf: &[u8], offset: usize) -> Next<'_> {
    if offset == buf.len() {
        return Next::End;
    }
    let mut r = Reader::new(&buf[offset..]);
    let (Some(len), Some(crc), Some(seq)) = (r.u32(), r.u32(), r.u64()) else {
        return Next::Bad {
            offset,
            why: "partial record header",
        };
    };
    if len as usize > MAX_PAYLOAD {
        return Next::Bad {
            offset,
            why: "impossible record length",
        };
    }
    let Some(payload) = r.bytes(len as usize) else {
        return Next::Bad {
            offset,
            why: "partial record",
        };
    };
    let want = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
    if want != crc {
        return Next::Bad {
            offset,
            why: "checksum mismatch",
        };
    }
    Next::Record {
        seq,
        payload,
        end: offset + RECORD_HEADER_BYTES + len as usize,
    }
}

/// Whether a valid record with sequence number `seq` or `seq + 1` starts
/// after `offset`: tells corruption in the middle of a log (later commits
/// exist) from a torn tail (nothing valid follows). Looks only where the
/// sequence bytes match, so it stays linear in the file size.
pub fn valid_record_after(buf: &[u8], offset: usize, seq: u64) -> bool {
    let wanted = [seq.to_le_bytes(), (seq + 1).to_le_bytes()];
    (offset + 1..buf.len().saturating_sub(RECORD_HEADER_BYTES - 1)).any(|o| {
        let at = &buf[o + 8..o + 16];
        wanted.iter().any(|w| at == w) && matches!(record_at(buf, o), Next::Record { .. })
    })
}

/// How far a segment's records are good.
#[derive(Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Offset just past the last good record.
    pub end: usize,
    /// The first bad record: offset, why, and whether valid records follow
    /// it (corruption in the middle) or not (a torn tail). A whole record
    /// with the wrong seq is bad, and counts as followed by a valid one.
    pub bad: Option<(usize, String, bool)>,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    pub commits: u64,
}

/// Walks the records of a segment (header included in `buf`), whose first
/// record must have seq `next_seq`, handing each decoded commit and the
/// offset it ends at to `on_commit`, and stops at the end or at the first
/// bad record.
pub fn scan_segment(
    buf: &[u8],
    mut next_seq: u64,
    mut on_commit: impl FnMut(Commit, usize) -> Result<()>,
) -> Result<SegmentScan> {
    let mut off = HEADER_BYTES;
    let mut commits = 0;
    loop {
        match record_at(buf, off) {
            Next::End => {
                return Ok(SegmentScan {
                    end: off,
                    bad: None,
                    next_seq,
                    commits,
                });
            }
            Next::Record { seq, .. } if seq != next_seq => {
                return Ok(SegmentScan {
                    end: off,
                    bad: Some((
                        off,
                        format!("record seq {seq} where {next_seq} was expected"),
                        true,
                    )),
                    next_seq,
                    commits,
                });
            }
            Next::Record { seq, payload, end } => {
                let commit = decode_commit(payload).ok_or_else(|| {
                    Error::new(libc::EIO, format!("malformed commit at byte {off}"))
                })?;
                on_commit(commit, end)?;
                next_seq = seq + 1;
                commits += 1;
                off = end;
            }
            Next::Bad { offset, why } => {
                let more = valid_record_after(buf, offset, next_seq);
                return Ok(SegmentScan {
                    end: offset,
                    bad: Some((offset, why.to_string(), more)),
                    next_seq,
                    commits,
                });
            }
        }
    }
}
