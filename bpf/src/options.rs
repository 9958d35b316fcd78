//! How a database is opened: engine sizes, data directory, sync mode.

use crate::durability::segment_file::LogFaults;
use crate::kernel::abi;

/// Engine sizes, fixed when the engine is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Most keys the records map holds (live keys plus keys still holding
    /// old versions).
    pub max_keys: u32,
    /// Largest value in bytes, at most 1 MiB.
    pub max_value_bytes: u32,
    /// Bytes of page memory for values over 128 bytes. Small values get
    /// their own pool sized from max_keys.
    pub value_mem_bytes: u64,
    /// Request slots: one per thread using the engine at once.
    pub slots: u32,
    /// Seed of the key hash; a database keeps one for its life.
    pub hash_seed: u64,
    /// Transactions and snapshots open at once (at most 64).
    pub max_txns: u32,
    /// Where the log and checkpoints live; None: memory only, no log.
    pub data_dir: Option<std::path::PathBuf>,
    /// When a commit counts as durable (see `SyncMode`).
    pub sync: SyncMode,
    /// Bytes of the kernel ringbuf that carries log records to user space;
    /// a power of two. Bounds the log size of one commit.
    pub wal_buffer_bytes: u64,
    /// Log bytes after which a checkpoint is taken and the log truncated.
    pub checkpoint_bytes: u64,
    /// Start even when the log is corrupt before its end (data after the
    /// corruption is lost).
    pub allow_corrupt_log: bool,
    /// Pin the data maps here (a bpffs directory) so a restarted daemon
    /// reuses them instead of replaying the log. None: nothing is pinned.
    pub pin_dir: Option<std::path::PathBuf>,
    /// CAS attempts on a lock word other readers keep changing before the
    /// op is retried from user space; 0: the engine's default
    /// (DB_LOCK_CAS_TRIES). Tests lower it to make contention common.
    pub lock_cas_tries: u32,
    /// Test hook: iterations of an empty loop a lock-free GET runs between
    /// its first and second look at the clock and the record, so that tests
    /// can make writers and GC run inside that window on purpose. 0, the
    /// default, in any real use.
    pub read_pause_loops: u32,
    /// Test hook: iterations of an empty loop the exec tracer runs right
    /// after a deferred event gave its client slot back, so that tests can
    /// have other events take the slot inside that window. 0, the default,
    /// in any real use.
    pub trace_defer_pause_loops: u32,
    /// Test hook: iterations of an empty loop the allocation of a value of
    /// exactly `alloc_pause_len` bytes runs between reading its size
    /// class's free list and taking the run off it (counted in
    /// `Stats::alloc_pauses`), so that tests can have other writers take
    /// and give back runs inside that window. 0, the default, in any real
    /// use.
    pub alloc_pause_loops: u32,
    pub alloc_pause_len: u32,
    /// Test hook: iterations of an empty loop a one-op commit runs under
    /// the commit lock, between its check that no transaction's scan holds
    /// the top-level keys and its log and stamp, so that tests can have
    /// scans lock the set inside that window. 0, the default, in any real
    /// use.
    pub top_commit_pause_loops: u32,
    /// Test hook: faults for the log writer to hit (see `LogFaults`).
    /// None, the default, in any real use.
    pub log_faults: Option<std::sync::Arc<LogFaults>>,
}

/// When a commit is acknowledged, and what a crash can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// After its log record is fsynced (group commit). Loses nothing.
    Commit,
    /// After its record is written; fsync every N ms. A power failure
    /// loses up to N ms of commits; a daemon crash loses nothing acked.
    Interval(u32),
    /// After its record is written; fsync only at checkpoints. A power
    /// failure loses what the OS had not written back.
    None,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_keys: 100_000,
            max_value_bytes: abi::VALUE_LIMIT as u32,
            value_mem_bytes: 256 << 20,
            slots: 16,
            hash_seed: 0,
            max_txns: abi::MAX_USER_TXNS,
            data_dir: None,
            sync: SyncMode::Commit,
            wal_buffer_bytes: 64 << 20,
            checkpoint_bytes: 256 << 20,
            allow_corrupt_log: false,
            pin_dir: None,
            lock_cas_tries: 0,
            read_pause_loops: 0,
            trace_defer_pause_loops: 0,
            alloc_pause_loops: 0,
            alloc_pause_len: 0,
            top_commit_pause_loops: 0,
            log_faults: None,
        }
    }
}
