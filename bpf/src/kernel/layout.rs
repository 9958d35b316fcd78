//! The sizes of the engine's maps, derived from the options once at load
//! (and compared with a pinned engine's at a hot restart).

use crate::error::{Error, Result};
use crate::kernel::abi::{self, Slot};
use crate::options::Options;

/// Kernel memory of one record: the 440-byte value with the hash map's
/// element header (48), its 16-byte key and the allocator's 8-byte header.
const RECORD_ALLOC: u64 = 512;
const _: () =
    assert!(48 + std::mem::size_of::<abi::HKey>() + abi::RECORD_SIZE + 8 == RECORD_ALLOC as usize);

/// Small-pool bytes the cap allows per key (--max-keys) besides value_mem:
/// what a value of up to 128 bytes takes.
const SMALL_PER_KEY: u64 = 128;

/// Sizes of the kernel maps, derived from the options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub max_keys: u32,
    /// Caps of the value pools: granules (runs of values up to a page, and
    /// the index and tail of larger ones) and pages.
    pub small_granules: u32,
    pub pages: u32,
    /// Request slots of user space (threads of the daemon).
    pub slots: u32,
    /// Bytes of the log ringbuf (a power of two).
    pub wal_buffer: u32,
}

impl Layout {
    pub fn from_options(o: &Options) -> Result<Layout> {
        if o.max_keys == 0 || o.slots == 0 || o.slots > abi::MAX_SLOTS {
            return Err(Error::new(
                libc::EINVAL,
                format!("max_keys must be > 0 and slots 1..={}", abi::MAX_SLOTS),
            ));
        }
        // 128 bytes per key, plus a quarter for versions kept for readers
        // and writes in flight, for values of up to 128 bytes; and value_mem
        // for larger ones (which took pages before values up to a page had
        // size classes). A cap, not an allocation.
        let small_bytes = (u64::from(o.max_keys) + u64::from(o.max_keys / 4) + 1024)
            * SMALL_PER_KEY
            + o.value_mem_bytes;
        // Whole segments: a run never crosses a segment's end, so a pool
        // whose last segment were cut short could refuse a run it shows room
        // for (Pool::grow).
        let small_granules = u32::try_from(
            (small_bytes / abi::GRANULE as u64).next_multiple_of(abi::SMALL_SEG as u64),
        )
        .map_err(|_| Error::new(libc::EINVAL, "max_keys and value_mem too large"))?;
        let pages = u32::try_from(o.value_mem_bytes / abi::PAGE_SIZE as u64)
            .map_err(|_| Error::new(libc::EINVAL, "value_mem too large"))?;
        if pages < abi::VALUE_LIMIT as u32 / abi::PAGE_SIZE as u32 {
            return Err(Error::new(
                libc::EINVAL,
                "value_mem must hold at least one 1 MiB value",
            ));
        }
        // Without a log the ringbuf is never written: keep it one page.
        let wal_buffer = if o.data_dir.is_some() {
            o.wal_buffer_bytes
        } else {
            4096
        };
        if !wal_buffer.is_power_of_two() || !(4096..=1 << 30).contains(&wal_buffer) {
            return Err(Error::new(
                libc::EINVAL,
                format!("wal_buffer must be a power of two from 4 KiB to 1 GiB, not {wal_buffer}"),
            ));
        }
        Ok(Layout {
            max_keys: o.max_keys,
            small_granules,
            pages,
            slots: o.slots,
            wal_buffer: wal_buffer as u32,
        })
    }

    /// Entries of the slots map: the user's, then the DB_CLIENT_SLOTS of
    /// eBPF clients (bpfdb_kernel.h).
    pub fn slot_entries(&self) -> u32 {
        self.slots + abi::CLIENT_SLOTS
    }

    /// Slot index of the first client slot.
    pub fn kernel_slot_base(&self) -> u32 {
        self.slots
    }

    /// Bytes of map memory this layout can grow to, every cap reached (the
    /// log ring and the slots are allocated at load, the rest as data
    /// comes; a record is one 512-byte allocation, see RECORD_ALLOC).
    pub fn map_bytes(&self) -> u64 {
        let record = RECORD_ALLOC;
        self.max_keys as u64 * record
            + self.small_granules as u64 * abi::GRANULE as u64
            + self.pages as u64 * (abi::PAGE_SIZE as u64 + 4)
            + self.slot_entries() as u64 * std::mem::size_of::<Slot>() as u64
            + self.wal_buffer as u64
    }
}
