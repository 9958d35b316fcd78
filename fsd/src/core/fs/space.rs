//! Where things are: which directory an operation names its entry in, what
//! an inode stands for, and where key operations run — autocommit sessions
//! at the root, or inside the transaction or snapshot whose directory the
//! key is in. Each key operation is one engine call either way; only the
//! snapshot refuses writes up front.

use std::sync::Arc;

use bpfdb::{Db, Error, Meta, NewMeta, Result, SetFlags, Stat};

use super::attrs::file_attr;
use super::tree::{self, ROOT_DIR};
use super::{Attr, Fs, ino_name, restate, show};
use crate::core::inodes::{
    CTL_INO, FIRST_KEY_INO, Place, ROOT_INO, ROOT_SCOPE, Resolved, SNAP_INO, STATS_INO, TXN_INO,
};
use crate::core::txns::{Open, TxnKind};

/// The directory an operation names its entry in.
pub(super) enum Parent {
    Root,
    /// `.txn` or `.snap`: holds only transaction directories.
    List(TxnKind),
    /// `.txn/NAME` or `.snap/NAME`.
    Scope(Arc<Open>),
    /// A subdirectory (its id, see `tree`) of the root or of a transaction
    /// or snapshot.
    Sub(Space, u64),
}

impl Parent {
    /// Where its entries are keys, and the directory's id; None for
    /// `.txn` and `.snap`.
    pub fn keys(self) -> Option<(Space, u64)> {
        match self {
            Parent::Root => Some((Space::Root, ROOT_DIR)),
            Parent::Scope(open) => Some((Space::Open(open), ROOT_DIR)),
            Parent::Sub(space, dir) => Some((space, dir)),
            Parent::List(_) => None,
        }
    }
}

/// Where key operations run.
#[derive(Clone)]
pub(crate) enum Space {
    /// Autocommit: each operation is its own commit.
    Root,
    /// Staged in a transaction, or read from a snapshot.
    Open(Arc<Open>),
}

impl Space {
    pub fn scope(&self) -> u64 {
        match self {
            Space::Root => ROOT_SCOPE,
            Space::Open(o) => o.scope,
        }
    }

    pub fn is_snapshot(&self) -> bool {
        matches!(self, Space::Open(o) if o.kind == TxnKind::Snapshot)
    }

    /// The key as the user names it, quoted for logs: `"k"` at the root,
    /// `".txn/t1/k"` inside a transaction.
    /// A key below the root reads `"name" in directory 0x2a`.
    pub fn show(&self, key: &[u8]) -> String {
        let (name, dir) = match tree::split(key) {
            Some((dir, name)) => (name, format!(" in directory {dir:#x}")),
            None => (key, String::new()),
        };
        match self {
            Space::Root => format!("{}{dir}", show(name)),
            Space::Open(o) => {
                let path = [o.path().as_bytes(), b"/", name].concat();
                format!("{}{dir}", show(&path))
            }
        }
    }

    /// The directory, for logs: `/` or `.txn/t1`.
    pub fn dir_name(&self) -> String {
        match self {
            Space::Root => "/".to_string(),
            Space::Open(o) => show(o.path().as_bytes()).to_string(),
        }
    }

    /// Writes inside a snapshot fail with EROFS before reaching the engine.
    pub fn writable(&self, op: &str, key: &[u8]) -> Result<()> {
        if self.is_snapshot() {
            return Err(Error::new(
                libc::EROFS,
                format!("{op} {}: snapshots are read-only", self.show(key)),
            ));
        }
        Ok(())
    }

    /// `restate` for this space: names the key by its path, and says so
    /// when the error left the transaction aborted (a lock conflict).
    pub fn restate(&self, e: Error, op: &str, key: &[u8]) -> Error {
        self.restate_as(e, || format!("{op} {}", self.show(key)))
    }

    /// `restate` for this space with the operation described by `what`.
    pub fn restate_as(&self, e: Error, what: impl FnOnce() -> String) -> Error {
        let aborted = e.errno != libc::ECANCELED
            && matches!(self, Space::Open(o) if o.kind == TxnKind::ReadWrite && !o.is_active());
        let e = restate(e, what);
        match self {
            Space::Open(o) if aborted => Error::new(
                e.errno,
                format!("{}; transaction {} is aborted", e.msg, o.path()),
            ),
            _ => e,
        }
    }

