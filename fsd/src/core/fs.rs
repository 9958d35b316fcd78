//! The filesystem core: docs/SEMANTICS.md expressed as engine calls, with
//! plain Rust types only, so tests drive it without FUSE.
//!
//! Readers get a copy of the value taken at open; writers get a private
//! buffer that one engine `set` commits on flush/fsync (or, inside a
//! transaction's directory, stages). The kernel names files by inode, the
//! engine by key: `Inodes` maps one to the other, per scope (the root, or
//! one open transaction or snapshot).
//!
//! This file holds the types the FUSE adapter sees, `Fs` itself and lookup;
//! the operations are in `fs/` by concern: `attrs` (getattr, setattr),
//! `names` (create, unlink, rename, mkdir, symlink, mknod), `dirs` and `tree`
//! (directories in the flat key space), `files`
//! (open, read), `writer` (write buffers and their commits), `listing`
//! (opendir, readdir), `txn_dirs` (`.txn/NAME`, `.snap/NAME`), `ctl`
//! (`.ctl` files), `space` (where a key operation runs), `direct` (whole
//! values for servers beside the mount: memcached).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpfdb::{Db, Error, Result, SetFlags, check_name};

pub use crate::core::clock::now_ns;
use crate::core::handles::Handles;
use crate::core::inodes::{
    CTL_INO, FIRST_KEY_INO, Inodes, Place, ROOT_INO, ROOT_SCOPE, SNAP_INO, STATS_INO, TXN_INO,
};
use crate::core::keyuse::{CommitGuard, KeyUse};
use crate::core::stats::{self, ClientCounters, DaemonStats, FsStat};
use crate::core::txns::{self, Reaper, TxnKind, Txns};
use tree::ROOT_DIR;

mod attrs;
#[cfg(test)]
mod cache_tests;
mod ctl;
mod direct;
mod dirs;
#[cfg(test)]
mod dirs_tests;
mod durable;
#[cfg(test)]
mod durable_tests;
mod files;
mod listing;
mod names;
mod space;
#[cfg(test)]
mod tests;
mod tree;
mod txn_dirs;
#[cfg(test)]
mod txn_tests;
mod writer;

pub use attrs::SetAttr;
pub use direct::NEW_KEY_MODE;
use files::Handle;
use space::{Parent, Space};

/// Most handles open at once. Each may hold a whole value (up to 1 MiB),
/// so this also bounds the daemon's buffer memory.
pub const MAX_HANDLES: usize = 4096;

/// Inodes beyond the live keys and open handles: forgets the kernel has not
/// sent yet, working directories, and the entries of transaction
/// directories (dentries with a zero TTL are dropped once unused, so the
/// kernel holds few of those at a time).
pub const INODE_SLACK: usize = 1024;

/// Root entries that are never keys.
pub const RESERVED: [&[u8]; 4] = [b".stats", b".txn", b".snap", b".ctl"];

/// A set that replaces a key, which must exist (truncate, a transaction's
/// open for writing).
const MUST_EXIST: SetFlags = SetFlags {
    no_replace: false,
    must_exist: true,
};

/// A set that creates a key, which must not exist (create).
const NO_REPLACE: SetFlags = SetFlags {
    no_replace: true,
    must_exist: false,
};

/// How long a read-write transaction may stay idle by default.
pub const DEFAULT_TXN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl Kind {
    /// The kind the type bits of `mode` say; a key written before types
    /// were kept (no type bits) is a file.
    pub fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::File,
        }
    }

    /// The type bits of a mode of this kind.
    pub fn mode_type(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
            Kind::Socket => libc::S_IFSOCK,
        }
    }
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
    /// Last change of the value or of the metadata (atime is mtime).
    pub ctime_ns: u64,
    pub kind: Kind,
    pub nlink: u32,
    /// Device number of a character or block device node.
    pub rdev: u32,
    /// The kernel may keep these attributes (and the entry naming them)
    /// until told otherwise: true only for committed keys at the root,
    /// whose every change goes through `Fs::root_changed`.
    pub cacheable: bool,
}

/// Owner of the daemon's own files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Bypass the kernel's page cache; otherwise keep it across opens. The
    /// cache is one per inode, shared by every handle, so only a root key
    /// of at most `CACHE_MAX_VALUE` bytes with no write or commit pending
    /// (`keyuse`) is read through it (one page: one read fills it whole, and
    /// every commit to the key drops it). Other keys' readers keep the value they opened;
    /// `.stats` and the `.ctl` files are made at open.
    pub direct_io: bool,
}

/// Largest value read through the kernel's page cache: one page, so that
/// one READ request fills it with one whole value.
pub const CACHE_MAX_VALUE: usize = 4096;

/// Called with the inode of a root key the kernel holds, after a commit
/// changed the key and before the commit is acknowledged: the kernel must
/// drop its cached attributes, so its next use asks again and, seeing a
/// new mtime or size, drops the cached pages too.
pub type Invalidate = Box<dyn Fn(u64) + Send + Sync>;

