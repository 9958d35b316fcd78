//! Loading the engine: open -> size maps -> set rodata -> load -> fill the
//! prog array -> attach the dispatcher to the trigger -> mmap the slots.
//! Every kernel resource is held by a value that releases it on drop.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, UprobeOpts};
use log::info;

use crate::error::{Error, Result};
use crate::kernel::abi::{self, Slot, Stats};
use crate::kernel::layout::Layout;
use crate::kernel::pin;
use crate::kernel::pools::{self, Pool, PoolState, SegmentMap};
use crate::kernel::trigger;
use crate::options::Options;

mod skel {
    #![allow(
        clippy::all,
        non_camel_case_types,
        non_snake_case,
        dead_code,
        unused_imports
    )]
    include!(concat!(env!("OUT_DIR"), "/engine.skel.rs"));
}
use skel::{EngineSkel, EngineSkelBuilder};

/// `(pin name, &mut map)` of every data map of a skeleton's `maps` (open
/// or loaded), from the one list in `pin::data_maps`.
macro_rules! paired_mut {
    ($m:expr; $($name:ident),+) => {
        [$((stringify!($name), &mut $m.$name)),+]
    };
}

/// `(name, &dyn MapCore)` of every data map.
macro_rules! paired {
    ($m:expr; $($name:ident),+) => {
        [$((stringify!($name), &$m.$name as &dyn MapCore)),+]
    };
}

/// An mmap'ed array map of `T` (the slots, the clock); unmapped on drop.
struct Mapped<T> {
    base: NonNull<T>,
    len: usize,
}

