//! The log writer: drains the engine's wal ringbuf, frames each commit as a
//! checksummed record, writes it after the last whole record of the current
//! segment and makes it durable. Whoever waits for a commit does that work itself when the
//! writer is free (a committer takes it right after its own commit), so an
//! acknowledgement costs no thread handoff; a committer that finds it busy
//! waits, and the next one to take it writes and syncs everything that
//! arrived meanwhile: group commit. A background thread only serves nudges,
//! `interval` syncs and shutdown.
//!
//! One file of about 700 lines on purpose: `Log` (the waits) and `Writer`
//! (the steps) share `State` under one mutex and one condvar, and their
//! protocol (who runs a step, who is woken, when an error is given up on)
//! reads best in one place. Commit rebuilding is apart, in `assembler`.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::durability::acks::{self, Ack, Acks, MAX_PENDING_ACKS, View};
use crate::durability::assembler::Assembler;
use crate::durability::format as wal;
use crate::durability::segment_file::{LogFaults, SegmentFile};
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
    /// WAIT_LIMIT, unless a test's LogFaults shortened it.
    wait_limit: Duration,
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
        let wait_limit = shared.wait_limit;
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
            wait_limit,
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
            if waited >= self.wait_limit {
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
            let pause = POLL.min(self.wait_limit - waited);
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
            |st| {
                let why = st
                    .errors
                    .first()
                    .map_or_else(|| "writer behind".to_string(), |e| e.msg.clone());
                Some(Error::new(
                    libc::EIO,
                    format!("log not written up to {ts}: {why}"),
                ))
            },
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
            |st| {
                let why = st
                    .errors
                    .first()
                    .map_or_else(|| "writer behind".to_string(), |e| e.msg.clone());
                Some(Error::new(
                    libc::EIO,
                    format!("log writer did not rotate the segment: {why}"),
                ))
            },
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

/// Opens segment `n` for writing, creating it with its header. A segment
/// with no record yet has its header (re)written and fsynced, with the
/// directory, each time: an attempt that failed part-way may have left
/// part of a header, or a header not known to be durable.
fn open_segment(dir: &Path, n: u64, faults: &Option<Arc<LogFaults>>) -> Result<SegmentFile> {
    let path = wal::segment_path(dir, n);
    let what = path.display().to_string();
    let mut f = SegmentFile::open(&path, faults.clone())
        .map_err(|e| Error::io(&format!("open {what}"), &e))?;
    let len = f
        .len()
        .map_err(|e| Error::io(&format!("stat {what}"), &e))?;
    let header = wal::file_header(wal::WAL_MAGIC, wal::FORMAT_VERSION);
    if len > wal::HEADER_BYTES as u64 {
        return Ok(f); // recovery checked its header
    }
    f.write_all_at(&header, 0)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&format!("write {what}"), &e))?;
    sync_dir(dir)?;
    Ok(f)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&format!("fsync {}", dir.display()), &e))
}

struct Writer {
    ringbuf: libbpf_rs::RingBuffer<'static>,
    asm: Arc<Mutex<Assembler>>,
    file: SegmentFile,
    /// Records framed and not yet settled: not yet written, or (sync
    /// `commit` and `interval`) written but not yet fsynced. They go to the
    /// file at `base_len`, the end of the records before them, and
    /// `base_ts` is the last commit before them.
    batch: Vec<u8>,
    base_len: u64,
    base_ts: u64,
    /// Bytes of `batch` that are in the file (all or none).
    batch_written: usize,
    batch_ts: u64,
    next_seq: u64,
    dir: PathBuf,
    sync: SyncMode,
    last_sync: Instant,
    /// After a failed write or fsync, no file I/O before this.
    retry_at: Option<Instant>,
    shared: Arc<Shared>,
    faults: Option<Arc<LogFaults>>,
}

