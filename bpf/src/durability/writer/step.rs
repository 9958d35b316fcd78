//! One step of the log writer: drain the ringbuf into the assembler,
//! frame what it rebuilt, write it after the last whole record, fsync per
//! the sync mode, rotate when asked; and the background thread that runs
//! steps nobody else runs. The waits around the steps are in `writer`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::{BATCH_LIMIT_BYTES, POLL, Shared, Start, State, WRITE_RETRY, finished_step};
use crate::durability::assembler::Assembler;
use crate::durability::format as wal;
use crate::durability::segment_file::{LogFaults, SegmentFile};
use crate::error::{Error, Result};
use crate::options::SyncMode;

/// Opens segment `n` for writing, creating it with its header. A segment
/// with no record yet has its header (re)written and fsynced, with the
/// directory, each time: an attempt that failed part-way may have left
/// part of a header, or a header not known to be durable.
pub(super) fn open_segment(
    dir: &Path,
    n: u64,
    faults: &Option<Arc<LogFaults>>,
) -> Result<SegmentFile> {
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

pub(super) struct Writer {
    pub(super) ringbuf: libbpf_rs::RingBuffer<'static>,
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
    pub(super) retry_at: Option<Instant>,
    shared: Arc<Shared>,
    faults: Option<Arc<LogFaults>>,
}

impl Writer {
    pub(super) fn new(
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
    pub(super) fn step(&mut self) {
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

/// The background thread: sleeps on the ringbuf's epoll fd (woken by a
/// nudge; commits do not wake it, their committers write them) and steps
/// for `interval` syncs, nudges and commits nobody waited for. Once asked
/// to stop it drains and syncs; a log that cannot be written (full disk)
/// is retried for STALL_TIMEOUT, then given up: its commits were never
/// acknowledged, and shutdown must not hang on them.
pub(super) fn background(shared: &Shared, writer: &Mutex<Writer>, epoll_fd: i32, sync: SyncMode) {
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