pub struct Fs {
    /// First, so the reaper thread stops before anything else goes.
    _reaper: Reaper,
    db: Db,
    inodes: Inodes,
    handles: Handles<Handle>,
    txns: Arc<Txns>,
    max_value_bytes: usize,
    max_keys: usize,
    /// Owner of the daemon's own files (root, `.stats`, `.txn`, `.snap`).
    owner: Owner,
    /// Permission bits of the root directory (see `share_root`).
    root_mode: u32,
    started_ns: u64,
    /// mtime and ctime of the root directory: the last time a key was
    /// created, removed or renamed there by this daemon (its start before
    /// the first; kept in memory only, so a restart starts it again).
    root_changed_ns: AtomicU64,
    /// Cached readers, pending writers and commits per root key: they
    /// never overlap (see `keyuse`).
    uses: KeyUse,
    invalidate: Invalidate,
    /// Name prefixes of root keys eBPF clients write (the exec tracer's):
    /// the daemon does not see those commits, so it cannot drop the
    /// kernel's copy of their attributes, and the kernel may not keep one.
    client_keys: Vec<Vec<u8>>,
    /// `.stats` lines of the eBPF clients the daemon runs.
    client_counters: Mutex<Vec<ClientCounters>>,
    counters: Counters,
}

/// What the daemon counts for `.stats` (see `DaemonStats`).
#[derive(Default)]
struct Counters {
    key_reads: AtomicU64,
    cached_opens: AtomicU64,
    direct_opens: AtomicU64,
}

impl Fs {
    /// The core over `db`; read-write transactions idle for `txn_timeout`
    /// are aborted (zero: never).
    pub fn new(db: Db, txn_timeout: Duration) -> Result<Fs> {
        let max_keys = db.options().max_keys as usize;
        // Keys the kernel holds are live keys, plus removed keys kept alive
        // by open handles, plus the transaction directories and their .ctl.
        let inode_capacity = max_keys + MAX_HANDLES + 2 * txns::MAX_OPEN + INODE_SLACK;
        let txns = Arc::new(Txns::default());
        Ok(Fs {
            _reaper: Reaper::start(txns.clone(), txn_timeout)?,
            max_value_bytes: db.options().max_value_bytes as usize,
            max_keys,
            inodes: Inodes::new(inode_capacity),
            handles: Handles::new(MAX_HANDLES),
            txns,
            owner: Owner {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            },
            root_mode: 0o755,
            started_ns: now_ns(),
            root_changed_ns: AtomicU64::new(now_ns()),
            uses: KeyUse::default(),
            invalidate: Box::new(|_| {}),
            client_keys: Vec::new(),
            client_counters: Mutex::default(),
            counters: Counters::default(),
            db,
        })
    }

    /// Makes the root directory shared the way /tmp is (mode 1777): with
    /// allow_other, every user may create keys, and only a key's owner (or
    /// root) may remove or rename it; reads and writes follow each key's
    /// mode. `.ctl`, `.txn` and `.snap` stay the daemon owner's.
    pub fn share_root(&mut self) {
        self.root_mode = 0o1777;
    }

    /// Root keys whose names start with `prefix` are written by an eBPF
    /// client too: their attributes are never cached by the kernel, so
    /// `cat` sees the client's last commit.
    pub fn share_keys_with_clients(&mut self, prefix: &[u8]) {
        self.client_keys.push(prefix.to_vec());
    }

