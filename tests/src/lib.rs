//! Fixtures for the end-to-end tests.
//!
//! A [`Mount`] is one bpfdb daemon (`target/release/bpfdb`, or `$BPFDB_BIN`) running in the
//! foreground as a child process, with its data directory and mountpoint in a fresh tempdir.
//! Tests drive the mount only through real processes (`sh -c` and the shell tools it runs), so
//! what they check is what a person at a shell sees. Dropping a `Mount` unmounts it and fails
//! the test unless the daemon then exited 0 and the mount is gone.
//!
//! A `Mount` outlives its daemon: [`Mount::restart`], [`Mount::kill9`] and
//! [`Mount::start_again`] serve the same DATA_DIR with a new daemon, which is how the
//! durability and crash tests check what a restart recovers.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a daemon may take to mount, and to exit after an unmount or a signal. Generous: a
/// start verifies and loads the engine's programs, which takes 2-4 s on an idle 2-core machine
/// and went past 10 s while other builds loaded it; it only exists so a hung daemon fails the
/// test instead of hanging it.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `sh -c` script may run before it is killed and the test fails. Generous: it
/// only exists so a hung daemon fails the test instead of hanging the whole run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of the daemon log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// The glibc `strerror` texts the shell tools print, one per errno of docs/SEMANTICS.md.
pub mod msg {
    pub const ENOENT: &str = "No such file or directory";
    pub const ENAMETOOLONG: &str = "File name too long";
    pub const EFBIG: &str = "File too large";
    pub const ENOSPC: &str = "No space left on device";
    pub const EPERM: &str = "Operation not permitted";
    pub const EACCES: &str = "Permission denied";
    pub const EEXIST: &str = "File exists";
    pub const EINVAL: &str = "Invalid argument";
    pub const EBUSY: &str = "Device or resource busy";
    pub const ECANCELED: &str = "Operation canceled";
    pub const EROFS: &str = "Read-only file system";
}

/// Names at the mount root that are never keys (docs/SEMANTICS.md, "Namespace").
pub const RESERVED: [&str; 4] = [".stats", ".txn", ".snap", ".ctl"];

/// The reserved entries a listing shows: all four (docs/SEMANTICS.md, "Namespace"), in
/// `LC_ALL=C ls -A` order.
pub const LISTED_RESERVED: [&str; 4] = [".ctl", ".snap", ".stats", ".txn"];

/// Number of the renameat2 syscall, for [`renameat2_sh`].
#[cfg(target_arch = "x86_64")]
const SYS_RENAMEAT2: u32 = 316;
#[cfg(target_arch = "aarch64")]
const SYS_RENAMEAT2: u32 = 276;

/// A shell function `renameat2 FROM TO FLAGS` for the two rename cases no coreutils 9.1 tool
/// reaches: `rename(a, a)` (`mv a a` stops at its own same-file check) and `RENAME_EXCHANGE`
/// (`mv --exchange` is newer). It is one `perl` process making the raw syscall; on failure it
/// prints the errno text and exits 1. Prepend it to a script.
pub fn renameat2_sh() -> String {
    format!(
        "renameat2() {{ perl -e 'my ($f, $t, $fl) = @ARGV; \
         if (syscall({SYS_RENAMEAT2}, -100, $f, -100, $t, $fl + 0) != 0) \
         {{ print STDERR \"renameat2: $!\\n\"; exit 1 }}' \"$@\"; }}\n"
    )
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// The daemon binary: `$BPFDB_BIN`, else `bpfdb` next to the test binary's `deps/` directory
/// (`target/release/bpfdb` for `cargo test --release`). Panics if it is missing: a test that
/// cannot find the daemon must fail, never pass by skipping.
pub fn daemon_bin() -> PathBuf {
    let bin = match std::env::var_os("BPFDB_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps/")
                .join("bpfdb")
        }
    };
    assert!(
        bin.is_file(),
        "bpfdb daemon binary not found at {}: build it first with \
         `cargo build --release --workspace` (or point BPFDB_BIN at it)",
        bin.display()
    );
    bin
}

