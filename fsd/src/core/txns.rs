//! The daemon's table of named transactions and snapshots: each directory
//! under `.txn` or `.snap` is one engine transaction, kept here from `mkdir`
//! to `rmdir`. Also the reaper thread that aborts read-write transactions
//! left idle, since their locks block everyone else.

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpfdb::{Db, Error, Result, Txn, TxnState};
use log::{debug, info};

/// Most transactions and snapshots open at once: the size of the engine's
/// transaction table, which `Db::begin` runs out of first.
pub const MAX_OPEN: usize = bpfdb::abi::MAX_USER_TXNS as usize;

/// How often the reaper looks, as a fraction of the timeout and within
/// these bounds: an idle transaction is aborted at most a quarter of the
/// timeout (and at most a second) late.
const REAP_POLLS_PER_TIMEOUT: u32 = 4;
const REAP_POLL_MIN: Duration = Duration::from_millis(50);
const REAP_POLL_MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnKind {
    /// `.txn/NAME`: reads and writes under locks, commit or abort.
    ReadWrite,
    /// `.snap/NAME`: reads of one moment, no locks, no writes.
    Snapshot,
}

impl TxnKind {
    pub fn dir(self) -> &'static str {
        match self {
            TxnKind::ReadWrite => ".txn",
            TxnKind::Snapshot => ".snap",
        }
    }
}

/// One open transaction or snapshot and its directory.
pub struct Open {
    /// Scope of its keys' inodes; never reused.
    pub scope: u64,
    pub kind: TxnKind,
    pub name: Vec<u8>,
    pub txn: Txn,
    pub started: Instant,
    /// Wall-clock time of the mkdir, the directory's mtime.
    pub started_ns: u64,
    /// Keys this transaction has written, deleted or renamed: at commit the
    /// kernel's cached attributes of the same keys at the root are dropped.
    /// Every such change holds an engine lock, so there are at most
    /// `TXN_MAX_LOCKS` of them.
    touched: Mutex<HashSet<Vec<u8>>>,
}

impl Open {
    /// `.txn/NAME`, for logs.
    pub fn path(&self) -> String {
        format!(
            "{}/{}",
            self.kind.dir(),
            String::from_utf8_lossy(&self.name)
        )
    }

    /// What its `.ctl` reads.
    pub fn state_text(&self) -> String {
        match self.txn.state() {
            TxnState::Active => "active\n".to_string(),
            TxnState::Committed { ts } => format!("committed at {ts}\n"),
            TxnState::Aborted { reason } => format!("aborted: {reason}\n"),
        }
    }

    pub fn is_active(&self) -> bool {
        self.txn.state() == TxnState::Active
    }

    /// Notes that a staged change to `key` succeeded.
    pub fn touch(&self, key: &[u8]) {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        if !t.contains(key) {
            debug_assert!(t.len() < 2 * bpfdb::abi::TXN_MAX_LOCKS);
            t.insert(key.to_vec());
        }
    }

    /// The keys changed so far.
    pub fn touched_keys(&self) -> Vec<Vec<u8>> {
        let t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect()
    }

    /// The keys changed so far, emptied: called once, at commit.
    pub fn take_touched(&self) -> Vec<Vec<u8>> {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        t.drain().collect()
    }
}

struct Table {
    by_scope: BTreeMap<u64, Arc<Open>>,
    next_scope: u64,
}

pub struct Txns {
    table: Mutex<Table>,
}

impl Default for Txns {
    fn default() -> Txns {
        Txns {
            table: Mutex::new(Table {
                by_scope: BTreeMap::new(),
                next_scope: 1,
            }),
        }
    }
}

