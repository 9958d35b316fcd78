//! Who uses each root key's inode, so that the kernel's page cache never
//! shows a reader a mix of two values.
//!
//! The cache is one per inode and so is the kernel's idea of the file's
//! size; a reader through the cache reads both at every `read()`. A commit
//! landing between two reads of one open file (cat reads twice: the value,
//! then end of file) would show it the head of one value and the tail of
//! another, and a writer's O_TRUNC open sets the size to 0 under it. So the
//! two never overlap: a cached reader opens only while no writer and no
//! commit is pending on the key, and a writer's open or a commit first
//! waits (up to `QUIET_TIMEOUT`) for the cached readers to close. Readers
//! that arrive meanwhile read with direct I/O from their own snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::info;

/// How long a writer's open or a commit waits for cached readers to close.
/// A `cat` holds its file for microseconds; a reader still open after this
/// (a shell holding `exec 3< key`) is not waited for longer, and may then
/// see the new value from its next `read()`.
pub const QUIET_TIMEOUT: Duration = Duration::from_millis(50);

/// Threads whose names begin with this are the adapter's waiter pool
/// (`daemon::waiters`), where a wait for cached readers may block: a wait
/// anywhere else is counted in `waits_off_pool`.
pub const WAITER_THREAD_PREFIX: &str = "bpfdb-wait";

/// Threads whose names begin with this serve memcached's UDP protocol
/// (`daemon::memcached`). They serve no FUSE request, so their commits may
/// wait for cached readers as the waiter pool's do.
pub const MEMCACHED_THREAD_PREFIX: &str = "bpfdb-memcd";

#[derive(Default)]
struct Use {
    /// Open cached readers.
    cached: usize,
    /// Writers with uncommitted changes (see `Writer::registered`).
    writers: usize,
    /// Commits in progress that change the key.
    commits: usize,
}

impl Use {
    fn idle(&self) -> bool {
        self.cached == 0 && self.writers == 0 && self.commits == 0
    }
}

#[derive(Default)]
pub struct KeyUse {
    table: Mutex<HashMap<u64, Use>>,
    closed: Condvar,
    /// Waits for cached readers that ran outside the waiter pool: each one
    /// held a FUSE worker the readers may need for their READ and RELEASE.
    /// The FUSE adapter routes every operation that may wait to the pool,
    /// so this stays 0; `.stats` shows it as `worker_waits`.
    waits_off_pool: AtomicU64,
}

impl KeyUse {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Use>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a cached reader of `ino` unless a writer or a commit is
    /// pending; false: read with direct I/O instead.
    pub fn open_cached(&self, ino: u64) -> bool {
        let mut t = self.lock();
        let u = t.entry(ino).or_default();
        if u.writers > 0 || u.commits > 0 {
            return false;
        }
        u.cached += 1;
        true
    }

    /// Whether cached readers of `ino` are open: a writer's open or a
    /// commit would wait for them.
    pub fn has_cached(&self, ino: u64) -> bool {
        self.lock().get(&ino).is_some_and(|u| u.cached > 0)
    }

    /// Whether a writer of `ino` has changes not yet committed.
    pub fn has_writer(&self, ino: u64) -> bool {
        self.lock().get(&ino).is_some_and(|u| u.writers > 0)
    }

    /// Waits for cached readers that did not run on the waiter pool.
    pub fn waits_off_pool(&self) -> u64 {
        self.waits_off_pool.load(Ordering::Relaxed)
    }

    pub fn close_cached(&self, ino: u64) {
        let mut waited_for = false;
        self.update(ino, |u| {
            u.cached = u.cached.saturating_sub(1);
            waited_for = u.cached == 0 && (u.writers > 0 || u.commits > 0);
        });
        // Only a pending writer or commit waits; waking costs a syscall.
        if waited_for {
            self.closed.notify_all();
        }
    }

