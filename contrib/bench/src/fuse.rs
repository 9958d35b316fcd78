//! Shell-level GET and SET through a mounted directory: bpfdb against
//! bpfdb-memfs (a hash map behind FUSE, the floor any FUSE filesystem pays)
//! and tmpfs (no FUSE at all). The bench mounts and unmounts each itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{RUNS, die, median};

const WINDOW: Duration = Duration::from_millis(500);
const KEYS: usize = 1000;
const VALUE: [u8; 100] = [b'v'; 100];
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
const FLOOR: &str = "bpfdb-memfs (floor)";
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A live mount, unmounted on drop; the daemon serving it (if any) is
/// waited for, and killed if it does not exit.
struct Mount {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    mounted: bool,
}

impl Mount {
    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn tmpfs() -> Result<Mount, String> {
        let mut m = Mount::new()?;
        let target = cstr(&m.path());
        // SAFETY: every pointer is a valid NUL-terminated string.
        let rc = unsafe {
            libc::mount(
                c"bench-tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=64m".as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs: {}",
                std::io::Error::last_os_error()
            ));
        }
        m.mounted = true;
        m.wait_live()?;
        Ok(m)
    }

    /// Starts `exe` with `args` then the mountpoint, in the foreground.
    fn daemon(exe: &Path, args: &[&str], data_dir: bool) -> Result<Mount, String> {
        let mut m = Mount::new()?;
        let log = File::create(m.dir.path().join("daemon.log"))
            .map_err(|e| format!("daemon log: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(args);
        if data_dir {
            let data = m.dir.path().join("data");
            std::fs::create_dir(&data).map_err(|e| format!("data dir: {e}"))?;
            cmd.arg(data);
        }
        let child = cmd
            .arg(m.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        m.daemon = Some(child);
        m.mounted = true;
        m.wait_live().map_err(|e| {
            let log = std::fs::read_to_string(m.dir.path().join("daemon.log"));
            format!("{e}; its stderr: {}", log.unwrap_or_default().trim())
        })?;
        Ok(m)
    }

    fn new() -> Result<Mount, String> {
        let base = std::env::var_os("BPFDB_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::tempdir_in(base).map_err(|e| format!("tempdir: {e}"))?;
        std::fs::create_dir(dir.path().join("mnt")).map_err(|e| format!("mountpoint: {e}"))?;
        Ok(Mount {
            dir,
            daemon: None,
            mounted: false,
        })
    }

    /// Waits until the mountpoint shows in /proc/self/mountinfo, bounded.
    fn wait_live(&mut self) -> Result<(), String> {
        let path = self.path();
        let want = path.to_string_lossy().replace(' ', "\\040");
        let t = Instant::now();
        loop {
            let info = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("reading mountinfo: {e}"))?;
            if info
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(Child::try_wait) {
                return Err(format!("the daemon exited before mounting: {status}"));
            }
            if t.elapsed() > MOUNT_TIMEOUT {
                return Err(format!(
                    "{} not mounted after {MOUNT_TIMEOUT:?}",
                    path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let path = self.path();
        if self.mounted {
            let c = cstr(&path);
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                // Busy or already gone: detach so nothing stays mounted.
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if let Some(mut child) = self.daemon.take() {
            let t = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && t.elapsed() < EXIT_TIMEOUT {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "bench: daemon on {} did not exit; killing it",
                    path.display()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn cstr(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("tempdir paths hold no NUL")
}

/// Operations per second over one window, `threads` clients each on its
/// own share of the keys.
fn rate(
    paths: &[PathBuf],
    threads: usize,
    op: fn(&Path) -> std::io::Result<()>,
) -> Result<f64, String> {
    let n = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                let n = &n;
                sc.spawn(move || -> Result<(), String> {
                    let mut i = 0u64;
                    let mut k = w;
                    while t.elapsed() < WINDOW {
                        let p = &paths[k];
                        op(p).map_err(|e| format!("{}: {e}", p.display()))?;
                        k = (k + threads) % paths.len();
                        i += 1;
                    }
                    n.fetch_add(i, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err("client thread panicked".into()))
        })
    })?;
    Ok(n.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

/// GET: open, one read, close.
fn get(p: &Path) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let n = File::open(p)?.read(&mut buf)?;
    if n != VALUE.len() {
        return Err(std::io::Error::other(format!(
            "read {n} bytes, not {}",
            VALUE.len()
        )));
    }
    Ok(())
}

/// SET: open(O_WRONLY|O_TRUNC), one write, close.
fn set(p: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)?
        .write_all(&VALUE)
}

fn key_paths(mount: &Mount) -> Result<Vec<PathBuf>, String> {
    let paths: Vec<PathBuf> = (0..KEYS)
        .map(|i| mount.path().join(format!("k{i}")))
        .collect();
    for p in &paths {
        std::fs::write(p, VALUE).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(paths)
}

/// A system's name and, for 1 and 2 clients, (threads, GET ops/s, SET ops/s).
type SystemRates = (&'static str, Vec<(usize, f64, f64)>);

fn measure_all() -> Result<Vec<SystemRates>, String> {
    let bin = std::env::current_exe()
        .map_err(|e| format!("locating the bench binary: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let exe = |name: &str| {
        let p = bin.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{} missing: cargo build --release -p {}",
                p.display(),
                if name == "bpfdb" { "bpfdb-fsd" } else { name }
            ))
        }
    };
    let (bpfdb, memfs) = (exe("bpfdb")?, exe("bpfdb-memfs")?);
    // All three mounted at once, and each run window goes round them in
    // turn, so that load from elsewhere falls on all of them alike.
    let args = [
        "-f",
        "--sync",
        "none",
        "--max-keys",
        "20000",
        "--value-mem",
        "64M",
    ];
    let mounts = [
        ("tmpfs (no FUSE)", Mount::tmpfs()?),
        (FLOOR, Mount::daemon(&memfs, &[], false)?),
        ("bpfdb", Mount::daemon(&bpfdb, &args, true)?),
    ];
    let paths = mounts
        .iter()
        .map(|(_, m)| key_paths(m))
        .collect::<Result<Vec<_>, _>>()?;
    // runs[system][threads - 1] = (GET rates, SET rates)
    let mut runs = vec![vec![(Vec::new(), Vec::new()); 2]; mounts.len()];
    for threads in [1usize, 2] {
        for _ in 0..RUNS {
            for (sys, p) in paths.iter().enumerate() {
                let r = &mut runs[sys][threads - 1];
                r.0.push(rate(p, threads, get)?);
                r.1.push(rate(p, threads, set)?);
            }
        }
    }
    Ok(mounts
        .iter()
        .zip(runs)
        .map(|((name, _), r)| {
            let rows = r
                .into_iter()
                .enumerate()
                .map(|(i, (g, s))| (i + 1, median(g), median(s)))
                .collect();
            (*name, rows)
        })
        .collect())
}

pub fn run() {
    let rows = measure_all().unwrap_or_else(|e| die("fuse", e));
    println!(
        "## Through the mount: 100-byte GET (open+read+close) and SET (open O_TRUNC+write+close) \
         over {KEYS} keys, median of {RUNS} windows of {} ms\n",
        WINDOW.as_millis()
    );
    println!(
        "bpfdb runs with `--sync none`: a SET still goes through the engine and the log writer \
         but does not wait for fsync. bpfdb-memfs is a hash map behind FUSE with the same TTL 0 \
         and direct_io. The three are mounted together and each window goes round them in \
         turn.\n"
    );
    println!(
        "| system | threads | GET ops/s | SET ops/s | GET ratio to floor | SET ratio to floor |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let floor = &rows
        .iter()
        .find(|(name, _)| *name == FLOOR)
        .expect("the floor is measured")
        .1;
    for (name, results) in &rows {
        for (&(threads, g, s), &(_, fg, fs)) in results.iter().zip(floor) {
            println!(
                "| {name} | {threads} | {g:.0} | {s:.0} | {:.2} | {:.2} |",
                g / fg,
                s / fs
            );
        }
    }
    println!("\nTarget: bpfdb GET and SET at least 1.0x the in-memory FUSE floor.\n");
}
