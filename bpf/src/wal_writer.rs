//! The log writer: drains the engine's wal ringbuf, frames each commit as a
//! checksummed record, appends it to the current segment and makes it
//! durable. Whoever waits for a commit does that work itself when the
//! writer is free (a committer takes it right after its own commit), so an
//! acknowledgement costs no thread handoff; a committer that finds it busy
//! waits, and the next one to take it writes and syncs everything that
//! arrived meanwhile: group commit. A background thread only serves nudges,
//! `interval` syncs and shutdown.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::SyncMode;
use crate::abi::{PAGE_SIZE, SMALL_CHUNK};
use crate::db::NewMeta;
use crate::error::{Error, Result};
use crate::wal;

/// How long the writer sleeps before retrying a failed write.
const WRITE_RETRY: Duration = Duration::from_millis(100);
/// How long the background thread waits in poll before checking for
/// requests, and a waiter before looking again (it is woken earlier
/// whenever the writer finishes a step).
const POLL: Duration = Duration::from_millis(50);
/// How long a committer waits for durability while the log cannot be
/// written (full disk) before it gets the error.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);

const FRAG_BYTES: usize = 296;
const KIND_BEGIN: u32 = 1;
const KIND_PUT: u32 = 2;
const KIND_DEL: u32 = 3;
const KIND_COMMIT: u32 = 4;
const KIND_NUDGE: u32 = 5;

