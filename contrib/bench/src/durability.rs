//! Durable commits: commit rate with 1, 4 and 16 writers under each sync
//! mode (group commit shares fsyncs), recovery speed, checkpoint pause.
//! The sync=commit rates are measured once per process and shared with the
//! Redis and SQLite sections, which compare against them.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bpfdb::{Db, Options, SetFlags, SyncMode};

use crate::engine::meta;
use crate::plot::{Axis, Figure, Panel, Series};
use crate::{RUNS, bench_dir, commands, die, median};

pub const WINDOW: Duration = Duration::from_millis(1000);
/// Writer threads: one, a few, and more than the cores (group commit).
pub const WRITERS: [usize; 3] = [1, 4, 16];
/// Keys each writer cycles over, so the engine never fills.
const KEYS_PER_WRITER: u64 = 1000;
/// The durable-commit figure's file, and bpfdb's series in it.
pub const DURABLE_PNG: &str = "bench-durable.png";
const BPFDB_SERIES: &str = "bpfdb sync=commit";
const RECOVERY_COMMITS: u32 = 60_000;
const RECOVERY_KEYS: u32 = 20_000;

fn opts(dir: &std::path::Path, sync: SyncMode) -> Options {
    Options {
        max_keys: 200_000,
        value_mem_bytes: 512 << 20,
        slots: 20,
        data_dir: Some(dir.to_path_buf()),
        sync,
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    }
}

/// Autocommit SETs of 100 bytes per second with `writers` threads over
/// `window`.
pub fn rate(db: &Db, writers: usize, window: Duration) -> f64 {
    let n = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|sc| {
        for w in 0..writers {
            let (db, n) = (db, &n);
            sc.spawn(move || {
                let mut s = db.session();
                let mut i = 0u64;
                while t.elapsed() < window {
                    let key = format!("w{w}-{}", i % KEYS_PER_WRITER);
                    s.set(key.as_bytes(), &[b'x'; 100], meta(), SetFlags::default())
                        .unwrap_or_else(|e| die("set", e));
                    i += 1;
                }
                n.fetch_add(i, Ordering::Relaxed);
            });
        }
    });
    n.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// (writers, median commits/s over RUNS windows) for each of WRITERS, on a
/// fresh database in the bench dir.
fn rates(sync: SyncMode) -> Vec<(usize, f64)> {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap_or_else(|e| die("tempdir", e));
    let db = Db::open(&opts(dir.path(), sync)).unwrap_or_else(|e| die("open", e));
    WRITERS
        .iter()
        .map(|&w| (w, median((0..RUNS).map(|_| rate(&db, w, WINDOW)).collect())))
        .collect()
}

/// bpfdb's durable (sync=commit) rates for WRITERS, measured on first use.
pub fn commit_rates() -> &'static [(usize, f64)] {
    static RATES: OnceLock<Vec<(usize, f64)>> = OnceLock::new();
    RATES.get_or_init(|| rates(SyncMode::Commit))
}

/// The durable-commit chart with bpfdb's series and `others` (one series
/// per system, points (writers, commits/s)).
pub fn durable_figure(others: Vec<Series>) -> Figure {
    let bpfdb = Series {
        name: BPFDB_SERIES.into(),
        points: commit_rates().iter().map(|&(w, r)| (w as f64, r)).collect(),
    };
    Figure {
        file: DURABLE_PNG,
        caption: format!(
            "Durable commits per second by writer count (median of {RUNS} windows of {} ms)",
            WINDOW.as_millis()
        ),
        panels: vec![Panel {
            title: "Durable commits".into(),
            x: Axis::Log("writers".into()),
            y_label: "commits/s (log)".into(),
            series: std::iter::once(bpfdb).chain(others).collect(),
        }],
    }
}

pub fn run() -> Vec<Figure> {
    println!(
        "## Durable commits (100-byte autocommit SET), log on {}, median of {RUNS} windows of {} ms\n",
        bench_dir().display(),
        WINDOW.as_millis()
    );
    println!("| sync | writers | commits/s | ratio to 1 writer |");
    println!("| --- | ---: | ---: | ---: |");
    let none = rates(SyncMode::None);
    for (name, rows) in [("commit", commit_rates()), ("none", &none[..])] {
        for &(writers, r) in rows {
            println!("| {name} | {writers} | {r:.0} | {:.2} |", r / rows[0].1);
        }
    }
    println!();
    // Recovery: write ~256 MiB of log (4 KiB values), reopen, time it.
    let dir = tempfile::tempdir_in(bench_dir()).unwrap_or_else(|e| die("tempdir", e));
    let log_bytes = {
        let db = Db::open(&opts(dir.path(), SyncMode::None)).unwrap_or_else(|e| die("open", e));
        let mut s = db.session();
        let v = vec![b'r'; 4096];
        for i in 0..RECOVERY_COMMITS {
            s.set(
                format!("r{}", i % RECOVERY_KEYS).as_bytes(),
                &v,
                meta(),
                SetFlags::default(),
            )
            .unwrap_or_else(|e| die("set", e));
        }
        db.log_bytes()
    };
    // Each open replays the same log: nothing is written between them.
    let reopen = || {
        let t = Instant::now();
        let db = Db::open(&opts(dir.path(), SyncMode::Commit)).unwrap_or_else(|e| die("reopen", e));
        (db, t.elapsed().as_secs_f64())
    };
    let secs = median((0..RUNS).map(|_| reopen().1).collect());
    let gib = log_bytes as f64 / (1u64 << 30) as f64;
    println!(
        "| recovery (median of {RUNS} opens) | log MiB | seconds (incl. engine load) | s per GiB |"
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| replay {RECOVERY_COMMITS} commits of 4 KiB | {} | {secs:.2} | {:.1} |",
        log_bytes >> 20,
        secs / gib
    );
    println!();
    // Checkpoint pause: how long writers are held while a checkpoint of
    // the 4 KiB keys starts (the snapshot is written while they run).
    let db = reopen().0;
    let reports: Vec<_> = (0..RUNS)
        .map(|_| db.checkpoint().unwrap_or_else(|e| die("checkpoint", e)))
        .collect();
    let pause = median(
        reports
            .iter()
            .map(|r| r.pause.as_secs_f64() * 1e3)
            .collect(),
    );
    let total = median(reports.iter().map(|r| r.total.as_secs_f64()).collect());
    println!("| checkpoint (median of {RUNS}) | keys | writers paused | total |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| {RECOVERY_KEYS} keys of 4 KiB | {} | {pause:.2} ms | {total:.2} s |",
        reports[0].keys
    );
    println!();
    commands("durability", &[]);
    vec![durable_figure(Vec::new())]
}