/// Undoes the octal escapes (`\040` for a space, ...) of a /proc/self/mountinfo field.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1..i + 4)
                .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
        {
            let d = &b[i + 1..i + 4];
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The filesystem type mounted at `path` according to /proc/self/mountinfo (the last mount
/// there wins, as it is the visible one), or None.
pub fn mount_fstype(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in info.lines() {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        let Some(mnt) = left.split(' ').nth(4) else {
            continue;
        };
        if unescape_mountinfo(mnt) == want {
            found = right.split(' ').next().map(str::to_owned);
        }
    }
    found
}

/// True when a FUSE filesystem (`fuse` or `fuse.<subtype>`) is mounted at `path`.
pub fn is_fuse_mount(path: &Path) -> bool {
    mount_fstype(path).is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
}

/// Pids of processes other than us whose command line has `arg` as one argument: how a
/// daemon that went to the background is found by its mountpoint.
pub fn pids_with_arg(arg: &Path) -> Vec<u32> {
    let me = std::process::id();
    let want = arg.as_os_str().as_bytes();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == want) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        _ => "signal",
    }
}

/// Sends `sig` to `pid`.
pub fn send_signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {}): {}",
        signal_name(sig),
        std::io::Error::last_os_error()
    );
}

/// Runs `cmd` (stdout and stderr captured), killing its whole process group and failing the
/// test if it is still running after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let pgid = i32::try_from(child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) of the process group we created for this command.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        panic!(
            "{what} still running after {} s; killed it (a hung daemon?)",
            timeout.as_secs()
        );
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn describe(out: &Output) -> String {
    const MAX: usize = 4000;
    let clip = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        if s.len() > MAX {
            let mut cut = MAX;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}... ({} bytes)", &s[..cut], s.len())
        } else {
            s.into_owned()
        }
    };
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        clip(&out.stdout),
        clip(&out.stderr)
    )
}

/// Asserts that a command exited 0 and returns its stdout (lossily decoded).
#[track_caller]
pub fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "expected success of:\n{what}\n{}",
        describe(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that a command failed (non-zero exit) and that its stderr carries the errno text
/// `message` (one of [`msg`]).
#[track_caller]
pub fn assert_errno(out: &Output, message: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(message),
        "expected failure with \"{message}\" from:\n{what}\n{}",
        describe(out)
    );
}

/// Options of a [`Mount`]; see [`Mount::builder`].
#[derive(Clone, Debug)]
pub struct MountBuilder {
    max_keys: Option<String>,
    max_value: Option<String>,
    value_mem: Option<String>,
    threads: Option<String>,
    extra: Vec<OsString>,
    foreground: bool,
    tmpfs_size: Option<String>,
}

impl Default for MountBuilder {
    fn default() -> MountBuilder {
        MountBuilder {
            max_keys: Some("20000".into()),
            max_value: None,
            value_mem: Some("64M".into()),
            threads: Some("4".into()),
            extra: Vec::new(),
            foreground: true,
            tmpfs_size: None,
        }
    }
}

impl MountBuilder {
    /// `--max-keys N` (default 20000).
    pub fn max_keys(mut self, n: u32) -> MountBuilder {
        self.max_keys = Some(n.to_string());
        self
    }

    /// `--max-value SIZE` (default: the daemon's, 1 MiB); SIZE may carry a K/M/G suffix.
    pub fn max_value(mut self, size: &str) -> MountBuilder {
        self.max_value = Some(size.into());
        self
    }

    /// `--value-mem SIZE` (default 64M).
    pub fn value_mem(mut self, size: &str) -> MountBuilder {
        self.value_mem = Some(size.into());
        self
    }

    /// `--threads N` (default 4).
    pub fn threads(mut self, n: u32) -> MountBuilder {
        self.threads = Some(n.to_string());
        self
    }

    /// Passes none of the size options above, so a test can give them its own way (`-o`).
    pub fn no_size_options(mut self) -> MountBuilder {
        self.max_keys = None;
        self.max_value = None;
        self.value_mem = None;
        self.threads = None;
        self
    }