#[derive(Default)]
struct State {
    /// Every commit with a timestamp at or below this is durable.
    durable_ts: u64,
    /// ... and at or below this is written to the file.
    written_ts: u64,
    /// Bytes in the current segment.
    segment_bytes: u64,
    /// Current segment number.
    segment: u64,
    /// Why the log cannot be written now; cleared by the next success.
    error: Option<Error>,
    /// Request to start a new segment (checkpoint).
    rotate: bool,
    stop: bool,
    /// Steps the writer has finished: a waiter that could not take the
    /// writer sees this change and tries again.
    steps: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

pub(crate) struct Log {
    shared: Arc<Shared>,
    writer: Arc<Mutex<Writer>>,
    thread: Option<JoinHandle<()>>,
}

/// Where the writer starts: the segment to append to and its next record.
pub(crate) struct Start {
    pub dir: PathBuf,
    pub segment: u64,
    pub next_seq: u64,
    pub last_ts: u64,
    pub sync: SyncMode,
}

impl Log {
    pub fn start(ringbuf: libbpf_rs::MapHandle, start: Start) -> Result<Log> {
        let file = open_segment(&start.dir, start.segment)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat log segment", &e))?
            .len();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                durable_ts: start.last_ts,
                written_ts: start.last_ts,
                segment_bytes: len,
                segment: start.segment,
                ..State::default()
            }),
            cv: Condvar::new(),
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
        info!("log writer started");
        Ok(Log {
            shared,
            writer,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` holds. Once STALL_TIMEOUT has passed, `late`
    /// decides: an error to return, or None to keep waiting.
    fn wait(
        &self,
        done: impl Fn(&State) -> bool,
        late: impl Fn(&State) -> Option<Error>,
    ) -> Result<std::sync::MutexGuard<'_, State>> {
        let deadline = Instant::now() + STALL_TIMEOUT;
        loop {
            let before = self.lock().steps;
            self.help();
            let mut st = self.lock();
            // Until done, or until the writer finished a step someone else
            // was running (then take it: what we wait for may be left).
            while st.steps == before || done(&st) {
                if done(&st) {
                    return Ok(st);
                }
                if Instant::now() >= deadline
                    && let Some(e) = late(&st)
                {
                    return Err(e);
                }
                st = self
                    .shared
                    .cv
                    .wait_timeout(st, POLL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }

    /// Runs one writer step here if nobody else is: drains the ringbuf,
    /// writes, syncs per the mode, rotates if asked. Also what a committer
    /// blocked on a full ringbuf calls.
    pub fn help(&self) {
        if let Ok(mut w) = self.writer.try_lock() {
            w.step();
            drop(w);
            finished_step(&self.shared);
        }
    }

    /// Blocks until the commit at `ts` is durable, or fails once the log has
    /// been unwritable for STALL_TIMEOUT (a slow but working disk is waited for).
    pub fn wait_durable(&self, ts: u64) -> Result<()> {
        self.wait(
            |st| st.durable_ts >= ts,
            |st| {
                st.error
                    .as_ref()
                    .map(|e| Error::new(e.errno, format!("commit {ts} not durable: {}", e.msg)))
            },
        )
        .map(drop)
    }

    /// Blocks until every commit up to `ts` is written to the file.
    pub fn wait_written(&self, ts: u64) -> Result<()> {
        self.wait(
            |st| st.written_ts >= ts,
            |st| {
                let why = st
                    .error
                    .as_ref()
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
    /// number. Every commit written before is in the segments below it.
    pub fn request_rotate(&self) {
        self.lock().rotate = true;
    }

    /// Waits until the writer has done what request_rotate() asked (nudge
    /// it first, or this waits out its poll timeout).
    pub fn wait_rotated(&self) -> Result<u64> {
        let st = self.wait(
            |st| !st.rotate,
            |_| {
                Some(Error::new(
                    libc::EIO,
                    "log writer did not rotate the segment",
                ))
            },
        )?;
        Ok(st.segment)
    }

    pub fn segment_bytes(&self) -> u64 {
        self.lock().segment_bytes
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_segment(dir: &Path, n: u64) -> Result<File> {
    let path = wal::segment_path(dir, n);
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| Error::io(&format!("open {}", path.display()), &e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat log segment", &e))?
        .len();
    if len == 0 {
        f.write_all(&wal::file_header(wal::WAL_MAGIC))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&format!("write {}", path.display()), &e))?;
        sync_dir(dir)?;
    }
    Ok(f)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&format!("fsync {}", dir.display()), &e))
}

/// Rebuilds commits from ringbuf fragments (format in bpfdb.h).
#[derive(Default)]
struct Assembler {
    /// (ts, payload being built, op count) of the commit in progress.
    cur: Option<(u64, Vec<u8>, u32)>,
    /// PUT whose data fragments are still arriving: key, meta, length.
    put: Option<(Vec<u8>, NewMeta, usize)>,
    value: Vec<u8>,
    fragments_left: usize,
    done: Vec<(u64, Vec<u8>)>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Assembler {
    fn fragment(&mut self, b: &[u8]) {
        if self.fragments_left > 0 {
            let Some((_, _, len)) = &self.put else { return };
            let take = (len - self.value.len()).min(b.len());
            self.value.extend_from_slice(&b[..take]);
            self.fragments_left -= 1;
            if self.fragments_left == 0 {
                self.finish_put();
            }
            return;
        }
        if b.len() != FRAG_BYTES {
            error!(
                "log: unexpected fragment of {} bytes; dropping the commit in progress",
                b.len()
            );
            self.cur = None;
            return;
        }
        let (kind, key_len, ts) = (le_u32(b, 0), le_u32(b, 4) as usize, le_u64(b, 8));
        let meta = NewMeta {
            mtime_ns: le_u64(b, 16),
            mode: le_u32(b, 24),
            uid: le_u32(b, 28),
            gid: le_u32(b, 32),
        };
        let len = le_u32(b, 36) as usize;
        let key = b[40..40 + key_len.min(255)].to_vec();
        match kind {
            KIND_BEGIN => {
                // A BEGIN without COMMIT before it was a failed emission.
                let mut payload = Vec::with_capacity(64);
                payload.extend_from_slice(&ts.to_le_bytes());
                payload.extend_from_slice(&0u32.to_le_bytes());
                self.cur = Some((ts, payload, 0));
            }
            KIND_PUT => {
                self.put = Some((key, meta, len));
                self.value.clear();
                self.fragments_left = match len {
                    0 => 0,
                    l if l <= SMALL_CHUNK => 1,
                    l => l.div_ceil(PAGE_SIZE),
                };
                if self.fragments_left == 0 {
                    self.finish_put();
                }
            }
            KIND_DEL => {
                if let Some((_, payload, n)) = &mut self.cur {
                    wal::del_op(payload, &key);
                    *n += 1;
                }
            }
            KIND_COMMIT => match self.cur.take() {
                Some((begin_ts, mut payload, n)) if begin_ts == ts => {
                    payload[8..12].copy_from_slice(&n.to_le_bytes());
                    self.done.push((ts, payload));
                }
                _ => error!("log: COMMIT {ts} without its BEGIN; dropped"),
            },
            KIND_NUDGE => {}
            _ => error!("log: unknown fragment kind {kind}"),
        }
    }

    fn finish_put(&mut self) {
        if let (Some((key, meta, _)), Some((_, payload, n))) = (self.put.take(), &mut self.cur) {
            wal::put_op(payload, &key, &meta, &self.value);
            *n += 1;
        }
    }
}

struct Writer {
    ringbuf: libbpf_rs::RingBuffer<'static>,
    asm: Arc<Mutex<Assembler>>,
    file: File,
    /// File length up to the last whole record written.
    good_len: u64,
    batch: Vec<u8>,
    batch_ts: u64,
    next_seq: u64,
    dir: PathBuf,
    sync: SyncMode,
    last_sync: Instant,
    shared: Arc<Shared>,
}

impl Writer {
    fn new(
        map: libbpf_rs::MapHandle,
        file: File,
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
            good_len: len,
            batch: Vec::new(),
            batch_ts: 0,
            next_seq: start.next_seq,
            dir: start.dir,
            sync: start.sync,
            last_sync: Instant::now(),
            shared,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assembled(&self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.asm.lock().unwrap_or_else(|p| p.into_inner()).done)
    }

    /// Drains the ringbuf, writes what it held, syncs per the mode and
    /// rotates if asked (once everything before is written).
    fn step(&mut self) {
        if let Err(e) = self.ringbuf.consume() {
            error!("log: ringbuf consume: {e}");
        }
        for (ts, payload) in self.assembled() {
            wal::frame(&mut self.batch, self.next_seq, &payload);
            self.next_seq += 1;
            self.batch_ts = ts;
        }
        if !self.batch.is_empty() {
            self.write_batch();
        }
        self.maybe_sync();
        if self.lock().rotate && self.batch.is_empty() {
            self.rotate();
        }
    }

    fn write_batch(&mut self) {
        match self.file.write_all(&self.batch) {
            Ok(()) => {
                self.good_len += self.batch.len() as u64;
                let mut st = self.lock();
                st.segment_bytes = self.good_len;
                st.written_ts = self.batch_ts;
                st.error = None;
                if self.sync != SyncMode::Commit {
                    st.durable_ts = self.batch_ts; // acked once written
                }
                drop(st);
                self.batch.clear();
                self.shared.cv.notify_all();
            }
            Err(e) => {
                // Cut any partial record off and keep the batch: it is
                // written when space returns; later commits queue behind it.
                let err = Error::io("append to log", &e);
                warn!("log: {err}; retrying");
                let _ = self.file.set_len(self.good_len);
                self.lock().error = Some(err);
                self.shared.cv.notify_all();
                std::thread::sleep(WRITE_RETRY);
            }
        }
    }

    fn maybe_sync(&mut self) {
        let (written, durable) = {
            let st = self.lock();
            (st.written_ts, st.durable_ts)
        };
        match self.sync {
            SyncMode::Commit if written > durable => self.sync_now(),
            SyncMode::Interval(ms)
                if self.last_sync.elapsed() >= Duration::from_millis(ms as u64) =>
            {
                self.sync_now()
            }
            _ => {}
        }
    }

    fn sync_now(&mut self) {
        let written = self.lock().written_ts;
        self.last_sync = Instant::now();
        match self.file.sync_data() {
            Ok(()) => {
                let mut st = self.lock();
                st.durable_ts = st.durable_ts.max(written);
                st.error = None;
            }
            Err(e) => {
                let err = Error::io("fsync log", &e);
                warn!("log: {err}");
                self.lock().error = Some(err);
            }
        }
        self.shared.cv.notify_all();
    }

    fn rotate(&mut self) {
        self.sync_now();
        let next = self.lock().segment + 1;
        match open_segment(&self.dir, next) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .map(|m| m.len())
                    .unwrap_or(wal::HEADER_BYTES as u64);
                self.file = f;
                self.good_len = len;
                let mut st = self.lock();
                st.segment = next;
                st.segment_bytes = len;
                st.rotate = false;
                info!("log: now writing segment {next}");
            }
            Err(e) => {
                warn!("log: cannot start segment {next}: {e}");
                self.lock().error = Some(e);
            }
        }
        self.shared.cv.notify_all();
    }
}

/// Counts a finished step and wakes the waiters (after the writer lock is
/// released, so a woken waiter can take it).
fn finished_step(shared: &Shared) {
    shared.state.lock().unwrap_or_else(|p| p.into_inner()).steps += 1;
    shared.cv.notify_all();
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
        let mut pfd = libc::pollfd {
            fd: epoll_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the ringbuf owning the fd outlives this
        // thread (the writer is dropped after the join).
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        w.step();
        let stop = w.lock().stop;
        // step() took every assembled commit: an empty batch is all written.
        if stop && w.batch.is_empty() {
            w.sync_now();
            drop(w);
            finished_step(shared);
            return;
        }
        if stop {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STALL_TIMEOUT);
            if Instant::now() >= deadline {
                error!(
                    "log: stopping with {} bytes of unwritten log (commits after ts {} were never acknowledged)",
                    w.batch.len(),
                    w.lock().written_ts
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