impl<T> Mapped<T> {
    fn new(fd: std::os::fd::BorrowedFd<'_>, entries: u32) -> Result<Mapped<T>> {
        let len = (std::mem::size_of::<T>() * entries as usize).next_multiple_of(4096);
        // SAFETY: mapping an mmapable BPF array map we own; length covers
        // exactly its value area (T's size is a multiple of 8, as the
        // kernel's element stride).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::io("mmap of a map", &std::io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast::<T>())
            .ok_or_else(|| Error::new(libc::EIO, "mmap returned null"))?;
        Ok(Mapped { base, len })
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Which of the two records maps a walk reads: the top-level keys' (no
/// '/' in the name) or the others' (the inner maps of `records`,
/// bpfdb_kernel.h; a map key's `abi::HKEY_TOP` bit says which holds its
/// record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Records {
    Top,
    Below,
}

/// What one `records_batch` call found.
pub struct RecordBatch {
    /// Records copied.
    pub count: usize,
    /// Cursor of the next call.
    pub next: u32,
    /// Every bucket was walked.
    pub done: bool,
}

/// A loaded and attached engine instance.
pub struct Engine {
    /// The value pools, grown in segments as the data needs.
    pub small: Pool,
    pub pages: Pool,
    slots: Mapped<Slot>,
    clock: Mapped<abi::Clock>,
    _link: Link,
    // Fields drop in declaration order: the skeleton (maps, programs) goes
    // after the link and mapping, and before the object storage it borrows.
    skel: EngineSkel<'static>,
    _object: Box<MaybeUninit<OpenObject>>,
    pub layout: Layout,
    pub instance: u32,
    /// The data maps came from a pinned earlier run.
    pub reused: bool,
    /// Seed the records map is keyed with (the pinned one when reused).
    pub hash_seed: u64,
}

/// Storage for a skeleton's open object, and the `'static` borrow the
/// skeleton keeps of it. The caller holds the box in a field declared after
/// the skeleton's, so that it drops after the skeleton.
pub(crate) fn object_storage() -> (
    Box<MaybeUninit<OpenObject>>,
    &'static mut MaybeUninit<OpenObject>,
) {
    let mut object = Box::new(MaybeUninit::<OpenObject>::uninit());
    // SAFETY: the box gives the object a stable address, and the caller
    // keeps the box until after the skeleton that borrows it (above).
    let object_ref = unsafe { &mut *(object.as_mut() as *mut MaybeUninit<OpenObject>) };
    (object, object_ref)
}

/// libbpf maps `.bss` onto the kernel map only for maps it created; a
/// reused one would leave the skeleton reading its private initial image.
/// Map the pinned map at the same address instead.
fn remap_reused_bss(skel: &EngineSkel<'static>) -> Result<()> {
    let bss = skel
        .maps
        .bss_data
        .as_deref()
        .ok_or_else(|| Error::new(libc::EIO, "engine has no .bss"))?;
    let addr = bss as *const skel::types::bss as *mut libc::c_void;
    let len = std::mem::size_of::<skel::types::bss>().next_multiple_of(4096);
    // SAFETY: replaces the skeleton's own anonymous mapping of exactly this
    // range (page aligned by libbpf) with the map's shared memory.
    let p = unsafe {
        libc::mmap(
            addr,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            skel.maps.bss.as_fd().as_raw_fd(),
            0,
        )
    };
    if p != addr {
        return Err(Error::io(
            "mmap pinned .bss",
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

// SAFETY: the skeleton is only used to read .bss counters after load; slots
// are handed out to one user at a time by Db.
unsafe impl Send for Engine {}
unsafe impl Sync for Engine {}

/// libbpf's own messages (the verifier's log among them) go to `log`, so
/// `RUST_LOG` shows them beside the daemon's: warnings as warnings, its
/// info and debug lines at debug.
fn libbpf_print(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        libbpf_rs::PrintLevel::Warn => log::warn!("libbpf: {msg}"),
        _ => log::debug!("libbpf: {msg}"),
    }
}

/// The two value pools over the loaded skeleton's arrays of segments and
/// its .bss counters.
fn make_pools(skel: &EngineSkel<'static>, layout: &Layout) -> Result<(Pool, Pool)> {
    let bss = skel
        .maps
        .bss_data
        .as_deref()
        .map(|b| b as *const skel::types::bss as *mut skel::types::bss)
        .ok_or_else(|| Error::new(libc::EIO, "engine has no .bss"))?;
    // SAFETY: the counters are u64 fields of the mmap'ed .bss, which the
    // skeleton keeps mapped for as long as the engine owning the pools.
    unsafe {
        let small = Pool::new(
            "small_pool",
            libbpf_rs::MapHandle::try_from(&skel.maps.small_pool)?,
            abi::SMALL_SEG,
            SegmentMap {
                value_size: abi::SMALL_SEG_BYTES,
                entries: 1,
            },
            (abi::SMALL_MAX / abi::GRANULE) as u64,
            layout.small_granules as u64,
            std::ptr::addr_of_mut!((*bss).small_ready),
            std::ptr::addr_of!((*bss).small_next),
        )?;
        let pages = Pool::new(
            "page_pool",
            libbpf_rs::MapHandle::try_from(&skel.maps.page_pool)?,
            abi::PAGE_SEG,
            SegmentMap {
                value_size: abi::PAGE_SIZE as u32,
                entries: abi::PAGE_SEG,
            },
            1,
            layout.pages as u64,
            std::ptr::addr_of_mut!((*bss).page_ready),
            std::ptr::addr_of!((*bss).page_next),
        )?;
        Ok((small, pages))
    }
}

impl Engine {
    pub fn load(opts: &Options, instance: u32) -> Result<Engine> {
        static ROUTE_LIBBPF: std::sync::Once = std::sync::Once::new();
        ROUTE_LIBBPF.call_once(|| {
            libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_print)));
        });
        let layout = Layout::from_options(opts)?;
        let (object, object_ref) = object_storage();
        let mut open = EngineSkelBuilder::default().open(object_ref)?;

        open.maps.slots.set_max_entries(layout.slot_entries())?;
        // Either may hold every key; the engine caps both together.
        open.maps.records_top.set_max_entries(layout.max_keys)?;
        open.maps.records_below.set_max_entries(layout.max_keys)?;
        open.maps.long_names.set_max_entries(layout.max_keys)?;
        open.maps.small_pool.set_max_entries(pools::segments_for(
            layout.small_granules as u64,
            abi::SMALL_SEG,
        )?)?;
        open.maps
            .page_pool
            .set_max_entries(pools::segments_for(layout.pages as u64, abi::PAGE_SEG)?)?;
        open.maps.page_free.set_max_entries(layout.pages)?;
        open.maps.wal.set_max_entries(layout.wal_buffer)?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| Error::new(libc::EIO, "engine has no .rodata"))?;
        rodata.max_value = opts.max_value_bytes;
        rodata.read_pause_loops = opts.read_pause_loops.min(abi::READ_PAUSE_MAX - 1);
        rodata.alloc_pause_loops = opts.alloc_pause_loops.min(abi::READ_PAUSE_MAX - 1);
        rodata.alloc_pause_len = opts.alloc_pause_len;
        rodata.top_commit_pause_loops = opts.top_commit_pause_loops.min(abi::READ_PAUSE_MAX - 1);
        if opts.lock_cas_tries > 0 {
            rodata.lock_cas_tries = opts.lock_cas_tries.min(abi::LOCK_CAS_TRIES);
        }
        rodata.kernel_slot_base = layout.kernel_slot_base();
        info!(
            "engine {instance}: sizing maps: at most {} keys, {} granules of {} B, {} pages of {} B; {} slots; up to ~{} MiB at those caps",
            layout.max_keys,
            layout.small_granules,
            abi::GRANULE,
            layout.pages,
            abi::PAGE_SIZE,
            layout.slot_entries(),
            layout.map_bytes() >> 20
        );
        // Hot restart: reuse pinned data maps of the same layout.
        let pinned = match &opts.pin_dir {
            Some(dir) => {
                pin::prepare_dir(dir)?;
                pin::read_layout(dir)?
            }
            None => None,
        };
        if let (Some(found), Some(dir)) = (&pinned, &opts.pin_dir) {
            pin::check(found, &layout, dir)?;
            for (name, map) in pin::data_maps!(paired_mut(open.maps)) {
                map.reuse_pinned_map(dir.join(name))?;
            }
            info!(
                "engine {instance}: reusing the maps pinned in {}",
                dir.display()
            );
        }
        let mut skel = open.load()?;
        info!("engine {instance}: programs verified and loaded");
        let hash_seed = match &pinned {
            Some(found) => {
                remap_reused_bss(&skel)?;
                found.hash_seed
            }
            None => opts.hash_seed,
        };
        // Always written, pinned or not: kernel clients read the seed and
        // the slot numbering (which a restart may change) from it. Fresh
        // pinned maps are marked as being recovered into until
        // `finish_recovery`, so that a start that dies before then leaves
        // nothing the next one would take for complete state.
        let fresh_pins = pinned.is_none() && opts.pin_dir.is_some();
        pin::write_layout(
            &skel.maps.layout,
            &pin::describe(&layout, hash_seed, !fresh_pins),
        )?;
        if let (None, Some(dir)) = (&pinned, &opts.pin_dir) {
            for (name, map) in pin::data_maps!(paired_mut(skel.maps)) {
                map.pin(dir.join(name))?;
            }
            info!("engine {instance}: data maps pinned in {}", dir.display());
        }

        // The prog array, by the stage ids of enum db_stage (bpfdb.h).
        let stages: [(u64, &libbpf_rs::ProgramMut); abi::STAGE_COUNT] = [
            (abi::h::DB_STAGE_GET, &skel.progs.stage_get),
            (abi::h::DB_STAGE_SET_PREPARE, &skel.progs.stage_set_prepare),
            (abi::h::DB_STAGE_SET_COPY, &skel.progs.stage_set_copy),
            (abi::h::DB_STAGE_SET_COMMIT, &skel.progs.stage_set_commit),
            (abi::h::DB_STAGE_DELETE, &skel.progs.stage_delete),
            (abi::h::DB_STAGE_RENAME, &skel.progs.stage_rename),
            (abi::h::DB_STAGE_SCAN, &skel.progs.stage_scan),
            (abi::h::DB_STAGE_BEGIN, &skel.progs.stage_begin),
            (abi::h::DB_STAGE_COMMIT, &skel.progs.stage_commit),
            (abi::h::DB_STAGE_RELEASE, &skel.progs.stage_release),
            (abi::h::DB_STAGE_ABORT, &skel.progs.stage_abort),
            (abi::h::DB_STAGE_TXN_GET, &skel.progs.stage_txn_get),
            (abi::h::DB_STAGE_DISPATCH, &skel.progs.dispatch),
        ];
        for (id, prog) in stages {
            let fd = prog.as_fd().as_raw_fd();
            skel.maps.stages.update(
                &(id as u32).to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
            )?;
        }

        let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", &e))?;
        let link = skel.progs.dispatch.attach_uprobe_with_opts(
            std::process::id() as i32,
            &exe,
            0,
            UprobeOpts {
                cookie: instance as u64,
                func_name: Some(trigger::SYMBOL.to_string()),
                ..Default::default()
            },
        )?;
        info!(
            "engine {instance}: dispatcher attached to {}:{} for pid {}",
            exe.display(),
            trigger::SYMBOL,
            std::process::id()
        );

        let slots = Mapped::new(skel.maps.slots.as_fd(), layout.slot_entries())?;
        let clock = Mapped::new(skel.maps.clock.as_fd(), 1)?;
        let (small, pages) = make_pools(&skel, &layout)?;
        Ok(Engine {
            small,
            pages,
            slots,
            clock,
            _link: link,
            skel,
            _object: object,
            layout,
            instance,
            reused: pinned.is_some(),
            hash_seed,
        })
    }

