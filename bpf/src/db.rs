//! `Db`, the top of the binding: opens (or reuses) an engine, recovers it
//! from its data directory, starts the log writer and the checkpoint
//! thread, and hands out sessions and transactions. Cheap to clone: every
//! clone shares one `shared::Inner`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use crate::clients::exec_trace::ExecTracer;
use crate::clients::memcached::MemcachedXdp;
use crate::durability::checkpoint;
use crate::durability::format::{self as wal, LogOp};
use crate::durability::recovery;
use crate::durability::writer::{Log, LogCounters, Start};
use crate::error::{Error, Result};
use crate::kernel::abi::{self, Op, Stats};
use crate::kernel::engine::Engine;
use crate::kernel::layout::Layout;
use crate::kernel::pools::{AHEAD_SEGMENTS, PoolUse};
use crate::kv::room::{self, Need, Reservation};
use crate::kv::session::{ScanCursor, Session};
use crate::kv::txn::Txn;
use crate::options::Options;
use crate::shared::{Inner, Keeper};
use crate::types::{NewMeta, SetFlags};

static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(1);

#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<Inner>,
}

/// Kernel memory of the engine, in bytes (`Db::memory`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Every map the engine owns.
    pub total: u64,
    /// Of which the log ring (preallocated: it bounds one commit).
    pub wal: u64,
    /// The records and long names (one element per key).
    pub records: u64,
    /// The request slots (1 MiB each: a value's bytes pass through them).
    pub slots: u64,
    pub small: PoolUse,
    pub pages: PoolUse,
}

/// What a checkpoint did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointReport {
    pub keys: u64,
    /// How long commits were held back.
    pub pause: Duration,
    pub total: Duration,
}

/// How often the background thread checks the log size and the pools.
const HOUSEKEEPING_POLL: Duration = Duration::from_millis(500);

impl Db {
    /// Answers memcached UDP gets for `port` in XDP on `ifname`, from this
    /// database's data; detached when the value is dropped.
    pub fn memcached_xdp(&self, port: u16, ifname: &str) -> Result<MemcachedXdp> {
        MemcachedXdp::attach(&self.inner.engine, port, ifname)
    }

    /// Counts execve calls per program name in the keys `exec.<name>`, one
    /// transaction per event from the kernel; detached when dropped.
    pub fn exec_tracer(&self) -> Result<ExecTracer> {
        ExecTracer::attach(&self.inner.engine, self.inner.opts.trace_defer_pause_loops)
    }

