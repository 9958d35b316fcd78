//! The log writer: drains the engine's wal ringbuf, frames each commit as a
//! checksummed record, writes it after the last whole record of the current
//! segment and makes it durable. Whoever waits for a commit does that work itself when the
//! writer is free (a committer takes it right after its own commit), so an
//! acknowledgement costs no thread handoff; a committer that finds it busy
//! waits, and the next one to take it writes and syncs everything that
//! arrived meanwhile: group commit. A background thread only serves nudges,
//! `interval` syncs and shutdown.
//!
//! `Log` (the waits, here) and `Writer` (the steps, in `step`) share
//! `State` under one mutex and one condvar; the protocol between them (who
//! runs a step, who is woken, when an error is given up on) is in this
//! file, the file I/O of a step in `step`. Commit rebuilding is apart, in
//! `assembler`; the callbacks of commits nobody blocks for, in `acks`.

mod step;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::info;

use crate::durability::acks::{self, Ack, Acks, MAX_PENDING_ACKS, View};
pub(crate) use step::sync_dir;
use step::{Writer, background, open_segment};

use crate::durability::segment_file::LogFaults;
use crate::error::{Error, Result};
use crate::options::SyncMode;

/// How long the writer leaves the file alone after a failed write or fsync.
const WRITE_RETRY: Duration = Duration::from_millis(100);
/// Log bytes the writer holds unwritten (or, sync `commit` and `interval`,
/// unsynced) before it stops draining the ringbuf.
const BATCH_LIMIT_BYTES: usize = 64 << 20;
/// How long the background thread waits in poll before checking for
/// requests, and a waiter before looking again (it is woken earlier
/// whenever the writer finishes a step).
const POLL: Duration = Duration::from_millis(50);
/// How long a committer waits for durability while the log cannot be
/// written (full disk) before it gets the error.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest any wait on the log lasts, failing or not: long enough for the
/// slowest fsync a working disk takes, so reaching it means a disk that
/// does not answer.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    /// Every commit with a timestamp at or below this is durable (as the
    /// sync mode defines it: acknowledged).
    durable_ts: u64,
    /// ... and at or below this is written to the file.
    written_ts: u64,
    /// Bytes in the current segment.
    segment_bytes: u64,
    /// Current segment number.
    segment: u64,
    /// Seq of the first record of the segment started by the last
    /// rotation.
    segment_first_seq: u64,
    /// Why the log cannot be written now.
    errors: Errors,
    /// Set for good when an acknowledged commit could not be logged: no
    /// wait succeeds after it (the log is no longer the database's record).
    broken: Option<Error>,
    /// Request to start a new segment (checkpoint).
    rotate: bool,
    stop: bool,
    /// Steps the writer has finished: a waiter that could not take the
    /// writer sees this change and tries again.
    steps: u64,
    /// Callbacks of commits whose callers did not block (`when_durable`).
    acks: Acks,
    /// Commits framed into the log, and fsyncs of it that succeeded, since
    /// start: their ratio is how many commits share an fsync.
    commits_logged: u64,
    fsyncs: u64,
    /// The log is gone: every callback left fails.
    stopped: bool,
}

/// What failed last, per kind of work; each is cleared by the next success
/// of its own kind only (an fsync that succeeds says nothing of a write
/// that keeps failing).
#[derive(Default)]
struct Errors {
    consume: Option<Error>,
    write: Option<Error>,
    sync: Option<Error>,
    rotate: Option<Error>,
}

