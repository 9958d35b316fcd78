//! The command line: flags, `-o` options (what mount(8) passes), their
//! checks, and the `Settings` the daemon runs with.

use std::path::PathBuf;

use bpfdb::SyncMode;
use clap::Parser;
use log::warn;
use nix::errno::Errno;

use crate::core::fs::DEFAULT_TXN_TIMEOUT;
use crate::daemon::memcached::{self, Interface};
use crate::daemon::waiters;

const MAX_VALUE_LIMIT_BYTES: u64 = bpfdb::abi::VALUE_LIMIT as u64;
/// Bounds of --wal-buffer, which the engine checks too.
const WAL_BUFFER_MIN_BYTES: u64 = 4 << 10;
const WAL_BUFFER_MAX_BYTES: u64 = 1 << 30;
/// One FUSE worker per CPU, and at least two: a writer's open waits for
/// the key's cached readers to close (`keyuse`), and their RELEASE needs a
/// second worker to arrive.
const MIN_DEFAULT_THREADS: u32 = 2;

/// One per CPU, leaving room in the slot pool for the memcached threads.
fn default_threads() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = MAX_THREADS - memcached::THREADS;
    u32::try_from(cpus)
        .unwrap_or(most)
        .clamp(MIN_DEFAULT_THREADS, most)
}

/// Threads besides the FUSE workers and the waiter pool that run engine
/// requests: the idle-transaction reaper and the engine's checkpoint thread.
const SERVICE_THREADS: u32 = 2;

/// One engine slot for every thread that can hold one at once: a FUSE
/// worker that found every slot taken would wait behind commits waiting on
/// fsync, and a reader's READ behind them. The memcached threads
/// (`--memcached-udp`) take one each too.
pub fn engine_slots(s: &Settings) -> u32 {
    s.threads + waiters::WAITERS as u32 + SERVICE_THREADS + memcached_threads(s)
}

fn memcached_threads(s: &Settings) -> u32 {
    if s.memcached_udp.is_some() {
        memcached::THREADS
    } else {
        0
    }
}

/// The slot pool holds at most 64.
const MAX_THREADS: u32 = bpfdb::abi::MAX_SLOTS - waiters::WAITERS as u32 - SERVICE_THREADS;

/// Options `mount -t fuse.bpfdb` and fstab pass along that mean nothing here.
const GENERIC_OPTIONS: &[&str] = &[
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "user", "nouser",
    "_netdev", "defaults", "atime", "noatime", "relatime",
];

const AFTER_HELP: &str = "\
Every option can also be given as -o NAME[=VALUE][,NAME[=VALUE]...] with
underscores, e.g. -o max_keys=500000,value_mem=1G,allow_other, which is how
mount(8) and fstab pass them (mount -t fuse.bpfdb DATA_DIR MOUNTPOINT).
Generic mount options (rw, dev, nodev, suid, nosuid, exec, noexec, auto,
noauto, user, nouser, _netdev, defaults, atime, noatime, relatime) are
accepted and ignored; ro is refused: bpfdb mounts are read-write.

BYTES take K, M or G suffixes (powers of 1024).
Logging goes to stderr; RUST_LOG (e.g. RUST_LOG=debug) sets the level.

DATA_DIR holds the log (wal-*.log) and the last checkpoint; at start the
daemon replays them, and at a clean shutdown (umount, SIGINT, SIGTERM) it
takes a checkpoint and exits 0 only if that succeeded. `echo checkpoint >
MOUNTPOINT/.ctl` takes one at any time.";

#[derive(Parser, Debug)]
#[command(
    name = "bpfdb",
    version,
    about = "Mounts a bpfdb database, a key-value engine running in the kernel as eBPF, as a directory",
    after_help = AFTER_HELP
)]
// Each field name is a flag as users type it (`max_value`: `--max-value`
// and `-o max_value=`), so sizes carry no `_bytes` here; `Settings` does.
pub struct Cli {
    /// Directory for the database's log and checkpoint; created if missing
    /// and locked (DATA_DIR/LOCK) while the daemon runs.
    data_dir: PathBuf,