    pub fn open(opts: &Options) -> Result<Db> {
        if opts.max_value_bytes as usize > abi::VALUE_LIMIT {
            return Err(Error::new(
                libc::EINVAL,
                format!(
                    "max_value {} exceeds the limit of {} bytes",
                    opts.max_value_bytes,
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
            keeper: Arc::default(),
        };
        let db = Db {
            inner: Arc::new(inner),
        };
        if reused {
            db.abort_orphaned_txns()?;
        }
        // Room for the first writers (recovery's and eBPF clients' among
        // them), which would otherwise each wait for a segment: one per
        // pool, all an empty database holds; the housekeeping thread keeps
        // the pools AHEAD_SEGMENTS ahead of the writers from here on.
        for pool in [&db.inner.engine.small, &db.inner.engine.pages] {
            pool.top_up(1)?;
        }
        let weak = Arc::downgrade(&db.inner);
        let keeper = db.inner.keeper.clone();
        std::thread::Builder::new()
            .name("bpfdb-keeper".into())
            .spawn(move || housekeeping(weak, &keeper))
            .map_err(|e| Error::io("spawn housekeeping thread", &e))?;
        if let Some(dir) = db.inner.opts.data_dir.clone() {
            db.start_durability(&dir, reused)?;
        }
        db.inner.engine.finish_recovery()?;
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

    /// Whether the records and value memory of every PUT in `ops`, on top of
    /// what is used now, fit the caps: then the ops can be replayed in any
    /// order across keys (recovery::AnyOrder). Runs are counted against the
    /// bump counter's room only: a free run serves only its class or
    /// smaller, so which ones a window can use depends on its order.
    fn room_for_any_order(&self, ops: &[LogOp]) -> bool {
        let engine = &self.inner.engine;
        let (pools, l) = (engine.pool_state(), &engine.layout);
        let (mut keys, mut small, mut pages) = (0u64, 0u64, 0u64);
        for op in ops {
            if let LogOp::Put { value, .. } = op {
                let need = Need::of(value.len());
                (keys, small, pages) = (keys + 1, small + need.small, pages + need.pages);
            }
        }
        pools.stats.records + keys <= u64::from(l.max_keys)
            && small <= room::bump_room(&pools, l)
            && pools.stats.pages_used + pages <= u64::from(l.pages)
    }

    /// Recovers from `dir` (or, on a hot restart, finds where the log goes
    /// on), then turns on the log and its writer.
    fn start_durability(&self, dir: &std::path::Path, reused: bool) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(&format!("create {}", dir.display()), &e))?;
        let rec = if reused {
            recovery::resume(dir)?
        } else {
            let apply_one = |s: &mut Session<'_>, op: &LogOp| match op {
                LogOp::Put { key, meta, value } => {
                    s.set(key, value, *meta, SetFlags::default()).map(drop)
                }
                LogOp::Del { key } => match s.delete(key) {
                    Err(e) if e.errno != libc::ENOENT => Err(e),
                    _ => Ok(()),
                },
            };
            // A session per batch, given back after it: with fewer slots
            // than applying threads, a thread waits for another's.
            let apply_batch = |ops: &[LogOp]| -> Result<()> {
                let mut s = self.inner.session();
                ops.iter().try_for_each(|op| apply_one(&mut s, op))
            };
            let any_order = |ops: &[LogOp]| self.room_for_any_order(ops);
            recovery::recover(
                &apply_batch,
                &any_order,
                dir,
                self.inner.opts.allow_corrupt_log,
            )?
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
            let snap = Txn::begin_in(&self.inner, &mut s, Some(abi::CHECKPOINT_TXN), true)?;
            (snap, segment, first_seq)
        };
        let pause = t.elapsed();
        // Streamed: each batch of names the walk finds is read and written
        // before the next is walked, so memory stays within
        // wal::CHECKPOINT_MEMORY_BOUND whatever the number of keys.
        let mut cursor = ScanCursor::new();
        let mut next_batch =
            |names: &mut checkpoint::Names| snap.scan_batch(&mut cursor, |n| names.push(n));
        let mut get = |name: &[u8], value: &mut Vec<u8>| -> Result<NewMeta> {
            Ok(NewMeta::of(&snap.get(name, value)?.meta))
        };
        let keys =
            checkpoint::write_checkpoint(&mut next_batch, &mut get, dir, segment, first_seq)?;
        drop(snap);
        for old in wal::segments(dir)?.into_iter().filter(|&n| n < segment) {
            let p = wal::segment_path(dir, old);
            std::fs::remove_file(&p)
                .map_err(|e| Error::io(&format!("remove {}", p.display()), &e))?;
        }
        let total = t.elapsed();
        log::info!("checkpoint: {keys} keys in {total:?}, writers paused {pause:?}");
        Ok(CheckpointReport { keys, pause, total })
    }

    /// Kernel memory of each engine map, as bpftool reports it (`memlock`;
    /// a pool's is the sum over its segments).
    pub fn map_memory(&self) -> Result<Vec<(String, u64)>> {
        self.inner.engine.map_memory()
    }

    /// Kernel memory in use, by what holds it, and the pools' fill.
    pub fn memory(&self) -> Result<Memory> {
        let maps = self.map_memory()?;
        let of = |names: &[&str]| -> u64 {
            maps.iter()
                .filter(|(n, _)| names.contains(&n.as_str()))
                .map(|(_, b)| b)
                .sum()
        };
        Ok(Memory {
            total: maps.iter().map(|(_, b)| b).sum(),
            wal: of(&["wal"]),
            records: of(&["records", "records_top", "records_below", "long_names"]),
            slots: of(&["slots"]),
            small: self.inner.engine.small.usage()?,
            pages: self.inner.engine.pages.usage()?,
        })
    }

    /// What the log writer has done since start (zeros without a log).
    pub fn log_counters(&self) -> LogCounters {
        self.inner
            .log
            .get()
            .map_or_else(LogCounters::default, |l| l.counters())
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
            .reserve(r, len, &engine.layout, || engine.pool_state())
    }

    /// Fails while the log cannot be written (a full disk, an I/O error),
    /// so a writer can be told at open or write rather than at a commit
    /// that would wait for the stall timeout first. Ok without a log.
    pub fn log_health(&self) -> Result<()> {
        self.inner.log.get().map_or(Ok(()), |l| l.health())
    }

    /// Runs `f` with the durability waits of this thread's commits on this
    /// database (autocommit writes, transaction commits, `wait_durable`)
    /// left to the caller: they return once the commit is in the engine,
    /// and this returns `f`'s result with the newest such commit, which
    /// the caller must see durable (`when_durable`) before it tells anyone
    /// that they happened. None: `f` left nothing to wait for. Lets a
    /// server reply from whichever thread sees the fsync, instead of
    /// holding the thread that served the request.
    pub fn defer_durability<R>(&self, f: impl FnOnce() -> R) -> (R, Option<u64>) {
        self.inner.defer_durability(f)
    }

    /// Waits until the commit at `ts` is durable, per the sync mode (inside
    /// `defer_durability`: notes it for the caller).
    pub fn wait_durable(&self, ts: u64) -> Result<()> {
        self.inner.durable(ts)
    }

    /// Runs `ack` with the commit's outcome once the commit at `ts` is
    /// durable or has failed, without blocking this thread (past a bound
    /// of callbacks held, it waits). Without a log it runs at once.
    pub fn when_durable(&self, ts: u64, ack: impl FnOnce(Result<()>) + Send + 'static) {
        match self.inner.log.get() {
            Some(log) => log.when_durable(ts, Box::new(ack)),
            None => ack(Ok(())),
        }
    }

    /// Times a session had to wait for a free slot.
    pub fn slot_waits(&self) -> u64 {
        self.inner.slot_waits.load(Ordering::Relaxed)
    }

    /// Takes a free slot, waiting while all are in use.
    pub fn session(&self) -> Session<'_> {
        self.inner.session()
    }

