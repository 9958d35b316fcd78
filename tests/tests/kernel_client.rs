//! The standalone kernel client in contrib/kernel-client (`bpfdb-peek`):
//! an eBPF program of another object, loaded over a running daemon's
//! pinned maps, reads what the mount wrote, at one snapshot, through the
//! kernel-side API (docs/KERNEL-CLIENTS.md).

use std::path::PathBuf;
use std::process::Command;

use bpfdb_tests::{Mount, daemon_bin};

/// A bpffs directory for one test, removed (unpinned) when it ends.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bpfdb-peek` beside the daemon (built by `make build` with the workspace).
fn peek(pin: &PinDir, key: &str) -> (i32, Vec<u8>, String) {
    let bin = daemon_bin().with_file_name("bpfdb-peek");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace",
        bin.display()
    );
    let out = Command::new(&bin)
        .arg(&pin.0)
        .arg(key)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), out.stdout, stderr)
}

#[test]
fn peek_reads_what_the_mount_wrote_from_the_pinned_maps() {
    let pin = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/bpfdb-e2e-peek-{}",
        std::process::id()
    )));
    let m = Mount::builder()
        .arg(format!("--pin-dir={}", pin.0.display()))
        .start();
    m.ok("env echo hello > greeting && head -c 3000 /dev/urandom | base64 -w0 > page && printf '' > empty");
    m.ok("head -c 5000 /dev/urandom > big");
    let (code, out, err) = peek(&pin, "greeting");
    assert_eq!((code, out.as_slice()), (0, &b"hello\n"[..]), "{err}");
    let (code, out, err) = peek(&pin, "page");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, std::fs::read(m.path().join("page")).unwrap());
    let (code, out, _) = peek(&pin, "empty");
    assert_eq!((code, out.len()), (0, 0));
    // A transaction's commit is seen whole: both keys at once, or neither.
    m.ok(
        "mkdir .txn/t && env echo one > .txn/t/greeting && env echo two > .txn/t/page \
         && env echo commit > .txn/t/.ctl && rmdir .txn/t",
    );
    assert_eq!(peek(&pin, "greeting").1, b"one\n");
    assert_eq!(peek(&pin, "page").1, b"two\n");
    let (code, _, err) = peek(&pin, "nope");
    assert_eq!(code, 1, "a missing key: {err}");
    assert!(err.contains("no such key"), "{err}");
    let (code, _, err) = peek(&pin, "big");
    assert_eq!(code, 2, "a value over one page is refused: {err}");
    assert!(err.contains("over one page"), "{err}");
    let (code, _, err) = peek(&pin, "a/b");
    assert_eq!(code, 2, "{err}");
}