    /// One more argument before DATA_DIR, e.g. `--allow-other` or `-o`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> MountBuilder {
        self.extra.push(arg.as_ref().to_owned());
        self
    }

    /// Starts the daemon without `-f`: the command must return once the mount is live, and
    /// the daemon lives on in the background (found later by its mountpoint argument).
    pub fn background(mut self) -> MountBuilder {
        self.foreground = false;
        self
    }

    /// Puts DATA_DIR on a tmpfs of its own with this size limit (`mount -t tmpfs -o size=SIZE`),
    /// mounted at [`Mount::tmpfs_dir`] with DATA_DIR its subdirectory `data`, so a test can fill
    /// the disk under the log and free space again with a file of its own beside DATA_DIR. The
    /// tmpfs is unmounted when the `Mount` is dropped, also when the test fails.
    pub fn tmpfs_data_dir(mut self, size: &str) -> MountBuilder {
        self.tmpfs_size = Some(size.into());
        self
    }

    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if self.foreground {
            args.push("-f".into());
        }
        let sizes = [
            ("--max-keys", &self.max_keys),
            ("--max-value", &self.max_value),
            ("--value-mem", &self.value_mem),
            ("--threads", &self.threads),
        ];
        for (flag, value) in sizes {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v.into());
            }
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the daemon and waits (at most [`DAEMON_TIMEOUT`]) until the mount is live.
    pub fn start(self) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("bpfdb-test-")
            .tempdir()
            .expect("create tempdir");
        // mountinfo shows canonical paths.
        let root = dir.path().canonicalize().expect("canonicalize tempdir");
        let mnt = root.join("mnt");
        let scratch = root.join("scratch");
        for d in [&mnt, &scratch] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let tmpfs = self
            .tmpfs_size
            .as_deref()
            .map(|size| Tmpfs::mount(&root.join("disk"), size));
        let data = match &tmpfs {
            Some(t) => t.path.join("data"),
            None => root.join("data"),
        };
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("mkdir {}: {e}", data.display()));
        let mut mount = Mount {
            tmpfs,
            dir: Some(dir),
            root,
            data,
            mnt,
            scratch,
            log: PathBuf::new(),
            runs: 0,
            args: Vec::new(),
            builder: self,
            child: None,
            finished: true,
        };
        if mount.builder.foreground {
            mount.launch(&[]);
        } else {
            let mut child = mount.spawn(&[]);
            mount.finished = false;
            let status = wait_timeout(&mut child, DAEMON_TIMEOUT);
            let Some(status) = status else {
                let _ = child.kill();
                let _ = child.wait();
                mount.finished = true;
                panic!(
                    "`bpfdb` without -f did not return within {} s\n{}",
                    DAEMON_TIMEOUT.as_secs(),
                    mount.log_tail()
                );
            };
            if !status.success() {
                mount.finished = true;
                panic!(
                    "`bpfdb` without -f exited with {status}\n{}",
                    mount.log_tail()
                );
            }
            // "returns once the mount is live": no waiting here.
            assert!(
                mount.is_mounted(),
                "`bpfdb` without -f returned 0 but {} is not a FUSE mount yet (fstype {:?})\n{}",
                mount.mnt.display(),
                mount_fstype(&mount.mnt),
                mount.log_tail()
            );
        }
        mount
    }
}