    /// Existing directory to mount the database on.
    mountpoint: PathBuf,

    /// Most keys the database holds, counting keys that still keep old
    /// versions for readers.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_keys: u32,

    /// Largest value, in bytes; at most 1M.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_bytes)]
    max_value: u64,

    /// Memory for values over 128 bytes, in bytes (4 KiB pages). Small
    /// values get their own pool, sized from --max-keys.
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_bytes)]
    value_mem: u64,

    /// FUSE worker threads; at most 58, 56 with --memcached-udp (engine
    /// slots: threads + 6, + 2 with --memcached-udp).
    /// Default: one per CPU, at least 2. More threads than CPUs make every request wake
    /// a thread on a busy CPU (on 2 CPUs, 4 threads halve the rate of a
    /// single reader); more help only when many clients wait at once, e.g.
    /// on fsync with `--sync commit`.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: u32,

    /// When a commit is acknowledged: `commit` (once its log record is
    /// fsynced, with group commit; a crash loses nothing acknowledged),
    /// `interval:MS` (once written; fsync every MS milliseconds, so a power
    /// failure loses up to MS ms of commits) or `none` (once written; fsync
    /// only at checkpoints).
    #[arg(long, value_name = "MODE", default_value = "commit", value_parser = parse_sync)]
    sync: SyncMode,

    /// Kernel buffer carrying log records to the log writer, in bytes; a
    /// power of two from 4K to 1G. One commit's log records must fit in it.
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_bytes)]
    wal_buffer: u64,

    /// Log size, in bytes, after which a checkpoint is taken and the log
    /// truncated.
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_bytes)]
    checkpoint_bytes: u64,

    /// Start even when the log is corrupt before its end, losing every
    /// commit from the corruption on [default: off: refuse to start].
    #[arg(long)]
    allow_corrupt_log: bool,

    /// Seconds a transaction (.txn/NAME) may stay idle before it is aborted;
    /// 0: never. Snapshots do not time out.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TXN_TIMEOUT.as_secs())]
    txn_timeout: u64,

    /// Pin the engine's data maps in this bpffs directory (e.g.
    /// /sys/fs/bpf/bpfdb); a restart with the same directory and sizes
    /// reuses them instead of replaying the log (hot restart: upgrade the
    /// programs, keep the data). [default: none: nothing is pinned]
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,

    /// Once in the background, log to this file (appended, created 0600)
    /// [default: DATA_DIR/bpfdb.log]. In the foreground (-f) the log goes
    /// to stderr unless this is given.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Let users other than the one who mounted access the mount [default:
    /// off].
    #[arg(long)]
    allow_other: bool,

    /// Serve memcached's UDP protocol (get, gets, set, delete, version) over
    /// the root keys on this port: on 127.0.0.1, or on 0.0.0.0 when
    /// --memcached-if names an interface other than lo or none. No
    /// authentication: whoever reaches the port reads and writes every key,
    /// whatever its mode [default: off].
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    memcached_udp: Option<u16>,

    /// Network interface the XDP fast path for memcached GETs attaches to
    /// (none: no XDP); also picks the address --memcached-udp binds.
    #[arg(long, value_name = "IFNAME", default_value = "lo", value_parser = Interface::parse)]
    memcached_if: Interface,

    /// Count execve calls of every program on the machine in the keys
    /// exec.<name>, one transaction per exec from an eBPF program (a uprobe
    /// on the C library's execve); `cat mnt/exec.ls` [default: off].
    #[arg(long)]
    trace_exec: bool,

    /// Stay in the foreground [default: off: fork a daemon and return once
    /// the mount is live].
    #[arg(short = 'f', long)]
    foreground: bool,

    /// Mount options, comma-separated (see below).
    #[arg(short = 'o', value_name = "OPT[,OPT...]", action = clap::ArgAction::Append)]
    options: Vec<String>,

    // Flags mount(8) may hand a mount helper: -n (no mtab) and -v mean
    // nothing here; -s (sloppy) turns unknown -o options into warnings.
    #[arg(short = 'n', hide = true)]
    no_mtab: bool,
    #[arg(short = 's', hide = true)]
    sloppy: bool,
    #[arg(short = 'v', hide = true)]
    verbose: bool,
}

