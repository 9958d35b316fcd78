//! The safe API over the engine: `Db` owns an engine instance and its slots
//! (cheap to clone, shared); a `Session` holds one slot and runs operations
//! through it, autocommit or inside a transaction (see txn.rs).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use log::debug;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::Options;
use crate::abi::{self, Detail, HKey, Meta, Op, Slot, Stats};
use crate::engine::{Engine, Layout};
use crate::error::{Error, Result};
use crate::recovery;
use crate::room::{Reservation, Room};
use crate::wal_writer::{Log, Start};

/// Times an op is re-run after a transient conflict with another autocommit
/// op (the engine never waits; a key is locked only for microseconds).
pub const TRANSIENT_RETRIES: u32 = 10_000;

static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(1);

#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    engine: Engine,
    opts: Options,
    free_slots: Mutex<Vec<u32>>,
    slot_freed: Condvar,
    /// Sessions that found every slot taken and had to wait: 0 when the
    /// slots are sized for every thread that can hold one.
    slot_waits: AtomicU64,
    /// Transaction table entries not in use (user space hands them out).
    pub(crate) free_txns: Mutex<Vec<u32>>,
    /// Writers hold it shared around a commit; a checkpoint holds it
    /// exclusively for the moment it needs no commit in flight. Everyone
    /// takes a slot (a Session) before this gate, never after.
    pub(crate) gate: RwLock<()>,
    /// The log writer, once recovery is done (None without a data dir).
    pub(crate) log: OnceLock<Log>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    /// Value memory promised to open writers (see `room`).
    room: Arc<Room>,
}

/// What a checkpoint did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointReport {
    pub keys: u64,
    /// How long commits were held back.
    pub pause: Duration,
    pub total: Duration,
}

/// How often the background thread checks the log size.
const CHECKPOINT_POLL: Duration = Duration::from_millis(500);

impl Db {
    pub fn open(opts: &Options) -> Result<Db> {
        if opts.max_value as usize > abi::VALUE_LIMIT {
            return Err(Error::new(
                libc::EINVAL,
                format!(
                    "max_value {} exceeds the limit of {} bytes",
                    opts.max_value,
                    abi::VALUE_LIMIT
                ),
            ));
        }
        let instance = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let engine = Engine::load(opts, instance)?;
        // Keys are hashed with the seed the (possibly pinned) maps use.
        let mut opts = opts.clone();
        opts.hash_seed = engine.hash_seed;
        let reused = engine.reused;
        let free_slots = Mutex::new((0..engine.layout.slots).rev().collect());
        let free_txns = Mutex::new((0..opts.max_txns.min(abi::MAX_USER_TXNS)).rev().collect());
        let inner = Inner {
            engine,
            opts,
            free_slots,
            slot_freed: Condvar::new(),
            slot_waits: AtomicU64::new(0),
            free_txns,
            gate: RwLock::new(()),
            log: OnceLock::new(),
            checkpointing: Mutex::new(()),
            room: Arc::default(),
        };
        let db = Db {
            inner: Arc::new(inner),
        };
        if reused {
            db.abort_orphaned_txns()?;
        }
        if let Some(dir) = db.inner.opts.data_dir.clone() {
            db.start_durability(&dir, reused)?;
        }
        Ok(db)
    }

    /// Transactions that were open when a pinned engine's daemon stopped
    /// still hold locks: abort them.
    fn abort_orphaned_txns(&self) -> Result<()> {
        for (idx, id) in self.inner.engine.active_txns()? {
            let mut s = self.inner.session();
            s.txn = idx + 1;
            s.txn_id = id;
            s.prepare_keyless(Op::Abort, 0);
            s.run("abort orphaned transaction")?;
            log::info!("hot restart: aborted transaction {idx} left open by the previous daemon");
        }
        Ok(())
    }

