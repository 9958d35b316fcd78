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
use crate::kernel::abi::{self, Stats};
use crate::kernel::layout::Layout;

/// Pool entries a value of some length takes (as `alloc_storage` in
/// storage.bpf.h allocates them): granules and pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub small: u64,
    pub pages: u64,
}

impl Need {
    pub fn of(len: usize) -> Need {
        let (small, pages) = abi::value_storage(len);
        Need {
            small: (small / abi::GRANULE) as u64,
            pages: (pages / abi::PAGE_SIZE) as u64,
        }
    }
}

/// Every promise made and not yet given back.
#[derive(Default)]
pub(crate) struct Room {
    promised: Mutex<Need>,
}

/// One writer's promise; given back on drop.
#[derive(Default)]
pub struct Reservation {
    room: Option<Arc<Room>>,
    held: Need,
}

impl Room {
    fn lock(&self) -> std::sync::MutexGuard<'_, Need> {
        self.promised.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `r` cover a value of `len` bytes, or fails with ENOSPC and
    /// leaves it as it was.
    pub(crate) fn reserve(
        self: &Arc<Room>,
        r: &mut Reservation,
        len: usize,
        layout: &Layout,
        stats: impl FnOnce() -> Stats,
    ) -> Result<()> {
        let need = Need::of(len);
        let mut promised = self.lock();
        let others = Need {
            small: promised.small.saturating_sub(r.held.small),
            pages: promised.pages.saturating_sub(r.held.pages),
        };
        let used = stats();
        let free_small = u64::from(layout.small_granules)
            .saturating_sub(used.small_used)
            .saturating_sub(others.small);
        let free_pages = u64::from(layout.pages)
            .saturating_sub(used.pages_used)
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
                     {what}, {free} are free ({other} more promised to other open writers)"
                ),
            ));
        }
        *promised = Need {
            small: others.small + need.small,
            pages: others.pages + need.pages,
        };
        r.held = need;
        r.room.get_or_insert_with(|| self.clone());
        Ok(())
    }
}

impl Reservation {
    /// Gives the promise back (after the commit that needed it).
    pub fn release(&mut self) {
        if let Some(room) = &self.room {
            let mut promised = room.lock();
            promised.small = promised.small.saturating_sub(self.held.small);
            promised.pages = promised.pages.saturating_sub(self.held.pages);
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
        // (length, small-pool bytes, pages)
        let cases = [
            (0, 0, 0),
            (1, 8, 0),
            (100, 112, 0),
            (129, 160, 0),
            (4096, 4096, 0),
            // A page, the 1-byte tail's run and the index of two ids.
            (4097, 8 + 8, 1),
            // 256 pages and an index of 256 ids.
            (1 << 20, 1024, 256),
        ];
        for (len, small, pages) in cases {
            let small = (small / abi::GRANULE) as u64;
            assert_eq!(Need::of(len), Need { small, pages }, "{len} bytes");
        }
    }

    #[test]
    fn promises_subtract_from_what_is_free_and_come_back_on_drop() {
        let room = Arc::new(Room::default());
        let l = layout(64, 10);
        let none = Stats::default;
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
        let used = || Stats {
            pages_used: 1,
            ..Stats::default()
        };
        assert!(room.reserve(&mut a, 7 * 4096, &l, used).is_err());
        drop(b);
        room.reserve(&mut a, 8 * 4096, &l, used).unwrap(); // 8 + 1 used <= 10
        a.release();
        assert_eq!(*room.lock(), Need::default());
    }
}
