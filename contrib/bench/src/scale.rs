//! Scale: what keys cost at 10,000, 100,000, 1,000,000 and 10,000,000 of
//! them. In memory: GET and SET time against the memory walk under them.
//! With a data dir: the kernel memory a populated database holds
//! (`Db::memory`), how long recovery takes (`Db::open` replaying the log,
//! and the real daemon from spawn to a live mount), how long the real `ls`
//! takes to list every key through that mount, how long a checkpoint
//! takes, and how long `Db::open` takes recovering from that checkpoint.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpfdb::{Db, Memory, Options, SetFlags, SyncMode};

use crate::engine::{self, Costs, OPS, VALUE_BYTES, key, meta};
use crate::memfloor::{self, Shape};
use crate::mount::{Mount, sibling_exe};
use crate::plot::{Axis, Figure, Panel, Series};
use crate::{RUNS, bench_dir, commands, die, median};

const KEY_COUNTS: [usize; 4] = [10_000, 100_000, 1_000_000, 10_000_000];
/// From this many keys a recovery, a checkpoint or a daemon start takes
/// many seconds: fewer runs keep the section's time sane.
const BIG_KEYS: usize = 10_000_000;
/// Runs of recovery, checkpoint and recovery from it at BIG_KEYS.
const BIG_RUNS: usize = 3;
/// Runs of daemon start + `ls` at BIG_KEYS.
const BIG_DAEMON_RUNS: usize = 3;
/// --max-keys over the keys stored, as an operator would size it: old
/// versions kept for readers count as keys too.
const HEADROOM_PERCENT: usize = 120;
/// Values of 100 bytes live in the small-value pool (sized from max_keys),
/// so the page pool for larger values can stay small.
const VALUE_MEM: &str = "8M";
const VALUE_MEM_BYTES: u64 = 8 << 20;
/// The daemon's log size for a checkpoint: never, as in `options()` (its
/// default, 256 MiB, is under the log of 10,000,000 keys, so it would
/// checkpoint after a start and the next start would not replay the log).
const DAEMON_CHECKPOINT_BYTES: &str = "1024G";
/// What `ls -f` lists besides the keys: ., .., .stats, .txn, .snap, .ctl.
const FIXED_ENTRIES: usize = 6;
/// Keys per populating transaction: as many as one transaction may lock,
/// so the log writer is waited for once per that many keys.
const TXN_KEYS: usize = bpfdb::abi::TXN_MAX_LOCKS;
/// The kernel frees a closed engine's maps after the close returns (in a
/// workqueue, after an RCU grace period). A database this large is waited
/// for until that much of its memory is back, so that two never hold
/// kernel memory at once (10,000,000 keys take gigabytes).
const SETTLE_MIN_BYTES: u64 = 256 << 20;
const SETTLE_PERCENT: u64 = 80;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Memory, recovery, checkpoint and listing at one size; times in ms,
/// medians of `runs` (`daemon_runs` for the daemon and `ls`).
struct Restart {
    runs: usize,
    daemon_runs: usize,
    log_mib: u64,
    populate_s: f64,
    /// Kernel memory of the database that wrote the log, all keys in it.
    memory: Memory,
    load_ms: f64,
    recovery_ms: f64,
    daemon_ms: f64,
    ls_ms: f64,
    checkpoint_mib: u64,
    checkpoint_ms: f64,
    checkpoint_pause_ms: f64,
    checkpoint_recovery_ms: f64,
}

impl Restart {
    /// Kernel memory less the log ring (preallocated, whatever the keys).
    fn data_bytes(&self) -> u64 {
        self.memory.total - self.memory.wal
    }

    fn per_key(&self, nkeys: usize) -> f64 {
        self.data_bytes() as f64 / nkeys as f64
    }
}

fn runs(nkeys: usize) -> usize {
    if nkeys >= BIG_KEYS { BIG_RUNS } else { RUNS }
}

fn daemon_runs(nkeys: usize) -> usize {
    if nkeys >= BIG_KEYS {
        BIG_DAEMON_RUNS
    } else {
        RUNS
    }
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
        // Recovery replays the whole log: no checkpoint is taken unless
        // asked for (`checkpoint_and_recover`).
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Bytes of kernel memory BPF maps are made of (slab for hash map
/// elements, vmalloc for arrays), from /proc/meminfo.
fn kernel_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            ["Slab", "VmallocUsed", "Percpu"]
                .contains(&name)
                .then_some(kib << 10)
        })
        .sum()
}