impl Errors {
    fn first(&self) -> Option<&Error> {
        [&self.consume, &self.write, &self.sync, &self.rotate]
            .into_iter()
            .find_map(|e| e.as_ref())
    }
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    /// STALL_TIMEOUT, unless a test's LogFaults shortened it.
    stall: Duration,
    /// The log was broken or its last attempt of some work failed, as of
    /// the last finished step: what `health` reads on every open and write
    /// without taking the state lock the committers share.
    failing: AtomicBool,
    /// WAIT_LIMIT, unless a test's LogFaults shortened it.
    wait_limit: Duration,
    /// Wakes the background thread out of its poll when a callback is
    /// left (`when_durable`): then nobody else may run the step it needs.
    wake: OwnedFd,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes out and runs every callback whose commit is settled.
    fn settle_acks(&self) {
        let settled = {
            let mut st = self.lock();
            let State {
                acks,
                durable_ts,
                broken,
                errors,
                stopped,
                ..
            } = &mut *st;
            if acks.is_empty() {
                return;
            }
            let view = View {
                durable_ts: *durable_ts,
                broken: broken.as_ref(),
                failing: errors.first(),
                stall: self.stall,
                wait_limit: self.wait_limit,
                stopped: *stopped,
            };
            acks.settle(&view, Instant::now())
        };
        acks::run(settled);
    }

