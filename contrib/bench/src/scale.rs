//! Scale: what keys cost at 10,000, 100,000 and 1,000,000 of them. In
//! memory: GET and SET time and map memory per key. With a data dir: how
//! long recovery takes (`Db::open` replaying the log, and the real daemon
//! from spawn to a live mount) and how long the real `ls` takes to list
//! every key through that mount.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use bpfdb::{Db, Options, SetFlags, SyncMode};

use crate::engine::{self, Costs, OPS, VALUE_BYTES, key, meta};
use crate::memfloor::{self, Shape};
use crate::mount::{Mount, sibling_exe};
use crate::plot::{Axis, Figure, Panel, Series};
use crate::{RUNS, bench_dir, commands, die, median};

const KEY_COUNTS: [usize; 3] = [10_000, 100_000, 1_000_000];
/// --max-keys over the keys stored, as an operator would size it: old
/// versions kept for readers count as keys too.
const HEADROOM_PERCENT: usize = 120;
/// Values of 100 bytes live in the small-value pool (sized from max_keys),
/// so the page pool for larger values can stay small.
const VALUE_MEM: &str = "8M";
const VALUE_MEM_BYTES: u64 = 8 << 20;
/// What `ls -f` lists besides the keys: ., .., .stats, .txn, .snap, .ctl.
const FIXED_ENTRIES: usize = 6;
/// Keys per populating transaction: as many as one transaction may lock,
/// so the log writer is waited for once per that many keys.
const TXN_KEYS: usize = bpfdb::abi::TXN_MAX_LOCKS;

/// Recovery and listing at one size, in ms, each a median of RUNS.
struct Restart {
    log_mib: u64,
    populate_s: f64,
    load_ms: f64,
    recovery_ms: f64,
    daemon_ms: f64,
    ls_ms: f64,
}

fn max_keys(nkeys: usize) -> u32 {
    (nkeys * HEADROOM_PERCENT / 100) as u32
}

fn options(nkeys: usize, dir: &Path) -> Options {
    Options {
        max_keys: max_keys(nkeys),
        value_mem_bytes: VALUE_MEM_BYTES,
        slots: 4,
        data_dir: Some(dir.to_path_buf()),
        sync: SyncMode::None,
        // Recovery replays the whole log: no checkpoint is ever taken.
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    }
}

/// Ms `Db::open` sized for `nkeys` takes on `dir`, checking it finds
/// `expect` keys there.
fn open_ms(nkeys: usize, dir: &Path, expect: usize) -> f64 {
    let t = Instant::now();
    let db = Db::open(&options(nkeys, dir)).unwrap_or_else(|e| die("recovery", e));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let found = db.stats().keys;
    if found != expect as u64 {
        die("recovery", format!("found {found} keys, not {expect}"));
    }
    ms
}

/// Writes `nkeys` keys of VALUE_BYTES into a log in `dir`, in transactions.
fn populate(nkeys: usize, dir: &Path) -> u64 {
    let db = Db::open(&options(nkeys, dir)).unwrap_or_else(|e| die("open", e));
    let value = vec![b'v'; VALUE_BYTES];
    for first in (0..nkeys).step_by(TXN_KEYS) {
        let t = db.begin(false).unwrap_or_else(|e| die("begin", e));
        for i in first..(first + TXN_KEYS).min(nkeys) {
            t.set(&key(i), &value, meta(), SetFlags::default())
                .unwrap_or_else(|e| die("populate", e));
        }
        t.commit().unwrap_or_else(|e| die("commit", e));
    }
    db.log_bytes()
}

fn daemon_args(max_keys: &str) -> [&str; 7] {
    [
        "-f",
        "--sync",
        "none",
        "--max-keys",
        max_keys,
        "--value-mem",
        VALUE_MEM,
    ]
}