/// What the daemon runs with, after flags and -o options are merged.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub mountpoint: PathBuf,
    pub max_keys: u32,
    pub max_value_bytes: u32,
    pub value_mem_bytes: u64,
    pub threads: u32,
    pub allow_other: bool,
    pub foreground: bool,
    pub sync: SyncMode,
    pub wal_buffer_bytes: u64,
    pub checkpoint_bytes: u64,
    pub allow_corrupt_log: bool,
    pub txn_timeout_secs: u64,
    pub pin_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// The memcached UDP port; None: off.
    pub memcached_udp: Option<u16>,
    pub memcached_if: Interface,
    /// The exec tracer (`--trace-exec`) runs.
    pub trace_exec: bool,
}

/// `commit`, `interval:MS` or `none`.
fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s.trim() {
        "commit" => Ok(SyncMode::Commit),
        "none" => Ok(SyncMode::None),
        t => match t.strip_prefix("interval:").map(|ms| ms.parse::<u32>()) {
            Some(Ok(ms)) if ms > 0 => Ok(SyncMode::Interval(ms)),
            _ => Err(format!(
                "'{s}' is not a sync mode: commit, interval:MS (MS from 1 to {}) or none",
                u32::MAX
            )),
        },
    }
}

pub fn show_sync(mode: SyncMode) -> String {
    match mode {
        SyncMode::Commit => "commit".into(),
        SyncMode::Interval(ms) => format!("interval:{ms}"),
        SyncMode::None => "none".into(),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a byte size (a number with an optional K, M or G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// A UDP port, 1 to 65535.
fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("'{s}' is not a UDP port (1 to 65535)")),
    }
}

fn parse_count(name: &str, s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{name}: '{s}' is not a whole number"))
}

impl Settings {
    pub fn from_cli(cli: &Cli) -> Result<Settings, String> {
        let mut s = Settings {
            data_dir: cli.data_dir.clone(),
            mountpoint: cli.mountpoint.clone(),
            max_keys: cli.max_keys,
            max_value_bytes: 0,
            value_mem_bytes: cli.value_mem,
            threads: cli.threads,
            allow_other: cli.allow_other,
            foreground: cli.foreground,
            sync: cli.sync,
            wal_buffer_bytes: cli.wal_buffer,
            checkpoint_bytes: cli.checkpoint_bytes,
            allow_corrupt_log: cli.allow_corrupt_log,
            txn_timeout_secs: cli.txn_timeout,
            pin_dir: cli.pin_dir.clone(),
            log_file: cli.log_file.clone(),
            memcached_udp: cli.memcached_udp,
            memcached_if: cli.memcached_if.clone(),
            trace_exec: cli.trace_exec,
        };
        let mut max_value_bytes = cli.max_value;
        for opt in cli.options.iter().flat_map(|o| o.split(',')) {
            s.apply_option(opt.trim(), &mut max_value_bytes, cli.sloppy)?;
        }
        if max_value_bytes == 0 || max_value_bytes > MAX_VALUE_LIMIT_BYTES {
            return Err(format!(
                "max_value {max_value_bytes}: must be 1 to {MAX_VALUE_LIMIT_BYTES} bytes (1M)"
            ));
        }
        s.max_value_bytes = max_value_bytes as u32;
        if s.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        let max_threads = MAX_THREADS - memcached_threads(&s);
        if !(1..=max_threads).contains(&s.threads) {
            let with = if s.memcached_udp.is_some() {
                " with memcached_udp"
            } else {
                ""
            };
            return Err(format!(
                "threads {}: must be 1 to {max_threads}{with}",
                s.threads
            ));
        }
        if !s.wal_buffer_bytes.is_power_of_two()
            || !(WAL_BUFFER_MIN_BYTES..=WAL_BUFFER_MAX_BYTES).contains(&s.wal_buffer_bytes)
        {
            return Err(format!(
                "wal_buffer {}: must be a power of two from 4K to 1G",
                s.wal_buffer_bytes
            ));
        }
        if s.checkpoint_bytes == 0 {
            return Err("checkpoint_bytes must be at least 1".into());
        }
        Ok(s)
    }

