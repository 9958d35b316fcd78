//! The value pools grow with the data. Each is an array of maps
//! (`small_pool`, `page_pool` in bpfdb_kernel.h) whose entries are
//! segments of 2 MiB: one array element of `DB_SMALL_SEG` granules (and a
//! page of slack), or an array of `DB_PAGE_SEG` pages. The engine hands
//! out ids (granules, pages) only below the pool's ready count (in its
//! .bss). Segments are normally added ahead of need: one per pool at open,
//! then the housekeeping thread keeps `AHEAD_SEGMENTS` ready beyond what
//! writers used (`top_up`), woken by a writer that sees the pool `low`. If
//! writers still run out, the engine fails the op with ENOSPC and the
//! pool's detail, and the session that got it calls `Pool::grow` and runs
//! the op again. Growth stops at the cap the options set, where the ENOSPC
//! stands. Freed runs and pages go back on the engine's free lists and are
//! reused (storage.bpf.h); segments are never taken away (a reader may
//! still be copying out of any of them).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use log::info;

use crate::error::{Error, Result};

/// Segments kept ready ahead of the writers. Publishing one waits for an
/// RCU grace period (the kernel's `maybe_wait_bpf_programs` on any update
/// of an array of maps: 5-8 ms measured here, under a writer), and a writer
/// filling a pool as fast as it can must not use up the spare meanwhile:
/// with one segment ahead, it still ran out about once in six segments.
pub const AHEAD_SEGMENTS: u64 = 2;

/// One pool: its array of segments and its counters in the engine's .bss.
pub struct Pool {
    pub name: &'static str,
    outer: MapHandle,
    /// Ids per segment, and the shape of a segment's map.
    seg: u32,
    shape: SegmentMap,
    /// Most ids one allocation takes at once (a run of granules): while
    /// fewer are ready past the bump counter, a failed allocation may
    /// still not fit.
    max_run: u64,
    /// Most ids the options allow.
    cap: u64,
    ready: *mut u64,
    next: *const u64,
    /// One grower at a time: two sessions that ran out together add one
    /// segment, not two.
    grow: Mutex<()>,
    /// Segments added by a writer that ran out (`grow`), each a write that
    /// waited for one; the housekeeping thread's (`top_up`) are the rest.
    added_by_writers: AtomicU64,
}

// SAFETY: `ready` and `next` point into the engine's mmap'ed .bss, which
// lives as long as the engine that owns this pool; they are only accessed
// with volatile loads and stores (the kernel updates `next` atomically;
// `ready` only user space writes, under `grow`).
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

/// The pools as a reservation sees them (`Engine::pool_state`).
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolState {
    pub stats: crate::kernel::abi::Stats,
    /// Granules the small pool's bump counter has handed out.
    pub small_handed_out: u64,
    /// Runs on each size class's free list (never more than there are).
    pub free_runs: [u64; crate::kernel::abi::CLASSES],
}

/// The array map a segment is: its value size and entries.
#[derive(Clone, Copy, Debug)]
pub struct SegmentMap {
    pub value_size: u32,
    pub entries: u32,
}

/// What a pool holds now, for `.stats` and the bench.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolUse {
    /// Ids backed by a segment.
    pub ready: u64,
    /// Ids ever handed out (the bump counter): a freed id is reused before
    /// a new one is taken, so this only grows with the most ever in use.
    pub handed_out: u64,
    pub segments: u64,
    /// Of them, added by a writer that found no room (and waited for it)
    /// rather than ahead of need by the housekeeping thread.
    pub added_by_writers: u64,
    /// Kernel memory of the pool: its segments and its array of maps.
    pub bytes: u64,
}

