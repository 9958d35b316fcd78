//! Value memory promised to values not yet committed.
//!
//! A writer that builds a value outside the engine (an open file of the
//! mount, committed at close) reserves what its commit will allocate as the
//! value grows, so "no room" fails the `write(2)` that overflows, not the
//! `close(2)` a shell redirection never checks. Promises are counted here,
//! in user space: the engine's pools are the only truth of what is used,
//! and a reservation only subtracts from what they show free.
//!
//! A commit allocates before its writer gives the promise back, so for that
//! moment the memory counts twice: near full, a write may be refused while
//! another writer's commit is in flight, never the other way round.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::kernel::abi;
use crate::kernel::layout::Layout;
use crate::kernel::pools::PoolState;

/// Pool entries a value of some length takes (as `alloc_storage` in
/// storage.bpf.h allocates them): granules, in one or two runs (a value
/// over a page: its index and its tail), and pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub small: u64,
    pub pages: u64,
    /// The size classes of its runs.
    runs: [Option<usize>; 2],
}

impl Need {
    pub fn of(len: usize) -> Need {
        let (small, pages) = abi::value_storage(len);
        let class = |l: usize| Some(abi::class_of(l));
        let runs = match len {
            0 => [None, None],
            l if l <= abi::SMALL_MAX => [class(l), None],
            l if l % abi::PAGE_SIZE == 0 => [class(4 * (l / abi::PAGE_SIZE)), None],
            l => [
                class(4 * (l / abi::PAGE_SIZE + 1)),
                class(l % abi::PAGE_SIZE),
            ],
        };
        Need {
            small: (small / abi::GRANULE) as u64,
            pages: (pages / abi::PAGE_SIZE) as u64,
            runs,
        }
    }

    fn classes(&self) -> impl Iterator<Item = usize> + '_ {
        self.runs.iter().flatten().copied()
    }
}

fn class_granules(c: usize) -> u64 {
    (abi::class_bytes(c) / abi::GRANULE) as u64
}

/// What open writers were promised and have not given back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Promised {
    small: u64,
    pages: u64,
    runs: u64,
}

impl Promised {
    fn add(&mut self, n: &Need) {
        self.small += n.small;
        self.pages += n.pages;
        self.runs += n.classes().count() as u64;
    }

    fn remove(&mut self, n: &Need) {
        self.small = self.small.saturating_sub(n.small);
        self.pages = self.pages.saturating_sub(n.pages);
        self.runs = self.runs.saturating_sub(n.classes().count() as u64);
    }
}

/// Granules the small pool's bump counter can still hand out, whatever
/// the runs asked for: its room up to the cap, short of a largest run at
/// every segment's end (no run crosses one).
pub(crate) fn bump_room(pools: &PoolState, layout: &Layout) -> u64 {
    let left = u64::from(layout.small_granules).saturating_sub(pools.small_handed_out);
    let max_run = (abi::SMALL_MAX / abi::GRANULE) as u64;
    left.saturating_sub((left / u64::from(abi::SMALL_SEG) + 1) * (max_run - 1))
}

/// Granules the engine can surely hand to `need`'s runs, less what
/// `others` may take first. The bump counter's room (`bump_room`); and
/// each free run of the
/// value's largest class or above, counted as its smallest run (the engine
/// splits a larger run for a smaller class, never merges smaller ones). A
/// run promised to another writer takes either its granules from the bump
/// counter or one of those free runs: the others are charged all their
/// granules, up to the bump counter's room, and one free run each.
fn small_room(need: &Need, pools: &PoolState, layout: &Layout, others: &Promised) -> u64 {
    let (Some(largest), Some(smallest)) = (
        need.classes().max(),
        need.classes().map(class_granules).min(),
    ) else {
        return u64::MAX;
    };
    let bump = bump_room(pools, layout);
    let free: u64 = pools.free_runs[largest..].iter().sum();
    let charged = others.small.min(bump) + others.runs * smallest;
    (bump + free * smallest).saturating_sub(charged)
}

/// Every promise made and not yet given back.
#[derive(Default)]
pub(crate) struct Room {
    promised: Mutex<Promised>,
}

/// One writer's promise; given back on drop.
#[derive(Default)]
pub struct Reservation {
    room: Option<Arc<Room>>,
    held: Need,
}

