//! Transactions: a handle on one entry of the engine's transaction table.
//!
//! Read-write transactions run strict two-phase locking in the kernel with
//! no-wait conflicts: the op that hits a lock held by another transaction
//! gets EBUSY and the engine aborts the transaction at once. Read-only ones
//! are snapshots: no locks, never abort. A `Txn` is `Sync`; its ops are
//! serialised by a mutex because the kernel entry is updated without one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::info;

use crate::kernel::abi::{self, Detail, Op};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kv::session::{ScanCursor, Session};
use crate::shared::Inner as Shared;
use crate::types::{NewMeta, SetFlags, Stat, check_key, is_top_level};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnState {
    Active,
    Committed { ts: u64 },
    Aborted { reason: String },
}

struct Inner {
    state: TxnState,
    /// Keys this transaction wrote (true) or deleted (false), so listings
    /// show its own writes over the committed keys.
    writes: BTreeMap<Vec<u8>, bool>,
    last_used: Instant,
}

pub struct Txn {
    shared: Arc<Shared>,
    idx: u32,
    /// Entry reserved for checkpoints: never on the free list.
    reserved: bool,
    id: u64,
    read_only: bool,
    begin_ts: u64,
    inner: Mutex<Inner>,
}

impl Txn {
    /// begin_at through a session the caller holds: a checkpoint takes its
    /// slot before the gate, as writers do, and must not ask for a second
    /// one while holding the gate.
    pub(crate) fn begin_in(
        shared: &Arc<Shared>,
        s: &mut Session<'_>,
        reserved: Option<u32>,
        read_only: bool,
    ) -> Result<Txn> {
        let idx = match reserved {
            Some(idx) => idx,
            None => take_entry(shared)?,
        };
        let (txn, txn_id) = (s.txn, s.txn_id);
        s.txn = idx + 1;
        s.txn_id = 0;
        s.prepare_keyless(Op::Begin, if read_only { abi::F_READ_ONLY } else { 0 });
        let r = s.run("begin");
        (s.txn, s.txn_id) = (txn, txn_id);
        match r {
            Ok(resp) => Ok(Txn {
                shared: shared.clone(),
                idx,
                reserved: reserved.is_some(),
                id: resp.txn_id,
                read_only,
                begin_ts: resp.ts,
                inner: Mutex::new(Inner {
                    state: TxnState::Active,
                    writes: BTreeMap::new(),
                    last_used: Instant::now(),
                }),
            }),
            Err(e) => {
                if reserved.is_none() {
                    give_back_entry(shared, idx);
                }
                Err(e)
            }
        }
    }
}

/// Returns a transaction entry to the pool.
fn give_back_entry(shared: &Shared, idx: u32) {
    shared
        .free_txns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(idx);
}

