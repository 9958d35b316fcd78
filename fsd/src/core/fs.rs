//! The filesystem core: docs/SEMANTICS.md expressed as engine calls, with
//! plain Rust types only, so tests drive it without FUSE.
//!
//! Readers get a copy of the value taken at open; writers get a private
//! buffer that one engine `set` commits on flush/fsync (or, inside a
//! transaction's directory, stages). The kernel names files by inode, the
//! engine by key: `Inodes` maps one to the other, per scope (the root, or
//! one open transaction or snapshot).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bpfdb::{Db, Error, Meta, NewMeta, Result, SetFlags, check_key};

use crate::core::caller::Caller;
pub use crate::core::clock::now_ns;
use crate::core::handles::{Handles, lock};
use crate::core::inodes::{
    CTL_INO, FIRST_KEY_INO, Inodes, Place, ROOT_INO, ROOT_SCOPE, SNAP_INO, STATS_INO, TXN_INO,
};
use crate::core::keyuse::{CommitGuard, KeyUse};
use crate::core::stats::{self, DaemonStats, FsStat};
use crate::core::txns::{self, Open, Reaper, TxnKind, Txns};

#[cfg(test)]
mod cache_tests;
mod ctl;
mod durable;
#[cfg(test)]
mod durable_tests;
mod files;
mod space;
#[cfg(test)]
mod tests;
mod txn_dirs;
#[cfg(test)]
mod txn_tests;

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

/// How long a read-write transaction may stay idle by default.
pub const DEFAULT_TXN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Last change of the value or of the metadata (atime is mtime).
    pub ctime_ns: u64,
    pub kind: Kind,
    pub nlink: u32,
    /// The kernel may keep these attributes (and the entry naming them)
    /// until told otherwise: true only for committed keys at the root,
    /// whose every change goes through `Fs::root_changed`.
    pub cacheable: bool,
}

/// Changes requested by `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime_ns: Option<u64>,
    /// Who asks (chmod keeps set-group-ID only for a member of the group).
    pub by: Caller,
}

impl SetAttr {
    fn changes_meta(&self) -> bool {
        self.changes_owner_or_mode() || self.mtime_ns.is_some()
    }

    fn changes_owner_or_mode(&self) -> bool {
        self.mode.is_some() || self.uid.is_some() || self.gid.is_some()
    }

