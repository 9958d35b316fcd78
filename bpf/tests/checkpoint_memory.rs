//! A checkpoint takes bounded user memory to write and to read, not memory
//! in proportion to the database: the peak resident size of this process
//! (VmHWM, reset through /proc/self/clear_refs before each step) grows by
//! far less than the checkpoint's size while a 128 MiB checkpoint is
//! written, and while it is read back by a restart.
//!
//! Alone in its test binary, so no other test's allocations land in the
//! measured windows. A sanity step first checks that the measurement does
//! see an allocation of the checkpoint's size.

use std::path::Path;

use bpfdb::{Db, NewMeta, Options, SetFlags, SyncMode, wal};

/// 4096 keys of 32 KiB: a 128 MiB checkpoint over two scan batches.
const KEYS: usize = 4096;
const VALUE_BYTES: usize = 32 << 10;
const IMAGE_BYTES: usize = KEYS * VALUE_BYTES;
/// Allowed growth over the stated bound: pages of the engine's slots and
/// of the allocator that a step may touch for the first time. A quarter of
/// the image: the whole-image writer and reader grew by all of it.
const SLACK_BYTES: usize = 24 << 20;

fn opts(dir: &Path) -> Options {
    Options {
        max_keys: 8192,
        value_mem_bytes: 200 << 20,
        slots: 4,
        data_dir: Some(dir.to_path_buf()),
        sync: SyncMode::None,
        wal_buffer_bytes: 8 << 20,
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    }
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = s
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    kib << 10
}

/// Runs `f`; returns its result and by how many bytes the peak RSS rose
/// above the RSS at the start.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    // "5" resets the peak RSS to the current RSS (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let base = status_bytes("VmRSS");
    let hwm = status_bytes("VmHWM");
    assert!(
        hwm <= base + (1 << 20),
        "VmHWM {hwm} not reset to VmRSS {base}"
    );
    let r = f();
    (r, status_bytes("VmHWM").saturating_sub(base))
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[test]
fn checkpoints_are_written_and_read_in_bounded_memory() {
    let bound = wal::CHECKPOINT_MEMORY_BOUND;
    assert!(bound < 4 << 20, "the stated bound is {bound} bytes");
    let limit = bound + SLACK_BYTES;
    assert!(limit * 4 <= IMAGE_BYTES, "the check would not tell");
    // The measurement sees memory the size of the image being touched.
    let (_, seen) = peak_growth(|| {
        let v = vec![1u8; IMAGE_BYTES];
        std::hint::black_box(&v);
    });
    assert!(
        seen >= IMAGE_BYTES * 9 / 10,
        "a {} MiB buffer raised the peak RSS by only {:.1} MiB",
        IMAGE_BYTES >> 20,
        mib(seen)
    );

    let dir = tempfile::tempdir().unwrap();
    let meta = NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    };
    let db = Db::open(&opts(dir.path())).unwrap();
    {
        let mut s = db.session();
        let mut value = vec![0u8; VALUE_BYTES];
        for i in 0..KEYS {
            value[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let name = format!("{i:06}-{}", "m".repeat(200));
            s.set(name.as_bytes(), &value, meta, SetFlags::default())
                .unwrap();
        }
    }
    // A first checkpoint touches whatever a checkpoint touches once per
    // process (the scan's slot pages, allocator arenas); the second is
    // measured.
    db.checkpoint().unwrap();
    let (r, written) = peak_growth(|| db.checkpoint().unwrap());
    assert_eq!(r.keys as usize, KEYS);
    let size = std::fs::metadata(wal::checkpoint_path(dir.path()))
        .unwrap()
        .len() as usize;
    assert!(size >= IMAGE_BYTES, "checkpoint of {size} bytes");
    println!(
        "checkpoint of {:.0} MiB written: peak RSS +{:.1} MiB (bound {:.1} MiB)",
        mib(size),
        mib(written),
        mib(bound)
    );
    assert!(
        written <= limit,
        "writing a {:.0} MiB checkpoint raised the peak RSS by {:.1} MiB, over {:.1} MiB",
        mib(size),
        mib(written),
        mib(limit)
    );
    drop(db);

    // Reading: a start on an empty dir is the floor (the engine's load);
    // a start that reads the checkpoint may add at most the bound.
    let empty = tempfile::tempdir().unwrap();
    drop(Db::open(&opts(empty.path())).unwrap());
    let (db, floor) = peak_growth(|| Db::open(&opts(empty.path())).unwrap());
    drop(db);
    let (db, read) = peak_growth(|| Db::open(&opts(dir.path())).unwrap());
    assert_eq!(db.stats().keys as usize, KEYS);
    let mut v = Vec::new();
    db.session()
        .get(
            format!("{:06}-{}", KEYS - 1, "m".repeat(200)).as_bytes(),
            &mut v,
        )
        .unwrap();
    assert_eq!(v[..8], ((KEYS - 1) as u64).to_le_bytes());
    println!(
        "checkpoint of {:.0} MiB read: peak RSS +{:.1} MiB, engine load alone +{:.1} MiB",
        mib(size),
        mib(read),
        mib(floor)
    );
    assert!(
        read <= floor + limit,
        "reading a {:.0} MiB checkpoint raised the peak RSS by {:.1} MiB, the engine's load \
         alone by {:.1} MiB: over the {:.1} MiB allowed",
        mib(size),
        mib(read),
        mib(floor),
        mib(limit)
    );
}