    /// Recovers from `dir` (or, on a hot restart, finds where the log goes
    /// on), then turns on the log and its writer.
    fn start_durability(&self, dir: &std::path::Path, reused: bool) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(&format!("create {}", dir.display()), &e))?;
        let rec = if reused {
            recovery::resume(dir)?
        } else {
            recovery::recover(self, dir, self.inner.opts.allow_corrupt_log)?
        };
        let engine = &self.inner.engine;
        let start = Start {
            dir: dir.to_path_buf(),
            segment: rec.segment,
            next_seq: rec.next_seq,
            last_ts: engine.last_ts(),
            sync: self.inner.opts.sync,
            faults: self.inner.opts.log_faults.clone(),
        };
        let log = Log::start(engine.wal_map()?, start)?;
        engine.set_wal_on(true)?;
        let _ = self.inner.log.set(log);
        if reused {
            // Commits the previous daemon made visible but had not logged
            // yet are in the maps: a checkpoint makes the log match them.
            self.checkpoint()?;
        }
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("bpfdb-ckpt".into())
            .spawn(move || checkpoint_when_large(weak))
            .map_err(|e| Error::io("spawn checkpoint thread", &e))?;
        Ok(())
    }

    /// Takes a checkpoint now: writers pause only while the log is drained
    /// and a snapshot begins; the snapshot is written while they run.
    pub fn checkpoint(&self) -> Result<CheckpointReport> {
        let (Some(log), Some(dir)) = (self.inner.log.get(), self.inner.opts.data_dir.as_ref())
        else {
            return Ok(CheckpointReport::default());
        };
        let _one = self
            .inner
            .checkpointing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let t = std::time::Instant::now();
        let (snap, segment, first_seq) = {
            // Slot first, then the gate, as every writer takes them: a
            // writer holds its slot while it waits for the gate, so a
            // checkpoint that asked for a slot under the gate could wait
            // for ever once every slot was held that way.
            let mut s = self.inner.session();
            let _quiet = self.inner.gate.write().unwrap_or_else(|p| p.into_inner());
            log.wait_written(self.inner.engine.last_ts())?;
            log.request_rotate();
            s.nudge_log();
            let (segment, first_seq) = log.wait_rotated()?;
            let snap = self.begin_in(&mut s, Some(abi::CHECKPOINT_TXN), true)?;
            (snap, segment, first_seq)
        };
        let pause = t.elapsed();
        let keys = recovery::write_checkpoint(&snap, dir, segment, first_seq)?;
        drop(snap);
        for old in crate::wal::segments(dir)?
            .into_iter()
            .filter(|&n| n < segment)
        {
            let p = crate::wal::segment_path(dir, old);
            std::fs::remove_file(&p)
                .map_err(|e| Error::io(&format!("remove {}", p.display()), &e))?;
        }
        let total = t.elapsed();
        log::info!("checkpoint: {keys} keys in {total:?}, writers paused {pause:?}");
        Ok(CheckpointReport { keys, pause, total })
    }

    /// Kernel memory of each engine map, as bpftool reports it (`memlock`).
    pub fn map_memory(&self) -> Result<Vec<(String, u64)>> {
        self.inner.engine.map_memory()
    }

    /// Bytes in the log segment being written (0 without a log).
    pub fn log_bytes(&self) -> u64 {
        self.inner.log.get().map_or(0, |l| l.segment_bytes())
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    pub fn layout(&self) -> Layout {
        self.inner.engine.layout
    }

    pub fn stats(&self) -> Stats {
        self.inner.engine.stats()
    }

    /// Makes `r` promise the value memory a value of `len` bytes will
    /// take when committed, or fails with ENOSPC if the pools, less what
    /// other reservations hold, lack it.
    pub fn reserve(&self, r: &mut Reservation, len: usize) -> Result<()> {
        let engine = &self.inner.engine;
        self.inner
            .room
            .reserve(r, len, &engine.layout, || engine.stats())
    }

    /// Fails while the log cannot be written (a full disk, an I/O error),
    /// so a writer can be told at open or write rather than at a commit
    /// that would wait for the stall timeout first. Ok without a log.
    pub fn log_health(&self) -> Result<()> {
        self.inner.log.get().map_or(Ok(()), |l| l.health())
    }

    /// Times a session had to wait for a free slot.
    pub fn slot_waits(&self) -> u64 {
        self.inner.slot_waits.load(Ordering::Relaxed)
    }

    /// Takes a free slot, waiting while all are in use.
    pub fn session(&self) -> Session<'_> {
        self.inner.session()
    }
}

fn checkpoint_when_large(weak: Weak<Inner>) {
    loop {
        std::thread::sleep(CHECKPOINT_POLL);
        let Some(inner) = weak.upgrade() else { return };
        let db = Db { inner };
        if db.log_bytes() > db.options().checkpoint_bytes
            && let Err(e) = db.checkpoint()
        {
            log::warn!("checkpoint: {e}");
        }
    }
}

impl Inner {
    /// Waits for the commit at `ts` to be durable, per the sync mode.
    pub(crate) fn durable(&self, ts: u64) -> Result<()> {
        match self.log.get() {
            Some(log) => log.wait_durable(ts),
            None => Ok(()),
        }
    }

