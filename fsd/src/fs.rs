//! The filesystem core: docs/SEMANTICS.md expressed as engine calls, with
//! plain Rust types only, so tests drive it without FUSE.
//!
//! Readers get a copy of the value taken at open; writers get a private
//! buffer that one engine `set` commits on flush/fsync. The kernel names
//! files by inode, the engine by key: `Inodes` maps one to the other.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bpfdb::{Db, Error, Meta, NewMeta, Result, SetFlags, check_key};

use crate::handles::{Handles, lock};
use crate::inodes::{FIRST_KEY_INO, Inodes, ROOT_INO, Resolved, SNAP_INO, STATS_INO, TXN_INO};
use crate::stats::{self, FsStat};

mod files;
#[cfg(test)]
mod tests;

use files::Handle;

/// Most handles open at once. Each may hold a whole value (up to 1 MiB),
/// so this also bounds the daemon's buffer memory.
pub const MAX_HANDLES: usize = 4096;

/// Root entries that are never keys.
pub const RESERVED: [&[u8]; 4] = [b".stats", b".txn", b".snap", b".ctl"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// Permission bits only; the type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: u64,
    pub kind: Kind,
    pub nlink: u32,
}

/// Changes requested by `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime_ns: Option<u64>,
}

impl SetAttr {
    fn changes_meta(&self) -> bool {
        self.mode.is_some() || self.uid.is_some() || self.gid.is_some() || self.mtime_ns.is_some()
    }

    fn apply(&self, meta: &Meta, mtime_ns: u64) -> NewMeta {
        NewMeta {
            mode: self
                .mode
                .map_or(meta.mode, |m| libc::S_IFREG | (m & 0o7777)),
            uid: self.uid.unwrap_or(meta.uid),
            gid: self.gid.unwrap_or(meta.gid),
            mtime_ns,
        }
    }
}

/// Who creates a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Bypass the kernel's page cache. Keys need it: the cache is one per
    /// inode, so it would mix the pages of different open snapshots (a
    /// reader would see bytes committed after its open). `.stats` needs it
    /// because its size is unknown at stat.
    pub direct_io: bool,
}

pub struct Fs {
    db: Db,
    inodes: Inodes,
    handles: Handles<Handle>,
    max_value: usize,
    max_keys: usize,
    /// Owner of the daemon's own files (root, `.stats`, `.txn`, `.snap`).
    owner: Owner,
    started_ns: u64,
}