    /// Counts (`pending`) or uncounts a writer with uncommitted changes.
    /// Counting one waits for the cached readers: its open truncates the
    /// kernel's size of the file.
    pub fn writer(&self, ino: u64, pending: bool) {
        if pending {
            self.update(ino, |u| u.writers += 1);
            self.wait_quiet(&[ino], "open for writing");
        } else {
            self.update(ino, |u| u.writers = u.writers.saturating_sub(1));
        }
    }

    /// Marks a commit of `inos` in progress until the guard drops, once
    /// their cached readers have closed. Call before the engine commit;
    /// drop after the kernel's attributes were invalidated.
    pub fn commit(&self, inos: Vec<u64>) -> CommitGuard<'_> {
        for &ino in &inos {
            self.update(ino, |u| u.commits += 1);
        }
        self.wait_quiet(&inos, "commit");
        CommitGuard { uses: self, inos }
    }

    fn wait_quiet(&self, inos: &[u64], what: &str) {
        let deadline = Instant::now() + QUIET_TIMEOUT;
        let mut t = self.lock();
        let on_pool = std::thread::current().name().is_some_and(|n| {
            n.starts_with(WAITER_THREAD_PREFIX) || n.starts_with(MEMCACHED_THREAD_PREFIX)
        });
        let mut counted = on_pool;
        loop {
            let busy = inos
                .iter()
                .filter(|i| t.get(i).is_some_and(|u| u.cached > 0))
                .count();
            if busy == 0 {
                return;
            }
            if !counted {
                counted = true;
                self.waits_off_pool.fetch_add(1, Ordering::Relaxed);
                log::warn!("{what}: waiting for cached readers outside the waiter pool");
            }
            let now = Instant::now();
            if now >= deadline {
                info!(
                    "{what}: {busy} key(s) still have readers open through the page cache after {QUIET_TIMEOUT:?}; going ahead"
                );
                return;
            }
            t = self
                .closed
                .wait_timeout(t, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Applies `f` to the key's counts; a key nobody uses leaves the table.
    fn update(&self, ino: u64, f: impl FnOnce(&mut Use)) {
        let mut t = self.lock();
        let u = t.entry(ino).or_default();
        f(u);
        if u.idle() {
            t.remove(&ino);
        }
    }
}

/// Ends a commit's hold on its keys.
pub struct CommitGuard<'a> {
    uses: &'a KeyUse,
    inos: Vec<u64>,
}

impl Drop for CommitGuard<'_> {
    fn drop(&mut self) {
        for &ino in &self.inos {
            self.uses
                .update(ino, |u| u.commits = u.commits.saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_readers_only_while_nothing_is_pending() {
        let k = KeyUse::default();
        assert!(k.open_cached(7));
        k.close_cached(7);
        let t = Instant::now();
        k.writer(7, true);
        assert!(t.elapsed() < QUIET_TIMEOUT, "no reader to wait for");
        assert!(!k.open_cached(7), "a writer is pending");
        k.writer(7, false);
        let guard = k.commit(vec![7]);
        assert!(!k.open_cached(7), "a commit is pending");
        drop(guard);
        assert!(k.open_cached(7));
        k.close_cached(7);
        assert!(k.lock().is_empty(), "idle keys leave the table");
    }

    #[test]
    fn a_commit_waits_for_open_cached_readers_but_not_forever() {
        let k = KeyUse::default();
        assert!(k.open_cached(1));
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                k.close_cached(1);
            });
            let t = Instant::now();
            drop(k.commit(vec![1]));
            let waited = t.elapsed();
            assert!(waited >= Duration::from_millis(10), "{waited:?}");
            assert!(waited < QUIET_TIMEOUT, "{waited:?}");
        });
        assert!(k.open_cached(2));
        let t = Instant::now();
        drop(k.commit(vec![2]));
        assert!(
            t.elapsed() >= QUIET_TIMEOUT,
            "a reader left open is waited for, up to the bound"
        );
    }
}