    /// Starts a transaction; `read_only` makes it a snapshot.
    pub fn begin(&self, read_only: bool) -> Result<Txn> {
        self.begin_at(None, read_only)
    }

    /// Starts a transaction in entry `reserved`, or in a free one.
    pub(crate) fn begin_at(&self, reserved: Option<u32>, read_only: bool) -> Result<Txn> {
        Txn::begin_in(&self.inner, &mut self.inner.session(), reserved, read_only)
    }
}

/// Keeps the value pools ahead of the writers (woken by one that saw a
/// pool low, so that no write waits for a segment; and for eBPF clients,
/// which cannot grow a pool), and checkpoints once the log is large.
fn housekeeping(weak: Weak<Inner>, keeper: &Keeper) {
    loop {
        keeper.wait(HOUSEKEEPING_POLL);
        let Some(inner) = weak.upgrade() else { return };
        let db = Db { inner };
        for pool in [&db.inner.engine.small, &db.inner.engine.pages] {
            if let Err(e) = pool.top_up(AHEAD_SEGMENTS) {
                log::warn!("{}: {e}", pool.name);
            }
        }
        if db.inner.log.get().is_some()
            && db.log_bytes() > db.options().checkpoint_bytes
            && let Err(e) = db.checkpoint()
        {
            log::warn!("checkpoint: {e}");
        }
    }
}