impl Fs {
    pub fn new(db: Db) -> Fs {
        let max_keys = db.options().max_keys as usize;
        // Keys the kernel holds are live keys, plus removed keys kept alive
        // by open handles, plus slack for forgets the kernel has not sent yet.
        let inode_capacity = max_keys + MAX_HANDLES + 1024;
        Fs {
            max_value: db.options().max_value as usize,
            max_keys,
            inodes: Inodes::new(inode_capacity),
            handles: Handles::new(MAX_HANDLES),
            owner: Owner {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            },
            started_ns: now_ns(),
            db,
        }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        match parent {
            ROOT_INO => {}
            TXN_INO | SNAP_INO => {
                return Err(Error::new(
                    libc::ENOENT,
                    format!(
                        "lookup {}/{}: empty until transactions are implemented",
                        dir_name(parent),
                        show(name)
                    ),
                ));
            }
            _ => return Err(self.not_a_dir("lookup", parent, name)),
        }
        match name {
            b".stats" => return Ok(self.fixed_attr(STATS_INO)),
            b".txn" => return Ok(self.fixed_attr(TXN_INO)),
            b".snap" => return Ok(self.fixed_attr(SNAP_INO)),
            b".ctl" => {
                return Err(Error::new(
                    libc::ENOENT,
                    "lookup \".ctl\": reserved for control commands, none defined yet",
                ));
            }
            _ => {}
        }
        let key = valid_key("lookup", name)?;
        let st = self
            .db
            .session()
            .stat(key)
            .map_err(|e| restate(e, || format!("lookup {}", show(key))))?;
        let ino = self.inodes.remember(key)?;
        Ok(file_attr(ino, &st.meta, st.meta.len as usize))
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        if ino >= FIRST_KEY_INO {
            self.inodes.forget(ino, nlookup);
        }
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        if ino < FIRST_KEY_INO {
            return self.reserved_attr("getattr", ino);
        }
        if let Some(fh) = fh
            && let Ok(h) = self.handles.get(fh)
            && let Some(attr) = lock(&h).attr(ino)
        {
            return Ok(attr);
        }
        if let Resolved::Unlinked(_) = self.inodes.resolve(ino) {
            // fstat() of a file whose key was removed while open comes
            // without a handle; any handle open on the inode answers.
            if let Some(attr) = self.handles.find_map(|h| h.attr(ino)) {
                return Ok(Attr { nlink: 0, ..attr });
            }
        }
        let key = self.key_of("getattr", ino)?;
        let st = self
            .db
            .session()
            .stat(&key)
            .map_err(|e| restate(e, || format!("getattr {}", show(&key))))?;
        Ok(file_attr(ino, &st.meta, st.meta.len as usize))
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, change: SetAttr) -> Result<Attr> {
        if ino < FIRST_KEY_INO {
            if change.size.is_none() && !change.changes_meta() {
                return self.reserved_attr("setattr", ino);
            }
            return Err(Error::new(
                libc::EPERM,
                format!(
                    "setattr {}: the daemon's own files cannot be changed",
                    ino_name(ino)
                ),
            ));
        }
        if let Some(size) = change.size {
            let len = self.checked_size(size, || self.name_for_log(ino))?;
            // Without an open writer the truncation commits at once,
            // together with any other change in the same request.
            if !self.truncate_writer(fh, ino, len) {
                return self.truncate_now(ino, len, &change);
            }
        }
        if change.changes_meta() {
            let key = self.key_of("setattr", ino)?;
            let what = || format!("setattr {}", show(&key));
            let mut s = self.db.session();
            let cur = s.stat(&key).map_err(|e| restate(e, what))?.meta;
            let mtime = change.mtime_ns.unwrap_or(cur.mtime_ns);
            s.set_meta(&key, change.apply(&cur, mtime))
                .map_err(|e| restate(e, what))?;
        }
        self.getattr(ino, fh)
    }

    fn truncate_now(&self, ino: u64, len: usize, change: &SetAttr) -> Result<Attr> {
        let key = self.key_of("truncate", ino)?;
        let what = || format!("truncate {}", show(&key));
        let mut s = self.db.session();
        let mut value = Vec::new();
        let cur = s.get(&key, &mut value).map_err(|e| restate(e, what))?.meta;
        value.resize(len, 0);
        let meta = change.apply(&cur, change.mtime_ns.unwrap_or_else(now_ns));
        let must_exist = SetFlags {
            no_replace: false,
            must_exist: true,
        };
        let st = s
            .set(&key, &value, meta, must_exist)
            .map_err(|e| restate(e, what))?;
        Ok(file_attr(ino, &st.meta, value.len()))
    }

