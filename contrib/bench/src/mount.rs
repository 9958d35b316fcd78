//! Mounts the bench makes itself: tmpfs, or a FUSE daemon (bpfdb,
//! bpfdb-memfs) started in the foreground. Unmounted on drop, so a failed
//! bench leaves nothing mounted.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bench_dir, wait_exit};

/// Long enough for a daemon to recover a million keys before it mounts.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// Fine enough to time a daemon's start to the millisecond.
const MOUNT_POLL: Duration = Duration::from_millis(1);
/// A daemon takes a checkpoint on unmount; a million keys take seconds.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A live mount, unmounted on drop; the daemon serving it (if any) is
/// waited for, and killed if it does not exit.
pub struct Mount {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    mounted: bool,
}

/// A binary built next to the bench (`bpfdb`, `bpfdb-memfs`).
pub fn sibling_exe(name: &str) -> Result<PathBuf, String> {
    let bin = std::env::current_exe()
        .map_err(|e| format!("locating the bench binary: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
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
}

impl Mount {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    pub fn tmpfs() -> Result<Mount, String> {
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

    /// Starts `exe` with `args`, then `data_dir` if given, then the
    /// mountpoint; returns once the mount is live.
    pub fn daemon(exe: &Path, args: &[&str], data_dir: Option<&Path>) -> Result<Mount, String> {
        let mut m = Mount::new()?;
        let log = File::create(m.dir.path().join("daemon.log"))
            .map_err(|e| format!("daemon log: {e}"))?;
        let child = Command::new(exe)
            .args(args)
            .args(data_dir)
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

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Why the daemon is gone, if it is: its exit status and its stderr.
    pub fn daemon_exited(&mut self) -> Option<String> {
        let status = self.daemon.as_mut()?.try_wait().ok().flatten()?;
        let log = std::fs::read_to_string(self.dir.path().join("daemon.log"));
        Some(format!(
            "the daemon exited ({status}); its stderr: {}",
            log.unwrap_or_default().trim()
        ))
    }

    /// Ends the daemon with SIGKILL, as a crash would (it takes no
    /// checkpoint); the mount is left for drop to take down.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn new() -> Result<Mount, String> {
        let dir = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
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
            std::thread::sleep(MOUNT_POLL);
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
        if let Some(mut child) = self.daemon.take()
            && !wait_exit(&mut child, EXIT_TIMEOUT)
        {
            eprintln!(
                "bench: daemon on {} did not exit; killing it",
                path.display()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cstr(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("tempdir paths hold no NUL")
}
