//! Memory: the kernel memory of bpfdb's maps against Redis's `used_memory`
//! for the same keys and values (Redis fills itself with `DEBUG POPULATE
//! N key VALUE_BYTES`: names `key:0`.., values of VALUE_BYTES; bpfdb gets the
//! same names and value sizes through the engine API), and what a new,
//! empty database holds before its first key.

use std::time::Duration;

use bpfdb::{Db, Options, SetFlags};

use crate::engine::{VALUE_BYTES, meta};
use crate::redis::server::Server;
use crate::{bench_dir, commands, die};

const KEY_COUNTS: [usize; 2] = [1_000_000, 10_000_000];
/// DEBUG POPULATE of 10M keys takes seconds.
const POPULATE_TIMEOUT: Duration = Duration::from_secs(300);
const MIB: f64 = (1u64 << 20) as f64;

struct Row {
    keys: usize,
    raw: u64,
    bpfdb: u64,
    records: u64,
    small: u64,
    redis: u64,
    slowest: Duration,
    over_1ms: usize,
}

/// Every value length up to this is stored and measured; above it, one in
/// WASTE_STRIDE lengths up to the 1 MiB limit.
const WASTE_ALL_UP_TO: usize = 16 << 10;
const WASTE_STRIDE: usize = 997;

/// The worst share of a value's storage that its bytes do not use, over
/// the lengths in `lens`: (waste, length), of lengths from `from` on.
fn worst_waste(storage: &[(usize, u64)], from: usize) -> (f64, usize) {
    storage
        .iter()
        .filter(|&&(len, _)| len >= from)
        .map(|&(len, bytes)| (1.0 - len as f64 / bytes as f64, len))
        .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
}

/// Value waste, measured: each length is stored in the engine and its
/// storage read from the pools' counters (the one value of the database,
/// so the counters hold exactly its storage). Also checks that
/// `abi::value_storage`, which reservations use, says the same.
fn value_waste() {
    let db = Db::open(&Options {
        max_keys: 64,
        value_mem_bytes: 8 << 20,
        slots: 2,
        ..Options::default()
    })
    .unwrap_or_else(|e| die("open engine", e));
    let mut s = db.session();
    let lens: Vec<usize> = (1..=WASTE_ALL_UP_TO)
        .chain((WASTE_ALL_UP_TO..=bpfdb::abi::VALUE_LIMIT).step_by(WASTE_STRIDE))
        .chain([bpfdb::abi::VALUE_LIMIT])
        .collect();
    let value = vec![b'v'; bpfdb::abi::VALUE_LIMIT];
    let storage: Vec<(usize, u64)> = lens
        .iter()
        .map(|&len| {
            s.set(b"v", &value[..len], meta(), SetFlags::default())
                .unwrap_or_else(|e| die(&format!("set {len} bytes"), e));
            let st = db.stats();
            let small = st.small_used * bpfdb::abi::GRANULE as u64;
            let pages = st.pages_used * bpfdb::abi::PAGE_SIZE as u64;
            let (es, ep) = bpfdb::abi::value_storage(len);
            if (small, pages) != (es as u64, ep as u64) {
                die(
                    "value storage",
                    format!(
                        "{len} bytes took {small} + {pages}, abi::value_storage says {es} + {ep}"
                    ),
                );
            }
            (len, small + pages)
        })
        .collect();
    println!(
        "
Value waste (storage a value takes that its bytes do not fill, runs of size classes, index and tail included), measured on {} lengths from 1 byte to 1 MiB (all up to {} KiB):
",
        lens.len(),
        WASTE_ALL_UP_TO >> 10
    );
    for from in [1, 25, 65, bpfdb::abi::PAGE_SIZE + 1] {
        let (w, at) = worst_waste(&storage, from);
        println!(
            "- values of {from} bytes or more: worst {:.1}%, at {at} bytes",
            w * 100.0
        );
    }
}

fn name(i: usize) -> String {
    format!("key:{i}")
}