    /// `open(O_CREAT)`: commits an empty value at once unless the key exists.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        who: Owner,
    ) -> Result<(Attr, Opened)> {
        self.parent_dir("create", parent, name)?;
        let key = valid_key("create", name)?;
        let meta = NewMeta {
            mode: libc::S_IFREG | (mode & !umask & 0o7777),
            uid: who.uid,
            gid: who.gid,
            mtime_ns: now_ns(),
        };
        let no_replace = SetFlags {
            no_replace: true,
            must_exist: false,
        };
        let created = self.db.session().set(key, &[], meta, no_replace);
        let created = match created {
            Ok(st) => Some(st.meta),
            // Created by someone else since the kernel's lookup: open it.
            Err(e) if e.errno == libc::EEXIST && flags & libc::O_EXCL == 0 => None,
            Err(e) => return Err(restate(e, || format!("create {}", show(key)))),
        };
        let ino = self.inodes.remember(key)?;
        let opened = match created {
            Some(meta) => self.open_created(ino, meta, flags),
            None => self.open_key(ino, key, flags),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                // The kernel gets an error, so it never holds this lookup.
                self.inodes.forget(ino, 1);
                return Err(e);
            }
        };
        let attr = self.getattr(ino, Some(opened.fh))?;
        Ok((attr, opened))
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.parent_dir("unlink", parent, name)?;
        let key = valid_key("unlink", name)?;
        self.db
            .session()
            .delete(key)
            .map_err(|e| restate(e, || format!("unlink {}", show(key))))?;
        self.inodes.unlinked(key);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.parent_dir("rmdir", parent, name)?;
        let (errno, why) = match name {
            b".txn" | b".snap" => (libc::EPERM, "reserved directory"),
            _ => (libc::ENOTDIR, "not a directory: keys are files"),
        };
        Err(Error::new(errno, format!("rmdir {}: {why}", show(name))))
    }

    /// `mv a b`: one engine commit. `flags` are renameat2 flags.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.parent_dir("rename", parent, name)?;
        self.parent_dir("rename", new_parent, new_name)?;
        let what = || format!("rename {} -> {}", show(name), show(new_name));
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(Error::new(
                libc::EINVAL,
                format!("{}: RENAME_EXCHANGE is not supported", what()),
            ));
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(Error::new(
                libc::EINVAL,
                format!("{}: unsupported rename flags {flags:#x}", what()),
            ));
        }
        let from = valid_key("rename", name)?;
        let to = valid_key("rename onto", new_name)?;
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        self.db
            .session()
            .rename(from, to, no_replace)
            .map_err(|e| restate(e, what))?;
        self.inodes.renamed(from, to);
        Ok(())
    }

    pub fn mkdir(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.parent_dir("mkdir", parent, name)?;
        Err(Error::new(
            libc::EPERM,
            format!(
                "mkdir {}: directories are not supported, keys are files",
                show(name)
            ),
        ))
    }

    pub fn mknod(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.parent_dir("mknod", parent, name)?;
        Err(Error::new(
            libc::EPERM,
            format!(
                "mknod {}: device nodes and special files are not supported",
                show(name)
            ),
        ))
    }

    pub fn symlink(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.parent_dir("symlink", parent, name)?;
        Err(Error::new(
            libc::EPERM,
            format!("symlink {}: symbolic links are not supported", show(name)),
        ))
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr> {
        self.parent_dir("link", new_parent, new_name)?;
        Err(Error::new(
            libc::EPERM,
            format!(
                "link {} -> {}: hard links are not supported",
                self.name_for_log(ino),
                show(new_name)
            ),
        ))
    }

    pub fn statfs(&self) -> FsStat {
        stats::statfs(&self.db.stats(), &self.db.layout())
    }

    pub fn stats_text(&self) -> String {
        stats::render(&self.db.stats(), &self.db.layout())
    }

    /// Checks that `parent` is the root, where keys live. Inside `.txn` and
    /// `.snap` every change fails until transactions exist.
    fn parent_dir(&self, op: &str, parent: u64, name: &[u8]) -> Result<()> {
        match parent {
            ROOT_INO => Ok(()),
            TXN_INO | SNAP_INO => Err(Error::new(
                libc::EPERM,
                format!(
                    "{op} {}/{}: transactions are not implemented yet",
                    dir_name(parent),
                    show(name)
                ),
            )),
            _ => Err(self.not_a_dir(op, parent, name)),
        }
    }

    fn not_a_dir(&self, op: &str, parent: u64, name: &[u8]) -> Error {
        if parent == STATS_INO || self.inodes.is_key(parent) {
            Error::new(
                libc::ENOTDIR,
                format!(
                    "{op} {}/{}: not a directory",
                    self.name_for_log(parent),
                    show(name)
                ),
            )
        } else {
            Error::new(
                libc::ENOENT,
                format!("{op} {}: unknown parent inode {parent}", show(name)),
            )
        }
    }

    /// The key an inode names. An inode whose key was removed or replaced
    /// since the kernel looked it up still stands for its last name: `cat k`
    /// racing with `mv x k` then reads k as it is at open, which is what
    /// docs/SEMANTICS.md promises for k.
    fn key_of(&self, op: &str, ino: u64) -> Result<Vec<u8>> {
        match self.inodes.resolve(ino) {
            Resolved::Key(key) | Resolved::Unlinked(key) => Ok(key),
            Resolved::Unknown => Err(Error::new(
                libc::ESTALE,
                format!("{op} inode {ino}: unknown inode"),
            )),
        }
    }

    fn name_for_log(&self, ino: u64) -> String {
        if ino < FIRST_KEY_INO {
            return ino_name(ino).to_string();
        }
        match self.inodes.resolve(ino) {
            Resolved::Key(key) => show(&key).to_string(),
            Resolved::Unlinked(key) => format!("{} (removed)", show(&key)),
            Resolved::Unknown => format!("inode {ino}"),
        }
    }

    fn checked_size(&self, size: u64, name: impl FnOnce() -> String) -> Result<usize> {
        match usize::try_from(size) {
            Ok(len) if len <= self.max_value => Ok(len),
            _ => Err(Error::new(
                libc::EFBIG,
                format!(
                    "truncate {}: {size} bytes is over max_value {}; the previous value stays",
                    name(),
                    self.max_value
                ),
            )),
        }
    }

    fn reserved_attr(&self, op: &str, ino: u64) -> Result<Attr> {
        match ino {
            ROOT_INO | STATS_INO | TXN_INO | SNAP_INO => Ok(self.fixed_attr(ino)),
            _ => Err(Error::new(
                libc::ENOENT,
                format!("{op} inode {ino}: unknown inode"),
            )),
        }
    }

    fn fixed_attr(&self, ino: u64) -> Attr {
        let (kind, mode, nlink, mtime_ns, size) = match ino {
            // "." and ".." plus the ".." of each subdirectory.
            ROOT_INO => (Kind::Dir, 0o755, 4, self.started_ns, 0),
            // The length the content would have now; what a read returns is
            // rendered at open (direct I/O, so the size does not cut it).
            STATS_INO => (
                Kind::File,
                0o444,
                1,
                now_ns(),
                self.stats_text().len() as u64,
            ),
            _ => (Kind::Dir, 0o555, 2, self.started_ns, 0),
        };
        Attr {
            ino,
            size,
            mode,
            uid: self.owner.uid,
            gid: self.owner.gid,
            mtime_ns,
            kind,
            nlink,
        }
    }
}