    /// The new metadata; ctime is now. chmod by a caller that is neither
    /// root nor in the file's group drops set-group-ID, as Linux does.
    fn apply(&self, meta: &Meta, mtime_ns: u64) -> NewMeta {
        let gid = self.gid.unwrap_or(meta.gid);
        let mode = self.mode.map_or(meta.mode, |m| {
            let keep_sgid = self.by.is_root() || self.by.in_group(gid);
            let m = if keep_sgid { m } else { m & !libc::S_ISGID };
            libc::S_IFREG | (m & 0o7777)
        });
        NewMeta {
            mode,
            uid: self.uid.unwrap_or(meta.uid),
            gid,
            mtime_ns,
            ctime_ns: now_ns(),
        }
    }
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
    max_value: usize,
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
            max_value: db.options().max_value as usize,
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
    /// mtime and ctime move.
    fn root_dir_changed(&self) {
        self.root_changed_ns.fetch_max(now_ns(), Ordering::Relaxed);
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
                    _ => self.lookup_key(&Space::Root, name),
                };
            }
            Parent::List(kind) => return self.lookup_txn_dir(kind, name),
            Parent::Scope(open) => open,
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
        self.lookup_key(&space, name)
    }

    fn lookup_key(&self, space: &Space, name: &[u8]) -> Result<Attr> {
        let key = valid_key("lookup", name)?;
        let st = space
            .stat(&self.db, key)
            .map_err(|e| space.restate(e, "lookup", key))?;
        let ino = self.inodes.remember(&Place::key(space.scope(), key))?;
        let attr = space.attr(ino, &st.meta, st.meta.len as usize);
        // A writer's process sees its own size (`getattr`): not for caching.
        let cacheable = attr.cacheable && !self.uses.has_writer(ino);
        Ok(Attr { cacheable, ..attr })
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        if ino >= FIRST_KEY_INO {
            self.inodes.forget(ino, nlookup);
        }
    }

    /// Attributes as `who` sees them: through its handle `fh`, or through
    /// its own process's writer of the inode (fstat comes without a
    /// handle; a writer sees its own writes), else as committed.
    pub fn getattr(&self, ino: u64, fh: Option<u64>, who: Caller) -> Result<Attr> {
        if ino < FIRST_KEY_INO {
            return self.reserved_attr("getattr", ino);
        }
        if let Some(fh) = fh
            && let Ok(h) = self.handles.get(fh)
            && let Some(attr) = lock(&h).own_attr(ino)
        {
            return Ok(attr);
        }
        // While a writer has changes pending, each process has its own
        // view, so none may be cached for the others. The kernel keeps one
        // size per inode, so a cached reader still open past the writer's
        // wait for it (`keyuse::QUIET_TIMEOUT`) gets the committed size
        // for everyone: its page-cache reads stop at that size.
        if self.uses.has_writer(ino) {
            let process = OnceLock::new();
            if !self.uses.has_cached(ino)
                && let Some(attr) = self.handles.find_map(|h| h.writer_attr(ino, who, &process))
            {
                return Ok(attr);
            }
            return self.committed_attr(ino).map(|a| Attr {
                cacheable: false,
                ..a
            });
        }
        self.committed_attr(ino)
    }

    fn committed_attr(&self, ino: u64) -> Result<Attr> {
        let (place, linked) = self.place_of("getattr", ino)?;
        let (scope, key) = match place {
            Place::Key { scope, name } => (scope, name),
            Place::Dir { scope } => {
                let open = self.live_scope("getattr", ino, scope, linked)?;
                return Ok(self.txn_dir_attr(ino, &open));
            }
            Place::Ctl { scope } => {
                let open = self.live_scope("getattr", ino, scope, linked)?;
                return Ok(self.txn_ctl_attr(ino, &open));
            }
        };
        if !linked {
            // fstat() of a file whose key was removed while open comes
            // without a handle; any handle open on the inode answers.
            if let Some(attr) = self.handles.find_map(|h| h.attr(ino)) {
                return Ok(Attr { nlink: 0, ..attr });
            }
        }
        let space = self.space("getattr", scope)?;
        let st = space.stat(&self.db, &key).map_err(|e| {
            if linked {
                space.gone_since_lookup(e, "getattr", &key)
            } else {
                space.restate(e, "getattr", &key)
            }
        })?;
        Ok(space.attr(ino, &st.meta, st.meta.len as usize))
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, change: SetAttr) -> Result<Attr> {
        let own_file = || {
            Error::new(
                libc::EPERM,
                format!(
                    "setattr {}: the daemon's own files cannot be changed",
                    self.name_for_log(ino)
                ),
            )
        };
        if ino < FIRST_KEY_INO {
            // A size on `.ctl` is the O_TRUNC of `echo cmd > .ctl`.
            if !change.changes_meta() && (change.size.is_none() || ino == CTL_INO) {
                return self.reserved_attr("setattr", ino);
            }
            return Err(own_file());
        }
        let (scope, key) = match self.place_of("setattr", ino)?.0 {
            Place::Key { scope, name } => (scope, name),
            Place::Ctl { .. } if !change.changes_meta() => return self.getattr(ino, fh, change.by),
            Place::Dir { .. } | Place::Ctl { .. } => return Err(own_file()),
        };
        let space = self.space("setattr", scope)?;
        if change.size.is_some() || change.changes_meta() {
            space.writable("setattr", &key)?;
        }
        if let Space::Open(_) = space
            && change.changes_owner_or_mode()
        {
            return Err(Error::new(
                libc::EPERM,
                format!(
                    "chmod/chown {}: not inside a transaction; change modes and owners at the root",
                    space.show(&key)
                ),
            ));
        }
        if let Some(size) = change.size {
            let len = self.checked_size(size, || space.show(&key))?;
            // Without an open writer the truncation commits (or, in a
            // transaction, is staged) at once, with any other change in
            // the same request.
            if !self.truncate_writer(fh, ino, len)? {
                let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[&key]));
                let attr = self.truncate_now(&space, ino, &key, len, &change)?;
                if let Space::Root = space {
                    self.root_changed(&key);
                }
                return Ok(attr);
            }
        }
        if change.changes_meta() {
            let cur = space
                .stat(&self.db, &key)
                .map_err(|e| space.gone_since_lookup(e, "setattr", &key))?
                .meta;
            let mtime = change.mtime_ns.unwrap_or(cur.mtime_ns);
            let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[&key]));
            space
                .set_meta(&self.db, &key, change.apply(&cur, mtime))
                .map_err(|e| space.restate(e, "setattr", &key))?;
            if let Space::Root = space {
                self.root_changed(&key);
            }
        }
        self.getattr(ino, fh, change.by)
    }

    fn truncate_now(
        &self,
        space: &Space,
        ino: u64,
        key: &[u8],
        len: usize,
        change: &SetAttr,
    ) -> Result<Attr> {
        let mut value = Vec::new();
        let cur = space
            .get(&self.db, key, &mut value)
            .map_err(|e| space.gone_since_lookup(e, "truncate", key))?
            .meta;
        value.resize(len, 0);
        let meta = change.apply(&cur, change.mtime_ns.unwrap_or_else(now_ns));
        let must_exist = SetFlags {
            no_replace: false,
            must_exist: true,
        };
        let st = space
            .set(&self.db, key, &value, meta, must_exist)
            .map_err(|e| space.restate(e, "truncate", key))?;
        Ok(space.attr(ino, &st.meta, value.len()))
    }

    /// `open(O_CREAT)`: commits (in a transaction: stages) an empty value
    /// at once unless the key exists.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Attr, Opened)> {
        let space = self.key_space("create", parent, name)?;
        let key = valid_key("create", name)?;
        space.writable("create", key)?;
        let now = now_ns();
        let meta = NewMeta {
            mode: libc::S_IFREG | (mode & !umask & 0o7777),
            uid: who.uid,
            gid: who.gid,
            mtime_ns: now,
            ctime_ns: now,
        };
        let no_replace = SetFlags {
            no_replace: true,
            must_exist: false,
        };
        // A shell's `>` never checks close: a log that cannot take the
        // value fails the create, before any key exists.
        if let Space::Root = space {
            self.db
                .log_health()
                .map_err(|e| space.restate(e, "create", key))?;
        }
        // A writer's create is durable by its close (`Writer::unsynced`):
        // its wait is left to that, so one `echo v > new` waits for one fsync.
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let (made, unsynced) = if writing && matches!(space, Space::Root) {
            self.db
                .defer_durability(|| space.set(&self.db, key, &[], meta, no_replace))
        } else {
            (space.set(&self.db, key, &[], meta, no_replace), None)
        };
        let created = match made {
            Ok(st) => Some(st),
            // Created by someone else since the kernel's lookup: open it.
            Err(e) if e.errno == libc::EEXIST && flags & libc::O_EXCL == 0 => None,
            Err(e) => return Err(space.restate(e, "create", key)),
        };
        if created.is_some() && matches!(space, Space::Root) {
            self.root_dir_changed();
        }
        let ino = self.inodes.remember(&Place::key(space.scope(), key))?;
        let opened = match created {
            Some(st) => self.open_created(ino, st, unsynced, flags, who),
            None => self.open_key(ino, &space, key, flags, who),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                // The kernel gets an error, so it never holds this lookup.
                self.inodes.forget(ino, 1);
                return Err(e);
            }
        };
        let attr = self.getattr(ino, Some(opened.fh), who)?;
        Ok((attr, opened))
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        let space = self.key_space("unlink", parent, name)?;
        let key = valid_key("unlink", name)?;
        space.writable("unlink", key)?;
        let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[key]));
        space
            .delete(&self.db, key)
            .map_err(|e| space.restate(e, "unlink", key))?;
        if let Space::Root = space {
            self.root_changed(key);
            self.root_dir_changed();
        }
        self.inodes.unlinked(&Place::key(space.scope(), key));
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        match self.parent("rmdir", parent, name)? {
            Parent::List(kind) => self.remove_txn_dir(kind, name),
            Parent::Scope(open) => Err(flat("rmdir", &open, name)),
            Parent::Root => {
                let (errno, why) = match name {
                    b".txn" | b".snap" => (libc::EPERM, "reserved directory"),
                    _ => (libc::ENOTDIR, "not a directory: keys are files"),
                };
                Err(Error::new(errno, format!("rmdir {}: {why}", show(name))))
            }
        }
    }

    /// `mv a b`: one engine commit at the root; inside a transaction, one
    /// staged move. `flags` are renameat2 flags.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let from_dir = self.parent("rename", parent, name)?;
        let to_dir = self.parent("rename", new_parent, new_name)?;
        let what = || format!("rename {} -> {}", show(name), show(new_name));
        let space = match (from_dir, to_dir) {
            (Parent::List(_), _) | (_, Parent::List(_)) => {
                return Err(Error::new(
                    libc::EPERM,
                    format!(
                        "{}: transaction directories cannot be renamed, and keys cannot move into .txn or .snap",
                        what()
                    ),
                ));
            }
            (Parent::Root, Parent::Root) => Space::Root,
            (Parent::Scope(a), Parent::Scope(b)) if a.scope == b.scope => Space::Open(a),
            _ => {
                return Err(Error::new(
                    libc::EXDEV,
                    format!(
                        "{}: keys move only within one directory (the root or one transaction)",
                        what()
                    ),
                ));
            }
        };
        let what = || format!("rename {} -> {}", space.show(name), space.show(new_name));
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
        space.writable("rename", from)?;
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[from, to]));
        space
            .rename(&self.db, from, to, no_replace)
            .map_err(|e| space.restate_as(e, what))?;
        if let Space::Root = space {
            self.root_changed(from);
            self.root_changed(to);
            self.root_dir_changed();
        }
        self.inodes.renamed(space.scope(), from, to);
        Ok(())
    }

    /// `mkdir .txn/NAME` begins a transaction, `mkdir .snap/NAME` a
    /// snapshot; anywhere else directories do not exist.
    pub fn mkdir(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        match self.parent("mkdir", parent, name)? {
            Parent::List(kind) => self.make_txn_dir(kind, name),
            Parent::Scope(open) => Err(flat("mkdir", &open, name)),
            Parent::Root => Err(Error::new(
                libc::EPERM,
                format!(
                    "mkdir {}: directories are not supported, keys are files",
                    show(name)
                ),
            )),
        }
    }

    pub fn mknod(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.parent("mknod", parent, name)?;
        Err(Error::new(
            libc::EPERM,
            format!(
                "mknod {}: device nodes and special files are not supported",
                show(name)
            ),
        ))
    }

    pub fn symlink(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.parent("symlink", parent, name)?;
        Err(Error::new(
            libc::EPERM,
            format!("symlink {}: symbolic links are not supported", show(name)),
        ))
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr> {
        self.parent("link", new_parent, new_name)?;
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
        };
        stats::render(&self.db.stats(), &self.db.layout(), &daemon)
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
            ROOT_INO | STATS_INO | TXN_INO | SNAP_INO | CTL_INO => Ok(self.fixed_attr(ino)),
            _ => Err(Error::new(
                libc::ENOENT,
                format!("{op} inode {ino}: unknown inode"),
            )),
        }
    }

    fn fixed_attr(&self, ino: u64) -> Attr {
        let (kind, mode, nlink, mtime_ns, size) = match ino {
            // "." and ".." plus the ".." of each subdirectory.
            ROOT_INO => (
                Kind::Dir,
                self.root_mode,
                4,
                self.root_changed_ns.load(Ordering::Relaxed),
                0,
            ),
            // The length the content would have now; what a read returns is
            // rendered at open (direct I/O, so the size does not cut it).
            STATS_INO => (
                Kind::File,
                0o444,
                1,
                now_ns(),
                self.stats_text().len() as u64,
            ),
            CTL_INO => (
                Kind::File,
                0o600,
                1,
                self.started_ns,
                ctl::ROOT_USAGE.len() as u64,
            ),
            _ => {
                let kind = if ino == TXN_INO {
                    TxnKind::ReadWrite
                } else {
                    TxnKind::Snapshot
                };
                let subdirs = u32::try_from(self.txns.list(kind).len()).unwrap_or(u32::MAX);
                (
                    Kind::Dir,
                    0o755,
                    subdirs.saturating_add(2),
                    self.started_ns,
                    0,
                )
            }
        };
        Attr {
            ino,
            size,
            mode,
            uid: self.owner.uid,
            gid: self.owner.gid,
            mtime_ns,
            ctime_ns: mtime_ns,
            kind,
            nlink,
            cacheable: false,
        }
    }
}

/// Attributes of a key as a handle or a transaction sees it: never cached.
fn file_attr(ino: u64, meta: &Meta, len: usize) -> Attr {
    Attr {
        ino,
        size: len as u64,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        mtime_ns: meta.mtime_ns,
        ctime_ns: meta.ctime_ns.max(meta.mtime_ns),
        kind: Kind::File,
        nlink: 1,
        cacheable: false,
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

/// mkdir and rmdir inside a transaction directory: the namespace is flat.
fn flat(op: &str, open: &Open, name: &[u8]) -> Error {
    Error::new(
        libc::EPERM,
        format!(
            "{op} {}/{}: a transaction directory holds keys only (flat namespace)",
            open.path(),
            show(name)
        ),
    )
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
