//! Where key operations run: autocommit sessions at the root, or inside the
//! transaction or snapshot whose directory the key is in. Each operation is
//! one engine call either way; only the snapshot refuses writes up front.

use std::sync::Arc;

use bpfdb::{Db, Error, NewMeta, Result, SetFlags, Stat};

use super::{restate, show};
use crate::inodes::ROOT_SCOPE;
use crate::txns::{Open, TxnKind};

pub(crate) enum Space {
    Root,
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
    pub fn show(&self, key: &[u8]) -> String {
        match self {
            Space::Root => show(key).to_string(),
            Space::Open(o) => {
                let path = [o.path().as_bytes(), b"/", key].concat();
                show(&path).to_string()
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
            Space::Open(o) => o.txn.set(key, value, meta, flags),
        }
    }

    pub fn set_meta(&self, db: &Db, key: &[u8], meta: NewMeta) -> Result<Stat> {
        match self {
            Space::Root => db.session().set_meta(key, meta),
            Space::Open(o) => o.txn.set_meta(key, meta),
        }
    }

    pub fn delete(&self, db: &Db, key: &[u8]) -> Result<()> {
        match self {
            Space::Root => db.session().delete(key).map(drop),
            Space::Open(o) => o.txn.delete(key),
        }
    }

    pub fn rename(&self, db: &Db, from: &[u8], to: &[u8], no_replace: bool) -> Result<()> {
        match self {
            Space::Root => db.session().rename(from, to, no_replace).map(drop),
            Space::Open(o) => o.txn.rename(from, to, no_replace),
        }
    }

    pub fn scan(&self, db: &Db, f: impl FnMut(&[u8])) -> Result<()> {
        match self {
            Space::Root => db.session().scan(f),
            Space::Open(o) => o.txn.scan(f),
        }
    }
}