    fn wake_background(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd; a
        // full counter (EAGAIN) still leaves it readable, which is all we need.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

pub(crate) struct Log {
    shared: Arc<Shared>,
    writer: Arc<Mutex<Writer>>,
    thread: Option<JoinHandle<()>>,
    sync: SyncMode,
    /// Fails callbacks that outlive their bounds while no step finishes
    /// (a write or fsync that does not return).
    acks_thread: Option<JoinHandle<()>>,
}

/// What the log writer has done since start (`.stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogCounters {
    /// Commits framed into the log.
    pub commits_logged: u64,
    /// fsyncs of the log that succeeded.
    pub fsyncs: u64,
    /// Commits whose caller left a callback (`when_durable`) and that are
    /// not durable yet.
    pub acks_waiting: u64,
}

/// Where the writer starts: the segment to append to and its next record.
pub(crate) struct Start {
    pub dir: PathBuf,
    pub segment: u64,
    pub next_seq: u64,
    pub last_ts: u64,
    pub sync: SyncMode,
    pub faults: Option<Arc<LogFaults>>,
}

impl Log {
    pub fn start(ringbuf: libbpf_rs::MapHandle, start: Start) -> Result<Log> {
        let file = open_segment(&start.dir, start.segment, &start.faults)?;
        let len = file.len().map_err(|e| Error::io("stat log segment", &e))?;
        let bounds = start.faults.as_ref().map(|f| f.time_bounds());
        // SAFETY: eventfd takes no pointers; the fd it returns is ours.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(Error::io(
                "eventfd for the log writer",
                &std::io::Error::last_os_error(),
            ));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                durable_ts: start.last_ts,
                written_ts: start.last_ts,
                segment_bytes: len,
                segment: start.segment,
                ..State::default()
            }),
            cv: Condvar::new(),
            stall: bounds.and_then(|b| b.0).unwrap_or(STALL_TIMEOUT),
            failing: AtomicBool::new(false),
            wait_limit: bounds.and_then(|b| b.1).unwrap_or(WAIT_LIMIT),
            // SAFETY: `wake` is a fresh fd nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
        });
        let sync = start.sync;
        let writer = Writer::new(ringbuf, file, len, start, shared.clone())?;
        let epoll_fd = writer.ringbuf.epoll_fd();
        let writer = Arc::new(Mutex::new(writer));
        let (sh, w) = (shared.clone(), writer.clone());
        let thread = std::thread::Builder::new()
            .name("bpfdb-log".into())
            .spawn(move || background(&sh, &w, epoll_fd, sync))
            .map_err(|e| Error::io("spawn log writer", &e))?;
        let sh = shared.clone();
        let acks_thread = std::thread::Builder::new()
            .name("bpfdb-log-acks".into())
            .spawn(move || expire_acks(&sh))
            .map_err(|e| Error::io("spawn log acknowledger", &e))?;
        info!("log writer started");
        Ok(Log {
            shared,
            writer,
            thread: Some(thread),
            sync,
            acks_thread: Some(acks_thread),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` holds, running writer steps itself whenever the
    /// writer is free. Once the stall timeout has passed, `late` decides: an
    /// error to return, or None to keep waiting; at the wait limit it fails
    /// with ETIMEDOUT whatever the state (a write or fsync that does not
    /// return leaves no error to report). A step this thread runs itself is
    /// not interrupted: only waits between steps are bounded.
    fn wait(
        &self,
        what: &dyn Fn() -> String,
        done: impl Fn(&State) -> bool,
        late: impl Fn(&State) -> Option<Error>,
    ) -> Result<std::sync::MutexGuard<'_, State>> {
        let start = Instant::now();
        loop {
            let before = self.lock().steps;
            let ran = self.help();
            let st = self.lock();
            if let Some(e) = &st.broken {
                return Err(e.clone());
            }
            if done(&st) {
                return Ok(st);
            }
            let waited = start.elapsed();
            if waited >= self.shared.stall
                && let Some(e) = late(&st)
            {
                return Err(e);
            }
            if waited >= self.shared.wait_limit {
                return Err(Error::new(
                    libc::ETIMEDOUT,
                    format!(
                        "{} after {:.1} s: the log writer made no progress \
                         (a write or fsync that does not return?)",
                        what(),
                        waited.as_secs_f64()
                    ),
                ));
            }
            if !ran && st.steps != before {
                continue; // a step ran meanwhile: take the writer now
            }
            // Either another thread's step is running (it wakes us when it
            // ends; then take the writer: what we wait for may be left), or
            // ours could not finish it (failing disk): try again after a
            // pause.
            let pause = POLL.min(self.shared.wait_limit - waited);
            let (st, _) = self
                .shared
                .cv
                .wait_timeout(st, pause)
                .unwrap_or_else(|p| p.into_inner());
            // Woken by a step that did our work (group commit): return
            // without taking the writer from the next leader.
            if st.broken.is_none() && done(&st) {
                return Ok(st);
            }
        }
    }

    /// Runs one writer step here if nobody else is: drains the ringbuf,
    /// writes, syncs per the mode, rotates if asked. Also what a committer
    /// blocked on a full ringbuf calls. Returns whether it ran one.
    pub fn help(&self) -> bool {
        let Ok(mut w) = self.writer.try_lock() else {
            return false;
        };
        w.step();
        drop(w);
        finished_step(&self.shared);
        true
    }

    /// Fails while the log cannot be written: broken for good, or the last
    /// attempt of some kind of work failed. A writer that is free first
    /// tries again at once, ignoring the pause after a failure, so space
    /// freed a moment ago is seen now rather than at the next retry.
    pub fn health(&self) -> Result<()> {
        if !self.shared.failing.load(Ordering::Relaxed) {
            return Ok(());
        }
        let failing = |st: &State| st.broken.clone().or_else(|| st.errors.first().cloned());
        if let Ok(mut w) = self.writer.try_lock() {
            w.retry_at = None;
            w.step();
            drop(w);
            finished_step(&self.shared);
        }
        match failing(&self.lock()) {
            None => Ok(()),
            Some(e) => Err(Error::new(
                e.errno,
                format!("the log cannot be written now: {}", e.msg),
            )),
        }
    }

    /// Blocks until the commit at `ts` is durable; fails once the log has
    /// been failing for the stall timeout (a slow but working disk is
    /// waited for), or at the wait limit.
    pub fn wait_durable(&self, ts: u64) -> Result<()> {
        self.wait(
            &|| format!("commit {ts} not durable"),
            |st| st.durable_ts >= ts,
            |st| {
                st.errors
                    .first()
                    .map(|e| Error::new(e.errno, format!("commit {ts} not durable: {}", e.msg)))
            },
        )
        .map(drop)
    }

    /// Runs `ack` once the commit at `ts` is settled, with the outcome
    /// `wait_durable` would return, without blocking: on this thread if it
    /// is settled already, else on the thread that sees it settle. The
    /// background thread runs the step that makes it durable, so the
    /// caller may go on serving others meanwhile. Past MAX_PENDING_ACKS
    /// callbacks it waits itself, as `wait_durable` does.
    pub fn when_durable(&self, ts: u64, ack: Ack) {
        let mut st = self.lock();
        if st.broken.is_none() && st.durable_ts >= ts {
            drop(st);
            return ack(Ok(()));
        }
        if st.acks.len() >= MAX_PENDING_ACKS {
            drop(st);
            return ack(self.wait_durable(ts));
        }
        st.acks.push(ts, ack);
        drop(st);
        if self.sync_is_cheap() {
            // No fsync to wait for: writing it here costs less than a
            // thread handoff, and holds nobody up.
            self.help();
            self.shared.settle_acks();
        } else {
            self.shared.wake_background();
        }
    }

    /// Whether a step only writes (sync `none`; `interval` syncs rarely).
    fn sync_is_cheap(&self) -> bool {
        self.sync != SyncMode::Commit
    }

    /// Blocks until every commit up to `ts` is written to the file.
    pub fn wait_written(&self, ts: u64) -> Result<()> {
        self.wait(
            &|| format!("log not written up to {ts}"),
            |st| st.written_ts >= ts,
            |st| Some(behind(st, &format!("log not written up to {ts}"))),
        )
        .map(drop)
    }

    /// Asks the writer to start a new segment; wait_rotated() returns its
    /// number and the seq its first record gets. Every commit written
    /// before is in the segments below it.
    pub fn request_rotate(&self) {
        self.lock().rotate = true;
    }

    /// Waits until the writer has done what request_rotate() asked (nudge
    /// it first, or this waits out its poll timeout).
    pub fn wait_rotated(&self) -> Result<(u64, u64)> {
        let st = self.wait(
            &|| "log segment not rotated".to_string(),
            |st| !st.rotate,
            |st| Some(behind(st, "log writer did not rotate the segment")),
        )?;
        Ok((st.segment, st.segment_first_seq))
    }

    /// How long a commit may wait for a log that cannot be written.
    pub fn stall_timeout(&self) -> Duration {
        self.shared.stall
    }

    pub fn segment_bytes(&self) -> u64 {
        self.lock().segment_bytes
    }

    pub fn counters(&self) -> LogCounters {
        let st = self.lock();
        LogCounters {
            commits_logged: st.commits_logged,
            fsyncs: st.fsyncs,
            acks_waiting: st.acks.len() as u64,
        }
    }
}

impl Drop for Log {
    /// Stops the background thread, which writes and syncs what it can
    /// first; callbacks still left then fail, so every one runs once.
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.cv.notify_all();
        self.shared.wake_background();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.settle_acks();
        self.lock().stopped = true;
        if let Some(t) = self.acks_thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.shared.settle_acks();
    }
}

/// Counts a finished step and wakes the waiters (after the writer lock is
/// released, so a woken waiter can take it).
fn finished_step(shared: &Shared) {
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    st.steps += 1;
    // Every error is set or cleared inside a step, so this is current.
    let failing = st.broken.is_some() || st.errors.first().is_some();
    shared.failing.store(failing, Ordering::Relaxed);
    drop(st);
    shared.cv.notify_all();
    shared.settle_acks();
}

/// EIO for a wait the writer has not served in time: why, if it knows.
fn behind(st: &State, what: &str) -> Error {
    let why = st
        .errors
        .first()
        .map_or_else(|| "writer behind".to_string(), |e| e.msg.clone());
    Error::new(libc::EIO, format!("{what}: {why}"))
}

/// Fails callbacks that reach their bounds while no step finishes to
/// settle them (a write or fsync that does not return holds the writer,
/// and with it every thread that would run `finished_step`). Stops once
/// the log has stopped and nothing is left.
fn expire_acks(shared: &Shared) {
    loop {
        // Parked rather than on the condvar: every finished step notifies
        // that, and this thread has nothing to do for a step.
        std::thread::park_timeout(POLL);
        let stopped = shared.lock().stopped;
        shared.settle_acks();
        if stopped {
            return;
        }
    }
}

/// Reads a whole file; positional reads so a concurrent appender is harmless.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| Error::io(&format!("open {}", path.display()), &e))?;
    let len = f.metadata().map_err(|e| Error::io("stat", &e))?.len() as usize;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io(&format!("read {}", path.display()), &e))?;
    Ok(buf)
}
