//! bpfdb engine binding: builds and loads the eBPF engine (`bpf/engine.bpf.c`),
//! sizes its maps from [`Options`], attaches it to the in-process trigger,
//! and offers a safe [`Db`]/[`Session`]/[`Txn`] API over the mmap'ed request
//! slots, made durable by a write-ahead log.
//!
//! Layers, each importing only those before it:
//! - `kernel`: the interface to the kernel (ABI mirror, loader, trigger, pins);
//! - `types`, `error`, `options`: what every layer shares;
//! - `durability`: the log's format, its writer, recovery and checkpoints;
//! - `shared`: the state one open database shares (slots, gate, log);
//! - `kv`: sessions, transactions and value-memory reservations on it;
//! - `clients`: the kernel clients the daemon ships (the memcached XDP
//!   server, the exec tracer), eBPF objects over the engine's maps;
//! - `db`: `Db`, composing all of them; nothing imports it.

mod clients;
mod db;
mod durability;
mod error;
mod kernel;
mod kv;
mod options;
mod shared;
mod types;

pub use clients::exec_trace::{EXEC_TRACE_PREFIX, ExecTracer, TraceCounters};
pub use clients::memcached::{MemcachedXdp, XdpCounters};
pub use db::{CheckpointReport, Db, Memory};
pub use durability::format as wal;
pub use durability::segment_file::{FOREVER, HOLD_LIMIT, LogFaults};
pub use durability::writer::LogCounters;
pub use error::{Error, Result};
pub use kernel::abi::{self, Meta, Stats};
pub use kernel::layout::Layout;
pub use kernel::pin::unpin;
pub use kernel::pools::{AHEAD_SEGMENTS, PoolUse};
pub use kernel::trigger;
pub use kv::room::{Need, Reservation};
pub use kv::session::{Session, TRANSIENT_RETRIES};
pub use kv::txn::{Txn, TxnState};
pub use options::{Options, SyncMode};
pub use types::{NewMeta, SetFlags, Stat, check_key, check_name, is_top_level, key_hash};