/// A tmpfs with a size limit, unmounted on drop (lazily if something still holds it).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
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
    tmpfs: Option<Tmpfs>,
    dir: Option<TempDir>,
    root: PathBuf,
    data: PathBuf,
    mnt: PathBuf,
    scratch: PathBuf,
    /// Log of the current (last started) run.
    log: PathBuf,
    /// Daemons started so far.
    runs: u32,
    /// Arguments of the current run.
    args: Vec<OsString>,
    builder: MountBuilder,
    child: Option<Child>,
    /// Daemon already stopped and checked (or never started): Drop only cleans up.
    finished: bool,
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
    fn spawn(&mut self, extra: &[OsString]) -> Child {
        let log = if self.runs == 0 {
            self.root.join("daemon.log")
        } else {
            self.root.join(format!("daemon.{}.log", self.runs))
        };
        self.runs += 1;
        let log_file = File::create(&log).expect("create daemon log");
        self.log = log;
        let bin = daemon_bin();
        let mut args = self.builder.args();
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
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
    }

    /// Starts a foreground daemon and waits until the mount is live.
    fn launch(&mut self, extra: &[OsString]) {
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
    /// it must exit non-zero within [`DAEMON_TIMEOUT`] without mounting. Returns its exit status
    /// and its log.
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
                }
                assert!(
                    !status.success(),
                    "the daemon exited 0, want a refusal to start\n{}",
                    self.log_tail()
                );
                return (status, self.log());
            }
            if self.is_mounted() {
                // The daemon serves: Drop unmounts it and checks its exit.
                self.child = Some(child);
                self.finished = false;
                panic!(
                    "the daemon mounted {} although it should have refused to start\n{}",
                    self.mnt.display(),
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
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

    /// A `sh -c SCRIPT` command with the mountpoint as working directory and `$M` (mountpoint),
    /// `$T` (scratch dir outside the mount) and `$D` (data dir) set; `LC_ALL=C` so tool
    /// messages and `ls` order are predictable.
    pub fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(&self.mnt)
            .env("M", &self.mnt)
            .env("T", &self.scratch)
            .env("D", &self.data)
            .env("LC_ALL", "C")
            .env_remove("POSIXLY_CORRECT");
        cmd
    }

    /// Starts `sh -c SCRIPT` (see [`Mount::command`]) in the background; see [`Background`].
    pub fn spawn_sh(&self, script: &str) -> Background {
        Background::spawn(self.command(script), script)
    }

    /// Every key of directory `dir` of the mount (`.` for the root, `.txn/NAME`, `.snap/NAME`)
    /// with its value, read with `cat` and stripped of trailing newlines; for one-line values.
    #[track_caller]
    pub fn values(&self, dir: &str) -> BTreeMap<String, String> {
        let text = self.ok(&format!(
            "cd '{dir}' || exit 1
             for f in *; do
               [ -e \"$f\" ] || continue
               v=$(cat \"$f\") || exit 1
               printf '%s %s\\n' \"$f\" \"$v\"
             done"
        ));
        text.lines()
            .map(|l| match l.split_once(' ') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => panic!("bad line {l:?} reading {dir}"),
            })
            .collect()
    }

    /// Runs `sh -c SCRIPT` (see [`Mount::command`]).
    pub fn sh(&self, script: &str) -> Output {
        run_with_timeout(&mut self.command(script), SCRIPT_TIMEOUT, script)
    }

    /// Runs `sh -c SCRIPT` with extra environment variables (names may hold any byte but NUL).
    pub fn sh_env(&self, script: &str, env: &[(&str, &OsStr)]) -> Output {
        let mut cmd = self.command(script);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_timeout(&mut cmd, SCRIPT_TIMEOUT, script)
    }

    /// Runs a script that must succeed; returns its stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        assert_ok(&self.sh(script), script)
    }

    /// Runs a script that must succeed without writing to stderr; returns its stdout.
    #[track_caller]
    pub fn ok_quiet(&self, script: &str) -> String {
        let out = self.sh(script);
        let stdout = assert_ok(&out, script);
        assert!(
            out.stderr.is_empty(),
            "expected no stderr from:\n{script}\n{}",
            describe(&out)
        );
        stdout
    }

    /// Runs a script that must succeed; returns its stdout as bytes.
    #[track_caller]
    pub fn ok_bytes(&self, script: &str) -> Vec<u8> {
        let out = self.sh(script);
        assert_ok(&out, script);
        out.stdout
    }

    /// Runs a script that must fail with the errno text `message`; returns its output.
    #[track_caller]
    pub fn fails(&self, script: &str, message: &str) -> Output {
        let out = self.sh(script);
        assert_errno(&out, message, script);
        out
    }

    /// `cat .stats`, checked to be `name value` lines with integer values, as a map.
    #[track_caller]
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let text = self.ok("cat .stats");
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert!(
                fields.len() == 2 && !fields[0].is_empty(),
                ".stats line {line:?} is not `name value`; whole file:\n{text}"
            );
            let value = fields[1].parse::<u64>().unwrap_or_else(|_| {
                panic!(".stats line {line:?}: value is not a counter; whole file:\n{text}")
            });
            assert!(
                map.insert(fields[0].to_owned(), value).is_none(),
                ".stats names {} twice:\n{text}",
                fields[0]
            );
        }
        map
    }

    /// `cat .txn/NAME/.ctl`, trimmed: `active`, `committed at TS` or `aborted: REASON`.
    #[track_caller]
    pub fn txn_state(&self, name: &str) -> String {
        self.ok(&format!("cat .txn/{name}/.ctl")).trim().to_owned()
    }

    /// Asserts that `.txn/NAME/.ctl` says `aborted: REASON` and returns REASON.
    #[track_caller]
    pub fn assert_aborted(&self, name: &str) -> String {
        let state = self.txn_state(name);
        match state.strip_prefix("aborted: ") {
            Some(reason) if !reason.trim().is_empty() => reason.to_owned(),
            _ => panic!(".txn/{name}/.ctl says {state:?}, want \"aborted: REASON\""),
        }
    }

    /// Asserts that `.txn/NAME/.ctl` says `committed at TS` and returns TS.
    #[track_caller]
    pub fn assert_committed(&self, name: &str) -> u64 {
        let state = self.txn_state(name);
        state
            .strip_prefix("committed at ")
            .and_then(|ts| ts.trim().parse().ok())
            .unwrap_or_else(|| panic!(".txn/{name}/.ctl says {state:?}, want \"committed at TS\""))
    }

    /// A named counter of `.stats`, which must be there.
    #[track_caller]
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        *stats
            .get(name)
            .unwrap_or_else(|| panic!(".stats has no `{name}` line: {stats:?}"))
    }

    /// The `keys` counter of `.stats`.
    #[track_caller]
    pub fn stat_keys(&self) -> u64 {
        let stats = self.stats();
        *stats
            .get("keys")
            .unwrap_or_else(|| panic!(".stats has no `keys` line: {stats:?}"))
    }

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