    /// Adds an eBPF client's counters to `.stats`.
    pub fn add_client_counters(&self, f: ClientCounters) {
        self.client_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// `attr` of root key `key`, uncacheable if clients write it.
    pub(super) fn key_attr(&self, key: &[u8], attr: Attr) -> Attr {
        let client_key = self.client_keys.iter().any(|p| key.starts_with(p));
        Attr {
            cacheable: attr.cacheable && !client_key,
            ..attr
        }
    }

    /// Sets what `root_changed` calls (the FUSE adapter's invalidation).
    pub fn set_invalidate(&mut self, f: Invalidate) {
        self.invalidate = f;
    }

    /// A commit changed `key` at the root (its value, metadata or name):
    /// drops what the kernel may have cached about it. Called after the
    /// engine commit and before the reply that acknowledges it.
    fn root_changed(&self, key: &[u8]) {
        if let Some(ino) = self.inodes.held(&Place::key(ROOT_SCOPE, key)) {
            (self.invalidate)(ino);
        }
    }

    /// A key was created, removed or renamed at the root: the directory's
    /// mtime and ctime move, and the kernel's copy of its attributes goes
    /// (they are cached, see `fixed_attr`).
    fn root_dir_changed(&self) {
        self.root_changed_ns.fetch_max(now_ns(), Ordering::Relaxed);
        (self.invalidate)(ROOT_INO);
    }

    /// Whether an operation on inode `ino`, or on root name `name` (if
    /// given), could wait for cached readers to close (`keyuse`): the FUSE
    /// adapter then runs it off its worker threads, which those readers'
    /// RELEASE and READ requests need.
    pub fn may_wait(&self, ino: Option<u64>, root_names: &[&[u8]]) -> bool {
        ino.is_some_and(|i| self.uses.has_cached(i))
            || root_names.iter().any(|n| {
                self.inodes
                    .held(&Place::key(ROOT_SCOPE, n))
                    .is_some_and(|i| self.uses.has_cached(i))
            })
    }

    /// Holds off cached readers of root `keys` (once those open have
    /// closed) until the guard drops: take it before a commit changing
    /// them, drop it after `root_changed`.
    fn root_commit(&self, keys: &[&[u8]]) -> CommitGuard<'_> {
        let inos = keys
            .iter()
            .filter_map(|k| self.inodes.held(&Place::key(ROOT_SCOPE, k)))
            .collect();
        self.uses.commit(inos)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let open = match self.parent("lookup", parent, name)? {
            Parent::Root => {
                return match name {
                    b".stats" => Ok(self.fixed_attr(STATS_INO)),
                    b".txn" => Ok(self.fixed_attr(TXN_INO)),
                    b".snap" => Ok(self.fixed_attr(SNAP_INO)),
                    b".ctl" => Ok(self.fixed_attr(CTL_INO)),
                    _ => self.lookup_entry(&Space::Root, ROOT_DIR, name),
                };
            }
            Parent::List(kind) => return self.lookup_txn_dir(kind, name),
            Parent::Scope(open) => open,
            Parent::Sub(space, dir) => return self.lookup_entry(&space, dir, name),
        };
        if name == b".ctl" && open.kind == TxnKind::ReadWrite {
            return self.lookup_txn_ctl(&open);
        }
        let space = Space::Open(open);
        if is_reserved(name) {
            return Err(Error::new(
                libc::ENOENT,
                format!("lookup {}: reserved name, never a key", space.show(name)),
            ));
        }
        self.lookup_entry(&space, ROOT_DIR, name)
    }

    /// Looks `name` up in directory `dir` of `space`: a file's inode is
    /// its key's, a subdirectory's its record's (see `tree`).
    fn lookup_entry(&self, space: &Space, dir: u64, name: &[u8]) -> Result<Attr> {
        if is_reserved(name) {
            return Err(Error::new(
                libc::ENOENT,
                format!("lookup {}: reserved name, never a key", space.show(name)),
            ));
        }
        let key = &self.entry_key("lookup", dir, name)?[..];
        let st = space
            .stat(&self.db, key)
            .map_err(|e| space.restate(e, "lookup", key))?;
        if dirs::is_dir(&st.meta) {
            let mut v = Vec::new();
            space
                .get(&self.db, key, &mut v)
                .map_err(|e| space.restate(e, "lookup", key))?;
            let record = tree::dir_key(tree::parse_id(&v)?);
            let ino = self.inodes.remember(&Place::key(space.scope(), &record))?;
            return self.dir_attr_of(space, ino, &record).inspect_err(|_| {
                self.inodes.forget(ino, 1);
            });
        }
        let ino = self.inodes.remember(&Place::key(space.scope(), key))?;
        let attr = self.node_attr(space, ino, key, &st);
        // A writer's process sees its own size (`getattr`): not for caching.
        let cacheable = attr.cacheable && !self.uses.has_writer(ino);
        Ok(Attr { cacheable, ..attr })
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        if ino >= FIRST_KEY_INO {
            self.inodes.forget(ino, nlookup);
        }
    }

    pub fn statfs(&self) -> FsStat {
        stats::statfs(&self.db.stats(), &self.db.layout())
    }

    pub fn stats_text(&self) -> String {
        let daemon = DaemonStats {
            oldest_snapshot_age_ms: u64::try_from(self.txns.oldest_age().as_millis())
                .unwrap_or(u64::MAX),
            log_bytes: self.db.log_bytes(),
            log: self.db.log_counters(),
            key_reads: self.counters.key_reads.load(Ordering::Relaxed),
            cached_opens: self.counters.cached_opens.load(Ordering::Relaxed),
            direct_opens: self.counters.direct_opens.load(Ordering::Relaxed),
            slot_waits: self.db.slot_waits(),
            worker_waits: self.uses.waits_off_pool(),
            memory: self.db.memory().unwrap_or_else(|e| {
                log::warn!(".stats: kernel memory: {e}");
                bpfdb::Memory::default()
            }),
        };
        let clients: Vec<(&'static str, u64)> = self
            .client_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|f| f())
            .collect();
        stats::render(&self.db.stats(), &self.db.layout(), &daemon, &clients)
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
    check_name(name).map_err(|e| Error::new(e.errno, format!("{op} {}: {}", show(name), e.msg)))
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

fn ino_name(ino: u64) -> &'static str {
    match ino {
        ROOT_INO => "/",
        STATS_INO => "\".stats\"",
        TXN_INO => "\".txn\"",
        SNAP_INO => "\".snap\"",
        CTL_INO => "\".ctl\"",
        _ => "reserved inode",
    }
}
