//! Fixtures for the end-to-end tests.
//!
//! A [`Mount`] is one bpfdb daemon (`target/release/bpfdb`, or `$BPFDB_BIN`) running in the
//! foreground as a child process, with its data directory and mountpoint in a fresh tempdir.
//! Tests drive the mount only through real processes (`sh -c` and the shell tools it runs), so
//! what they check is what a person at a shell sees. Dropping a `Mount` unmounts it and fails
//! the test unless the daemon then exited 0 and the mount is gone.

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

/// How long a daemon may take to mount, and to exit after an unmount or a signal.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Names at the mount root that are never keys (docs/SEMANTICS.md, "Namespace").
pub const RESERVED: [&str; 4] = [".stats", ".txn", ".snap", ".ctl"];

/// The reserved entries a listing shows (`.ctl` is absent until a feature defines it), in
/// `LC_ALL=C ls -A` order.
pub const LISTED_RESERVED: [&str; 3] = [".snap", ".stats", ".txn"];

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
        let data = root.join("data");
        let mnt = root.join("mnt");
        let scratch = root.join("scratch");
        for d in [&data, &mnt, &scratch] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let log = root.join("daemon.log");
        let log_file = File::create(&log).expect("create daemon log");
        let bin = daemon_bin();
        let mut args = self.args();
        args.push(data.clone().into());
        args.push(mnt.clone().into());

        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log fd"))
            .stderr(log_file)
            .env_remove("RUST_LOG");
        // BPFDB_TEST_LOG=debug makes the daemons log verbosely for a debugging session; the
        // default is the daemon's own, which is what the log assertions check.
        if let Some(level) = std::env::var_os("BPFDB_TEST_LOG") {
            cmd.env("RUST_LOG", level);
        }
        let mut mount = Mount {
            dir: Some(dir),
            data,
            mnt,
            scratch,
            log,
            args,
            child: None,
            foreground: self.foreground,
            finished: false,
        };
        if self.foreground {
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
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            mount.child = Some(child);
            mount.wait_mounted();
        } else {
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
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

/// One running daemon and its mount; see the crate docs.
pub struct Mount {
    dir: Option<TempDir>,
    data: PathBuf,
    mnt: PathBuf,
    scratch: PathBuf,
    log: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    foreground: bool,
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
        let mut cmd = Command::new("umount");
        cmd.arg(&self.mnt);
        let out = run_with_timeout(&mut cmd, DAEMON_TIMEOUT, "umount");
        assert_ok(&out, "umount MOUNTPOINT");
        self.expect_clean_exit("umount");
    }

    #[track_caller]
    fn expect_clean_exit(&mut self, after: &str) {
        if !self.foreground {
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
                status.success(),
                "daemon exited with {status} (signal {:?}) after {after}, want 0\n{}",
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