    /// Attributes of committed `key` as this space sees it; the kernel may
    /// cache them only at the root (see `Fs::root_changed`).
    pub fn attr(&self, ino: u64, meta: &Meta, len: usize) -> Attr {
        Attr {
            cacheable: matches!(self, Space::Root),
            ..file_attr(ino, meta, len)
        }
    }

    /// `restate` for an operation on an inode the kernel looked up by name.
    /// At the root the kernel may hold that lookup for a while, so a key a
    /// transaction has since removed gives ESTALE: the kernel then looks
    /// the name up again and the user sees the fresh answer (ENOENT, or
    /// the key created since).
    pub fn gone_since_lookup(&self, e: Error, op: &str, key: &[u8]) -> Error {
        match self {
            Space::Root if e.errno == libc::ENOENT => Error::new(
                libc::ESTALE,
                format!(
                    "{op} {}: removed since the kernel's lookup; it looks again",
                    self.show(key)
                ),
            ),
            _ => self.restate(e, op, key),
        }
    }

    pub fn get(&self, db: &Db, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        match self {
            Space::Root => db.session().get(key, out),
            Space::Open(o) => o.txn.get(key, out),
        }
    }

    pub fn stat(&self, db: &Db, key: &[u8]) -> Result<Stat> {
        match self {
            Space::Root => db.session().stat(key),
            Space::Open(o) => o.txn.stat(key),
        }
    }

    /// `get` for an open for writing: at the root, a key a transaction
    /// holds fails the open with EBUSY (its commit would fail at close,
    /// which a shell's `>` never checks). In a transaction the open takes
    /// the lock itself.
    pub fn get_for_write(&self, db: &Db, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        match self {
            Space::Root => db.session().get_for_write(key, out),
            Space::Open(o) => o.txn.get(key, out),
        }
    }

    /// `stat` for an open for writing, as `get_for_write`.
    pub fn stat_for_write(&self, db: &Db, key: &[u8]) -> Result<Stat> {
        match self {
            Space::Root => db.session().stat_for_write(key),
            Space::Open(o) => o.txn.stat(key),
        }
    }

    pub fn set(
        &self,
        db: &Db,
        key: &[u8],
        value: &[u8],
        meta: NewMeta,
        flags: SetFlags,
    ) -> Result<Stat> {
        match self {
            Space::Root => db.session().set(key, value, meta, flags),
            Space::Open(o) => o.txn.set(key, value, meta, flags).inspect(|_| o.touch(key)),
        }
    }

    pub fn set_meta(&self, db: &Db, key: &[u8], meta: NewMeta) -> Result<Stat> {
        match self {
            Space::Root => db.session().set_meta(key, meta),
            Space::Open(o) => o.txn.set_meta(key, meta).inspect(|_| o.touch(key)),
        }
    }

    pub fn delete(&self, db: &Db, key: &[u8]) -> Result<()> {
        match self {
            Space::Root => db.session().delete(key).map(drop),
            Space::Open(o) => o.txn.delete(key).inspect(|_| o.touch(key)),
        }
    }

    pub fn rename(&self, db: &Db, from: &[u8], to: &[u8], no_replace: bool) -> Result<()> {
        match self {
            Space::Root => db.session().rename(from, to, no_replace).map(drop),
            Space::Open(o) => o.txn.rename(from, to, no_replace).inspect(|_| {
                o.touch(from);
                o.touch(to);
            }),
        }
    }

    pub fn scan_top(&self, db: &Db, f: impl FnMut(&[u8])) -> Result<()> {
        match self {
            Space::Root => db.session().scan_top(f),
            Space::Open(o) => o.txn.scan_top(f),
        }
    }
}

impl Fs {
    /// Classifies the directory `parent` an operation names `name` in.
    pub(super) fn parent(&self, op: &str, parent: u64, name: &[u8]) -> Result<Parent> {
        match parent {
            ROOT_INO => return Ok(Parent::Root),
            TXN_INO => return Ok(Parent::List(TxnKind::ReadWrite)),
            SNAP_INO => return Ok(Parent::List(TxnKind::Snapshot)),
            _ => {}
        }
        match self.inodes.resolve(parent) {
            Resolved::Live(Place::Key { scope, name: key })
                if let Some(dir) = tree::dir_of_record(&key) =>
            {
                Ok(Parent::Sub(self.space(op, scope)?, dir))
            }
            Resolved::Unlinked(Place::Key { name: key, .. })
                if tree::dir_of_record(&key).is_some() =>
            {
                Err(Error::new(
                    libc::ENOENT,
                    format!("{op} {}: its directory was removed", show(name)),
                ))
            }
            Resolved::Live(Place::Dir { scope }) => match self.txns.get(scope) {
                Some(open) => Ok(Parent::Scope(open)),
                None => Err(removed_dir(op, name)),
            },
            Resolved::Unlinked(Place::Dir { .. }) => Err(removed_dir(op, name)),
            Resolved::Unknown if parent != STATS_INO && parent != CTL_INO => Err(Error::new(
                libc::ENOENT,
                format!("{op} {}: unknown parent inode {parent}", show(name)),
            )),
            _ => Err(Error::new(
                libc::ENOTDIR,
                format!(
                    "{op} {}/{}: not a directory",
                    self.name_for_log(parent),
                    show(name)
                ),
            )),
        }
    }

