//! The mount fixture: a daemon and its mountpoint, data directory and scratch directory,
//! started, restarted, killed and checked on drop.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::*;

/// A tmpfs with a size limit, unmounted on drop (lazily if something still holds it).
pub(crate) struct Tmpfs {
    pub(crate) path: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(path);
        let out = run_with_timeout(&mut cmd, DAEMON_TIMEOUT, "mount -t tmpfs");
        assert_ok(
            &out,
            &format!("mount -t tmpfs -o size={size} tmpfs {}", path.display()),
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// One daemon and its mount; see the crate docs. The same data directory can be served again
/// by a new daemon after the first one stopped ([`Mount::restart`], [`Mount::kill9`] and
/// [`Mount::start_again`]); each run logs to a file of its own.
pub struct Mount {
    // Dropped before `dir`, so TempDir never walks into a mounted tmpfs.
    pub(crate) tmpfs: Option<Tmpfs>,
    pub(crate) dir: Option<TempDir>,
    pub(crate) root: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) mnt: PathBuf,
    pub(crate) scratch: PathBuf,
    /// Log of the current (last started) run.
    pub(crate) log: PathBuf,
    /// Daemons started so far.
    pub(crate) runs: u32,
    /// Arguments of the current run.
    pub(crate) args: Vec<OsString>,
    pub(crate) builder: MountBuilder,
    pub(crate) child: Option<Child>,
    /// Daemon already stopped and checked (or never started): Drop only cleans up.
    pub(crate) finished: bool,
}

impl Default for Mount {
    fn default() -> Mount {
        Mount::new()
    }
}

impl Mount {
    /// A daemon with the default small sizes (`--max-keys 20000 --value-mem 64M --threads 4`).
    pub fn new() -> Mount {
        MountBuilder::default().start()
    }

    pub fn builder() -> MountBuilder {
        MountBuilder::default()
    }

    /// The mountpoint (`$M` in scripts, and their working directory).
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The daemon's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// A scratch directory outside the mount (`$T` in scripts).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// Pid of the foreground daemon.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("a foreground mount has a child")
            .id()
    }