    /// Applies one -o option; -o values override the flags.
    fn apply_option(
        &mut self,
        opt: &str,
        max_value_bytes: &mut u64,
        sloppy: bool,
    ) -> Result<(), String> {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match (name, value) {
            ("", None) => {}
            ("max_keys", Some(v)) => self.max_keys = parse_count(name, v)?,
            ("threads", Some(v)) => self.threads = parse_count(name, v)?,
            ("max_value", Some(v)) => {
                *max_value_bytes = parse_bytes(v).map_err(|e| format!("{name}: {e}"))?
            }
            ("value_mem", Some(v)) => {
                self.value_mem_bytes = parse_bytes(v).map_err(|e| format!("{name}: {e}"))?;
            }
            ("sync", Some(v)) => self.sync = parse_sync(v).map_err(|e| format!("{name}: {e}"))?,
            ("wal_buffer", Some(v)) => {
                self.wal_buffer_bytes = parse_bytes(v).map_err(|e| format!("{name}: {e}"))?;
            }
            ("checkpoint_bytes", Some(v)) => {
                self.checkpoint_bytes = parse_bytes(v).map_err(|e| format!("{name}: {e}"))?;
            }
            ("txn_timeout", Some(v)) => {
                self.txn_timeout_secs = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: '{v}' is not a whole number of seconds"))?;
            }
            ("pin_dir", Some(v)) => self.pin_dir = Some(PathBuf::from(v)),
            ("log_file", Some(v)) => self.log_file = Some(PathBuf::from(v)),
            ("memcached_udp", Some(v)) => {
                self.memcached_udp = Some(parse_port(v).map_err(|e| format!("{name}: {e}"))?);
            }
            ("memcached_if", Some(v)) => {
                self.memcached_if = Interface::parse(v).map_err(|e| format!("{name}: {e}"))?;
            }
            ("allow_other", None) => self.allow_other = true,
            ("foreground", None) => self.foreground = true,
            ("allow_corrupt_log", None) => self.allow_corrupt_log = true,
            ("trace_exec", None) => self.trace_exec = true,
            (
                "max_keys" | "threads" | "max_value" | "value_mem" | "sync" | "wal_buffer"
                | "checkpoint_bytes" | "txn_timeout" | "pin_dir" | "log_file" | "memcached_udp"
                | "memcached_if",
                None,
            ) => {
                return Err(format!("-o {name} needs a value: -o {name}=VALUE"));
            }
            ("allow_other" | "foreground" | "allow_corrupt_log" | "trace_exec", Some(_)) => {
                return Err(format!("-o {name} takes no value"));
            }
            ("ro", None) => {
                return Err(format!(
                    "-o ro: read-only mounts are not supported ({}); bpfdb mounts read-write",
                    Errno::EROFS.desc()
                ));
            }
            (generic, None) if GENERIC_OPTIONS.contains(&generic) => {}
            _ if sloppy => warn!("ignoring unknown mount option '{opt}' (-s)"),
            _ => return Err(format!("unknown mount option '{opt}' (see --help)")),
        }
        Ok(())
    }
}