impl Room {
    fn lock(&self) -> std::sync::MutexGuard<'_, Promised> {
        self.promised.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `r` cover a value of `len` bytes, or fails with ENOSPC and
    /// leaves it as it was.
    pub(crate) fn reserve(
        self: &Arc<Room>,
        r: &mut Reservation,
        len: usize,
        layout: &Layout,
        pools: impl FnOnce() -> PoolState,
    ) -> Result<()> {
        let need = Need::of(len);
        let mut promised = self.lock();
        let mut others = *promised;
        others.remove(&r.held);
        let pools = pools();
        let free_small = small_room(&need, &pools, layout, &others);
        let free_pages = u64::from(layout.pages)
            .saturating_sub(pools.stats.pages_used)
            .saturating_sub(others.pages);
        if need.small > free_small || need.pages > free_pages {
            let (what, want, free, other) = if need.pages > free_pages {
                ("pages", need.pages, free_pages, others.pages)
            } else {
                ("granules", need.small, free_small, others.small)
            };
            return Err(Error::new(
                libc::ENOSPC,
                format!(
                    "value memory is full (value_mem): a value of {len} bytes needs {want} \
                     {what}, {free} are free for it ({other} more promised to other open writers)"
                ),
            ));
        }
        others.add(&need);
        *promised = others;
        r.held = need;
        r.room.get_or_insert_with(|| self.clone());
        Ok(())
    }
}

impl Reservation {
    /// Gives the promise back (after the commit that needed it).
    pub fn release(&mut self) {
        if let Some(room) = &self.room {
            room.lock().remove(&self.held);
        }
        self.held = Need::default();
    }

    pub fn held(&self) -> Need {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(small: u32, pages: u32) -> Layout {
        Layout {
            max_keys: 8,
            small_granules: small,
            pages,
            slots: 1,
            wal_buffer: 4096,
        }
    }

    #[test]
    fn need_matches_the_engine_pools() {
        // (length, small-pool bytes, pages, runs)
        let cases = [
            (0, 0, 0, 0),
            (1, 8, 0, 1),
            (100, 112, 0, 1),
            (129, 160, 0, 1),
            (4096, 4096, 0, 1),
            // A page, the 1-byte tail's run and the index of two ids.
            (4097, 8 + 8, 1, 2),
            // 256 pages and an index of 256 ids.
            (1 << 20, 1024, 256, 1),
        ];
        for (len, small, pages, runs) in cases {
            let n = Need::of(len);
            let small = (small / abi::GRANULE) as u64;
            assert_eq!(
                (n.small, n.pages, n.classes().count()),
                (small, pages, runs),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn promises_subtract_from_what_is_free_and_come_back_on_drop() {
        let room = Arc::new(Room::default());
        let l = layout(abi::SMALL_SEG, 10);
        let none = PoolState::default;
        let mut a = Reservation::default();
        let mut b = Reservation::default();
        room.reserve(&mut a, 6 * 4096, &l, none).unwrap(); // 6 pages
        let e = room.reserve(&mut b, 5 * 4096, &l, none).unwrap_err(); // 5 > 4 left
        assert_eq!(e.errno, libc::ENOSPC);
        assert_eq!(
            b.held(),
            Need::default(),
            "a refused reservation holds nothing"
        );
        room.reserve(&mut b, 3 * 4096, &l, none).unwrap(); // 3 pages
        // Growing a's own promise counts only the others against it.
        room.reserve(&mut a, 7 * 4096, &l, none).unwrap(); // 7 pages: 7 + 3 = 10
        assert!(room.reserve(&mut a, 8 * 4096, &l, none).is_err());
        // Used pages count as well as promises.
        let used = || PoolState {
            stats: abi::Stats {
                pages_used: 1,
                ..abi::Stats::default()
            },
            ..PoolState::default()
        };
        assert!(room.reserve(&mut a, 7 * 4096, &l, used).is_err());
        drop(b);
        room.reserve(&mut a, 8 * 4096, &l, used).unwrap(); // 8 + 1 used <= 10
        a.release();
        assert_eq!(*room.lock(), Promised::default());
    }

    /// With the bump counter at the cap, only free runs of a value's class
    /// or above count, one value a run; another writer's promise takes one.
    #[test]
    fn at_the_cap_free_runs_count_for_their_class_and_smaller_ones() {
        let room = Arc::new(Room::default());
        let l = layout(abi::SMALL_SEG, 10);
        let mut free_runs = [0; abi::CLASSES];
        free_runs[abi::class_of(2000)] = 2;
        let full = || PoolState {
            small_handed_out: abi::SMALL_SEG as u64,
            free_runs,
            ..PoolState::default()
        };
        let (mut a, mut b, mut c) = Default::default();
        room.reserve(&mut a, 100, &l, full).unwrap();
        // A value of a larger class than the free runs' is refused.
        let mut big = Reservation::default();
        assert!(room.reserve(&mut big, 3000, &l, full).is_err());
        room.reserve(&mut b, 2000, &l, full).unwrap();
        assert!(
            room.reserve(&mut c, 1, &l, full).is_err(),
            "both runs promised"
        );
        drop(a);
        room.reserve(&mut c, 1, &l, full).unwrap();
    }
}
