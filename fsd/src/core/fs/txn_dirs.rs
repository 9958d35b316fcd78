//! The directories under `.txn` and `.snap`: `mkdir` begins a transaction
//! or snapshot, `rmdir` ends and forgets it, and each has attributes of its
//! own (the engine stores nothing for them).

use std::sync::Arc;

use bpfdb::{Error, Result, check_name};
use log::{info, warn};

use super::{Attr, Fs, Kind, restate, show};
use crate::core::inodes::Place;
use crate::core::txns::{Open, TxnKind};

impl Fs {
    pub(super) fn lookup_txn_dir(&self, kind: TxnKind, name: &[u8]) -> Result<Attr> {
        let open = self.txns.find(kind, name).ok_or_else(|| {
            Error::new(
                libc::ENOENT,
                format!(
                    "lookup {}/{}: no such transaction",
                    kind.dir(),
                    String::from_utf8_lossy(name)
                ),
            )
        })?;
        let ino = self.inodes.remember(&Place::Dir { scope: open.scope })?;
        Ok(self.txn_dir_attr(ino, &open))
    }

    /// `.ctl` inside a transaction's directory.
    pub(super) fn lookup_txn_ctl(&self, open: &Open) -> Result<Attr> {
        let ino = self.inodes.remember(&Place::Ctl { scope: open.scope })?;
        Ok(self.txn_ctl_attr(ino, open))
    }

    pub(super) fn make_txn_dir(&self, kind: TxnKind, name: &[u8]) -> Result<Attr> {
        let path = [kind.dir().as_bytes(), b"/", name].concat();
        let what = || format!("mkdir {}", show(&path));
        let name = check_name(name).map_err(|e| restate(e, what))?;
        let open = self
            .txns
            .begin(&self.db, kind, name)
            .map_err(|e| restate(e, what))?;
        let ino = match self.inodes.remember(&Place::Dir { scope: open.scope }) {
            Ok(ino) => ino,
            Err(e) => {
                // The kernel will not know the directory: do not keep it.
                self.end_txn_dir(kind, name);
                return Err(restate(e, what));
            }
        };
        let began = match kind {
            TxnKind::ReadWrite => "a transaction",
            TxnKind::Snapshot => "a snapshot",
        };
        info!(
            "mkdir {}: began {began} (engine ts {})",
            open.path(),
            open.txn.begin_ts()
        );
        Ok(self.txn_dir_attr(ino, &open))
    }

    pub(super) fn remove_txn_dir(&self, kind: TxnKind, name: &[u8]) -> Result<()> {
        if self.end_txn_dir(kind, name) {
            Ok(())
        } else {
            Err(Error::new(
                libc::ENOENT,
                format!(
                    "rmdir {}/{}: no such transaction",
                    kind.dir(),
                    String::from_utf8_lossy(name)
                ),
            ))
        }
    }

    /// Takes a transaction or snapshot out of the table, aborting a
    /// transaction still active (a snapshot just ends). False if absent.
    fn end_txn_dir(&self, kind: TxnKind, name: &[u8]) -> bool {
        let Some(open) = self.txns.remove(kind, name) else {
            return false;
        };
        if open.is_active() {
            let ended = match kind {
                TxnKind::ReadWrite => open.txn.abort_because("removed by rmdir while active"),
                // Ends the snapshot; read-only, it has nothing to commit.
                TxnKind::Snapshot => open.txn.commit().map(drop),
            };
            match ended {
                Ok(()) if kind == TxnKind::ReadWrite => {
                    info!("rmdir {}: aborted the active transaction", open.path())
                }
                Ok(()) => {}
                // Dropping the last reference aborts it anyway.
                Err(e) => warn!("rmdir {}: ending it: {e}", open.path()),
            }
        }
        self.inodes.scope_removed(open.scope);
        true
    }

    pub(super) fn txn_dir_attr(&self, ino: u64, open: &Arc<Open>) -> Attr {
        let mode = match open.kind {
            TxnKind::ReadWrite => 0o755,
            TxnKind::Snapshot => 0o555,
        };
        Attr {
            ino,
            size: 0,
            mode,
            uid: self.owner.uid,
            gid: self.owner.gid,
            mtime_ns: open.started_ns,
            ctime_ns: open.started_ns,
            kind: Kind::Dir,
            nlink: 2,
            rdev: 0,
            cacheable: false,
        }
    }
}