    pub(crate) fn session(&self) -> Session<'_> {
        let mut free = self.free_slots.lock().unwrap_or_else(|p| p.into_inner());
        if free.is_empty() {
            self.slot_waits.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            if let Some(idx) = free.pop() {
                return Session {
                    db: self,
                    idx,
                    slot: self.engine.slot_ptr(idx),
                    txn: 0,
                    txn_id: 0,
                    last_detail: Detail::None,
                };
            }
            free = self
                .slot_freed
                .wait(free)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Checks a key and returns its bytes: 1..=255 bytes, no NUL, no '/'.
pub fn check_key(name: &[u8]) -> Result<&[u8]> {
    if name.is_empty() || name.contains(&0) || name.contains(&b'/') {
        return Err(Error::new(
            libc::EINVAL,
            "key must be a non-empty file name without '/' or NUL",
        ));
    }
    if name.len() > abi::KEY_MAX {
        return Err(Error::new(
            libc::ENAMETOOLONG,
            format!("key of {} bytes exceeds {} bytes", name.len(), abi::KEY_MAX),
        ));
    }
    Ok(name)
}

/// Map key of a name. Seeded per database so that names crafted to collide
/// elsewhere do not collide here (a collision is refused, never aliased).
pub fn key_hash(name: &[u8], seed: u64) -> HKey {
    let h = xxh3_128_with_seed(name, seed);
    HKey {
        lo: h as u64,
        hi: (h >> 64) as u64,
    }
}

/// Metadata a writer supplies; the value length comes from the value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: u64,
    /// Time of this change (for a write, usually `mtime_ns`).
    pub ctime_ns: u64,
}

impl NewMeta {
    /// The metadata of a stored version, to write it again as it is.
    pub fn of(m: &Meta) -> NewMeta {
        NewMeta {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime_ns: m.mtime_ns,
            ctime_ns: m.ctime_ns,
        }
    }
}

/// What a read returns besides the bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub meta: Meta,
    /// Commit timestamp of the version read or written.
    pub ts: u64,
}

/// One slot, used by one thread at a time; returned to the pool on drop.
pub struct Session<'db> {
    db: &'db Inner,
    idx: u32,
    slot: *mut Slot,
    /// Transaction table index + 1 the ops run in; 0 for autocommit.
    pub(crate) txn: u32,
    pub(crate) txn_id: u64,
    /// Why the last op failed, as the engine said.
    pub(crate) last_detail: Detail,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let mut free = self.db.free_slots.lock().unwrap_or_else(|p| p.into_inner());
        free.push(self.idx);
        self.db.slot_freed.notify_one();
    }
}

fn write_key(dst: &mut [u8; abi::KEY_SIZE], name: &[u8]) {
    dst[..name.len()].copy_from_slice(name);
    dst[name.len()..].fill(0);
}

