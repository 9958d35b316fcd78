//! Start-up: the lock on the data directory, the engine, the fork into the
//! background with a pipe that says when the mount is live, and serving
//! until unmount or a signal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bpfdb::{Db, Options};
use fuser::{Config, SessionACL};
use log::{error, info};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::unistd::{ForkResult, fork, setsid};

use crate::core::fs::Fs;
use crate::daemon::fuse::{FuseFs, KernelCache};
use crate::daemon::{memcached, mount};

use crate::daemon::cli::{Settings, engine_slots, show_sync};

/// Resources taken before the fork and held for the daemon's life.
struct Prepared {
    mountpoint: PathBuf,
    _lock: Flock<File>,
    /// Where the log goes once the daemon leaves its caller's terminal (or,
    /// with `-f --log-file`, at once), opened for appending.
    log: Option<(PathBuf, File)>,
}

/// The log of a background daemon without `--log-file`, in its data dir.
pub const LOG_FILE: &str = "bpfdb.log";

/// Whole MiB in `bytes`, for the log.
fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Runs the daemon with `s`; returns the process's exit code.
pub fn start(s: &Settings) -> i32 {
    info!(
        "bpfdb {}: data dir {}, mountpoint {}",
        env!("CARGO_PKG_VERSION"),
        s.data_dir.display(),
        s.mountpoint.display()
    );
    info!(
        "sizes: max_keys {}, max_value {} B, value_mem {} B ({} MiB), {} FUSE threads, {} engine slots{}",
        s.max_keys,
        s.max_value_bytes,
        s.value_mem_bytes,
        mib(s.value_mem_bytes),
        s.threads,
        engine_slots(s),
        if s.allow_other { ", allow_other" } else { "" }
    );
    info!(
        "durability: sync {}, wal_buffer {} B ({} MiB), checkpoint_bytes {} B ({} MiB), allow_corrupt_log {}, txn_timeout {} s{}",
        show_sync(s.sync),
        s.wal_buffer_bytes,
        mib(s.wal_buffer_bytes),
        s.checkpoint_bytes,
        mib(s.checkpoint_bytes),
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
        if let Err(msg) = log_to_file(&prepared) {
            error!("{msg}");
            return 1;
        }
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
    let log_path = match (&s.log_file, s.foreground) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(s.data_dir.join(LOG_FILE)),
        (None, true) => None,
    };
    let log = match log_path {
        Some(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| format!("log file {}: {e}", p.display()))?;
            // Absolute, so the line saying where the log goes stays true
            // after the daemon's chdir("/").
            let p = std::path::absolute(&p).unwrap_or(p);
            Some((p, f))
        }
        None => None,
    };
    Ok(Prepared {
        mountpoint,
        _lock: lock,
        log,
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
            let result = detach(prepared).and_then(|()| serve(s, &prepared.mountpoint, &mut ready));
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

/// Sends the log (stderr, where env_logger writes) to the log file, after
/// one line on the old stderr saying where it goes.
fn log_to_file(prepared: &Prepared) -> Result<(), String> {
    if let Some((path, file)) = &prepared.log {
        info!("logging to {}", path.display());
        nix::unistd::dup2_stderr(file).map_err(|e| format!("redirecting stderr: {e}"))?;
    }
    Ok(())
}

/// Leaves the caller's session, terminal and pipes: stdin and stdout go to
/// /dev/null, stderr (the log) to the log file.
fn detach(prepared: &Prepared) -> Result<(), String> {
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
    log_to_file(prepared)?;
    info!("daemon running as pid {}", std::process::id());
    Ok(())
}

/// A fresh seed for the key hash. The log and checkpoints store names, not
/// hashes, so every start may pick its own: names crafted to collide under
/// one seed do not collide under the next.
fn random_seed() -> Result<u64, String> {
    let mut buf = [0u8; size_of::<u64>()];
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
    let memcached_socket = s
        .memcached_udp
        .map(|port| memcached::bind(port, &s.memcached_if))
        .transpose()?;

    let opts = Options {
        max_keys: s.max_keys,
        max_value_bytes: s.max_value_bytes,
        value_mem_bytes: s.value_mem_bytes,
        slots: engine_slots(s),
        hash_seed: random_seed()?,
        data_dir: Some(s.data_dir.clone()),
        sync: s.sync,
        wal_buffer_bytes: s.wal_buffer_bytes,
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
    // Held until the mount is gone; the tracer's commits come from the
    // kernel, so the kernel may not cache its keys' attributes.
    let tracer = if s.trace_exec {
        fs.share_keys_with_clients(bpfdb::EXEC_TRACE_PREFIX);
        let tracer = Arc::new(
            db.exec_tracer()
                .map_err(|e| format!("starting the exec tracer: {e}"))?,
        );
        let weak = Arc::downgrade(&tracer);
        fs.add_client_counters(Box::new(move || {
            let counters = weak.upgrade().and_then(|t| t.counters().ok());
            counters.map(|c| c.named().to_vec()).unwrap_or_default()
        }));
        Some(tracer)
    } else {
        None
    };

    let memcached_xdp = match &memcached_socket {
        Some(socket) => {
            let port = socket
                .local_addr()
                .map_err(|e| format!("memcached UDP: the socket's address: {e}"))?
                .port();
            memcached::attach_xdp(&db, port, &s.memcached_if)?
        }
        None => None,
    };

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
    let fs = Arc::new(fs);
    // The handshake (FUSE_INIT) runs here: once it returns the mount serves.
    let fuse_fs = match FuseFs::new(fs.clone()) {
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
    // After the session: the kernel's cache is connected, so its writes
    // drop what the kernel holds, as the mount's own do.
    let memcached = match memcached_socket {
        Some(socket) => match memcached::start(socket, memcached_xdp, fs.clone()) {
            Ok(server) => Some(server),
            Err(msg) => {
                mount::unmount(mountpoint);
                return Err(msg);
            }
        },
        None => None,
    };
    // The session and the memcached server hold it from here on.
    drop(fs);

    info!(
        "mount live: {} ({} FUSE threads)",
        mountpoint.display(),
        s.threads
    );
    ready.send("ok");
    // run() drops the session's hold on the filesystem when it ends; the
    // memcached server's goes with it below. The filesystem then drops, and
    // with it every open transaction (aborted) and snapshot, so the
    // checkpoint below has the engine to itself.
    let served = session
        .run()
        .map_err(|e| format!("FUSE session on {}: {e}", mountpoint.display()));
    drop(memcached);
    drop(tracer);
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
