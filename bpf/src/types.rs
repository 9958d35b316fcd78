//! The small types every layer shares: key names, the metadata a writer
//! supplies, what a read returns, and the flags of a write.

use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::error::{Error, Result};
use crate::kernel::abi::{self, HKey, Meta};

/// Checks a key and returns its bytes: 1..=255 bytes, no NUL, no '/'.
pub fn check_key(name: &[u8]) -> Result<&[u8]> {
    if name.is_empty() || name.contains(&0) || name.contains(&b'/') {
        return Err(Error::new(
            libc::EINVAL,
            "key must be a non-empty file name without '/' or NUL",
        ));
    }
    if name.len() > abi::KEY_MAX {
        return Err(Error::new(
            libc::ENAMETOOLONG,
            format!("key of {} bytes exceeds {} bytes", name.len(), abi::KEY_MAX),
        ));
    }
    Ok(name)
}

/// Map key of a name. Seeded per database so that names crafted to collide
/// elsewhere do not collide here (a collision is refused, never aliased).
pub fn key_hash(name: &[u8], seed: u64) -> HKey {
    let h = xxh3_128_with_seed(name, seed);
    HKey {
        lo: h as u64,
        hi: (h >> 64) as u64,
    }
}

/// Metadata a writer supplies; the value length comes from the value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: u64,
    /// Time of this change (for a write, usually `mtime_ns`).
    pub ctime_ns: u64,
}

impl NewMeta {
    /// The metadata of a stored version, to write it again as it is.
    pub fn of(m: &Meta) -> NewMeta {
        NewMeta {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime_ns: m.mtime_ns,
            ctime_ns: m.ctime_ns,
        }
    }
}

/// What a read returns besides the bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub meta: Meta,
    /// Commit timestamp of the version read or written.
    pub ts: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SetFlags {
    pub no_replace: bool,
    pub must_exist: bool,
}