    /// Marks the engine's state complete: pinned maps a start recovered into
    /// are from now on reused by the next start (a hot restart).
    pub fn finish_recovery(&self) -> Result<()> {
        pin::write_layout(
            &self.skel.maps.layout,
            &pin::describe(&self.layout, self.hash_seed, true),
        )
    }

    /// Raw pointer to user slot `idx`; the caller owns that slot exclusively.
    pub fn slot_ptr(&self, idx: u32) -> *mut Slot {
        assert!(idx < self.layout.slots, "slot {idx} out of range");
        // SAFETY: idx is within the mapping; Slot's size is a multiple of 8,
        // so elements are packed exactly as the array map lays them out.
        unsafe { self.slots.base.as_ptr().add(idx as usize) }
    }

    fn bss(&self) -> Result<*mut skel::types::bss> {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .map(|b| b as *const skel::types::bss as *mut skel::types::bss)
            .ok_or_else(|| Error::new(libc::EIO, "engine has no .bss"))
    }

    /// Newest commit timestamp readers see.
    pub fn last_ts(&self) -> u64 {
        // SAFETY: an aligned u64 in the mmap'ed clock map; volatile, the
        // kernel writes it.
        unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*self.clock.base.as_ptr()).last_ts)) }
    }

    /// Turns log emission on or off (off while recovery replays the log).
    pub fn set_wal_on(&self, on: bool) -> Result<()> {
        let b = self.bss()?;
        // SAFETY: an aligned u32 in the mmap'ed .bss that only user space writes.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*b).wal_on), on as u32) };
        Ok(())
    }

    /// An owned handle on the log ringbuf, for the log writer thread.
    pub fn wal_map(&self) -> Result<libbpf_rs::MapHandle> {
        Ok(libbpf_rs::MapHandle::try_from(&self.skel.maps.wal)?)
    }

    /// (index, id) of transactions the txns map says are active.
    pub fn active_txns(&self) -> Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for idx in 0..abi::MAX_TXNS {
            let Some(v) = self
                .skel
                .maps
                .txns
                .lookup(&idx.to_ne_bytes(), MapFlags::ANY)?
            else {
                continue;
            };
            // struct db_txn: id at 0, state at 24.
            let id = u64::from_ne_bytes(
                v[0..8]
                    .try_into()
                    .map_err(|_| Error::new(libc::EIO, "short txn"))?,
            );
            let state = u32::from_ne_bytes(
                v[24..28]
                    .try_into()
                    .map_err(|_| Error::new(libc::EIO, "short txn"))?,
            );
            if state == abi::TXN_ACTIVE {
                out.push((idx, id));
            }
        }
        Ok(out)
    }

    /// Copies the records of the next whole hash buckets of `map` from
    /// `cursor` on (None: the first) into `keys` and `values`, at most
    /// `keys.len() / size_of::<HKey>()` of them. The cursor is a bucket
    /// index: keys inserted or removed meanwhile shift nothing, so a key
    /// present for a whole walk is in exactly one batch.
    pub fn records_batch(
        &self,
        map: Records,
        cursor: Option<u32>,
        keys: &mut [u8],
        values: &mut [u8],
    ) -> Result<RecordBatch> {
        let key_size = std::mem::size_of::<abi::HKey>();
        let max = keys.len() / key_size;
        if max == 0 || values.len() < max * abi::RECORD_SIZE {
            return Err(Error::new(libc::EINVAL, "records batch: buffers too small"));
        }
        let mut in_batch = cursor.unwrap_or(0);
        let mut out_batch = 0u32;
        let mut count = max as u32;
        let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        let in_ptr = match cursor {
            Some(_) => std::ptr::addr_of_mut!(in_batch).cast(),
            None => std::ptr::null_mut(),
        };
        // SAFETY: keys and values hold `count` elements of the map's key and
        // value sizes; the cursors are u32 bucket indexes, as htab expects.
        let ret = unsafe {
            libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                match map {
                    Records::Top => self.skel.maps.records_top.as_fd().as_raw_fd(),
                    Records::Below => self.skel.maps.records_below.as_fd().as_raw_fd(),
                },
                in_ptr,
                std::ptr::addr_of_mut!(out_batch).cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        // ENOENT: the last bucket was walked (count is still valid).
        let done = ret == -libc::ENOENT;
        if ret < 0 && !done {
            // ENOSPC here means one bucket holds more records than a batch,
            // which the hash's spread makes impossible in practice; it is
            // not "no space" for whoever listed.
            let errno = if ret == -libc::ENOSPC {
                libc::EIO
            } else {
                -ret
            };
            return Err(Error::new(
                errno,
                format!(
                    "walk of the records map: {}",
                    std::io::Error::from_raw_os_error(-ret)
                ),
            ));
        }
        Ok(RecordBatch {
            count: (count as usize).min(max),
            next: out_batch,
            done,
        })
    }

    /// The whole name of the record whose map key is `hkey` (its bytes),
    /// when the name is longer than the record holds; None once removed.
    pub fn long_name(&self, hkey: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.skel.maps.long_names.lookup(hkey, MapFlags::ANY)?)
    }

    /// The engine's map a kernel client shares by this name (the maps of
    /// bpfdb_kernel.h, see `SHARED_MAPS`).
    pub fn shared_map(&self, name: &str) -> Result<std::os::fd::BorrowedFd<'_>> {
        let m = &self.skel.maps;
        let map: &dyn MapCore = match name {
            "slots" => &m.slots,
            "records" => &m.records,
            "records_top" => &m.records_top,
            "records_below" => &m.records_below,
            "long_names" => &m.long_names,
            "small_pool" => &m.small_pool,
            "page_pool" => &m.page_pool,
            "layout" => &m.layout,
            "clock" => &m.clock,
            "stages" => &m.stages,
            "conts" => &m.conts,
            "client_owner" => &m.client_owner,
            "client_slots" => &m.client_slots,
            _ => {
                return Err(Error::new(
                    libc::EINVAL,
                    format!("the engine shares no map named {name}"),
                ));
            }
        };
        Ok(map.as_fd())
    }

    /// Kernel memory charged to each map (`memlock`, as bpftool reports it).
    pub fn map_memory(&self) -> Result<Vec<(String, u64)>> {
        let m = &self.skel.maps;
        // The data maps, and the two that hold no data: the request slots
        // and the prog array of stages.
        let data = pin::data_maps!(paired(m));
        let others: [(&str, &dyn MapCore); 2] = [("slots", &m.slots), ("stages", &m.stages)];
        data.iter()
            .chain(&others)
            .map(|(name, map)| {
                let bytes = match *name {
                    // The arrays of maps hold only pointers: count their segments.
                    "small_pool" => self.small.usage()?.bytes,
                    "page_pool" => self.pages.usage()?.bytes,
                    _ => pools::memlock(map.as_fd())?,
                };
                Ok((name.to_string(), bytes))
            })
            .collect()
    }

    /// What a reservation needs to know of the pools (kv::room): the
    /// counters, the small pool's bump counter and its free runs by class.
    pub fn pool_state(&self) -> PoolState {
        let mut state = PoolState {
            stats: self.stats(),
            small_handed_out: self.small.handed_out(),
            free_runs: [0; abi::CLASSES],
        };
        if let Some(bss) = self.skel.maps.bss_data.as_deref() {
            for (out, count) in state.free_runs.iter_mut().zip(&bss.small_free_runs) {
                // SAFETY: a plain i64 of the mmap'ed .bss; volatile because
                // the kernel writes it.
                *out = unsafe { std::ptr::read_volatile(count) }.max(0) as u64;
            }
        }
        state
    }

    /// A copy of the engine counters (racy reads of independent counters).
    pub fn stats(&self) -> Stats {
        let Some(bss) = self.skel.maps.bss_data.as_deref() else {
            return Stats::default();
        };
        let p = std::ptr::addr_of!(bss.stats).cast::<Stats>();
        // SAFETY: the generated bss type has `stats` laid out as struct
        // db_stats, which Stats mirrors; volatile because the kernel writes it.
        unsafe { std::ptr::read_volatile(p) }
    }
}
