//! The `.stats` file and `statfs`, both derived from the engine's counters
//! and the sizes its maps were given at load, plus what only the daemon
//! knows (its table of open transactions, the log writer).

use std::fmt::Write;

use bpfdb::Layout;
use bpfdb::Stats;
use bpfdb::abi::{GRANULE, Op, PAGE_SIZE};

/// Figures `.stats` takes from the daemon rather than the engine's maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct DaemonStats {
    /// Age of the oldest open snapshot or active transaction; 0 if none.
    pub oldest_snapshot_age_ms: u64,
    /// Bytes in the log segment being written.
    pub log_bytes: u64,
    /// READ requests the daemon served for keys (reads the kernel's page
    /// cache answered never reach it).
    pub key_reads: u64,
    /// Opens of a key read through the page cache / with direct I/O.
    pub cached_opens: u64,
    pub direct_opens: u64,
    /// Engine requests that waited for a free slot (0 unless slots are
    /// too few for the threads that use them).
    pub slot_waits: u64,
    /// Waits for cached readers that held a FUSE worker (0 when every
    /// operation that may wait runs on the waiter pool).
    pub worker_waits: u64,
    /// The log writer's counters: commits written, fsyncs, and replies
    /// waiting for an fsync (none of them holds a thread).
    pub log: bpfdb::LogCounters,
    /// Kernel memory of the engine's maps.
    pub memory: bpfdb::Memory,
}

/// Counters of an eBPF client the daemon runs (the XDP server, the exec
/// tracer), by `.stats` name; empty once the client is gone.
pub type ClientCounters = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// About the length of one `.stats` line, to size the text once.
const LINE_BYTES_GUESS: usize = 24;

/// `.stats` content: one `name value` pair per line.
pub fn render(
    stats: &Stats,
    layout: &Layout,
    daemon: &DaemonStats,
    clients: &[(&'static str, u64)],
) -> String {
    let op = |o: Op| stats.ops.get(o as usize).copied().unwrap_or(0);
    let mem = &daemon.memory;
    let lines: [(&str, u64); 42] = [
        ("keys", stats.keys),
        ("records", stats.records),
        ("value_bytes", stats.value_bytes),
        ("small_granules_used", stats.small_used),
        ("small_runs_lost", stats.runs_lost),
        ("small_granules_total", layout.small_granules.into()),
        ("pages_used", stats.pages_used),
        ("pages_total", layout.pages.into()),
        ("max_keys", layout.max_keys.into()),
        ("kernel_memory_bytes", mem.total),
        ("memory_wal_bytes", mem.wal),
        ("memory_records_bytes", mem.records),
        ("memory_slots_bytes", mem.slots),
        ("memory_small_bytes", mem.small.bytes),
        ("memory_pages_bytes", mem.pages.bytes),
        ("small_granules_ready", mem.small.ready),
        ("pages_ready", mem.pages.ready),
        ("memory_segments", mem.small.segments + mem.pages.segments),
        ("ops_get", op(Op::Get)),
        ("ops_set", op(Op::Set)),
        ("ops_delete", op(Op::Delete)),
        ("ops_rename", op(Op::Rename)),
        ("ops_scan", op(Op::Scan)),
        ("commits", stats.commits),
        ("conflicts", stats.conflicts),
        ("versions_reclaimed", stats.versions_reclaimed),
        ("read_retries", stats.read_retries),
        ("errors", stats.errors),
        ("txn_commits", stats.txn_commits),
        ("txn_aborts", stats.txn_aborts),
        ("txn_aborts_conflict", stats.txn_aborts_conflict),
        ("txn_active", stats.txn_active),
        ("oldest_snapshot_age_ms", daemon.oldest_snapshot_age_ms),
        ("log_bytes", daemon.log_bytes),
        ("key_reads", daemon.key_reads),
        ("cached_opens", daemon.cached_opens),
        ("direct_opens", daemon.direct_opens),
        ("slot_waits", daemon.slot_waits),
        ("worker_waits", daemon.worker_waits),
        ("log_commits", daemon.log.commits_logged),
        ("log_fsyncs", daemon.log.fsyncs),
        ("log_acks_waiting", daemon.log.acks_waiting),
    ];
    let mut out = String::with_capacity((lines.len() + clients.len()) * LINE_BYTES_GUESS);
    for &(name, value) in lines.iter().chain(clients) {
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// What `statfs` reports, in blocks of `bsize` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStat {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

pub const BLOCK_SIZE: u32 = PAGE_SIZE as u32;
pub const NAME_MAX: u32 = bpfdb::abi::KEY_MAX as u32;

/// Capacity is the value memory (pages plus granules); files are keys.
pub fn statfs(stats: &Stats, layout: &Layout) -> FsStat {
    let page = PAGE_SIZE as u64;
    let small = GRANULE as u64;
    let total = u64::from(layout.pages) * page + u64::from(layout.small_granules) * small;
    let used = stats.pages_used.saturating_mul(page) + stats.small_used.saturating_mul(small);
    let free = total.saturating_sub(used) / u64::from(BLOCK_SIZE);
    let files = u64::from(layout.max_keys);
    FsStat {
        blocks: total / u64::from(BLOCK_SIZE),
        bfree: free,
        bavail: free,
        files,
        ffree: files.saturating_sub(stats.records),
        bsize: BLOCK_SIZE,
        namelen: NAME_MAX,
    }
}