fn take_entry(shared: &Shared) -> Result<u32> {
    let mut free = shared.free_txns.lock().unwrap_or_else(|p| p.into_inner());
    free.pop().ok_or_else(|| {
        Error::new(
            libc::EAGAIN,
            format!(
                "all {} transaction entries are in use (max_txns)",
                shared.opts.max_txns
            ),
        )
    })
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("idx", &self.idx)
            .field("id", &self.id)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Txn {
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Snapshot timestamp (read-only) or last commit at BEGIN (read-write).
    pub fn begin_ts(&self) -> u64 {
        self.begin_ts
    }

    pub fn state(&self) -> TxnState {
        self.lock().state.clone()
    }

    pub fn idle_for(&self) -> Duration {
        self.lock().last_used.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a session bound to this transaction, if it is active.
    /// An error that aborted the transaction in the kernel is recorded.
    fn with<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Session<'_>, &mut Inner) -> Result<T>,
    ) -> Result<T> {
        let mut inner = self.lock();
        if let TxnState::Aborted { reason } = &inner.state {
            return Err(Error::new(
                libc::ECANCELED,
                format!("{what}: transaction aborted: {reason}"),
            ));
        }
        if let TxnState::Committed { ts } = inner.state {
            return Err(Error::new(
                libc::ECANCELED,
                format!("{what}: transaction committed at {ts}"),
            ));
        }
        inner.last_used = Instant::now();
        let mut s = self.shared.session();
        s.txn = self.idx + 1;
        s.txn_id = self.id;
        let r = f(&mut s, &mut inner);
        if let Err(e) = &r
            && aborted_by(s.last_detail)
        {
            info!("transaction {} aborted: {}", self.idx, e.msg);
            inner.state = TxnState::Aborted {
                reason: e.msg.clone(),
            };
        }
        r
    }

    pub fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        self.with("get", |s, _| s.get(key, out))
    }

    pub fn stat(&self, key: &[u8]) -> Result<Stat> {
        self.with("stat", |s, _| s.stat(key))
    }

    pub fn set(&self, key: &[u8], value: &[u8], meta: NewMeta, flags: SetFlags) -> Result<Stat> {
        self.with("set", |s, inner| {
            let st = s.set(key, value, meta, flags)?;
            inner.writes.insert(key.to_vec(), true);
            Ok(st)
        })
    }

    pub fn set_meta(&self, key: &[u8], meta: NewMeta) -> Result<Stat> {
        self.with("set_meta", |s, _| s.set_meta(key, meta))
    }

    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.with("delete", |s, inner| {
            s.delete(key)?;
            inner.writes.insert(key.to_vec(), false);
            Ok(())
        })
    }

    /// Rename inside a transaction: read, write under the new name, delete
    /// the old one; atomic because the whole transaction is.
    pub fn rename(&self, from: &[u8], to: &[u8], no_replace: bool) -> Result<()> {
        check_key(to)?;
        if from == to {
            return self.stat(from).map(|_| ());
        }
        self.with("rename", |s, inner| {
            let mut value = Vec::new();
            let st = s.get(from, &mut value)?;
            let meta = NewMeta::of(&st.meta);
            s.set(
                to,
                &value,
                meta,
                SetFlags {
                    no_replace,
                    must_exist: false,
                },
            )?;
            inner.writes.insert(to.to_vec(), true);
            s.delete(from)?;
            inner.writes.insert(from.to_vec(), false);
            Ok(())
        })
    }

    /// Names visible in this transaction: its snapshot, or the committed
    /// keys with its own writes and deletes applied.
    pub fn scan(&self, f: impl FnMut(&[u8])) -> Result<()> {
        self.scan_where(false, f)
    }

    /// `scan` of the top-level keys only (names with no '/'): a walk of
    /// their own records map (`Session::scan_top`).
    pub fn scan_top(&self, f: impl FnMut(&[u8])) -> Result<()> {
        self.scan_where(true, f)
    }

    fn scan_where(&self, top_only: bool, mut f: impl FnMut(&[u8])) -> Result<()> {
        self.with("scan", |s, inner| {
            let writes = &inner.writes;
            let mut each = |name: &[u8]| {
                if !writes.contains_key(name) {
                    f(name);
                }
            };
            if top_only {
                s.scan_top(&mut each)?;
            } else {
                s.scan(&mut each)?;
            }
            let own = writes
                .iter()
                .filter(|(name, live)| **live && (!top_only || is_top_level(name)));
            for (name, _) in own {
                f(name);
            }
            Ok(())
        })
    }

    /// One batch of `scan` (see `Session::scan_batch`): the transaction is
    /// free between batches, so a caller can read the values of one batch
    /// before it walks the next (a checkpoint streams a snapshot this way).
    /// Its own writes come with the last batch; for a snapshot, that has
    /// none, a batch holds at most `abi::SCAN_BATCH` names. False once the
    /// walk is done.
    pub(crate) fn scan_batch(
        &self,
        cursor: &mut ScanCursor,
        mut f: impl FnMut(&[u8]),
    ) -> Result<bool> {
        if cursor.done() {
            return Ok(false);
        }
        self.with("scan", |s, inner| {
            let writes = &inner.writes;
            let more = s.scan_batch(cursor, |name| {
                if !writes.contains_key(name) {
                    f(name);
                }
            })?;
            if !more {
                for (name, _) in writes.iter().filter(|(_, live)| **live) {
                    f(name);
                }
            }
            Ok(more)
        })
    }

    /// Commits; returns the commit timestamp once the commit is durable.
    pub fn commit(&self) -> Result<u64> {
        let ts = self.with("commit", |s, inner| {
            s.prepare_keyless(Op::Commit, 0);
            let resp = {
                let _gate = self.shared.gate.read().unwrap_or_else(|p| p.into_inner());
                s.run("commit")?
            };
            inner.state = TxnState::Committed { ts: resp.ts };
            Ok(resp.ts)
        })?;
        if !self.read_only {
            self.shared.durable(ts)?;
        }
        Ok(ts)
    }

    pub fn abort(&self) -> Result<()> {
        self.abort_because("aborted by request")
    }

    /// Aborts and records why (the daemon's idle timeout uses this).
    pub fn abort_because(&self, reason: &str) -> Result<()> {
        self.with("abort", |s, inner| {
            s.prepare_keyless(Op::Abort, 0);
            s.run("abort")?;
            inner.state = TxnState::Aborted {
                reason: reason.to_string(),
            };
            Ok(())
        })
    }
}

impl Drop for Txn {
    /// An open read-write transaction is aborted; an open snapshot simply
    /// ends (committing it is the same and is not counted as an abort).
    fn drop(&mut self) {
        if self.state() == TxnState::Active {
            let r = if self.read_only {
                self.commit().map(|_| ())
            } else {
                self.abort_because("dropped")
            };
            if let Err(e) = r {
                log::warn!("transaction {}: ending it on drop failed: {e}", self.idx);
            }
        }
        if !self.reserved {
            give_back_entry(&self.shared, self.idx);
        }
    }
}

/// Whether the engine aborted the transaction along with the failed op: on a
/// lock conflict with another transaction and on an overgrown lock set.
fn aborted_by(detail: Detail) -> bool {
    matches!(
        detail,
        Detail::LockedTxn | Detail::TopLocked | Detail::TxnTooBig
    )
}
