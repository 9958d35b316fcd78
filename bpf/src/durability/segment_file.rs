//! The log writer's file I/O, and the test hook that injects faults into it.
//!
//! Every write, fsync, truncation and segment open of the log goes through
//! `SegmentFile`, so a test can make them fail the way a full or failing
//! disk does (redb tests its durability the same way, with a failing
//! storage backend) and check that the real writer, recovery and API keep
//! their promises. Without a hook (`Options::log_faults` is None) each call
//! costs one branch on a None.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A fault count that never runs out.
pub const FOREVER: u32 = u32::MAX;

/// Longest a held fsync stays held: a test that forgets to release it
/// fails instead of hanging.
pub const HOLD_LIMIT: Duration = Duration::from_secs(120);

/// Faults for the log writer to hit, set by a test while the database runs
/// (pass one through `Options::log_faults`). Counts say how many of the next
/// calls fail (`FOREVER`: all, until cleared); each fault is taken by the
/// first call that finds it.
///
/// This is a test hook, not a feature: a database run for real has none.
#[derive(Default)]
pub struct LogFaults {
    write_fails: AtomicU32,
    write_errno: AtomicI32,
    short_writes: AtomicU32,
    sync_fails: AtomicU32,
    sync_errno: AtomicI32,
    /// Failed fsyncs also lose what was written since the last good one.
    sync_loses: AtomicU32,
    set_len_fails: AtomicU32,
    open_fails: AtomicU32,
    consume_fails: AtomicU32,
    hold: Mutex<Hold>,
    hold_cv: Condvar,
    injected: AtomicU64,
    stall_ms: AtomicU64,
    wait_limit_ms: AtomicU64,
}

#[derive(Default)]
struct Hold {
    on: bool,
    /// fsyncs waiting in the hold now.
    held: u32,
}

/// Takes one fault of a count; FOREVER is never used up.
fn take(count: &AtomicU32) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match n {
            0 => None,
            FOREVER => Some(FOREVER),
            n => Some(n - 1),
        })
        .is_ok()
}

fn errno_or_eio(errno: i32) -> i32 {
    if errno == 0 { libc::EIO } else { errno }
}

impl LogFaults {
    pub fn new() -> Arc<LogFaults> {
        Arc::new(LogFaults::default())
    }

    /// The next `n` writes fail with `errno` and write nothing.
    pub fn fail_writes(&self, n: u32, errno: i32) {
        self.write_errno.store(errno, Ordering::Release);
        self.write_fails.store(n, Ordering::Release);
    }

    /// The next `n` writes write only part of their buffer and report so;
    /// whether the rest then gets written or fails is up to fail_writes()
    /// (a short write is taken before a failing one).
    pub fn short_writes(&self, n: u32) {
        self.short_writes.store(n, Ordering::Release);
    }

    /// The next `n` fsyncs fail with `errno`.
    pub fn fail_syncs(&self, n: u32, errno: i32) {
        self.sync_errno.store(errno, Ordering::Release);
        self.sync_loses.store(0, Ordering::Release);
        self.sync_fails.store(n, Ordering::Release);
    }

    /// The next `n` fsyncs fail with EIO and the bytes written since the
    /// last fsync that succeeded are lost (zeroed in the file): what a
    /// disk whose writeback failed leaves once the kernel drops the pages,
    /// although the next fsync reports success.
    pub fn fail_syncs_losing_data(&self, n: u32) {
        self.sync_errno.store(libc::EIO, Ordering::Release);
        self.sync_loses.store(1, Ordering::Release);
        self.sync_fails.store(n, Ordering::Release);
    }

    /// The next `n` truncations (cutting a failed write off) fail with EIO.
    pub fn fail_set_len(&self, n: u32) {
        self.set_len_fails.store(n, Ordering::Release);
    }

    /// The next `n` opens of a log segment fail with EIO.
    pub fn fail_opens(&self, n: u32) {
        self.open_fails.store(n, Ordering::Release);
    }

    /// The next `n` reads of the engine's log ringbuf fail.
    pub fn fail_consumes(&self, n: u32) {
        self.consume_fails.store(n, Ordering::Release);
    }

    /// From now on an fsync blocks (up to HOLD_LIMIT) until
    /// release_syncs(): a disk that stops answering.
    pub fn hold_syncs(&self) {
        self.lock_hold().on = true;
    }

    pub fn release_syncs(&self) {
        self.lock_hold().on = false;
        self.hold_cv.notify_all();
    }

    /// Waits up to `timeout` for an fsync to be blocked by hold_syncs().
    pub fn wait_sync_held(&self, timeout: Duration) -> bool {
        let hold = self.lock_hold();
        let (hold, _) = self
            .hold_cv
            .wait_timeout_while(hold, timeout, |h| h.held == 0)
            .unwrap_or_else(|p| p.into_inner());
        hold.held > 0
    }