/// Kernel memory of every engine map once `n` keys are stored (no data
/// dir: the log ring is one page, so the figure is the data's), and the
/// slowest single SET of the fill with how many took over 1 ms: the pools
/// and the records grow under those SETs.
fn bpfdb_bytes(n: usize) -> (u64, u64, u64, Duration, usize) {
    let db = Db::open(&Options {
        max_keys: n as u32,
        value_mem_bytes: 8 << 20,
        slots: 4,
        ..Options::default()
    })
    .unwrap_or_else(|e| die("open engine", e));
    let mut s = db.session();
    let value = [b'x'; VALUE_BYTES];
    let (mut slowest, mut over_1ms) = (Duration::ZERO, 0);
    for i in 0..n {
        let t = std::time::Instant::now();
        s.set(name(i).as_bytes(), &value, meta(), SetFlags::default())
            .unwrap_or_else(|e| die(&format!("set {}", name(i)), e));
        let took = t.elapsed();
        slowest = slowest.max(took);
        over_1ms += usize::from(took > Duration::from_millis(1));
    }
    let m = db.memory().unwrap_or_else(|e| die("memory", e));
    (m.total, m.records, m.small.bytes, slowest, over_1ms)
}

fn redis_bytes(n: usize) -> u64 {
    let server = Server::start(&["--enable-debug-command", "local"])
        .unwrap_or_else(|e| die("redis-server", e));
    let reply = server
        .command_text(
            &format!("DEBUG POPULATE {n} key {VALUE_BYTES}"),
            POPULATE_TIMEOUT,
        )
        .unwrap_or_else(|e| die("DEBUG POPULATE", e));
    if reply != "+OK" {
        die("DEBUG POPULATE", reply);
    }
    let info = server
        .command_text("INFO memory", POPULATE_TIMEOUT)
        .unwrap_or_else(|e| die("INFO memory", e));
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
        .unwrap_or_else(|| die("no used_memory in INFO memory", &info))
}

/// Kernel memory of a new database with default options and a data dir,
/// and the part that is the log ring.
fn empty_bytes() -> (u64, u64) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap_or_else(|e| die("tempdir", e));
    let db = Db::open(&Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .unwrap_or_else(|e| die("open engine", e));
    let m = db.memory().unwrap_or_else(|e| die("memory", e));
    (m.total, m.wal)
}

pub fn run() -> Vec<crate::plot::Figure> {
    println!("## Memory: bpfdb's kernel memory against Redis's used_memory\n");
    let rows: Vec<Row> = KEY_COUNTS
        .iter()
        .map(|&keys| {
            let raw = (0..keys)
                .map(|i| (name(i).len() + VALUE_BYTES) as u64)
                .sum();
            let (bpfdb, records, small, slowest, over_1ms) = bpfdb_bytes(keys);
            let redis = redis_bytes(keys);
            Row {
                keys,
                raw,
                bpfdb,
                records,
                small,
                redis,
                slowest,
                over_1ms,
            }
        })
        .collect();
    println!(
        "| keys | raw data | bpfdb kernel memory | per key | of which records / small values | Redis used_memory | per key | bpfdb / Redis |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let k = r.keys as f64;
        println!(
            "| {} | {:.0} MiB | {:.0} MiB | {:.0} B | {:.0} / {:.0} B | {:.0} MiB | {:.0} B | **{:.2}** |",
            r.keys,
            r.raw as f64 / MIB,
            r.bpfdb as f64 / MIB,
            r.bpfdb as f64 / k,
            r.records as f64 / k,
            r.small as f64 / k,
            r.redis as f64 / MIB,
            r.redis as f64 / k,
            r.bpfdb as f64 / r.redis as f64,
        );
    }
    println!(
        "\nThe slowest single SET while bpfdb filled up (its records and value pools grow under the SETs):"
    );
    for r in &rows {
        println!(
            "- {} keys: {:.2} ms; {} SETs over 1 ms",
            r.keys,
            r.slowest.as_secs_f64() * 1e3,
            r.over_1ms
        );
    }
    value_waste();
    let (total, wal) = empty_bytes();
    println!(
        "\nA new, empty database with default options: {:.1} MiB of kernel memory besides its {:.0} MiB log ring (target: at most 32 MiB).\n",
        (total - wal) as f64 / MIB,
        wal as f64 / MIB
    );
    commands(
        "memory",
        &[
            format!(
                "redis-server --enable-debug-command local; DEBUG POPULATE N key {VALUE_BYTES}"
            ),
            "INFO memory".into(),
        ],
    );
    Vec::new()
}
