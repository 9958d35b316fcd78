//! Attributes: what getattr answers for keys, the daemon's own files and
//! transaction directories, and what setattr changes (chmod, chown, utimens,
//! truncate: through an open writer's buffer, or committed at once).

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use bpfdb::{Error, Meta, NewMeta, Result, Stat};

use super::space::Space;
use super::tree;
use super::{Attr, Fs, Kind, MUST_EXIST, ctl, now_ns};
use crate::core::caller::Caller;
use crate::core::handles::lock;
use crate::core::inodes::{CTL_INO, FIRST_KEY_INO, Place, ROOT_INO, SNAP_INO, STATS_INO, TXN_INO};
use crate::core::txns::TxnKind;

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
    pub(super) fn changes_meta(&self) -> bool {
        self.changes_owner_or_mode() || self.mtime_ns.is_some()
    }

    pub(super) fn changes_owner_or_mode(&self) -> bool {
        self.mode.is_some() || self.uid.is_some() || self.gid.is_some()
    }

    /// The new metadata; ctime is now. chmod by a caller that is neither
    /// root nor in the file's group drops set-group-ID, as Linux does.
    pub(super) fn apply(&self, meta: &Meta, mtime_ns: u64) -> NewMeta {
        let gid = self.gid.unwrap_or(meta.gid);
        let mode = self.mode.map_or(meta.mode, |m| {
            let keep_sgid = self.by.is_root() || self.by.in_group(gid);
            let m = if keep_sgid { m } else { m & !libc::S_ISGID };
            file_type(meta.mode) | (m & 0o7777)
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

impl Fs {
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
        if tree::dir_of_record(&key).is_some() {
            return self.dir_attr_of(&space, ino, &key).map_err(|e| {
                if linked {
                    space.gone_since_lookup(e, "getattr", &key)
                } else {
                    space.restate(e, "getattr", &key)
                }
            });
        }
        let st = space.stat(&self.db, &key).map_err(|e| {
            if linked {
                space.gone_since_lookup(e, "getattr", &key)
            } else {
                space.restate(e, "getattr", &key)
            }
        })?;
        Ok(self.node_attr(&space, ino, &key, &st))
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
            let st = space
                .set_meta(&self.db, &key, change.apply(&cur, mtime))
                .map_err(|e| space.restate(e, "setattr", &key))?;
            if let Space::Root = space {
                self.root_changed(&key);
            }
            self.writers_take_meta(ino, &st.meta);
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
        let st = space
            .set(&self.db, key, &value, meta, MUST_EXIST)
            .map_err(|e| space.restate(e, "truncate", key))?;
        Ok(self.key_attr(key, space.attr(ino, &st.meta, value.len())))
    }

    fn checked_size(&self, size: u64, name: impl FnOnce() -> String) -> Result<usize> {
        match usize::try_from(size) {
            Ok(len) if len <= self.max_value_bytes => Ok(len),
            _ => Err(Error::new(
                libc::EFBIG,
                format!(
                    "truncate {}: {size} bytes is over max_value {}; the previous value stays",
                    name(),
                    self.max_value_bytes
                ),
            )),
        }
    }

    /// Attributes of key `key` (not a directory) from its `st`; a device
    /// node's number is its value.
    pub(super) fn node_attr(&self, space: &Space, ino: u64, key: &[u8], st: &Stat) -> Attr {
        let mut attr = self.key_attr(key, space.attr(ino, &st.meta, st.meta.len as usize));
        if matches!(attr.kind, Kind::CharDevice | Kind::BlockDevice) {
            let mut v = Vec::new();
            if space.get(&self.db, key, &mut v).is_ok()
                && let Ok(b) = <[u8; 4]>::try_from(&v[..])
            {
                attr.rdev = u32::from_le_bytes(b);
            }
            attr.size = 0;
        }
        attr
    }

    pub(super) fn reserved_attr(&self, op: &str, ino: u64) -> Result<Attr> {
        match ino {
            ROOT_INO | STATS_INO | TXN_INO | SNAP_INO | CTL_INO => Ok(self.fixed_attr(ino)),
            _ => Err(Error::new(
                libc::ENOENT,
                format!("{op} inode {ino}: unknown inode"),
            )),
        }
    }

    /// Subdirectories of the root, as committed (0 if unreadable).
    fn root_subdirs(&self) -> u32 {
        let mut v = Vec::new();
        match self.db.session().get(tree::ROOT_DIRS_KEY, &mut v) {
            Ok(_) => tree::Entries::decode_root(&v)
                .map_or(0, |e| u32::try_from(e.subdirs()).unwrap_or(u32::MAX)),
            Err(_) => 0,
        }
    }

    pub(super) fn fixed_attr(&self, ino: u64) -> Attr {
        let (kind, mode, nlink, mtime_ns, size) = match ino {
            // "." and ".." plus the ".." of each subdirectory (.txn, .snap
            // and the root's own, which the root's list names).
            ROOT_INO => (
                Kind::Dir,
                self.root_mode,
                4 + self.root_subdirs(),
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
            rdev: 0,
            // The root's attributes change only through `root_dir_changed`,
            // which drops the kernel's copy: so it may keep them, and a path
            // walk's permission check on the root costs no round trip. The
            // others change with every transaction or read.
            cacheable: ino == ROOT_INO,
        }
    }
}

/// The type bits of `mode` (a key written before types were kept is a
/// regular file).
fn file_type(mode: u32) -> u32 {
    match mode & libc::S_IFMT {
        0 => libc::S_IFREG,
        t => t,
    }
}

/// Attributes of a key as a handle or a transaction sees it: never cached.
pub(super) fn file_attr(ino: u64, meta: &Meta, len: usize) -> Attr {
    Attr {
        ino,
        size: len as u64,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        mtime_ns: meta.mtime_ns,
        ctime_ns: meta.ctime_ns.max(meta.mtime_ns),
        kind: Kind::of_mode(meta.mode),
        nlink: 1,
        rdev: 0,
        cacheable: false,
    }
}