impl Writer {
    fn new(
        map: libbpf_rs::MapHandle,
        file: SegmentFile,
        len: u64,
        start: Start,
        shared: Arc<Shared>,
    ) -> Result<Writer> {
        let asm = Arc::new(Mutex::new(Assembler::default()));
        let a = asm.clone();
        let mut b = libbpf_rs::RingBufferBuilder::new();
        b.add(&map, move |frag: &[u8]| {
            a.lock().unwrap_or_else(|p| p.into_inner()).fragment(frag);
            0
        })?;
        let ringbuf = b.build()?;
        Ok(Writer {
            ringbuf,
            asm,
            file,
            batch: Vec::new(),
            base_len: len,
            base_ts: start.last_ts,
            batch_written: 0,
            batch_ts: 0,
            next_seq: start.next_seq,
            dir: start.dir,
            sync: start.sync,
            last_sync: Instant::now(),
            retry_at: None,
            shared,
            faults: start.faults,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether written records stay in the batch until an fsync covers
    /// them, to be written again if it fails (sync `none` fsyncs only at
    /// checkpoints: it would hold a whole segment).
    fn retains(&self) -> bool {
        self.sync != SyncMode::None
    }

    /// Every record framed is in the file.
    fn all_written(&self) -> bool {
        self.batch_written == self.batch.len()
    }

    /// File length up to the last whole record written.
    fn good_len(&self) -> u64 {
        self.base_len + self.batch_written as u64
    }

    /// Commits rebuilt since the last call; marks the log broken if one
    /// the engine acknowledged could not be rebuilt.
    fn assembled(&self) -> Vec<(u64, Vec<u8>)> {
        let mut asm = self.asm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ts) = asm.lost.take() {
            let err = Error::new(
                libc::EIO,
                format!(
                    "the log lost acknowledged commit {ts} (the engine's record of it was \
                     malformed); restart to recover the commits before it"
                ),
            );
            self.lock().broken.get_or_insert(err);
            self.shared.cv.notify_all();
        }
        std::mem::take(&mut asm.done)
    }

    /// Drains the ringbuf, writes what it held, syncs per the mode and
    /// rotates if asked (once everything before is written). After a
    /// failure the file is left alone for WRITE_RETRY.
    fn step(&mut self) {
        // While the log cannot be written, the ringbuf is left to fill up:
        // commits then fail before they become visible, instead of piling
        // up here unacknowledged.
        if self.batch.len() < BATCH_LIMIT_BYTES {
            // A ringbuf that cannot be read holds commits back as surely
            // as a disk that cannot be written: their waiters get the error.
            let consumed = self.consume();
            if let Err(e) = &consumed {
                error!("log: {e}");
            }
            self.lock().errors.consume = consumed.err();
        }
        let mut framed = 0;
        for (ts, payload) in self.assembled() {
            debug_assert!(ts > self.batch_ts, "commits arrive in timestamp order");
            wal::frame(&mut self.batch, self.next_seq, &payload);
            self.next_seq += 1;
            self.batch_ts = ts;
            framed += 1;
        }
        if framed > 0 {
            self.lock().commits_logged += framed;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let mut ok =
            (self.batch_written == self.batch.len() || self.write_batch()) && self.maybe_sync();
        let rotate = self.lock().rotate;
        if ok && rotate && self.all_written() {
            ok = self.rotate();
        }
        if !ok {
            self.retry_at = Some(Instant::now() + WRITE_RETRY);
        }
        debug_assert!(self.batch_written <= self.batch.len());
        debug_assert!(self.retains() || self.batch_written == 0);
    }

    /// Reads every fragment the engine has emitted into the assembler.
    fn consume(&mut self) -> Result<()> {
        if let Some(f) = &self.faults
            && f.take_consume_fault()
        {
            return Err(Error::new(libc::EIO, "injected ringbuf consume failure"));
        }
        self.ringbuf
            .consume()
            .map_err(|e| Error::new(libc::EIO, format!("read the log ringbuf (consume): {e}")))
    }

    /// Writes the part of the batch not in the file yet.
    fn write_batch(&mut self) -> bool {
        let at = self.good_len();
        match self
            .file
            .write_all_at(&self.batch[self.batch_written..], at)
        {
            Ok(()) => {
                self.batch_written = self.batch.len();
                #[cfg(debug_assertions)]
                if let Ok(len) = self.file.len() {
                    debug_assert_eq!(len, self.good_len(), "the file ends at the last record");
                }
                let mut st = self.lock();
                st.segment_bytes = self.good_len();
                st.written_ts = self.batch_ts;
                st.errors.write = None;
                if self.sync != SyncMode::Commit {
                    st.durable_ts = self.batch_ts; // acknowledged once written
                }
                drop(st);
                if !self.retains() {
                    self.settle();
                }
                self.shared.cv.notify_all();
                true
            }
            Err(e) => {
                // Cut the partial record off and keep the batch: it is
                // written when space returns; later commits queue behind it.
                // If the cut fails too, the retry overwrites what is left:
                // it writes at the same offset, at least as many bytes.
                let err = Error::io("write to log", &e);
                warn!("log: {err}; retrying");
                if let Err(e) = self.file.set_len(at) {
                    warn!("log: cannot cut the failed write off ({e}); the retry overwrites it");
                }
                self.lock().errors.write = Some(err);
                self.shared.cv.notify_all();
                false
            }
        }
    }

    /// The written part of the batch is as durable as the mode makes it.
    fn settle(&mut self) {
        if self.batch_written > 0 {
            self.base_ts = self.batch_ts;
        }
        self.base_len += self.batch_written as u64;
        self.batch.drain(..self.batch_written);
        self.batch_written = 0;
    }

    fn maybe_sync(&mut self) -> bool {
        match self.sync {
            SyncMode::Commit if self.batch_written > 0 => self.sync_now(),
            SyncMode::Interval(ms)
                if self.last_sync.elapsed() >= Duration::from_millis(ms as u64) =>
            {
                self.sync_now()
            }
            _ => true,
        }
    }

    fn sync_now(&mut self) -> bool {
        let written = self.lock().written_ts;
        self.last_sync = Instant::now();
        let synced = self.file.sync_data();
        let mut st = self.lock();
        let ok = match synced {
            Ok(()) => {
                st.durable_ts = st.durable_ts.max(written);
                st.errors.sync = None;
                st.fsyncs += 1;
                drop(st);
                if self.retains() {
                    self.settle();
                }
                true
            }
            Err(e) => {
                let err = Error::io("fsync log", &e);
                warn!("log: {err}");
                st.errors.sync = Some(err);
                if self.retains() && self.batch_written > 0 {
                    // A failed fsync may have lost what it could not write,
                    // and the next one reports success all the same: the
                    // records since the last good fsync are written again,
                    // in place, before any of them counts as durable. (They
                    // are not cut off: if the disk never recovers, what the
                    // kernel still holds is better than nothing.)
                    st.written_ts = self.base_ts;
                    st.segment_bytes = self.base_len;
                    drop(st);
                    self.batch_written = 0;
                } else {
                    drop(st);
                }
                false
            }
        };
        self.shared.cv.notify_all();
        ok
    }

    /// Starts the next segment once everything before is written: an
    /// fsync first makes it durable.
    fn rotate(&mut self) -> bool {
        if !self.sync_now() {
            return false;
        }
        debug_assert!(self.batch.is_empty(), "the fsync settled every record");
        let next = self.lock().segment + 1;
        let ok = match open_segment(&self.dir, next, &self.faults) {
            Ok(f) => {
                let len = f.len().unwrap_or(wal::HEADER_BYTES as u64);
                self.file = f;
                self.base_len = len;
                let mut st = self.lock();
                st.segment = next;
                // Every framed record is in the segments before (the batch
                // is empty): the next one is this segment's first.
                st.segment_first_seq = self.next_seq;
                st.segment_bytes = len;
                st.rotate = false;
                st.errors.rotate = None;
                info!("log: now writing segment {next}");
                true
            }
            Err(e) => {
                warn!("log: cannot start segment {next}: {e}");
                self.lock().errors.rotate = Some(e);
                false
            }
        };
        self.shared.cv.notify_all();
        ok
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

/// The background thread: sleeps on the ringbuf's epoll fd (woken by a
/// nudge; commits do not wake it, their committers write them) and steps
/// for `interval` syncs, nudges and commits nobody waited for. Once asked
/// to stop it drains and syncs; a log that cannot be written (full disk)
/// is retried for STALL_TIMEOUT, then given up: its commits were never
/// acknowledged, and shutdown must not hang on them.
fn background(shared: &Shared, writer: &Mutex<Writer>, epoll_fd: i32, sync: SyncMode) {
    let timeout = match sync {
        SyncMode::Interval(ms) => POLL.min(Duration::from_millis(u64::from(ms).max(1))),
        _ => POLL,
    };
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let mut stop_deadline: Option<Instant> = None;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: epoll_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds; the ringbuf owning the first fd
        // outlives this thread (the writer is dropped after the join), and
        // `shared` owns the second.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if fds[1].revents & libc::POLLIN != 0 {
            let mut count = [0u8; 8];
            // SAFETY: reads the 8-byte counter into a buffer of 8 bytes;
            // nonblocking, so a lost race with another read returns EAGAIN.
            unsafe { libc::read(shared.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        }
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        w.step();
        let (stop, unread) = {
            let st = w.lock();
            (st.stop, st.errors.consume.is_some())
        };
        // step() took every assembled commit: then the batch is all
        // written (unless the ringbuf could not be read); the last fsync
        // makes it durable.
        if stop && w.all_written() && !unread && w.sync_now() {
            drop(w);
            finished_step(shared);
            return;
        }
        if stop {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + shared.stall);
            if Instant::now() >= deadline {
                error!(
                    "log: stopping with {} bytes of log not written or not fsynced \
                     (the commits after ts {})",
                    w.batch.len(),
                    w.base_ts
                );
                drop(w);
                finished_step(shared);
                return;
            }
        }
        drop(w);
        finished_step(shared);
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