/// Key names 0..n as `PREFIXnnnnn` (zero padded so `ls` order is numeric order).
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

/// Lines of a listing, for exact comparisons.
pub fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// The on-disk log format, as far as the crash tests need it to damage a log on purpose. It
/// mirrors the format comment of bpf/src/wal.rs: a segment is a 16-byte header (`"BPFDBWAL"`,
/// version u32, reserved u32) and records `len u32 | crc32c u32 | seq u64 | payload`; the
/// checkpoint starts with `"BPFDBCKP"`, version u32. Little endian throughout.
pub mod wal {
    use std::path::Path;

    pub const HEADER_BYTES: u64 = 16;
    pub const RECORD_HEADER_BYTES: u64 = 16;
    /// Offset of the format version in a segment or checkpoint header.
    pub const VERSION_OFFSET: u64 = 8;
    /// The format versions bpfdb writes (bpf/src/wal.rs).
    pub const SEGMENT_VERSION: u32 = 2;
    pub const CHECKPOINT_VERSION: u32 = 3;

    /// `(offset, total length)` of each record of a segment, walking the length fields only
    /// (no checksums); stops at the first record that runs past the end of the file.
    #[track_caller]
    pub fn records(path: &Path) -> Vec<(u64, u64)> {
        let buf = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut out = Vec::new();
        let mut off = HEADER_BYTES as usize;
        while off + RECORD_HEADER_BYTES as usize <= buf.len() {
            let len = u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let total = RECORD_HEADER_BYTES as usize + len;
            if off + total > buf.len() {
                break;
            }
            out.push((off as u64, total as u64));
            off += total;
        }
        out
    }

