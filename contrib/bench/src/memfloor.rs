//! The memory floor under an engine GET or SET at scale: the random
//! cache-line reads a GET makes (hash bucket, three lines of the record,
//! the value's chunk; a SET also writes a fresh chunk), in the same
//! dependency order, over buffers the size of the engine's maps, mapped
//! with 4 KiB pages as the kernel's vmalloc maps them, and again with
//! 2 MiB pages for contrast. No engine, no syscall: what a GET at this
//! scale cannot go below on this machine.

use crate::{RUNS, die, median};

/// Bytes of one hash bucket and one preallocated element (htab_elem header,
/// 16-byte key, the 504-byte record), as the kernel lays them out.
const BUCKET: usize = 16;
const ELEMENT: usize = 576;
/// Small chunks per key the engine sizes its pool with, and their size.
const CHUNKS_PER_KEY: f64 = 1.26;
const CHUNK: usize = 128;
/// Offsets of the record's lines a GET reads: key, versions, name.
const RECORD_LINES: [usize; 3] = [0, 128, 320];
const OPS: usize = 200_000;

struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize, huge: bool) -> Region {
        let len = len.next_multiple_of(2 << 20);
        // SAFETY: an anonymous private mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            die("mmap", std::io::Error::last_os_error());
        }
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: the range was just mapped. Advice is best effort.
        unsafe {
            libc::madvise(ptr, len, advice);
            std::ptr::write_bytes(ptr.cast::<u8>(), 1, len);
        }
        Region {
            ptr: ptr.cast(),
            len,
        }
    }

    fn read(&self, at: usize) -> u64 {
        // SAFETY: the offset is reduced below the mapped length.
        u64::from(unsafe { std::ptr::read_volatile(self.ptr.add(at % self.len)) })
    }

    fn write(&self, at: usize, v: u8) {
        // SAFETY: as in read().
        unsafe { std::ptr::write_volatile(self.ptr.add(at % self.len), v) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// What a walk reads: a GET's lines, or a SET's, which also writes the new
/// value into another chunk (taken from the free stack, so anywhere).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Get,
    Set,
}

/// ns per walk of `shape` over `nkeys` keys' worth of memory.
pub fn floor_ns(nkeys: usize, shape: Shape, huge: bool) -> f64 {
    let n = nkeys as u64;
    let buckets = Region::new(nkeys.next_power_of_two() * BUCKET, huge);
    let elements = Region::new(nkeys * ELEMENT, huge);
    let chunks = Region::new((nkeys as f64 * CHUNKS_PER_KEY) as usize * CHUNK, huge);
    let mut dep = 0u64;
    let runs = (0..RUNS)
        .map(|_| {
            let t = std::time::Instant::now();
            for i in 0..OPS as u64 {
                // Operations do not overlap (the trigger serializes them),
                // so the next key depends on this walk's last read. Within
                // a walk: the bucket gives the element; its lines are read
                // side by side; the version in them gives the chunk.
                let key = mix(i ^ (dep & 0x8000_0000_0000_0000)) % n;
                let bucket = buckets.read(key as usize * BUCKET);
                let elem = (mix(key ^ bucket) % n) as usize * ELEMENT;
                let record = RECORD_LINES.iter().fold(0u64, |acc, line| {
                    acc.wrapping_add(elements.read(elem + line))
                });
                dep = chunks.read((mix(key ^ record) % n) as usize * CHUNK);
                if shape == Shape::Set {
                    let fresh = (mix(key ^ dep ^ 0x5e7) % n) as usize * CHUNK;
                    chunks.write(fresh, dep as u8);
                    dep = dep.wrapping_add(chunks.read(fresh));
                }
            }
            t.elapsed().as_nanos() as f64 / OPS as f64
        })
        .collect();
    std::hint::black_box(dep);
    median(runs)
}
