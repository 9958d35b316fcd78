//! The small types every layer shares: key names, the metadata a writer
//! supplies, what a read returns, and the flags of a write.

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::error::{Error, Result};
use crate::kernel::abi::{self, HKey, Meta};

/// Checks an engine key and returns its bytes: 1..=255 bytes, no NUL.
pub fn check_key(name: &[u8]) -> Result<&[u8]> {
    if name.is_empty() || name.contains(&0) {
        return Err(Error::new(
            libc::EINVAL,
            "key must be non-empty, without NUL",
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

/// Whether a name is a top-level key: it holds no '/'. The engine keeps
/// those records in a map of their own (`abi::HKEY_TOP`); keys with a '/'
/// are the daemon's directories and their files (fsd's `tree`).
pub fn is_top_level(name: &[u8]) -> bool {
    !name.contains(&b'/')
}

/// A file name used as a key: `check_key`, and no '/' (keys with one are
/// the daemon's directories, see fsd's `tree`).
pub fn check_name(name: &[u8]) -> Result<&[u8]> {
    if !is_top_level(name) {
        return Err(Error::new(
            libc::EINVAL,
            "key must be a non-empty file name without '/' or NUL",
        ));
    }
    check_key(name)
}

/// Map key of a name: SipHash-1-3-128 keyed by the database's seed, so that
/// names crafted to collide elsewhere do not collide here (a collision is
/// refused, never aliased). A keyed hash an eBPF program can compute too:
/// `db_key_hash` in bpfdb_kernel.h is the same function, for kernel callers.
pub fn key_hash(name: &[u8], seed: u64) -> HKey {
    use std::hash::Hasher;
    let mut h = SipHasher13::new_with_keys(seed, seed ^ abi::h::DB_HASH_K1_XOR);
    h.write(name);
    let out = h.finish128();
    // The top bit names the record's map (DB_HKEY_TOP): set for a
    // top-level key.
    let top = if is_top_level(name) { abi::HKEY_TOP } else { 0 };
    HKey {
        lo: out.h1,
        hi: (out.h2 & !abi::HKEY_TOP) | top,
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
