//! The on-disk log format, as far as the crash tests need it to damage a log on purpose. It
//! mirrors the format comment of bpf/src/wal.rs: a segment is a 16-byte header (`"BPFDBWAL"`,
//! version u32, reserved u32) and records `len u32 | crc32c u32 | seq u64 | payload`; the
//! checkpoint starts with `"BPFDBCKP"`, version u32. Little endian throughout.
use std::path::Path;

pub const HEADER_BYTES: u64 = 16;
pub const RECORD_HEADER_BYTES: u64 = 16;
/// Offset of the format version in a segment or checkpoint header.
pub const VERSION_OFFSET: u64 = 8;
/// The format versions bpfdb writes (bpf/src/wal.rs).
pub const SEGMENT_VERSION: u32 = 3;
pub const CHECKPOINT_VERSION: u32 = 4;

/// `(offset, total length)` of each record of a segment, walking the length fields only
/// (no checksums); stops at the first record that runs past the end of the file.
#[track_caller]
pub fn records(path: &Path) -> Vec<(u64, u64)> {
    let buf = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut off = HEADER_BYTES as usize;
    while off + RECORD_HEADER_BYTES as usize <= buf.len() {
        let len = u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let total = RECORD_HEADER_BYTES as usize + len;
        if off + total > buf.len() {
            break;
        }
        out.push((off as u64, total as u64));
        off += total;
    }
    out
}

/// Inverts every bit of the byte at `offset`.
#[track_caller]
pub fn flip_byte(path: &Path, offset: u64) {
    let mut buf = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let i = usize::try_from(offset).expect("offset fits in usize");
    assert!(
        i < buf.len(),
        "{} has {} bytes, cannot flip byte {offset}",
        path.display(),
        buf.len()
    );
    buf[i] ^= 0xff;
    std::fs::write(path, &buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `value` as a little-endian u32 at `offset`.
#[track_caller]
pub fn put_u32(path: &Path, offset: u64, value: u32) {
    let mut buf = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let i = usize::try_from(offset).expect("offset fits in usize");
    buf[i..i + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, &buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Cuts the last `n` bytes off a file.
#[track_caller]
pub fn truncate_by(path: &Path, n: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let len = f.metadata().expect("stat").len();
    assert!(len >= n, "{} has only {len} bytes", path.display());
    f.set_len(len - n)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

/// The checkpoint file of a data directory.
pub fn checkpoint_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("checkpoint")
}

/// The key names a checkpoint holds, in file order. It mirrors `write_checkpoint` of
/// bpf/src/durability/checkpoint.rs and `put_op` of bpf/src/durability/format.rs: after the 16-byte header come
/// `next_segment u64 | first_seq u64 | count u64` (checkpoint format 4, the bytes of 3), then `count` entries
/// `4u8 | key_len u8 | key | mode u32 | uid u32 | gid u32 | mtime_ns u64 | ctime_ns u64 |
/// value_len u32 | value`, then a crc32c u32 of all before
/// it (not checked here: the daemon checks it at start). Panics on a file of another shape.
#[track_caller]
pub fn checkpoint_keys(path: &Path) -> Vec<Vec<u8>> {
    const OP_PUT: u8 = 4;
    let buf = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let bad = |why: &str| -> ! { panic!("{}: {why}", path.display()) };
    if buf.len() < HEADER_BYTES as usize + 20 || &buf[..8] != b"BPFDBCKP" {
        bad("not a checkpoint");
    }
    let body = &buf[..buf.len() - 4];
    if buf[8..12] != CHECKPOINT_VERSION.to_le_bytes() {
        bad(&format!("not a checkpoint of format {CHECKPOINT_VERSION}"));
    }
    let mut off = HEADER_BYTES as usize + 16;
    let take = |off: &mut usize, n: usize| -> &[u8] {
        let Some(s) = body.get(*off..*off + n) else {
            bad("truncated entry")
        };
        *off += n;
        s
    };
    let count = u64::from_le_bytes(take(&mut off, 8).try_into().expect("8 bytes"));
    let mut keys = Vec::new();
    for _ in 0..count {
        let head = take(&mut off, 2);
        if head[0] != OP_PUT {
            bad(&format!(
                "entry {} is op {}, not a put",
                keys.len(),
                head[0]
            ));
        }
        let key = take(&mut off, usize::from(head[1])).to_vec();
        take(&mut off, 4 + 4 + 4 + 8 + 8);
        let len = u32::from_le_bytes(take(&mut off, 4).try_into().expect("4 bytes"));
        take(&mut off, len as usize);
        keys.push(key);
    }
    if off != body.len() {
        bad(&format!(
            "{} bytes after its {count} entries",
            body.len() - off
        ));
    }
    keys
}

/// Size of a file in bytes.
#[track_caller]
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}
