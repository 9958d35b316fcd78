//! Hot restart: with --pin-dir the data maps stay pinned in bpffs, and a
//! daemon started after a `kill -9` reuses them instead of replaying the
//! log; without --pin-dir nothing is pinned.

use std::path::PathBuf;

use bpfdb_tests::{Mount, msg};

/// A bpffs directory for one test, removed (unpinned) when it ends.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/bpfdb-e2e-{tag}-{}",
            std::process::id()
        )))
    }

    fn arg(&self) -> String {
        format!("--pin-dir={}", self.0.display())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn kill_9_then_restart_reuses_the_pinned_state_without_the_log() {
    let pin = PinDir::new("kill");
    let mut m = Mount::builder().arg(pin.arg()).start();
    m.ok("env echo hello > a && env echo world > b && chmod 600 b && mkdir .txn/t1 && env echo staged > .txn/t1/a");
    m.ok("head -c 300000 /dev/urandom > $T/big && cp $T/big big");
    // t1 lists the root: from here no one else adds a name there until t1 ends.
    m.ok("ls .txn/t1 >/dev/null");
    m.fails("env echo new > fresh", msg::EBUSY);
    assert!(
        pin.0.join("records").exists(),
        "maps pinned in {}",
        pin.0.display()
    );
    m.kill9();
    // The pinned maps hold everything: take the log away to prove it.
    for seg in m.wal_segments() {
        std::fs::remove_file(&seg).unwrap();
    }
    m.start_again(); // with the same --pin-dir
    assert!(
        m.log().contains("reusing the maps pinned"),
        "{}",
        m.log_tail()
    );
    assert_eq!(m.ok("cat a b"), "hello\nworld\n");
    assert_eq!(m.ok("stat -c %a b"), "600\n");
    m.ok("cmp big $T/big");
    // The transaction open at the kill was aborted: its locks are gone,
    // the one its listing took on the root's names too.
    m.ok("env echo free > a && cat a && env echo new > fresh");
    // The restart wrote a checkpoint: once the pins are gone (a reboot),
    // the same state is recovered from DATA_DIR alone.
    m.umount_expect_clean_exit();
    std::fs::remove_dir_all(&pin.0).unwrap();
    m.start_again();
    assert!(
        !m.log().contains("reusing the maps pinned"),
        "{}",
        m.log_tail()
    );
    assert_eq!(m.ok("cat a b"), "free\nworld\n");
    m.ok("cmp big $T/big");
}

#[test]
fn pinned_state_of_other_sizes_refuses_to_start() {
    let pin = PinDir::new("sizes");
    let mut m = Mount::builder().arg(pin.arg()).start();
    m.umount_expect_clean_exit();
    let (_, log) = m.start_expect_failure(&["-o", "max_keys=777"]);
    assert!(log.contains("pinned state"), "{log}");
}

/// Another user who controls the pin directory could delete or replace the
/// pinned maps: a directory not owned by root, or writable by others (bpffs
/// itself is world-writable with the sticky bit), is refused; one the daemon
/// creates is root's, mode 0700.
#[test]
fn pin_directory_another_user_controls_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let mut m = Mount::new();
    m.umount_expect_clean_exit();

    let foreign = PinDir::new("foreign");
    std::fs::create_dir(&foreign.0).unwrap();
    std::os::unix::fs::chown(&foreign.0, Some(65534), Some(65534)).unwrap();
    let (_, log) = m.start_expect_failure(&[&foreign.arg()]);
    assert!(log.contains("owned by uid 65534"), "{log}");

    let open = PinDir::new("open");
    std::fs::create_dir(&open.0).unwrap();
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (_, log) = m.start_expect_failure(&[&open.arg()]);
    assert!(log.contains("writable by other users"), "{log}");

    let fresh = PinDir::new("fresh");
    m.start_again_with(&[&fresh.arg()]);
    let meta = std::fs::metadata(&fresh.0).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
}

/// A first start with --pin-dir pins fresh maps, then recovers into them. A start that fails (or
/// is killed) partway through that recovery leaves pinned maps holding part of the data; the next
/// start must not take them for a hot restart's complete state (it would serve without the rest
/// of the committed keys) but discard them and recover from DATA_DIR again.
#[test]
fn pinned_maps_of_a_start_that_did_not_finish_recovering_are_not_reused() {
    let pin = PinDir::new("partial");
    // No pins yet: 1500 keys in DATA_DIR.
    let mut m = Mount::builder().max_keys(20_000).start();
    m.ok("for i in $(seq 1 1500); do env echo $i > k$i; done");
    m.umount_expect_clean_exit();
    // Room for 1000 keys only: the recovery into the fresh pinned maps fails partway.
    let small = ["-o", "max_keys=1000"];
    let (_, log) = m.start_expect_failure(&[&pin.arg(), small[0], small[1]]);
    assert!(log.contains("No space left"), "{log}");
    assert!(pin.0.join("records").exists(), "the maps were pinned");
    // The same sizes again: the partial maps are no hot-restart state. This start must recover
    // from DATA_DIR, and fail as the first did, not serve part of the keys.
    let (_, log) = m.start_expect_failure(&[&pin.arg(), small[0], small[1]]);
    assert!(
        log.contains("did not finish recovering"),
        "{}",
        m.log_tail()
    );
    // Room enough, other sizes: every key, from DATA_DIR.
    m.start_again_with(&[&pin.arg()]);
    assert!(
        !m.log().contains("reusing the maps pinned"),
        "{}",
        m.log_tail()
    );
    assert_eq!(m.ok("ls | grep -c '^k'"), "1500\n");
    assert_eq!(m.ok("cat k1 k1500"), "1\n1500\n");
    // Now complete: a kill -9 and a start with the same pins is a hot restart.
    m.kill9();
    m.start_again_with(&[&pin.arg()]);
    assert!(
        m.log().contains("reusing the maps pinned"),
        "{}",
        m.log_tail()
    );
    assert_eq!(m.ok("ls | grep -c '^k'"), "1500\n");
}

#[test]
fn a_hot_restart_keeps_the_tree() {
    let pin = PinDir::new("tree");
    let mut m = Mount::builder().arg(pin.arg()).start();
    m.ok(
        "mkdir -p a/b/c && env echo deep > a/b/c/k && ln -s b/c/k a/l && chmod 700 a/b \
          && mkdir d && mv a/b d/moved",
    );
    let before = m.ok("find a d | sort && cat d/moved/c/k && stat -c '%a %F' d/moved a/l");
    m.kill9();
    // The pinned maps hold the tree: take the log away to prove it.
    for seg in m.wal_segments() {
        std::fs::remove_file(&seg).unwrap();
    }
    m.start_again();
    assert!(
        m.log().contains("reusing the maps pinned"),
        "{}",
        m.log_tail()
    );
    let after = m.ok("find a d | sort && cat d/moved/c/k && stat -c '%a %F' d/moved a/l");
    assert_eq!(after, before);
    assert_eq!(
        before,
        "a\na/l\nd\nd/moved\nd/moved/c\nd/moved/c/k\ndeep\n700 directory\n777 symbolic link\n"
    );
    // And it goes on: a new directory gets an id of its own.
    assert_eq!(
        m.ok("mkdir e && env echo x > e/x && cat e/x d/moved/c/k"),
        "x\ndeep\n"
    );
}