/// Waits until `bytes` of kernel memory held when `before` was read have
/// mostly been freed (see SETTLE_PERCENT); small databases are not waited
/// for. Bounded: other users of the machine move the figure too.
fn settle(what: &str, before: u64, bytes: u64) {
    if bytes < SETTLE_MIN_BYTES {
        return;
    }
    let want = bytes / 100 * SETTLE_PERCENT;
    let t = Instant::now();
    while before.saturating_sub(kernel_bytes()) < want {
        if t.elapsed() > SETTLE_TIMEOUT {
            eprintln!(
                "bench: scale: {what}: {} MiB of its {} MiB of kernel memory freed after {SETTLE_TIMEOUT:?}; going on",
                before.saturating_sub(kernel_bytes()) >> 20,
                bytes >> 20
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if t.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "bench: scale: {what}: its kernel memory was freed {:.1} s after it ended",
            t.elapsed().as_secs_f64()
        );
    }
}

/// Closes `db` and waits for the kernel to free its maps.
fn close(db: Db, what: &str) {
    let bytes = db.memory().map_or(0, |m| m.total);
    let before = kernel_bytes();
    drop(db);
    settle(what, before, bytes);
}

/// `Db::open` sized for `nkeys` on `dir`, and the ms it took, checking it
/// finds `expect` keys there.
fn open_timed(nkeys: usize, dir: &Path, expect: usize) -> (Db, f64) {
    let t = Instant::now();
    let db = Db::open(&options(nkeys, dir)).unwrap_or_else(|e| die("recovery", e));
    let took = ms(t.elapsed());
    let found = db.stats().keys;
    if found != expect as u64 {
        die("recovery", format!("found {found} keys, not {expect}"));
    }
    (db, took)
}

/// Ms of `Db::open` on `dir`, then closed.
fn open_ms(nkeys: usize, dir: &Path, expect: usize) -> f64 {
    let (db, took) = open_timed(nkeys, dir, expect);
    close(db, &format!("{nkeys}-key database"));
    took
}

/// Writes `nkeys` keys of VALUE_BYTES into a log in `dir`, in transactions;
/// returns the log's size and the kernel memory of the database then.
fn populate(nkeys: usize, dir: &Path) -> (u64, Memory) {
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
    let memory = db.memory().unwrap_or_else(|e| die("memory", e));
    let log = db.log_bytes();
    close(db, &format!("populated {nkeys}-key database"));
    (log, memory)
}

fn daemon_args(max_keys: &str) -> [&str; 9] {
    [
        "-f",
        "--sync",
        "none",
        "--max-keys",
        max_keys,
        "--value-mem",
        VALUE_MEM,
        "--checkpoint-bytes",
        DAEMON_CHECKPOINT_BYTES,
    ]
}

/// Ms from spawning the daemon on `dir` to its live mount, and ms the real
/// `ls -f MNT | wc -l` takes there (checked to count every key). The daemon
/// is then killed, as a crash would be: it takes no checkpoint at exit, so
/// every start replays the same log. `bytes`: its kernel memory, waited
/// for after the kill.
fn daemon_and_ls_ms(nkeys: usize, dir: &Path, bytes: u64) -> Result<(f64, f64), String> {
    let bpfdb = sibling_exe("bpfdb")?;
    let max = max_keys(nkeys).to_string();
    let t = Instant::now();
    let mut mount = Mount::daemon(&bpfdb, &daemon_args(&max), Some(dir))?;
    let daemon_ms = ms(t.elapsed());
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
    let ls_ms = ms(t.elapsed());
    let before = kernel_bytes();
    mount.kill_daemon();
    drop(mount);
    settle(&format!("{nkeys}-key daemon"), before, bytes);
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

/// Bytes of log segments in `dir`.
fn log_on_disk(dir: &Path) -> u64 {
    bpfdb::wal::segments(dir)
        .unwrap_or_else(|e| die("log segments", e))
        .iter()
        .map(|&n| std::fs::metadata(bpfdb::wal::segment_path(dir, n)).map_or(0, |m| m.len()))
        .sum()
}

fn restart(nkeys: usize) -> Restart {
    let base = bench_dir();
    let (runs, daemon_runs) = (runs(nkeys), daemon_runs(nkeys));
    eprintln!("bench: scale: {nkeys} keys: engine load, populating");
    let empty = tempfile::tempdir_in(&base).unwrap_or_else(|e| die("tempdir", e));
    let load_ms = median((0..RUNS).map(|_| open_ms(nkeys, empty.path(), 0)).collect());
    let dir = tempfile::tempdir_in(&base).unwrap_or_else(|e| die("tempdir", e));
    let t = Instant::now();
    let (log_bytes, memory) = populate(nkeys, dir.path());
    let populate_s = t.elapsed().as_secs_f64();
    // Nothing is written after populating: each start replays the same log.
    eprintln!("bench: scale: {nkeys} keys: daemon start and ls, {daemon_runs} runs");
    let daemon: Vec<(f64, f64)> = (0..daemon_runs)
        .map(|_| {
            daemon_and_ls_ms(nkeys, dir.path(), memory.total).unwrap_or_else(|e| die("daemon", e))
        })
        .collect();
    eprintln!("bench: scale: {nkeys} keys: recovery from the log, {runs} runs");
    let mut recoveries = Vec::new();
    for _ in 1..runs {
        recoveries.push(open_ms(nkeys, dir.path(), nkeys));
    }
    // The last recovery stays open for the checkpoints.
    let (db, took) = open_timed(nkeys, dir.path(), nkeys);
    recoveries.push(took);
    eprintln!("bench: scale: {nkeys} keys: checkpoint, {runs} runs");
    let reports: Vec<bpfdb::CheckpointReport> = (0..runs)
        .map(|_| {
            let r = db.checkpoint().unwrap_or_else(|e| die("checkpoint", e));
            if r.keys != nkeys as u64 {
                die("checkpoint", format!("wrote {} keys, not {nkeys}", r.keys));
            }
            r
        })
        .collect();
    close(db, &format!("{nkeys}-key database"));
    let checkpoint_bytes = std::fs::metadata(bpfdb::wal::checkpoint_path(dir.path()))
        .unwrap_or_else(|e| die("checkpoint file", e))
        .len();
    let left = log_on_disk(dir.path());
    if left > bpfdb::wal::HEADER_BYTES as u64 {
        die(
            "checkpoint",
            format!("{left} bytes of log after it, not an empty segment"),
        );
    }
    eprintln!("bench: scale: {nkeys} keys: recovery from the checkpoint, {runs} runs");
    let from_checkpoint = (0..runs)
        .map(|_| open_ms(nkeys, dir.path(), nkeys))
        .collect();
    Restart {
        runs,
        daemon_runs,
        log_mib: log_bytes >> 20,
        populate_s,
        memory,
        load_ms,
        recovery_ms: median(recoveries),
        daemon_ms: median(daemon.iter().map(|r| r.0).collect()),
        ls_ms: median(daemon.iter().map(|r| r.1).collect()),
        checkpoint_mib: checkpoint_bytes >> 20,
        checkpoint_ms: median(reports.iter().map(|r| ms(r.total)).collect()),
        checkpoint_pause_ms: median(reports.iter().map(|r| ms(r.pause)).collect()),
        checkpoint_recovery_ms: median(from_checkpoint),
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
         walk. Kernel memory per key is in the next table.\n"
    );
    println!(
        "| keys | GET ns | SET ns | GET ratio to 10k keys | SET ratio to 10k keys | trigger ns | GET walk ns | GET walk, 2 MiB pages | SET walk ns |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((n, c), w) in KEY_COUNTS.iter().zip(costs).zip(walks) {
        println!(
            "| {n} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            c.get_ns,
            c.set_ns,
            c.get_ns / costs[0].get_ns,
            c.set_ns / costs[0].set_ns,
            c.floor_ns,
            w.get_4k,
            w.get_2m,
            w.set_4k,
        );
    }
    println!(
        "\nTargets: GET at 1,000,000 keys within 1.5x of 10,000; engine GET at most 2x and SET at \
         most 4x the trigger at 100,000 (engine section). Where the trigger plus the walk alone \
         is over a target, no engine can meet it here.\n"
    );
}

fn print_memory(costs: &[Costs], restarts: &[Restart]) {
    println!("## Scale: kernel memory, {VALUE_BYTES}-byte values\n");
    println!(
        "`Db::memory()` of the database that wrote the log (recovery table below), all its keys \
         in it, --max-keys {HEADROOM_PERCENT}% of them. That database has a log, so its memory \
         includes the log ring (the ringbuf carrying log records to the log writer, \
         preallocated whatever the keys): per key is the total less the ring. Records are the \
         records and long-names maps; the pools are the kernel memory of their segments. The \
         last column is the engine of the first table (no log, so a one-page log ring; \
         --max-keys equal to the keys): every map's memlock over the keys.\n"
    );
    println!(
        "| keys | total MiB | log ring MiB | total less ring MiB | per key | records MiB | small-value pool MiB | page pool MiB | request slots MiB | engine in memory, per key |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((n, r), c) in KEY_COUNTS.iter().zip(restarts).zip(costs) {
        let m = &r.memory;
        println!(
            "| {n} | {} | {} | {} | {:.0} B | {} | {} | {} | {} | {} B |",
            m.total >> 20,
            m.wal >> 20,
            r.data_bytes() >> 20,
            r.per_key(*n),
            m.records >> 20,
            m.small.bytes >> 20,
            m.pages.bytes >> 20,
            m.slots >> 20,
            c.map_bytes / *n as u64,
        );
    }
    println!(
        "\nTargets: 1,000,000 keys within 1 GiB of kernel memory; 10,000,000 keys load on this \
         machine.\n"
    );
}

fn print_restarts(restarts: &[Restart]) {
    println!(
        "## Scale: recovery, checkpoint and listing, {VALUE_BYTES}-byte values, data on {} (median of the runs column)\n",
        bench_dir().display()
    );
    println!(
        "Each size is written through the engine API ({TXN_KEYS} keys per transaction, sync none) \
         into a log, with no checkpoint. The daemon is started on the directory (it replays the \
         log, then mounts), the real `ls -f MNT | wc -l` lists every key through the mount, and \
         the daemon is killed so that the next start replays the log again. Recovery is \
         `Db::open` replaying that whole log; engine load is `Db::open` on an empty directory, \
         the floor of any start. The last recovered database then takes checkpoints \
         (`Db::checkpoint`: every key written to the checkpoint file and fsynced, the log \
         truncated; commits pause only at its start), and recovery from the checkpoint is \
         `Db::open` loading it, with an empty log after it. Runs: {RUNS} each below \
         {BIG_KEYS} keys; at {BIG_KEYS}, where one run takes many seconds, {BIG_RUNS} of \
         recovery, checkpoint and recovery from it and {BIG_DAEMON_RUNS} of daemon start and \
         `ls` (engine load: {RUNS}).\n"
    );
    println!(
        "| keys | runs (daemon, ls) | log MiB | engine load ms | recovery, log replay (Db::open) ms | daemon start to live mount ms | `ls -f \\| wc -l` ms | ls per key | checkpoint ms | of which writers paused ms | checkpoint MiB | recovery from checkpoint (Db::open) ms |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (n, r) in KEY_COUNTS.iter().zip(restarts) {
        println!(
            "| {n} | {} ({}) | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} µs | {:.0} | {:.1} | {} | {:.0} |",
            r.runs,
            r.daemon_runs,
            r.log_mib,
            r.load_ms,
            r.recovery_ms,
            r.daemon_ms,
            r.ls_ms,
            r.ls_ms * 1e3 / *n as f64,
            r.checkpoint_ms,
            r.checkpoint_pause_ms,
            r.checkpoint_mib,
            r.checkpoint_recovery_ms,
        );
    }
    let populated: Vec<String> = KEY_COUNTS
        .iter()
        .zip(restarts)
        .map(|(n, r)| format!("{n} keys in {:.1} s", r.populate_s))
        .collect();
    println!(
        "\nTargets: recovery of 1,000,000 keys within 2.5 s, of 10,000,000 within 30 s.\n\n\
         Populating (one run each): {}.\n",
        populated.join(", ")
    );
}

pub fn run() -> Vec<Figure> {
    let costs: Vec<Costs> = KEY_COUNTS
        .iter()
        .map(|&n| {
            eprintln!("bench: scale: {n} keys: GET and SET in memory");
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
    print_memory(&costs, &restarts);
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
    let per_key = |i: usize, bytes: u64| bytes as f64 / KEY_COUNTS[i] as f64;
    Figure {
        file: "bench-scale.png",
        caption: format!(
            "Scale: op cost, kernel memory, recovery, checkpoint and listing by key count \
             (median of {RUNS} runs; {BIG_RUNS} of recovery and checkpoint, {BIG_DAEMON_RUNS} \
             of daemon and ls at {BIG_KEYS} keys)"
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
                title: "Kernel memory per key (Db::memory)".into(),
                x: keys(),
                y_label: "bytes/key (log)".into(),
                series: vec![
                    series("total less log ring", &|i| {
                        restarts[i].per_key(KEY_COUNTS[i])
                    }),
                    series("records", &|i| per_key(i, restarts[i].memory.records)),
                    series("small-value pool", &|i| {
                        per_key(i, restarts[i].memory.small.bytes)
                    }),
                ],
            },
            Panel {
                title: "Recovery, checkpoint and listing".into(),
                x: keys(),
                y_label: "ms (log)".into(),
                series: vec![
                    series("engine load (empty dir)", &|i| restarts[i].load_ms),
                    series("recovery, log replay (Db::open)", &|i| {
                        restarts[i].recovery_ms
                    }),
                    series("checkpoint (Db::checkpoint)", &|i| {
                        restarts[i].checkpoint_ms
                    }),
                    series("recovery from checkpoint (Db::open)", &|i| {
                        restarts[i].checkpoint_recovery_ms
                    }),
                    series("daemon start to live mount", &|i| restarts[i].daemon_ms),
                    series("ls -f | wc -l", &|i| restarts[i].ls_ms),
                ],
            },
        ],
    }
}
