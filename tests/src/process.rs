//! Processes: the daemon binary, mounts in /proc, pids, signals, commands run with a
//! timeout, and the assertions on their output.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

pub(crate) fn signal_name(sig: i32) -> &'static str {
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

/// A command running in a process group of its own, stdin closed, with a thread reading each
/// of its stdout and stderr to the end (so a child that writes much never blocks on a pipe).
pub(crate) struct Piped {
    pub(crate) child: Child,
    out: JoinHandle<Vec<u8>>,
    err: JoinHandle<Vec<u8>>,
}

impl Piped {
    /// Starts `cmd`; fails the test, naming `what`, if it cannot.
    pub(crate) fn spawn(cmd: &mut Command, what: &str) -> Piped {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        Piped {
            child,
            out: read_to_end_in_thread(out),
            err: read_to_end_in_thread(err),
        }
    }

    /// Kills the command's whole process group (what it started too).
    pub(crate) fn kill_group(&self) {
        let pgid = i32::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) of the process group `spawn` created for this command.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }

    /// The output of the command, which has ended with `status`; waits for its pipes to close.
    pub(crate) fn output(self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: self.out.join().expect("stdout reader"),
            stderr: self.err.join().expect("stderr reader"),
        }
    }
}

fn read_to_end_in_thread(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    })
}

/// Runs `cmd` (stdout and stderr captured), killing its whole process group and failing the
/// test if it is still running after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    let mut piped = Piped::spawn(cmd, what);
    let Some(status) = wait_timeout(&mut piped.child, timeout) else {
        piped.kill_group();
        let _ = piped.child.wait();
        panic!(
            "{what} still running after {} s; killed it (a hung daemon?)",
            timeout.as_secs()
        );
    };
    piped.output(status)
}

pub(crate) fn describe(out: &Output) -> String {
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

/// Unmounts `mnt` (a mount the fixture did not make) and waits for its daemon to exit;
/// returns whether it did within [`crate::DAEMON_TIMEOUT`].
pub fn umount_and_wait(mnt: &Path) -> bool {
    let _ = Command::new("umount").arg(mnt).status();
    wait_until(crate::DAEMON_TIMEOUT, || pids_with_arg(mnt).is_empty())
}

/// Asserts that `echo v > MNT/k && cat MNT/k` works, in a shell of its own.
#[track_caller]
pub fn assert_echo_cat(mnt: &Path, what: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo v > {0}/k && cat {0}/k", mnt.display()))
        .output()
        .expect("sh");
    assert_eq!(assert_ok(&out, what), "v\n", "{what}");
}
