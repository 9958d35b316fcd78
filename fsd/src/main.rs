//! `bpfdb [OPTIONS] DATA_DIR MOUNTPOINT`: loads the eBPF engine, recovers
//! the database from DATA_DIR and mounts it as a directory. Without `-f` the
//! command returns once the mount is live and a daemon serves it; `umount`,
//! SIGINT and SIGTERM end it, after a checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpfdb::{Db, Options, SyncMode};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use fuser::{Config, SessionACL};
use log::{error, info, warn};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::unistd::{ForkResult, fork, setsid};

use bpfdb_fsd::fs::Fs;
use bpfdb_fsd::fuse::{FuseFs, KernelCache};
use bpfdb_fsd::mount;
use bpfdb_fsd::waiters;

const MAX_VALUE_LIMIT: u64 = bpfdb::abi::VALUE_LIMIT as u64;
/// Bounds of --wal-buffer, which the engine checks too.
const WAL_BUFFER_MIN: u64 = 4 << 10;
const WAL_BUFFER_MAX: u64 = 1 << 30;
/// One FUSE worker per CPU, and at least two: a writer's open waits for
/// the key's cached readers to close (`keyuse`), and their RELEASE needs a
/// second worker to arrive.
fn default_threads() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cpus)
        .unwrap_or(MAX_THREADS)
        .clamp(2, MAX_THREADS)
}

/// Threads besides the FUSE workers and the waiter pool that run engine
/// requests: the idle-transaction reaper and the engine's checkpoint thread.
const SERVICE_THREADS: u32 = 2;