impl Session<'_> {
    fn slot(&mut self) -> &mut Slot {
        // SAFETY: this session owns slot `idx` exclusively until drop, and the
        // kernel touches it only during `fire`, which we call synchronously.
        unsafe { &mut *self.slot }
    }

    /// Op, flags and the transaction the request runs in.
    fn set_header(&mut self, op: Op, flags: u32) {
        let (txn, txn_id) = (self.txn, self.txn_id);
        let req = &mut self.slot().req;
        req.op = op as u32;
        req.flags = flags;
        req.txn = txn;
        req.txn_id = txn_id;
    }

    fn prepare(&mut self, op: Op, flags: u32, key: &[u8]) -> Result<()> {
        let key = check_key(key)?;
        let seed = self.db.opts.hash_seed;
        self.set_header(op, flags);
        let req = &mut self.slot().req;
        req.hkey = key_hash(key, seed);
        req.key_len = key.len() as u32;
        write_key(&mut req.key, key);
        Ok(())
    }

    /// Fires the trigger and turns the response into a Result, re-running
    /// the op on transient conflicts with other autocommit ops.
    pub(crate) fn run(&mut self, what: &str) -> Result<abi::Resp> {
        let stall = self
            .db
            .log
            .get()
            .map_or(crate::wal_writer::STALL_TIMEOUT, |l| l.stall_timeout());
        let log_deadline = std::time::Instant::now() + stall;
        for _ in 0..TRANSIENT_RETRIES {
            crate::trigger::fire(self.db.engine.instance, self.idx);
            // SAFETY: see slot(); volatile because the kernel wrote it.
            let resp = unsafe { std::ptr::read_volatile(&(*self.slot).resp) };
            if resp.err == 0 {
                return Ok(resp);
            }
            let detail = Detail::from_raw(resp.detail);
            self.last_detail = detail;
            if detail == Detail::WalFull {
                // The log writer drains the ringbuf at disk speed: wait for
                // it, but not forever (a disk that cannot be written).
                if std::time::Instant::now() >= log_deadline {
                    return Err(Error::new(
                        libc::EAGAIN,
                        format!("{what}: the log buffer stayed full: the log cannot be written"),
                    ));
                }
                if let Some(log) = self.db.log.get() {
                    log.help();
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if detail.transient() {
                std::thread::yield_now();
                continue;
            }
            return Err(self.error(what, -resp.err, detail));
        }
        Err(Error::new(
            libc::EBUSY,
            format!("{what}: key stayed busy through {TRANSIENT_RETRIES} retries"),
        ))
    }

    /// Runs a write. Autocommit: inside the checkpoint gate, and returns
    /// once the commit is durable. In a transaction it only stages.
    pub(crate) fn run_write(&mut self, what: &str) -> Result<abi::Resp> {
        if self.txn != 0 {
            return self.run(what);
        }
        let resp = {
            let _gate = self.db.gate.read().unwrap_or_else(|p| p.into_inner());
            self.run(what)?
        };
        self.db.durable(resp.ts)?;
        Ok(resp)
    }

    pub(crate) fn error(&mut self, what: &str, errno: i32, detail: Detail) -> Error {
        let key = {
            let k = &self.slot().req.key;
            let n = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            String::from_utf8_lossy(&k[..n]).into_owned()
        };
        let why = match detail {
            Detail::LockedTxn => "key is locked by a transaction",
            Detail::NoKeys => "key table is full (max_keys)",
            Detail::NoSmall => "small-value memory is full",
            Detail::NoPages => "value memory is full (value_mem)",
            Detail::VersionsFull => "all versions of the key are still needed by readers",
            Detail::TooBig => "value exceeds max_value",
            Detail::BadRequest => "malformed request",
            Detail::Collision => "another key has the same 128-bit hash (rename it)",
            Detail::TxnTooBig => "transaction locks too many keys",
            Detail::TxnInactive => "transaction is no longer active",
            Detail::ReadOnly => "snapshots are read-only",
            Detail::WalFull => "the log buffer is full; the log writer is behind",
            Detail::WalTooBig => "the commit is larger than the log buffer (wal_buffer)",
            Detail::Race | Detail::LockedAutocommit | Detail::CommitBusy => "conflict",
            Detail::None => "",
        };
        let err = Error::new(errno, format!("{what} {key:?}: {why}"));
        debug!("engine {}: {err}", self.db.engine.instance);
        err
    }

    /// Sets up a request that names no key (transaction control, scans).
    pub(crate) fn prepare_keyless(&mut self, op: Op, flags: u32) {
        self.set_header(op, flags);
        self.slot().req.key.fill(0);
    }

    /// Wakes the log writer out of its wait on the ringbuf.
    pub(crate) fn nudge_log(&mut self) {
        self.prepare_keyless(Op::Nop, abi::F_NUDGE);
        crate::trigger::fire(self.db.engine.instance, self.idx);
    }

    /// The bare trigger: dispatcher runs and returns at once.
    pub fn nop(&mut self) {
        self.slot().req.op = Op::Nop as u32;
        crate::trigger::fire(self.db.engine.instance, self.idx);
    }

    /// Reads the value of `key` into `out` (replacing its contents).
    pub fn get(&mut self, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        self.get_flags(key, out, 0)
    }

    fn get_flags(&mut self, key: &[u8], out: &mut Vec<u8>, flags: u32) -> Result<Stat> {
        self.prepare(Op::Get, flags, key)?;
        let resp = self.run("get")?;
        let len = resp.meta.len as usize;
        if len > abi::VALUE_LIMIT {
            return Err(Error::new(
                libc::EIO,
                format!("engine returned a value of {len} bytes"),
            ));
        }
        out.clear();
        out.extend_from_slice(&self.slot().data[..len]);
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    /// Metadata of `key` without its value.
    pub fn stat(&mut self, key: &[u8]) -> Result<Stat> {
        self.stat_flags(key, 0)
    }

    /// `get` for a writer about to open `key`: fails with EBUSY at once if
    /// a transaction holds the key, where the write would conflict.
    pub fn get_for_write(&mut self, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        self.get_flags(key, out, abi::F_CHECK_LOCK)
    }

    /// `stat` for a writer about to open `key`, as `get_for_write`.
    pub fn stat_for_write(&mut self, key: &[u8]) -> Result<Stat> {
        self.stat_flags(key, abi::F_CHECK_LOCK)
    }

    fn stat_flags(&mut self, key: &[u8], flags: u32) -> Result<Stat> {
        self.prepare(Op::Get, abi::F_META_ONLY | flags, key)?;
        let resp = self.run("stat")?;
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    /// Replaces value and metadata of `key`, creating it unless
    /// `must_exist`; with `no_replace` an existing key fails with EEXIST.
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        meta: NewMeta,
        flags: SetFlags,
    ) -> Result<Stat> {
        if value.len() > self.db.opts.max_value as usize {
            let e = Error::new(
                libc::EFBIG,
                format!(
                    "set {:?}: value of {} bytes exceeds max_value {}",
                    String::from_utf8_lossy(key),
                    value.len(),
                    self.db.opts.max_value
                ),
            );
            debug!("{e}");
            return Err(e);
        }
        let mut f = 0;
        if flags.no_replace {
            f |= abi::F_NOREPLACE;
        }
        if flags.must_exist {
            f |= abi::F_MUST_EXIST;
        }
        self.prepare(Op::Set, f, key)?;
        let slot = self.slot();
        slot.data[..value.len()].copy_from_slice(value);
        slot.req.meta = Meta {
            mtime_ns: meta.mtime_ns,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            len: value.len() as u32,
            ctime_ns: meta.ctime_ns,
        };
        let resp = self.run_write("set")?;
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    /// Replaces only the metadata of an existing key (chmod, chown, touch).
    pub fn set_meta(&mut self, key: &[u8], meta: NewMeta) -> Result<Stat> {
        self.prepare(Op::Set, abi::F_META_ONLY | abi::F_MUST_EXIST, key)?;
        self.slot().req.meta = Meta {
            mtime_ns: meta.mtime_ns,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            len: 0,
            ctime_ns: meta.ctime_ns,
        };
        let resp = self.run_write("set_meta")?;
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<u64> {
        self.prepare(Op::Delete, 0, key)?;
        Ok(self.run_write("delete")?.ts)
    }

    /// Moves `from` to `to` in one commit, replacing `to` unless `no_replace`.
    pub fn rename(&mut self, from: &[u8], to: &[u8], no_replace: bool) -> Result<u64> {
        let to = check_key(to)?;
        self.prepare(
            Op::Rename,
            if no_replace { abi::F_NOREPLACE } else { 0 },
            from,
        )?;
        let seed = self.db.opts.hash_seed;
        let req = &mut self.slot().req;
        req.hkey2 = key_hash(to, seed);
        req.key2_len = to.len() as u32;
        write_key(&mut req.key2, to);
        Ok(self.run_write("rename")?.ts)
    }

    /// Calls `f` with the name of every key visible to this session (its
    /// snapshot, or the newest commit). A key that exists unchanged for the
    /// whole walk is passed exactly once, whatever commits run beside it
    /// (POSIX readdir's rule); one created or removed meanwhile may or may
    /// not be. The walk goes by hash bucket (`Engine::records_batch`) and
    /// the engine says which keys of each batch are visible.
    pub fn scan(&mut self, mut f: impl FnMut(&[u8])) -> Result<()> {
        let key_size = std::mem::size_of::<HKey>();
        let mut keys = vec![0u8; abi::SCAN_BATCH * key_size];
        let mut values = vec![0u8; abi::SCAN_BATCH * abi::RECORD_SIZE];
        let mut cursor = None;
        // Each call walks at least one bucket; a hash map has at most
        // twice max_keys buckets (a power of two).
        let max_calls = 2 * self.db.engine.layout.max_keys as usize + 2;
        for _ in 0..max_calls {
            let batch = self
                .db
                .engine
                .records_batch(cursor, &mut keys, &mut values)?;
            if batch.count > 0 {
                let n = batch.count;
                self.prepare_keyless(Op::Scan, 0);
                let slot = self.slot();
                slot.req.count = n as u32;
                slot.data[..n * key_size].copy_from_slice(&keys[..n * key_size]);
                self.run("scan")?;
                for i in 0..n {
                    if self.slot().data[abi::SCAN_FLAGS + i] == 0 {
                        continue;
                    }
                    let rec = &values[i * abi::RECORD_SIZE..(i + 1) * abi::RECORD_SIZE];
                    let at = abi::RECORD_KEY_LEN_OFF;
                    let len = u32::from_ne_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
                    let len = (len as usize).min(abi::KEY_MAX);
                    f(&rec[abi::RECORD_NAME_OFF..abi::RECORD_NAME_OFF + len]);
                }
            }
            if batch.done {
                return Ok(());
            }
            cursor = Some(batch.next);
        }
        Err(Error::new(
            libc::EIO,
            "scan did not reach the end of the records map",
        ))
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SetFlags {
    pub no_replace: bool,
    pub must_exist: bool,
}