/// Ms from spawning the daemon on `dir` to its live mount, and ms the real
/// `ls -f MNT | wc -l` takes there (checked to count every key). The daemon
/// is then killed, as a crash would be: it takes no checkpoint at exit, so
/// every start replays the same log.
fn daemon_and_ls_ms(nkeys: usize, dir: &Path) -> Result<(f64, f64), String> {
    let bpfdb = sibling_exe("bpfdb")?;
    let max = max_keys(nkeys).to_string();
    let t = Instant::now();
    let mut mount = Mount::daemon(&bpfdb, &daemon_args(&max), Some(dir))?;
    let daemon_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut ls = Command::new("ls")
        .arg("-f")
        .arg(mount.path())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ls: {e}"))?;
    let ls_out = ls.stdout.take().ok_or("ls: no stdout")?;
    let wc = Command::new("wc")
        .arg("-l")
        .stdin(ls_out)
        .output()
        .map_err(|e| format!("wc: {e}"))?;
    let status = ls.wait().map_err(|e| format!("ls: {e}"))?;
    let ls_ms = t.elapsed().as_secs_f64() * 1e3;
    mount.kill_daemon();
    let lines: usize = String::from_utf8_lossy(&wc.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("wc -l output: {e}"))?;
    if !status.success() || lines != nkeys + FIXED_ENTRIES {
        return Err(format!(
            "ls -f listed {lines} entries ({status}), not {nkeys} keys + {FIXED_ENTRIES}"
        ));
    }
    Ok((daemon_ms, ls_ms))
}

fn restart(nkeys: usize) -> Restart {
    let base = bench_dir();
    let empty = tempfile::tempdir_in(&base).unwrap_or_else(|e| die("tempdir", e));
    let load_ms = median((0..RUNS).map(|_| open_ms(nkeys, empty.path(), 0)).collect());
    let dir = tempfile::tempdir_in(&base).unwrap_or_else(|e| die("tempdir", e));
    let t = Instant::now();
    let log_bytes = populate(nkeys, dir.path());
    let populate_s = t.elapsed().as_secs_f64();
    // Nothing is written after populating: each open replays the same log.
    let runs = (0..RUNS).map(|_| open_ms(nkeys, dir.path(), nkeys));
    let recovery_ms = median(runs.collect());
    let runs: Vec<(f64, f64)> = (0..RUNS)
        .map(|_| daemon_and_ls_ms(nkeys, dir.path()).unwrap_or_else(|e| die("daemon", e)))
        .collect();
    Restart {
        log_mib: log_bytes >> 20,
        populate_s,
        load_ms,
        recovery_ms,
        daemon_ms: median(runs.iter().map(|r| r.0).collect()),
        ls_ms: median(runs.iter().map(|r| r.1).collect()),
    }
}

/// The memory floors at one size, ns per walk.
struct Walks {
    get_4k: f64,
    get_2m: f64,
    set_4k: f64,
}

fn print_costs(costs: &[Costs], walks: &[Walks]) {
    println!(
        "## Scale: {VALUE_BYTES}-byte values, engine in memory (median of {RUNS} x {OPS} ops)\n"
    );
    println!(
        "A memory walk is the floor under an op at that size: the random reads a GET makes \
         (hash bucket, then three lines of the record side by side, then the value's chunk; a \
         SET also writes a fresh chunk), one walk after another, over buffers as large as the \
         engine's maps, in user space with no engine and no syscall (`memfloor.rs`). BPF maps \
         live in vmalloc memory, mapped with 4 KiB pages like these walks; the 2 MiB-page GET \
         walk shows how much of it is TLB misses. An op costs at least the trigger plus its \
         walk.\n"
    );
    println!(
        "| keys | GET ns | SET ns | GET ratio to 10k keys | trigger ns | GET walk ns | GET walk, 2 MiB pages | SET walk ns | map memory (memlock) | per key |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((n, c), w) in KEY_COUNTS.iter().zip(costs).zip(walks) {
        println!(
            "| {n} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} MiB | {} B |",
            c.get_ns,
            c.set_ns,
            c.get_ns / costs[0].get_ns,
            c.floor_ns,
            w.get_4k,
            w.get_2m,
            w.set_4k,
            c.map_bytes >> 20,
            c.map_bytes / *n as u64
        );
    }
    println!(
        "\nTargets: 1,000,000 keys within 1 GiB of map memory; GET at 1,000,000 keys within 1.5x of \
         10,000; engine GET at most 2x and SET at most 4x the trigger at 100,000 (engine section). \
         Where the trigger plus the walk alone is over a target, no engine can meet it here.\n"
    );
}