/// One engine slot for every thread that can hold one at once: a FUSE
/// worker that found every slot taken would wait behind commits waiting on
/// fsync, and a reader's READ behind them.
fn engine_slots(threads: u32) -> u32 {
    threads + waiters::WAITERS as u32 + SERVICE_THREADS
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
struct Cli {
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

    /// FUSE worker threads; at most 58 (engine slots: threads + 6).
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
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    txn_timeout: u64,

    /// Pin the engine's data maps in this bpffs directory (e.g.
    /// /sys/fs/bpf/bpfdb); a restart with the same directory and sizes
    /// reuses them instead of replaying the log (hot restart: upgrade the
    /// programs, keep the data). [default: none: nothing is pinned]
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,

    /// Let users other than the one who mounted access the mount [default:
    /// off].
    #[arg(long)]
    allow_other: bool,

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
struct Settings {
    data_dir: PathBuf,
    mountpoint: PathBuf,
    max_keys: u32,
    max_value: u32,
    value_mem: u64,
    threads: u32,
    allow_other: bool,
    foreground: bool,
    sync: SyncMode,
    wal_buffer: u64,
    checkpoint_bytes: u64,
    allow_corrupt_log: bool,
    txn_timeout_secs: u64,
    pin_dir: Option<PathBuf>,
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

fn show_sync(mode: SyncMode) -> String {
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

fn parse_count(name: &str, s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{name}: '{s}' is not a whole number"))
}

impl Settings {
    fn from_cli(cli: &Cli) -> Result<Settings, String> {
        let mut s = Settings {
            data_dir: cli.data_dir.clone(),
            mountpoint: cli.mountpoint.clone(),
            max_keys: cli.max_keys,
            max_value: 0,
            value_mem: cli.value_mem,
            threads: cli.threads,
            allow_other: cli.allow_other,
            foreground: cli.foreground,
            sync: cli.sync,
            wal_buffer: cli.wal_buffer,
            checkpoint_bytes: cli.checkpoint_bytes,
            allow_corrupt_log: cli.allow_corrupt_log,
            txn_timeout_secs: cli.txn_timeout,
            pin_dir: cli.pin_dir.clone(),
        };
        let mut max_value = cli.max_value;
        for opt in cli.options.iter().flat_map(|o| o.split(',')) {
            s.apply_option(opt.trim(), &mut max_value, cli.sloppy)?;
        }
        if max_value == 0 || max_value > MAX_VALUE_LIMIT {
            return Err(format!(
                "max_value {max_value}: must be 1 to {MAX_VALUE_LIMIT} bytes (1M)"
            ));
        }
        s.max_value = max_value as u32;
        if s.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        if !(1..=MAX_THREADS).contains(&s.threads) {
            return Err(format!("threads {}: must be 1 to {MAX_THREADS}", s.threads));
        }
        if !s.wal_buffer.is_power_of_two()
            || !(WAL_BUFFER_MIN..=WAL_BUFFER_MAX).contains(&s.wal_buffer)
        {
            return Err(format!(
                "wal_buffer {}: must be a power of two from 4K to 1G",
                s.wal_buffer
            ));
        }
        if s.checkpoint_bytes == 0 {
            return Err("checkpoint_bytes must be at least 1".into());
        }
        Ok(s)
    }

    /// Applies one -o option; -o values override the flags.
    fn apply_option(&mut self, opt: &str, max_value: &mut u64, sloppy: bool) -> Result<(), String> {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match (name, value) {
            ("", None) => {}
            ("max_keys", Some(v)) => self.max_keys = parse_count(name, v)?,
            ("threads", Some(v)) => self.threads = parse_count(name, v)?,
            ("max_value", Some(v)) => {
                *max_value = parse_bytes(v).map_err(|e| format!("{name}: {e}"))?
            }
            ("value_mem", Some(v)) => {
                self.value_mem = parse_bytes(v).map_err(|e| format!("{name}: {e}"))?;
            }
            ("sync", Some(v)) => self.sync = parse_sync(v).map_err(|e| format!("{name}: {e}"))?,
            ("wal_buffer", Some(v)) => {
                self.wal_buffer = parse_bytes(v).map_err(|e| format!("{name}: {e}"))?;
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
            ("allow_other", None) => self.allow_other = true,
            ("foreground", None) => self.foreground = true,
            ("allow_corrupt_log", None) => self.allow_corrupt_log = true,
            (
                "max_keys" | "threads" | "max_value" | "value_mem" | "sync" | "wal_buffer"
                | "checkpoint_bytes" | "txn_timeout" | "pin_dir",
                None,
            ) => {
                return Err(format!("-o {name} needs a value: -o {name}=VALUE"));
            }
            ("allow_other" | "foreground" | "allow_corrupt_log", Some(_)) => {
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

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::from_cli(&cli) {
        Ok(s) => s,
        Err(msg) => Cli::command().error(ErrorKind::ValueValidation, msg).exit(),
    };
    std::process::exit(start(&settings));
}

/// Resources taken before the fork and held for the daemon's life.
struct Prepared {
    mountpoint: PathBuf,
    _lock: Flock<File>,
}

fn start(s: &Settings) -> i32 {
    info!(
        "bpfdb {}: data dir {}, mountpoint {}",
        env!("CARGO_PKG_VERSION"),
        s.data_dir.display(),
        s.mountpoint.display()
    );
    info!(
        "sizes: max_keys {}, max_value {} B, value_mem {} B ({} MiB), {} FUSE threads, {} engine slots{}",
        s.max_keys,
        s.max_value,
        s.value_mem,
        s.value_mem >> 20,
        s.threads,
        engine_slots(s.threads),
        if s.allow_other { ", allow_other" } else { "" }
    );
    info!(
        "durability: sync {}, wal_buffer {} B ({} MiB), checkpoint_bytes {} B ({} MiB), allow_corrupt_log {}, txn_timeout {} s{}",
        show_sync(s.sync),
        s.wal_buffer,
        s.wal_buffer >> 20,
        s.checkpoint_bytes,
        s.checkpoint_bytes >> 20,
        if s.allow_corrupt_log { "on" } else { "off" },
        s.txn_timeout_secs,
        if s.txn_timeout_secs == 0 {
            " (never)"
        } else {
            ""
        }
    );
    let prepared = match prepare(s) {
        Ok(p) => p,
        Err(msg) => {
            error!("{msg}");
            return 1;
        }
    };
    if s.foreground {
        info!("running in the foreground (pid {})", std::process::id());
        return match serve(s, &prepared.mountpoint, &mut Ready(None)) {
            Ok(()) => 0,
            Err(msg) => {
                error!("{msg}");
                1
            }
        };
    }
    daemonize(s, &prepared)
}

/// Checks the mountpoint and locks the data dir, so that these errors reach
/// the terminal directly.
fn prepare(s: &Settings) -> Result<Prepared, String> {
    let mountpoint = s
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", s.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(format!(
            "mountpoint {}: not a directory",
            mountpoint.display()
        ));
    }
    std::fs::create_dir_all(&s.data_dir)
        .map_err(|e| format!("creating data dir {}: {e}", s.data_dir.display()))?;
    let lock_path = s.data_dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            return Err(format!(
                "data dir {} is in use by another bpfdb daemon ({} is locked)",
                s.data_dir.display(),
                lock_path.display()
            ));
        }
        Err((_, e)) => return Err(format!("locking {}: {e}", lock_path.display())),
    };
    info!("data dir locked: {}", lock_path.display());
    Ok(Prepared {
        mountpoint,
        _lock: lock,
    })
}

/// The write end of the start-up pipe in a daemon child: tells the waiting
/// parent "mount live" or why start-up failed. Absent in the foreground.
struct Ready(Option<File>);

impl Ready {
    fn send(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            // The parent may be gone (killed); the daemon carries on.
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

/// Forks before the engine is loaded: the uprobe filters on the pid of the
/// process that loads it, so the daemon must be that process.
fn daemonize(s: &Settings, prepared: &Prepared) -> i32 {
    let (rx, tx) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            error!("pipe: {e}");
            return 1;
        }
    };
    // SAFETY: no thread has been started yet, so the child is a complete
    // copy of a single-threaded process.
    match unsafe { fork() } {
        Err(e) => {
            error!("fork: {e}");
            1
        }
        Ok(ForkResult::Parent { child }) => {
            drop(tx);
            let mut msg = String::new();
            let _ = File::from(rx).read_to_string(&mut msg);
            if msg == "ok" {
                return 0;
            }
            match msg.strip_prefix("error: ") {
                Some(why) => error!("{why}"),
                None => error!("the daemon (pid {child}) exited during start-up"),
            }
            1
        }
        Ok(ForkResult::Child) => {
            drop(rx);
            let mut ready = Ready(Some(File::from(tx)));
            let result = detach().and_then(|()| serve(s, &prepared.mountpoint, &mut ready));
            match result {
                Ok(()) => 0,
                Err(msg) => {
                    if ready.0.is_some() {
                        ready.send(&format!("error: {msg}"));
                    } else {
                        error!("{msg}");
                    }
                    1
                }
            }
        }
    }
}

/// Leaves the caller's session and terminal input; stderr stays for the log.
fn detach() -> Result<(), String> {
    setsid().map_err(|e| format!("setsid: {e}"))?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("redirecting stdin: {e}"))?;
    // Nothing is printed on stdout; keeping it would hold the caller's pipe
    // (e.g. `$(bpfdb ...)`) open for the daemon's life.
    nix::unistd::dup2_stdout(&null).map_err(|e| format!("redirecting stdout: {e}"))?;
    // Paths are absolute by now; do not pin the caller's cwd's filesystem.
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    info!("daemon running as pid {}", std::process::id());
    Ok(())
}

/// A fresh seed for the key hash. The log and checkpoints store names, not
/// hashes, so every start may pick its own: names crafted to collide under
/// one seed do not collide under the next.
fn random_seed() -> Result<u64, String> {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n) != Ok(buf.len()) {
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf))
            .map_err(|e| format!("reading a random hash seed from /dev/urandom: {e}"))?;
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Loads the engine, mounts, reports readiness and serves until unmounted;
/// then takes the shutdown checkpoint.
fn serve(s: &Settings, mountpoint: &Path, ready: &mut Ready) -> Result<(), String> {
    mount::block_shutdown_signals()?;

    let opts = Options {
        max_keys: s.max_keys,
        max_value: s.max_value,
        value_mem_bytes: s.value_mem,
        slots: engine_slots(s.threads),
        hash_seed: random_seed()?,
        data_dir: Some(s.data_dir.clone()),
        sync: s.sync,
        wal_buffer_bytes: s.wal_buffer,
        checkpoint_bytes: s.checkpoint_bytes,
        allow_corrupt_log: s.allow_corrupt_log,
        pin_dir: s.pin_dir.clone(),
        ..Options::default()
    };
    let db = Db::open(&opts).map_err(|e| format!("loading the engine: {e}"))?;
    info!("engine loaded: {:?}", db.layout());
    let mut fs = Fs::new(db.clone(), Duration::from_secs(s.txn_timeout_secs))
        .map_err(|e| format!("starting the filesystem: {e}"))?;
    let kernel_cache = KernelCache::default();
    fs.set_invalidate(kernel_cache.invalidate());
    if s.allow_other {
        fs.share_root();
    }

    info!("mounting {}", mountpoint.display());
    let fuse_fd = mount::mount(mountpoint, s.allow_other)?;
    let acl = if s.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let mut config = Config::default();
    config.acl = acl;
    config.n_threads = Some(s.threads as usize);
    config.clone_fd = true;
    // The handshake (FUSE_INIT) runs here: once it returns the mount serves.
    let fuse_fs = match FuseFs::new(fs) {
        Ok(f) => f,
        Err(e) => {
            mount::unmount(mountpoint);
            return Err(format!("starting the filesystem's threads: {e}"));
        }
    };
    let session = match fuser::Session::from_fd(fuse_fs, fuse_fd, acl, config) {
        Ok(session) => session,
        Err(e) => {
            mount::unmount(mountpoint);
            return Err(format!("FUSE handshake on {}: {e}", mountpoint.display()));
        }
    };
    kernel_cache.connect(session.notifier());
    if let Err(msg) = mount::watch_signals(mountpoint.to_path_buf()) {
        mount::unmount(mountpoint);
        return Err(msg);
    }

    info!(
        "mount live: {} ({} FUSE threads)",
        mountpoint.display(),
        s.threads
    );
    ready.send("ok");
    // run() drops the filesystem when the session ends, and with it every
    // open transaction (aborted) and snapshot, so the checkpoint below has
    // the engine to itself.
    let served = session
        .run()
        .map_err(|e| format!("FUSE session on {}: {e}", mountpoint.display()));
    info!(
        "{} unmounted; taking the shutdown checkpoint",
        mountpoint.display()
    );
    let checkpointed = match db.checkpoint() {
        Ok(report) => {
            info!(
                "shutdown checkpoint done: {} keys in {:?}; exiting",
                report.keys, report.total
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "shutdown checkpoint failed: {e}; the log still holds every acknowledged commit and is replayed at the next start"
        )),
    };
    match (served, checkpointed) {
        (Err(e), Err(c)) => {
            error!("{c}");
            Err(e)
        }
        (served, checkpointed) => served.and(checkpointed),
    }
}