    /// Every fault off; held fsyncs go on.
    pub fn clear(&self) {
        for count in [
            &self.write_fails,
            &self.short_writes,
            &self.sync_fails,
            &self.set_len_fails,
            &self.open_fails,
            &self.consume_fails,
        ] {
            count.store(0, Ordering::Release);
        }
        self.release_syncs();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Acquire)
    }

    /// Shortens the log's time bounds (`STALL_TIMEOUT`, `WAIT_LIMIT` in
    /// wal_writer.rs) so a test sees them end; read when the database opens.
    pub fn set_time_bounds(&self, stall: Duration, wait_limit: Duration) {
        self.stall_ms
            .store(stall.as_millis() as u64, Ordering::Release);
        self.wait_limit_ms
            .store(wait_limit.as_millis() as u64, Ordering::Release);
    }

    /// The bounds set_time_bounds() gave, if any.
    pub(crate) fn time_bounds(&self) -> (Option<Duration>, Option<Duration>) {
        let ms = |a: &AtomicU64| match a.load(Ordering::Acquire) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        (ms(&self.stall_ms), ms(&self.wait_limit_ms))
    }

    /// Whether the next ringbuf read is to fail.
    pub(crate) fn take_consume_fault(&self) -> bool {
        self.hit(&self.consume_fails)
    }

    fn lock_hold(&self) -> std::sync::MutexGuard<'_, Hold> {
        self.hold.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hit(&self, count: &AtomicU32) -> bool {
        let hit = take(count);
        if hit {
            self.injected.fetch_add(1, Ordering::AcqRel);
        }
        hit
    }

    fn injected_error(errno: i32, what: &str) -> io::Error {
        let e = io::Error::from_raw_os_error(errno_or_eio(errno));
        log::debug!("log faults: injected {e} into {what}");
        e
    }

    /// Blocks an fsync while syncs are held, at most HOLD_LIMIT.
    fn maybe_hold(&self) {
        let mut hold = self.lock_hold();
        if !hold.on {
            return;
        }
        hold.held += 1;
        self.hold_cv.notify_all();
        let deadline = Instant::now() + HOLD_LIMIT;
        while hold.on {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::error!("log faults: fsync held for {HOLD_LIMIT:?}; going on");
                break;
            }
            hold = self
                .hold_cv
                .wait_timeout(hold, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        hold.held -= 1;
    }
}

impl std::fmt::Debug for LogFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFaults")
            .field("injected", &self.injected())
            .finish_non_exhaustive()
    }
}

/// Hooks compare by identity: options are equal when they share one.
impl PartialEq for LogFaults {
    fn eq(&self, other: &LogFaults) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for LogFaults {}

/// A log segment open for writing, with the faults of a test (if any).
pub(crate) struct SegmentFile {
    file: File,
    faults: Option<Arc<LogFaults>>,
    /// Length at the last fsync that succeeded: where an injected lossy
    /// fsync failure starts losing bytes.
    synced_len: u64,
}

impl SegmentFile {
    pub fn open(path: &Path, faults: Option<Arc<LogFaults>>) -> io::Result<SegmentFile> {
        if let Some(f) = &faults
            && f.hit(&f.open_fails)
        {
            return Err(LogFaults::injected_error(libc::EIO, "open"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let synced_len = file.metadata()?.len();
        Ok(SegmentFile {
            file,
            faults,
            synced_len,
        })
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Writes all of `buf` at `offset`, going on after short writes.
    /// Positional, not appending: what a failed write left past `offset`
    /// is overwritten by the retry, even when it could not be cut off.
    pub fn write_all_at(&mut self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if let Some(f) = &self.faults {
            // Short first: with both set, a write writes part of its buffer,
            // then fails on the rest, as one running into a full disk does.
            if buf.len() > 1 && f.hit(&f.short_writes) {
                return self.file.write_at(&buf[..buf.len() / 2], offset);
            }
            if f.hit(&f.write_fails) {
                let errno = f.write_errno.load(Ordering::Acquire);
                return Err(LogFaults::injected_error(errno, "write"));
            }
        }
        self.file.write_at(buf, offset)
    }

    pub fn sync_data(&mut self) -> io::Result<()> {
        if let Some(f) = &self.faults {
            f.maybe_hold();
            if f.hit(&f.sync_fails) {
                if f.sync_loses.load(Ordering::Acquire) != 0 {
                    self.lose_unsynced()?;
                }
                let errno = f.sync_errno.load(Ordering::Acquire);
                return Err(LogFaults::injected_error(errno, "fsync"));
            }
        }
        self.file.sync_data()?;
        // Only a lossy fault reads it: a stat per fsync is not paid without.
        if self.faults.is_some() {
            self.synced_len = self.len()?;
        }
        Ok(())
    }

    pub fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()?;
        self.file.sync_all()
    }

    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        if let Some(f) = &self.faults
            && f.hit(&f.set_len_fails)
        {
            return Err(LogFaults::injected_error(libc::EIO, "truncate"));
        }
        self.file.set_len(len)?;
        self.synced_len = self.synced_len.min(len);
        Ok(())
    }

    /// Zeroes what was written since the last good fsync (an injected
    /// writeback failure that lost the pages).
    fn lose_unsynced(&self) -> io::Result<()> {
        let len = self.len()?;
        if len > self.synced_len {
            let zeros = vec![0u8; (len - self.synced_len) as usize];
            self.file.write_all_at(&zeros, self.synced_len)?;
        }
        Ok(())
    }
}
