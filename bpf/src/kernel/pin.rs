//! Pinning the engine's data maps in bpffs, so that a restarted daemon can
//! reuse the kernel state (hot restart: new programs, same data) instead of
//! replaying the log. Programs are never pinned; without a pin directory
//! nothing is left in bpffs after exit.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use log::{info, warn};

use crate::error::{Error, Result};
use crate::kernel::abi::{self, PinnedLayout};
use crate::kernel::layout::Layout;

/// The engine's maps holding data, by skeleton field name, which is also
/// the pin name: the one list of them. `clock` carries the commit clock,
/// `bss` the allocator counters and statistics. Calls `$then!(ARGS; names...)`.
macro_rules! data_maps {
    ($then:ident ($($args:tt)*)) => {
        $then!($($args)*; records, records_top, records_below, long_names, small_pool, page_pool, page_free, txns, wal, layout, clock, bss)
    };
}
pub(crate) use data_maps;

macro_rules! names {
    (; $($name:ident),+) => {
        [$(stringify!($name)),+]
    };
}

/// Pin names of the data maps.
pub const PINNED_MAPS: [&str; 12] = data_maps!(names());

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure `dir` exists on bpffs, mounting bpffs at /sys/fs/bpf if the
/// directory is below it and it is not mounted yet.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    let on_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if dir.starts_with(BPFFS) && !on_bpffs(Path::new(BPFFS)) {
        nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::new(e as i32, format!("mount bpffs at {BPFFS}: {e}")))?;
        info!("mounted bpffs at {BPFFS}");
    }
    // Ours alone: whoever can write the directory can delete the pins (and
    // make the next start fail) or put maps of their own in their place.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(&format!("create {}", dir.display()), &e))?;
    if !on_bpffs(dir) {
        return Err(Error::new(
            libc::EINVAL,
            format!("pin directory {} is not on bpffs", dir.display()),
        ));
    }
    check_owner(dir)
}

/// Refuses a pin directory another user could write: not owned by the
/// daemon's user, or writable by group or others.
fn check_owner(dir: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(dir).map_err(|e| Error::io(&format!("stat {}", dir.display()), &e))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::new(
            libc::EPERM,
            format!(
                "pin directory {} is owned by uid {}, not by uid {me} running bpfdb; refusing to pin there",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::new(
            libc::EPERM,
            format!(
                "pin directory {} (mode {:o}) is writable by other users; refusing to pin there (chmod go-w, or name a new directory)",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The layout pinned in `dir`, or None if nothing is pinned there. Pinned
/// maps that a start did not finish recovering into hold part of the data:
/// they are unpinned and None returned, so that this start recovers from
/// the data dir instead.
pub fn read_layout(dir: &Path) -> Result<Option<PinnedLayout>> {
    let found = read_layout_record(dir)?;
    if found.is_some_and(|l| l.magic == abi::LAYOUT_MAGIC_RECOVERING) {
        warn!(
            "the maps pinned in {} are from a start that did not finish recovering into them: \
             discarding them and recovering from the data dir",
            dir.display()
        );
        unpin(dir)?;
        prepare_dir(dir)?;
        return Ok(None);
    }
    Ok(found)
}

fn read_layout_record(dir: &Path) -> Result<Option<PinnedLayout>> {
    let path = dir.join("layout");
    if !path.exists() {
        return Ok(None);
    }
    let map = MapHandle::from_pinned_path(&path)?;
    let bytes = map
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
        .ok_or_else(|| Error::new(libc::EIO, "pinned layout map is empty"))?;
    if bytes.len() != std::mem::size_of::<PinnedLayout>() {
        return Err(Error::new(
            libc::EINVAL,
            "pinned layout has another size: an incompatible bpfdb pinned it",
        ));
    }
    // SAFETY: PinnedLayout is repr(C) plain data of exactly this size.
    Ok(Some(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast::<PinnedLayout>())
    }))
}

/// Refuses pinned state of another layout version or other sizes.
pub fn check(found: &PinnedLayout, want: &Layout, dir: &Path) -> Result<()> {
    let mine = describe(want, 0, true);
    // The seed and the slot numbering may differ: neither is in the data.
    let theirs = PinnedLayout {
        hash_seed: 0,
        kernel_slot_base: mine.kernel_slot_base,
        ..*found
    };
    if found.magic != abi::LAYOUT_MAGIC || found.version != abi::LAYOUT_VERSION || theirs != mine {
        return Err(Error::new(
            libc::EINVAL,
            format!(
                "pinned state in {} has layout {theirs:?}, this daemon wants {mine:?}; \
                 start with the same sizes, or remove the directory to recover from the log",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// The layout record of maps of layout `l`; `complete` is false while a
/// start is still recovering into freshly pinned maps.
pub fn describe(l: &Layout, hash_seed: u64, complete: bool) -> PinnedLayout {
    PinnedLayout {
        magic: if complete {
            abi::LAYOUT_MAGIC
        } else {
            abi::LAYOUT_MAGIC_RECOVERING
        },
        version: abi::LAYOUT_VERSION,
        max_keys: l.max_keys,
        small_granules: l.small_granules,
        pages: l.pages,
        wal_buffer: l.wal_buffer,
        kernel_slot_base: l.kernel_slot_base(),
        hash_seed,
    }
}

/// Writes the layout into the (pinned) layout map.
pub fn write_layout(map: &dyn MapCore, layout: &PinnedLayout) -> Result<()> {
    // SAFETY: viewing a repr(C) plain-data struct as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (layout as *const PinnedLayout).cast::<u8>(),
            std::mem::size_of::<PinnedLayout>(),
        )
    };
    map.update(&0u32.to_ne_bytes(), bytes, MapFlags::ANY)?;
    Ok(())
}

/// Removes pinned state (after which the next start recovers from the log).
pub fn unpin(dir: &Path) -> Result<()> {
    for name in PINNED_MAPS {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p)
                .map_err(|e| Error::io(&format!("unpin {}", p.display()), &e))?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| Error::io(&format!("remove {}", dir.display()), &e))
}