impl Txns {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `mkdir .txn/NAME` or `.snap/NAME`: begins a transaction or snapshot.
    /// The engine call runs without the table lock; a name taken meanwhile
    /// loses the race with EEXIST.
    pub fn begin(&self, db: &Db, kind: TxnKind, name: &[u8]) -> Result<Arc<Open>> {
        let taken = || {
            Error::new(
                libc::EEXIST,
                format!(
                    "mkdir {}/{}: already open",
                    kind.dir(),
                    String::from_utf8_lossy(name)
                ),
            )
        };
        if self.find(kind, name).is_some() {
            return Err(taken());
        }
        let txn = db.begin(kind == TxnKind::Snapshot)?;
        let mut t = self.lock();
        if t.find(kind, name).is_some() {
            return Err(taken());
        }
        if t.by_scope.len() >= MAX_OPEN {
            return Err(Error::new(
                libc::EAGAIN,
                format!("all {MAX_OPEN} transaction directories are in use"),
            ));
        }
        let scope = t.next_scope;
        t.next_scope += 1;
        let open = Arc::new(Open {
            scope,
            kind,
            name: name.to_vec(),
            txn,
            started: Instant::now(),
            started_ns: crate::core::clock::now_ns(),
            touched: Mutex::default(),
        });
        t.by_scope.insert(scope, open.clone());
        Ok(open)
    }

    /// `rmdir`: takes the entry out of the table. The caller ends the
    /// transaction; its engine entry is freed when the last user lets go.
    pub fn remove(&self, kind: TxnKind, name: &[u8]) -> Option<Arc<Open>> {
        let mut t = self.lock();
        let scope = t.find(kind, name)?.scope;
        t.by_scope.remove(&scope)
    }

    pub fn get(&self, scope: u64) -> Option<Arc<Open>> {
        self.lock().by_scope.get(&scope).cloned()
    }

    pub fn find(&self, kind: TxnKind, name: &[u8]) -> Option<Arc<Open>> {
        self.lock().find(kind, name)
    }

    /// The open ones of `kind`, oldest first.
    pub fn list(&self, kind: TxnKind) -> Vec<Arc<Open>> {
        self.lock()
            .by_scope
            .values()
            .filter(|o| o.kind == kind)
            .cloned()
            .collect()
    }

    /// Age of the oldest snapshot or active transaction; zero if none.
    pub fn oldest_age(&self) -> Duration {
        let open: Vec<Arc<Open>> = self.lock().by_scope.values().cloned().collect();
        open.iter()
            .filter(|o| o.is_active())
            .map(|o| o.started.elapsed())
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Aborts every read-write transaction idle for `timeout` or longer;
    /// returns how many it aborted. Snapshots take no locks and are left.
    pub fn abort_idle(&self, timeout: Duration) -> usize {
        let open: Vec<Arc<Open>> = self
            .lock()
            .by_scope
            .values()
            .filter(|o| o.kind == TxnKind::ReadWrite)
            .cloned()
            .collect();
        let mut aborted = 0;
        for o in open {
            if !o.is_active() {
                continue;
            }
            let idle = o.txn.idle_for();
            if idle < timeout {
                continue;
            }
            let reason = format!("idle for {} s", idle.as_secs());
            match o.txn.abort_because(&reason) {
                Ok(()) => {
                    info!(
                        "transaction {} aborted: {reason} (--txn-timeout {} s)",
                        o.path(),
                        timeout.as_secs()
                    );
                    aborted += 1;
                }
                // It ended on its own in the meantime.
                Err(e) => debug!("idle abort of {}: {e}", o.path()),
            }
        }
        aborted
    }
}

impl Table {
    fn find(&self, kind: TxnKind, name: &[u8]) -> Option<Arc<Open>> {
        self.by_scope
            .values()
            .find(|o| o.kind == kind && o.name == name)
            .cloned()
    }
}

/// The thread that applies the idle timeout; stopped and joined on drop.
pub struct Reaper {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// A zero `timeout` means transactions never time out: no thread.
    pub fn start(txns: Arc<Txns>, timeout: Duration) -> Result<Reaper> {
        if timeout.is_zero() {
            return Ok(Reaper {
                stop: None,
                thread: None,
            });
        }
        let poll = (timeout / REAP_POLLS_PER_TIMEOUT).clamp(REAP_POLL_MIN, REAP_POLL_MAX);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("txn-reaper".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(poll) {
                    txns.abort_idle(timeout);
                }
            })
            .map_err(|e| Error::io("starting the transaction reaper", &e))?;
        Ok(Reaper {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Disconnecting the channel wakes the thread at once.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