    /// Inverts every bit of the byte at `offset`.
    #[track_caller]
    pub fn flip_byte(path: &Path, offset: u64) {
        let mut buf =
            std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let i = usize::try_from(offset).expect("offset fits in usize");
        assert!(
            i < buf.len(),
            "{} has {} bytes, cannot flip byte {offset}",
            path.display(),
            buf.len()
        );
        buf[i] ^= 0xff;
        std::fs::write(path, &buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Writes `value` as a little-endian u32 at `offset`.
    #[track_caller]
    pub fn put_u32(path: &Path, offset: u64, value: u32) {
        let mut buf =
            std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let i = usize::try_from(offset).expect("offset fits in usize");
        buf[i..i + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(path, &buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Cuts the last `n` bytes off a file.
    #[track_caller]
    pub fn truncate_by(path: &Path, n: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let len = f.metadata().expect("stat").len();
        assert!(len >= n, "{} has only {len} bytes", path.display());
        f.set_len(len - n)
            .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
    }

    /// The checkpoint file of a data directory.
    pub fn checkpoint_path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join("checkpoint")
    }

    /// The key names a checkpoint holds, in file order. It mirrors `write_checkpoint` of
    /// bpf/src/recovery.rs and `put_op` of bpf/src/wal.rs: after the 16-byte header come
    /// `next_segment u64 | first_seq u64 | count u64` (checkpoint format 3), then `count` entries
    /// `4u8 | key_len u8 | key | mode u32 | uid u32 | gid u32 | mtime_ns u64 | ctime_ns u64 |
    /// value_len u32 | value`, then a crc32c u32 of all before
    /// it (not checked here: the daemon checks it at start). Panics on a file of another shape.
    #[track_caller]
    pub fn checkpoint_keys(path: &Path) -> Vec<Vec<u8>> {
        const OP_PUT: u8 = 4;
        let buf = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let bad = |why: &str| -> ! { panic!("{}: {why}", path.display()) };
        if buf.len() < HEADER_BYTES as usize + 20 || &buf[..8] != b"BPFDBCKP" {
            bad("not a checkpoint");
        }
        let body = &buf[..buf.len() - 4];
        if buf[8..12] != CHECKPOINT_VERSION.to_le_bytes() {
            bad(&format!("not a checkpoint of format {CHECKPOINT_VERSION}"));
        }
        let mut off = HEADER_BYTES as usize + 16;
        let take = |off: &mut usize, n: usize| -> &[u8] {
            let Some(s) = body.get(*off..*off + n) else {
                bad("truncated entry")
            };
            *off += n;
            s
        };
        let count = u64::from_le_bytes(take(&mut off, 8).try_into().expect("8 bytes"));
        let mut keys = Vec::new();
        for _ in 0..count {
            let head = take(&mut off, 2);
            if head[0] != OP_PUT {
                bad(&format!(
                    "entry {} is op {}, not a put",
                    keys.len(),
                    head[0]
                ));
            }
            let key = take(&mut off, usize::from(head[1])).to_vec();
            take(&mut off, 4 + 4 + 4 + 8 + 8);
            let len = u32::from_le_bytes(take(&mut off, 4).try_into().expect("4 bytes"));
            take(&mut off, len as usize);
            keys.push(key);
        }
        if off != body.len() {
            bad(&format!(
                "{} bytes after its {count} entries",
                body.len() - off
            ));
        }
        keys
    }

    /// Size of a file in bytes.
    #[track_caller]
    pub fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .len()
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so a failing run can be
/// repeated from the seed it prints.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `$BPFDB_TEST_SEED` if set, else from the clock; prints the seed.
    pub fn from_env_or_time(what: &str) -> Rng {
        Rng::new(Rng::seed_from_env_or_time(what))
    }

    /// The seed [`Rng::from_env_or_time`] uses, for a test that repeats it in its failure
    /// messages: `$BPFDB_TEST_SEED` if set, else from the clock; prints it.
    pub fn seed_from_env_or_time(what: &str) -> u64 {
        let seed = std::env::var("BPFDB_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{what}: BPFDB_TEST_SEED={seed}");
        seed
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.next_u64() % (hi - lo)
    }
}

/// A script running in the background in its own process group, its output captured. Dropping
/// it unfinished kills the whole group, so a failing test leaves no shell loops behind.
pub struct Background {
    child: Option<Child>,
    what: String,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    fn spawn(mut cmd: Command, what: &str) -> Background {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        Background {
            child: Some(child),
            what: what.to_owned(),
            out: Some(std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = out.read_to_end(&mut v);
                v
            })),
            err: Some(std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = err.read_to_end(&mut v);
                v
            })),
        }
    }

    fn kill_group(child: &Child) {
        let pgid = i32::try_from(child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) of the process group we created for this script.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }

    /// Waits up to `timeout` for the script to end and returns its output; kills it and fails
    /// the test if it is still running then.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("not finished yet");
        let Some(status) = wait_timeout(&mut child, timeout) else {
            Background::kill_group(&child);
            let _ = child.wait();
            panic!(
                "background script still running after {} s; killed it:\n{}",
                timeout.as_secs(),
                self.what
            );
        };
        // The scripts `wait` for their own background jobs, so the pipes close with them.
        Output {
            status,
            stdout: self
                .out
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            stderr: self
                .err
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Background::kill_group(&child);
            let _ = child.wait();
        }
    }
}