    /// The daemon's stderr and stdout so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits (at most [`DAEMON_TIMEOUT`]) until the current run's log has a line containing
    /// `needle`, e.g. `mount live`: a foreground daemon's mount is visible a moment before the
    /// daemon has started what it runs beside it (the memcached server and its XDP program).
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str) {
        assert!(
            wait_until(DAEMON_TIMEOUT, || self.log().contains(needle)),
            "no {needle:?} in the daemon log after {} s\n{}",
            DAEMON_TIMEOUT.as_secs(),
            self.log_tail()
        );
    }

    /// The last lines of the daemon log, framed for a failure message.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- daemon log {} (last {} of {} lines; args {:?}) ---\n{}\n--- end of daemon log ---",
            self.log.display(),
            lines.len() - from,
            lines.len(),
            self.args,
            lines[from..].join("\n")
        )
    }

    pub fn is_mounted(&self) -> bool {
        is_fuse_mount(&self.mnt)
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if self.is_mounted() {
                return;
            }
            let child = self.child.as_mut().expect("foreground child");
            if let Some(status) = child.try_wait().expect("try_wait daemon") {
                self.finished = true;
                panic!(
                    "bpfdb exited with {status} before {} was mounted\n{}",
                    self.mnt.display(),
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} is not a FUSE mount {} s after starting bpfdb (fstype {:?})\n{}",
                    self.mnt.display(),
                    DAEMON_TIMEOUT.as_secs(),
                    mount_fstype(&self.mnt),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns a daemon on this mount's DATA_DIR and MOUNTPOINT with the builder's arguments
    /// plus `extra` (before DATA_DIR), logging to a new file; returns it without waiting.
    pub(crate) fn spawn(&mut self, extra: &[OsString]) -> Child {
        let log = if self.runs == 0 {
            self.root.join("daemon.log")
        } else {
            self.root.join(format!("daemon.{}.log", self.runs))
        };
        self.runs += 1;
        let log_file = File::create(&log).expect("create daemon log");
        self.log = log.clone();
        let bin = daemon_bin();
        let mut args = self.builder.args();
        // A background daemon logs to its log file once it detaches: the same file.
        if !self.builder.foreground {
            args.push("--log-file".into());
            args.push(log.clone().into());
        }
        args.extend(extra.iter().cloned());
        args.push(self.data.clone().into());
        args.push(self.mnt.clone().into());
        self.args = args;

        let mut cmd = Command::new(&bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log fd"))
            .stderr(log_file)
            .env_remove("RUST_LOG");
        // BPFDB_TEST_LOG=debug makes the daemons log verbosely for a debugging session; the
        // default is the daemon's own, which is what the log assertions check.
        if let Some(level) = std::env::var_os("BPFDB_TEST_LOG") {
            cmd.env("RUST_LOG", level);
        }
        if self.builder.foreground {
            // Own process group: a Ctrl-C at the terminal is for the test runner. If the
            // runner dies anyway, the kernel sends the daemon SIGTERM, which unmounts.
            // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
            unsafe {
                cmd.process_group(0).pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // Opened before the fork, entered in the child before exec; dropped after the spawn.
        let net_ns = self.builder.net_ns.as_ref().map(|path| {
            File::open(path).unwrap_or_else(|e| panic!("open netns {}: {e}", path.display()))
        });
        if let Some(ns) = &net_ns {
            let fd = ns.as_raw_fd();
            // SAFETY: setns(2) is a plain syscall, async-signal-safe, on an fd the parent
            // keeps open until spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        drop(net_ns);
        child
    }

    /// Starts a foreground daemon and waits until the mount is live.
    pub(crate) fn launch(&mut self, extra: &[OsString]) {
        assert!(
            self.finished && self.child.is_none() && !self.is_mounted(),
            "a daemon is already serving {}",
            self.mnt.display()
        );
        let child = self.spawn(extra);
        self.child = Some(child);
        self.finished = false;
        self.wait_mounted();
    }

    fn check_restartable(&self) {
        assert!(
            self.builder.foreground,
            "only foreground mounts are restarted"
        );
        assert!(
            self.finished,
            "the daemon of {} is still running; stop it first",
            self.mnt.display()
        );
        assert!(
            !self.is_mounted(),
            "{} is still mounted; a killed daemon's mount needs detach_dead_mount()",
            self.mnt.display()
        );
    }

    /// Starts a new daemon on the same DATA_DIR (after [`Mount::umount_expect_clean_exit`],
    /// [`Mount::kill9`] or a failed start) and waits until the mount is live.
    #[track_caller]
    pub fn start_again(&mut self) {
        self.start_again_with(&[]);
    }

    /// [`Mount::start_again`] with more arguments for this run only.
    #[track_caller]
    pub fn start_again_with(&mut self, extra: &[&str]) {
        self.check_restartable();
        self.child = None;
        let extra: Vec<OsString> = extra.iter().map(OsString::from).collect();
        self.launch(&extra);
    }

    /// Clean restart: `umount` (the daemon must exit 0), then a new daemon on the same DATA_DIR.
    #[track_caller]
    pub fn restart(&mut self) {
        self.umount_expect_clean_exit();
        self.start_again();
    }

    /// Starts a daemon on the same DATA_DIR (with `extra` arguments) that must refuse to start:
    /// it must exit non-zero within [`DAEMON_TIMEOUT`] and leave nothing mounted. (A daemon may
    /// mount for a moment before it finds it cannot serve, e.g. an interface whose XDP slot is
    /// taken; it must unmount again before it exits.) Returns its exit status and its log.
    #[track_caller]
    pub fn start_expect_failure(&mut self, extra: &[&str]) -> (ExitStatus, String) {
        self.check_restartable();
        self.child = None;
        let extra: Vec<OsString> = extra.iter().map(OsString::from).collect();
        let mut child = self.spawn(&extra);
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait daemon") {
                if self.is_mounted() {
                    let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                    panic!(
                        "the daemon exited with {status} but left {} mounted\n{}",
                        self.mnt.display(),
                        self.log_tail()
                    );
                }
                assert!(
                    !status.success(),
                    "the daemon exited 0, want a refusal to start\n{}",
                    self.log_tail()
                );
                return (status, self.log());
            }
            if Instant::now() >= deadline {
                if self.is_mounted() {
                    // The daemon serves: Drop unmounts it and checks its exit.
                    self.child = Some(child);
                    self.finished = false;
                    panic!(
                        "the daemon mounted {} and still runs {} s later, although it should \
                         have refused to start\n{}",
                        self.mnt.display(),
                        DAEMON_TIMEOUT.as_secs(),
                        self.log_tail()
                    );
                }
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon neither exited nor mounted within {} s\n{}",
                    DAEMON_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the daemon, then a lazy unmount of its dead mount so that the next daemon
    /// can mount again. Processes still working in the mount get ENOTCONN.
    #[track_caller]
    pub fn kill9(&mut self) {
        self.kill9_daemon();
        self.detach_dead_mount();
    }

    /// `kill -9` of the daemon only: the dead mount stays attached (every operation on it fails
    /// with ENOTCONN, so nothing can reach the directory underneath) until
    /// [`Mount::detach_dead_mount`].
    #[track_caller]
    pub fn kill9_daemon(&mut self) {
        let child = self.child.as_mut().expect("a foreground daemon to kill");
        send_signal(child.id(), libc::SIGKILL);
        let status = wait_timeout(child, DAEMON_TIMEOUT);
        self.finished = true;
        let status = status.unwrap_or_else(|| {
            panic!(
                "daemon still running {} s after SIGKILL",
                DAEMON_TIMEOUT.as_secs()
            )
        });
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "daemon exited with {status} before SIGKILL reached it\n{}",
            self.log_tail()
        );
    }

    /// `umount -l` of the mount of a killed daemon.
    #[track_caller]
    pub fn detach_dead_mount(&mut self) {
        assert!(self.finished, "detach_dead_mount() with a live daemon");
        let mut cmd = Command::new("umount");
        cmd.arg("-l").arg(&self.mnt);
        let out = run_with_timeout(&mut cmd, DAEMON_TIMEOUT, "umount -l");
        assert_ok(&out, "umount -l MOUNTPOINT");
        assert!(
            wait_until(DAEMON_TIMEOUT, || !self.is_mounted()),
            "{} still mounted after umount -l",
            self.mnt.display()
        );
    }

    /// The logs of every run so far, oldest first, each under a `=== run N ===` line.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for run in 0..self.runs {
            let path = if run == 0 {
                self.root.join("daemon.log")
            } else {
                self.root.join(format!("daemon.{run}.log"))
            };
            out.push_str(&format!("=== run {run} ===\n"));
            out.push_str(&String::from_utf8_lossy(
                &std::fs::read(path).unwrap_or_default(),
            ));
        }
        out
    }

    /// The tmpfs that holds DATA_DIR (see [`MountBuilder::tmpfs_data_dir`]).
    pub fn tmpfs_dir(&self) -> Option<&Path> {
        self.tmpfs.as_ref().map(|t| t.path.as_path())
    }

    /// The log segments `wal-NNNNNNNN.log` in DATA_DIR, in order.
    pub fn wal_segments(&self) -> Vec<PathBuf> {
        let mut segs: Vec<PathBuf> = std::fs::read_dir(&self.data)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.data.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(OsStr::to_str)
                    .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
            })
            .collect();
        segs.sort();
        segs
    }

    /// The last log segment (there must be one).
    #[track_caller]
    pub fn last_wal_segment(&self) -> PathBuf {
        let segs = self.wal_segments();
        segs.last().cloned().unwrap_or_else(|| {
            panic!(
                "no wal-*.log in {}: {:?}",
                self.data.display(),
                std::fs::read_dir(&self.data)
                    .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            )
        })
    }
}

impl Mount {
    /// Sends `sig` to the foreground daemon and asserts that it unmounts and exits 0.
    #[track_caller]
    pub fn signal_expect_clean_exit(&mut self, sig: i32) {
        send_signal(self.pid(), sig);
        self.expect_clean_exit(signal_name(sig));
    }

    /// Runs `umount MOUNTPOINT` and asserts that the daemon then exits 0.
    #[track_caller]
    pub fn umount_expect_clean_exit(&mut self) {
        self.umount_expect_exit(0);
    }

    /// Runs `umount MOUNTPOINT` and asserts that the foreground daemon then exits with `code`
    /// and the mount is gone.
    #[track_caller]
    pub fn umount_expect_exit(&mut self, code: i32) {
        let mut cmd = Command::new("umount");
        cmd.arg(&self.mnt);
        let out = run_with_timeout(&mut cmd, DAEMON_TIMEOUT, "umount");
        assert_ok(&out, "umount MOUNTPOINT");
        self.expect_exit("umount", code);
    }

    #[track_caller]
    fn expect_clean_exit(&mut self, after: &str) {
        self.expect_exit(after, 0);
    }

    #[track_caller]
    fn expect_exit(&mut self, after: &str, code: i32) {
        assert!(
            code == 0 || self.builder.foreground,
            "only a foreground daemon's exit code is known"
        );
        if !self.builder.foreground {
            let gone = wait_until(DAEMON_TIMEOUT, || pids_with_arg(&self.mnt).is_empty());
            self.finished = true;
            assert!(
                gone,
                "background daemon still running {} s after {after}: pids {:?}\n{}",
                DAEMON_TIMEOUT.as_secs(),
                pids_with_arg(&self.mnt),
                self.log_tail()
            );
        } else {
            let child = self.child.as_mut().expect("foreground child");
            let status = wait_timeout(child, DAEMON_TIMEOUT);
            self.finished = true;
            let Some(status) = status else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not exit within {} s after {after}\n{}",
                    DAEMON_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            };
            assert!(
                status.code() == Some(code),
                "daemon exited with {status} (signal {:?}) after {after}, want {code}\n{}",
                status.signal(),
                self.log_tail()
            );
        }
        assert!(
            !self.is_mounted(),
            "{} is still mounted after {after} and daemon exit\n{}",
            self.mnt.display(),
            self.log_tail()
        );
    }

    /// Stops the daemon the way Drop does and lists what went wrong.
    fn shut_down(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.is_mounted() {
            let mut cmd = Command::new("umount");
            cmd.arg(&self.mnt);
            let out = run_with_timeout(&mut cmd, DAEMON_TIMEOUT, "umount");
            if !out.status.success() {
                problems.push(format!(
                    "umount failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                if let Some(child) = &self.child {
                    send_signal(child.id(), libc::SIGTERM);
                }
            }
        } else {
            problems.push(format!(
                "{} was no longer mounted at the end of the test (fstype {:?})",
                self.mnt.display(),
                mount_fstype(&self.mnt)
            ));
        }
        if let Some(child) = self.child.as_mut() {
            match wait_timeout(child, DAEMON_TIMEOUT) {
                Some(status) if status.success() => {}
                Some(status) => problems.push(format!("daemon exited with {status}, want 0")),
                None => {
                    problems.push(format!(
                        "daemon did not exit within {} s of umount; killed",
                        DAEMON_TIMEOUT.as_secs()
                    ));
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        } else if !wait_until(DAEMON_TIMEOUT, || pids_with_arg(&self.mnt).is_empty()) {
            let pids = pids_with_arg(&self.mnt);
            problems.push(format!(
                "background daemon {pids:?} still running {} s after umount; killed",
                DAEMON_TIMEOUT.as_secs()
            ));
            for pid in pids {
                send_signal(pid, libc::SIGKILL);
            }
        }
        problems
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let problems = if self.finished {
            Vec::new()
        } else {
            self.shut_down()
        };
        if self.is_mounted() {
            // Never let TempDir's cleanup walk into a live (or dead) FUSE mount.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("left {} behind: it was still mounted", kept.display());
            }
        }
        // A fixture panic that finished the daemon already carries the log tail.
        if (panicking && !self.finished) || !problems.is_empty() {
            eprintln!("{}", self.log_tail());
        }
        if !problems.is_empty() && !panicking {
            panic!("daemon shutdown: {}", problems.join("; "));
        }
    }
}
