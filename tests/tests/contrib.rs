//! What `contrib/` ships for operators works: the fstab line mounts with `mount --fstab` (an
//! fstab of the test's own, the paths replaced by temporary ones), and the systemd unit passes
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bpfdb_tests::{assert_echo_cat, daemon_bin, is_fuse_mount, run_with_timeout, umount_and_wait};

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(file)
}

/// The file with the installed paths replaced.
fn localized(file: &str, swaps: &[(&str, &Path)]) -> String {
    let mut text = std::fs::read_to_string(contrib(file)).expect("read contrib file");
    for (from, to) in swaps {
        assert!(text.contains(from), "{file} no longer names {from}");
        text = text.replace(from, &to.display().to_string());
    }
    text
}

#[test]
fn the_fstab_line_mounts_with_mount_fstab() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let bin = daemon_bin();
    let fstab = dir.path().join("fstab");
    let text = localized(
        "fstab",
        &[
            ("/usr/local/bin/bpfdb", &bin),
            ("/var/lib/bpfdb", &data),
            ("/srv/bpfdb", &mnt),
        ],
    );
    std::fs::write(&fstab, text).expect("write fstab");
    let out = run_with_timeout(
        Command::new("mount").arg("--fstab").arg(&fstab).arg(&mnt),
        Duration::from_secs(60),
        "mount --fstab",
    );
    let mounted = is_fuse_mount(&mnt);
    if !out.status.success() || !mounted {
        umount_and_wait(&mnt);
        panic!("mount --fstab did not mount (mounted: {mounted}): {out:?}");
    }
    assert_echo_cat(&mnt, "a write through the fstab mount");
    assert!(
        umount_and_wait(&mnt),
        "the daemon did not exit after umount"
    );
    assert!(
        data.join("checkpoint").exists(),
        "no checkpoint after a clean unmount"
    );
}

fn verify(unit: &Path) -> std::process::Output {
    run_with_timeout(
        Command::new("systemd-analyze").arg("verify").arg(unit),
        Duration::from_secs(60),
        "systemd-analyze verify",
    )
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = daemon_bin();
    let text = localized("systemd/bpfdb.service", &[("/usr/local/bin/bpfdb", &bin)]);
    let unit = dir.path().join("bpfdb.service");
    std::fs::write(&unit, &text).expect("write unit");
    let out = verify(&unit);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify of contrib/systemd/bpfdb.service: {out:?}"
    );
    // The check can fail: a relative ExecStart is refused.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        text.replace(&bin.display().to_string(), "bpfdb-nowhere"),
    )
    .expect("write unit");
    assert!(
        !verify(&broken).status.success(),
        "systemd-analyze verify accepted a unit whose ExecStart does not exist"
    );
}