fn file_attr(ino: u64, meta: &Meta, len: usize) -> Attr {
    Attr {
        ino,
        size: len as u64,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        mtime_ns: meta.mtime_ns,
        kind: Kind::File,
        nlink: 1,
    }
}

pub fn is_reserved(name: &[u8]) -> bool {
    RESERVED.contains(&name)
}

/// Checks a name used as a key: reserved names are EPERM, malformed or
/// overlong ones EINVAL or ENAMETOOLONG.
fn valid_key<'a>(op: &str, name: &'a [u8]) -> Result<&'a [u8]> {
    if is_reserved(name) {
        return Err(Error::new(
            libc::EPERM,
            format!("{op} {}: reserved name, never a key", show(name)),
        ));
    }
    check_key(name).map_err(|e| Error::new(e.errno, format!("{op} {}: {}", show(name), e.msg)))
}

/// Restates an engine error as `what: reason`, so the log names the
/// operation and the key the user asked for.
fn restate(e: Error, what: impl FnOnce() -> String) -> Error {
    let reason = e
        .msg
        .split_once(": ")
        .map_or(e.msg.as_str(), |(_, r)| r)
        .trim();
    let reason = if !reason.is_empty() {
        reason
    } else {
        match e.errno {
            libc::ENOENT => "no such key",
            libc::EEXIST => "the key exists",
            libc::EBUSY => "the key is busy",
            _ => "engine error",
        }
    };
    Error::new(e.errno, format!("{}: {reason}", what()))
}

/// A name for logs: quoted, invalid UTF-8 replaced.
fn show(name: &[u8]) -> impl fmt::Display + '_ {
    struct Quoted<'a>(&'a [u8]);
    impl fmt::Display for Quoted<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", String::from_utf8_lossy(self.0))
        }
    }
    Quoted(name)
}

fn dir_name(ino: u64) -> &'static str {
    match ino {
        TXN_INO => ".txn",
        SNAP_INO => ".snap",
        _ => "",
    }
}

fn ino_name(ino: u64) -> &'static str {
    match ino {
        ROOT_INO => "/",
        STATS_INO => "\".stats\"",
        TXN_INO => "\".txn\"",
        SNAP_INO => "\".snap\"",
        _ => "reserved inode",
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
