//! The state one open database shares between its `Db` handles, sessions
//! and transactions: the loaded engine, the pools of request slots and of
//! transaction entries, the commit gate, the log writer and the value
//! memory promised to open writers.

use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};

use crate::durability::writer::Log;
use crate::error::Result;
use crate::kernel::engine::Engine;
use crate::kv::room::Room;
use crate::options::Options;

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) opts: Options,
    pub(crate) free_slots: Mutex<Vec<u32>>,
    pub(crate) slot_freed: Condvar,
    /// Sessions that found every slot taken and had to wait: 0 when the
    /// slots are sized for every thread that can hold one.
    pub(crate) slot_waits: AtomicU64,
    /// Transaction table entries not in use (user space hands them out).
    pub(crate) free_txns: Mutex<Vec<u32>>,
    /// Writers hold it shared around a commit; a checkpoint holds it
    /// exclusively for the moment it needs no commit in flight. Everyone
    /// takes a slot (a Session) before this gate, never after.
    pub(crate) gate: RwLock<()>,
    /// The log writer, once recovery is done (None without a data dir).
    pub(crate) log: OnceLock<Log>,
    /// One checkpoint at a time.
    pub(crate) checkpointing: Mutex<()>,
    /// Value memory promised to open writers (see `room`).
    pub(crate) room: Arc<Room>,
    /// Wakes the housekeeping thread early: a writer saw a value pool
    /// running low, so it grows it before a write has to wait for that.
    pub(crate) keeper: Arc<Keeper>,
}

/// The housekeeping thread's wake-up call. Shared apart from `Inner`, so
/// the thread can wait on it without keeping the database alive.
#[derive(Default)]
pub(crate) struct Keeper {
    wanted: Mutex<bool>,
    woken: Condvar,
}

impl Keeper {
    pub(crate) fn wake(&self) {
        *self.wanted.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.woken.notify_one();
    }

    /// Waits for `wake` or the timeout, whichever comes first.
    pub(crate) fn wait(&self, timeout: std::time::Duration) {
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if !*wanted {
            wanted = self
                .woken
                .wait_timeout(wanted, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *wanted = false;
    }
}

thread_local! {
    /// While this thread runs inside `defer_durability` for a database
    /// (the address of its `Inner`): the newest commit whose wait it left
    /// to the caller, 0 for none yet.
    static DEFERRED: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

impl Inner {
    /// Waits for the commit at `ts` to be durable, per the sync mode; inside
    /// `defer_durability` on this database, notes it for the caller instead.
    pub(crate) fn durable(&self, ts: u64) -> Result<()> {
        let Some(log) = self.log.get() else {
            return Ok(());
        };
        let me = self as *const Inner as usize;
        let deferred = DEFERRED.with(|d| match d.get() {
            Some((db, newest)) if db == me => {
                d.set(Some((db, newest.max(ts))));
                true
            }
            _ => false,
        });
        if deferred {
            Ok(())
        } else {
            log.wait_durable(ts)
        }
    }

    /// Runs `f` with this thread's durability waits on this database left
    /// to the caller; returns what `f` returned and the newest commit it
    /// left, if any.
    pub(crate) fn defer_durability<R>(&self, f: impl FnOnce() -> R) -> (R, Option<u64>) {
        let me = self as *const Inner as usize;
        let scope = Scope {
            outer: DEFERRED.with(|d| d.replace(Some((me, 0)))),
        };
        let r = f();
        let newest = DEFERRED.with(|d| d.get()).map_or(0, |(_, ts)| ts);
        drop(scope);
        (r, (newest > 0).then_some(newest))
    }
}

/// Puts back the scope `defer_durability` replaced, even if `f` unwinds:
/// a thread left deferring would acknowledge commits that nobody waits for.
struct Scope {
    outer: Option<(usize, u64)>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        DEFERRED.with(|d| d.set(self.outer));
    }
}