fn print_restarts(restarts: &[Restart]) {
    println!(
        "## Scale: recovery and listing, {VALUE_BYTES}-byte values, data on {} (median of {RUNS} runs)\n",
        bench_dir().display()
    );
    println!(
        "Each size is written through the engine API ({TXN_KEYS} keys per transaction, sync none) \
         into a log, with no checkpoint. Recovery is `Db::open` replaying that log; engine load \
         is `Db::open` on an empty directory, the floor of any start. Then the daemon is started \
         on the directory (it replays the same log, then mounts), the real `ls -f MNT | wc -l` \
         lists every key through the mount, and the daemon is killed so that the next start \
         replays the log again.\n"
    );
    println!(
        "| keys | log MiB | engine load ms | recovery (Db::open) ms | daemon start to live mount ms | `ls -f \\| wc -l` ms | ls per key |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, r) in KEY_COUNTS.iter().zip(restarts) {
        println!(
            "| {n} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} µs |",
            r.log_mib,
            r.load_ms,
            r.recovery_ms,
            r.daemon_ms,
            r.ls_ms,
            r.ls_ms * 1e3 / *n as f64
        );
    }
    let populated: Vec<String> = KEY_COUNTS
        .iter()
        .zip(restarts)
        .map(|(n, r)| format!("{n} keys in {:.1} s", r.populate_s))
        .collect();
    println!("\nPopulating (one run each): {}.\n", populated.join(", "));
}

pub fn run() -> Vec<Figure> {
    let costs: Vec<Costs> = KEY_COUNTS
        .iter()
        .map(|&n| {
            let opts = Options {
                max_keys: n as u32,
                value_mem_bytes: VALUE_MEM_BYTES,
                slots: 4,
                ..Options::default()
            };
            engine::measure(n, &opts)
        })
        .collect();
    let walks: Vec<Walks> = KEY_COUNTS
        .iter()
        .map(|&n| Walks {
            get_4k: memfloor::floor_ns(n, Shape::Get, false),
            get_2m: memfloor::floor_ns(n, Shape::Get, true),
            set_4k: memfloor::floor_ns(n, Shape::Set, false),
        })
        .collect();
    print_costs(&costs, &walks);
    let restarts: Vec<Restart> = KEY_COUNTS.iter().map(|&n| restart(n)).collect();
    print_restarts(&restarts);
    let daemon = daemon_args("KEYSx1.2").join(" ");
    commands(
        "scale",
        &[
            format!("bpfdb {daemon} DATA MNT"),
            "ls -f MNT | wc -l".into(),
        ],
    );
    vec![figure(&costs, &walks, &restarts)]
}

fn figure(costs: &[Costs], walks: &[Walks], restarts: &[Restart]) -> Figure {
    let series = |name: &str, y: &dyn Fn(usize) -> f64| Series {
        name: name.into(),
        points: (0..KEY_COUNTS.len())
            .map(|i| (KEY_COUNTS[i] as f64, y(i)))
            .collect(),
    };
    let keys = || Axis::Log("keys".into());
    Figure {
        file: "bench-scale.png",
        caption: format!(
            "Scale: op cost, map memory, recovery and listing by key count (median of {RUNS} runs)"
        ),
        panels: vec![
            Panel {
                title: "Engine op cost".into(),
                x: keys(),
                y_label: "ns/op (log)".into(),
                series: vec![
                    series("GET", &|i| costs[i].get_ns),
                    series("SET", &|i| costs[i].set_ns),
                    series("floor: trigger + GET memory walk", &|i| {
                        costs[i].floor_ns + walks[i].get_4k
                    }),
                ],
            },
            Panel {
                title: "Map memory per key".into(),
                x: keys(),
                y_label: "bytes/key (log)".into(),
                series: vec![series("memlock / keys", &|i| {
                    costs[i].map_bytes as f64 / KEY_COUNTS[i] as f64
                })],
            },
            Panel {
                title: "Recovery and listing".into(),
                x: keys(),
                y_label: "ms (log)".into(),
                series: vec![
                    series("engine load (empty dir)", &|i| restarts[i].load_ms),
                    series("recovery (Db::open)", &|i| restarts[i].recovery_ms),
                    series("daemon start to live mount", &|i| restarts[i].daemon_ms),
                    series("ls -f | wc -l", &|i| restarts[i].ls_ms),
                ],
            },
        ],
    }
}