    /// The space where `name` in `parent` is a key (the root or an open
    /// transaction or snapshot) and the id of the directory it is in.
    /// `.txn` and `.snap` hold no keys.
    pub(super) fn key_space(&self, op: &str, parent: u64, name: &[u8]) -> Result<(Space, u64)> {
        match self.parent(op, parent, name)? {
            Parent::List(kind) => Err(Error::new(
                libc::EPERM,
                format!(
                    "{op} {}/{}: {} holds only directories (mkdir begins one)",
                    kind.dir(),
                    show(name),
                    kind.dir()
                ),
            )),
            other => Ok(other.keys().unwrap_or((Space::Root, ROOT_DIR))),
        }
    }

    /// The space of the keys of `scope`; ENOENT once its directory is gone.
    pub(super) fn space(&self, op: &str, scope: u64) -> Result<Space> {
        if scope == ROOT_SCOPE {
            return Ok(Space::Root);
        }
        self.txns.get(scope).map(Space::Open).ok_or_else(|| {
            Error::new(
                libc::ENOENT,
                format!("{op}: the transaction directory was removed (rmdir)"),
            )
        })
    }

    /// The transaction or snapshot of a directory or `.ctl` inode, while it
    /// is open.
    pub(super) fn live_scope(
        &self,
        op: &str,
        ino: u64,
        scope: u64,
        linked: bool,
    ) -> Result<Arc<Open>> {
        match self.txns.get(scope) {
            Some(open) if linked => Ok(open),
            _ => Err(Error::new(
                libc::ENOENT,
                format!("{op} inode {ino}: its transaction directory was removed (rmdir)"),
            )),
        }
    }

    /// The place an inode names, and whether it still names it. An inode
    /// whose key was removed or replaced since the kernel looked it up
    /// still stands for its last name: `cat k` racing with `mv x k` then
    /// reads k as it is at open, which is what docs/SEMANTICS.md promises.
    pub(super) fn place_of(&self, op: &str, ino: u64) -> Result<(Place, bool)> {
        match self.inodes.resolve(ino) {
            Resolved::Live(place) => Ok((place, true)),
            Resolved::Unlinked(place) => Ok((place, false)),
            Resolved::Unknown => Err(Error::new(
                libc::ESTALE,
                format!("{op} inode {ino}: unknown inode"),
            )),
        }
    }

    pub(super) fn name_for_log(&self, ino: u64) -> String {
        if ino < FIRST_KEY_INO {
            return ino_name(ino).to_string();
        }
        let (place, linked) = match self.inodes.resolve(ino) {
            Resolved::Live(p) => (p, true),
            Resolved::Unlinked(p) => (p, false),
            Resolved::Unknown => return format!("inode {ino}"),
        };
        let dir = |scope: u64| match self.txns.get(scope) {
            Some(o) => o.path(),
            None => "(removed transaction)".to_string(),
        };
        let path = match &place {
            Place::Key { scope, name } if *scope == ROOT_SCOPE => name.clone(),
            Place::Key { scope, name } => [dir(*scope).as_bytes(), b"/", name].concat(),
            Place::Dir { scope } => dir(*scope).into_bytes(),
            Place::Ctl { scope } => format!("{}/.ctl", dir(*scope)).into_bytes(),
        };
        if linked {
            show(&path).to_string()
        } else {
            format!("{} (removed)", show(&path))
        }
    }
}

fn removed_dir(op: &str, name: &[u8]) -> Error {
    Error::new(
        libc::ENOENT,
        format!(
            "{op} {}: its transaction directory was removed (rmdir)",
            show(name)
        ),
    )
}