impl Pool {
    /// A pool over `outer`, the loaded engine's array of segments.
    ///
    /// # Safety
    /// `ready` and `next` must point at the pool's two u64 counters in the
    /// engine's mmap'ed .bss and stay valid as long as the pool.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn new(
        name: &'static str,
        outer: MapHandle,
        seg: u32,
        shape: SegmentMap,
        max_run: u64,
        cap: u64,
        ready: *mut u64,
        next: *const u64,
    ) -> Result<Pool> {
        Ok(Pool {
            name,
            outer,
            seg,
            shape,
            max_run,
            cap,
            ready,
            next,
            grow: Mutex::new(()),
            added_by_writers: AtomicU64::new(0),
        })
    }

    fn ready(&self) -> u64 {
        // SAFETY: see the type's Send/Sync note.
        unsafe { std::ptr::read_volatile(self.ready) }
    }

    /// Ids the bump counter has handed out.
    pub fn handed_out(&self) -> u64 {
        // SAFETY: as above.
        unsafe { std::ptr::read_volatile(self.next) }
    }

    /// Makes room after the engine found no ready id: Ok(true) when the op
    /// is worth running again (a segment was added, here or by a session
    /// that ran out at the same time), Ok(false) at the cap.
    pub fn grow(&self) -> Result<bool> {
        let _one = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let ready = self.ready();
        if ready.saturating_sub(self.handed_out()) >= self.max_run {
            return Ok(true);
        }
        let added = self.add_segment(ready)?;
        self.added_by_writers
            .fetch_add(u64::from(added), Ordering::Relaxed);
        Ok(added)
    }

    /// Adds the segment that starts at id `ready` (the ready count, read
    /// under the `grow` lock the caller holds). Ok(false) at the cap.
    fn add_segment(&self, ready: u64) -> Result<bool> {
        if ready >= self.cap {
            return Ok(false);
        }
        let index = u32::try_from(ready / self.seg as u64)
            .map_err(|_| Error::new(libc::EINVAL, format!("{}: too many segments", self.name)))?;
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let segment = MapHandle::create(
            MapType::Array,
            Some(format!("{}{index}", &self.name[..self.name.len().min(6)])),
            4,
            self.shape.value_size,
            self.shape.entries,
            &opts,
        )
        .map_err(|e| {
            Error::new(
                libc::ENOSPC,
                format!("{}: creating segment {index}: {e}", self.name),
            )
        })?;
        // The array of maps keeps the segment once it is in it.
        self.outer.update(
            &index.to_ne_bytes(),
            &segment.as_fd().as_raw_fd().to_ne_bytes(),
            MapFlags::ANY,
        )?;
        // The engine may hand out the new ids only after the segment is in
        // place: the update above is a completed syscall, and the store
        // below comes after it in program order.
        let ready = (ready + self.seg as u64).min(self.cap);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: see the type's Send/Sync note; only this grower writes it.
        unsafe { std::ptr::write_volatile(self.ready, ready) };
        info!(
            "{}: segment {index} added ({ready} of {} ids ready)",
            self.name, self.cap
        );
        Ok(true)
    }

    /// Less than AHEAD_SEGMENTS segments are left never used (one, while
    /// nothing was ever used: an empty database holds one per pool), and
    /// the cap allows more: two loads, cheap enough to ask before every
    /// write.
    pub fn low(&self) -> bool {
        let (ready, next) = (self.ready(), self.handed_out());
        let ahead = if next == 0 { 1 } else { AHEAD_SEGMENTS };
        ready < self.cap && ready.saturating_sub(next) < ahead * self.seg as u64
    }

    /// Adds up to `most` segments ahead of need while the pool is `low`, so
    /// that writers seldom wait for one and eBPF clients, which cannot grow
    /// a pool, find room. Returns whether it added any.
    pub fn top_up(&self, most: u64) -> Result<bool> {
        let mut added = false;
        for _ in 0..most.min(AHEAD_SEGMENTS) {
            if !self.low() {
                break;
            }
            let _one = self.grow.lock().unwrap_or_else(|p| p.into_inner());
            // A writer that ran out may have grown it meanwhile.
            if !self.low() || !self.add_segment(self.ready())? {
                break;
            }
            added = true;
        }
        Ok(added)
    }

    /// What the pool holds now. Every segment is the same map, so one is
    /// measured and counted `segments` times (a `.stats` read of a 10M-key
    /// database would otherwise open some 600 maps).
    pub fn usage(&self) -> Result<PoolUse> {
        let ready = self.ready();
        let segments = ready.div_ceil(self.seg as u64);
        let mut bytes = memlock(self.outer.as_fd())?;
        if segments > 0
            && let Some(id) = self.outer.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
        {
            let id = u32::from_ne_bytes(id[..4].try_into().unwrap_or_default());
            bytes += segments * memlock(MapHandle::from_map_id(id)?.as_fd())?;
        }
        Ok(PoolUse {
            ready,
            handed_out: self.handed_out(),
            added_by_writers: self.added_by_writers.load(Ordering::Relaxed),
            segments,
            bytes,
        })
    }
}

/// Kernel memory charged to a map, from its fdinfo `memlock` line (as
/// bpftool reads it). libbpf-rs 0.27's `query_fdinfo` parses it as a u32,
/// which fails for any map over 4 GiB (the records of 10M keys).
pub fn memlock(fd: BorrowedFd<'_>) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, &e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok())
        .ok_or_else(|| Error::new(libc::EIO, format!("{path}: no memlock line")))
}

/// Segments a pool of `cap` ids needs at most: the entries of its array of
/// maps.
pub fn segments_for(cap: u64, seg: u32) -> Result<u32> {
    u32::try_from(cap.div_ceil(seg as u64).max(1))
        .map_err(|_| Error::new(libc::EINVAL, "value pool too large"))
}
