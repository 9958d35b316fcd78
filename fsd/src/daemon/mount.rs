//! Mounting and unmounting, done here rather than by fuser: fuser's own
//! mount drops the subtype (the mount shows as plain `fuse`), and at the end
//! of a session it unmounts the mountpoint path again even when the mount is
//! already gone, which warns and could hit a newer mount at the same path.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, umount2};
use nix::sys::signal::{SigSet, Signal};

/// Mounts a FUSE filesystem `bpfdb` of type `fuse.bpfdb` on `mountpoint`
/// and returns the /dev/fuse connection that serves it.
pub fn mount(mountpoint: &Path, allow_other: bool) -> Result<OwnedFd, String> {
    let dev: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| format!("opening /dev/fuse: {e} (is the fuse module loaded?)"))?;
    let root_mode = std::fs::metadata(mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?
        .mode()
        & libc::S_IFMT;
    // default_permissions: the kernel checks every access against the
    // modes and owners the daemon reports (keys as recorded; the root,
    // `.ctl`, `.txn` and `.snap` as fixed attributes), so users that
    // allow_other lets in obey them. Root keeps its usual override.
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    nix::mount::mount(
        Some("bpfdb"),
        mountpoint,
        Some("fuse.bpfdb"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| format!("mounting {}: {e}", mountpoint.display()))?;
    Ok(dev.into())
}

/// Unmounts, detaching instead when the mount is busy: then the session
/// ends once the last open file or cwd inside it is gone.
pub fn unmount(mountpoint: &Path) {
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => {}
        Err(Errno::EBUSY) => match umount2(mountpoint, MntFlags::MNT_DETACH) {
            Ok(()) => info!(
                "{} is busy: detached it; the daemon exits once nothing uses it",
                mountpoint.display()
            ),
            Err(e) => warn!("detaching {}: {e}", mountpoint.display()),
        },
        Err(Errno::EINVAL) => debug!("{} is not mounted any more", mountpoint.display()),
        Err(e) => warn!("unmounting {}: {e}", mountpoint.display()),
    }
}

pub fn shutdown_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it
/// starts afterwards, so only `watch_signals` receives them.
pub fn block_shutdown_signals() -> Result<(), String> {
    shutdown_signals()
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))
}

/// Starts the thread that unmounts on each SIGINT/SIGTERM; the FUSE session
/// then ends and the main thread exits.
pub fn watch_signals(mountpoint: PathBuf) -> Result<(), String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = shutdown_signals();
            loop {
                match set.wait() {
                    Ok(sig) => {
                        info!("{sig}: unmounting {}", mountpoint.display());
                        unmount(&mountpoint);
                    }
                    Err(e) => {
                        warn!("sigwait: {e}; signals no longer unmount");
                        return;
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("starting the signal thread: {e}"))
}
