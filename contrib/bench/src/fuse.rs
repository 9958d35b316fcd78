//! Shell-level GET and SET through a mounted directory: bpfdb against
//! bpfdb-memfs (a hash map behind FUSE, the floor any FUSE filesystem pays)
//! and tmpfs (no FUSE at all). The bench mounts and unmounts each itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::mount::{Mount, sibling_exe};
use crate::plot::{Axis, Figure, Panel, Series};
use crate::{RUNS, commands, die, median};

const WINDOW: Duration = Duration::from_millis(500);
const KEYS: usize = 1000;
const VALUE: [u8; 100] = [b'v'; 100];
const FLOOR: &str = "bpfdb-memfs (floor)";
/// Client threads: one, and one per core of the 2-core reference machine.
const THREADS: [usize; 2] = [1, 2];
const BPFDB_ARGS: [&str; 7] = [
    "-f",
    "--sync",
    "none",
    "--max-keys",
    "20000",
    "--value-mem",
    "64M",
];

/// Operations per second over one window, `threads` clients each on its
/// own share of the keys.
fn rate(
    paths: &[PathBuf],
    threads: usize,
    op: fn(&Path) -> std::io::Result<()>,
) -> Result<f64, String> {
    let n = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                let n = &n;
                sc.spawn(move || -> Result<(), String> {
                    let mut i = 0u64;
                    let mut k = w;
                    while t.elapsed() < WINDOW {
                        let p = &paths[k];
                        op(p).map_err(|e| format!("{}: {e}", p.display()))?;
                        k = (k + threads) % paths.len();
                        i += 1;
                    }
                    n.fetch_add(i, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err("client thread panicked".into()))
        })
    })?;
    Ok(n.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

/// GET: open, one read, close.
fn get(p: &Path) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let n = File::open(p)?.read(&mut buf)?;
    if n != VALUE.len() {
        return Err(std::io::Error::other(format!(
            "read {n} bytes, not {}",
            VALUE.len()
        )));
    }
    Ok(())
}

/// SET: open(O_WRONLY|O_TRUNC), one write, close.
fn set(p: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)?
        .write_all(&VALUE)
}

fn key_paths(mount: &Mount) -> Result<Vec<PathBuf>, String> {
    let paths: Vec<PathBuf> = (0..KEYS)
        .map(|i| mount.path().join(format!("k{i}")))
        .collect();
    for p in &paths {
        std::fs::write(p, VALUE).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(paths)
}

/// A system's name and, for each count in THREADS, (threads, GET ops/s, SET ops/s).
type SystemRates = (&'static str, Vec<(usize, f64, f64)>);

fn measure_all() -> Result<Vec<SystemRates>, String> {
    let (bpfdb, memfs) = (sibling_exe("bpfdb")?, sibling_exe("bpfdb-memfs")?);
    // Declared before the mounts, so removed after bpfdb has unmounted.
    let data = tempfile::tempdir_in(crate::bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
    // All three mounted at once, and each run window goes round them in
    // turn, so that load from elsewhere falls on all of them alike.
    let mounts = [
        ("tmpfs (no FUSE)", Mount::tmpfs()?),
        (FLOOR, Mount::daemon(&memfs, &[], None)?),
        (
            "bpfdb",
            Mount::daemon(&bpfdb, &BPFDB_ARGS, Some(data.path()))?,
        ),
    ];
    let paths = mounts
        .iter()
        .map(|(_, m)| key_paths(m))
        .collect::<Result<Vec<_>, _>>()?;
    // runs[system][index in THREADS] = (GET rates, SET rates)
    let mut runs = vec![vec![(Vec::new(), Vec::new()); THREADS.len()]; mounts.len()];
    for (t, threads) in THREADS.into_iter().enumerate() {
        for _ in 0..RUNS {
            for (sys, p) in paths.iter().enumerate() {
                let r = &mut runs[sys][t];
                r.0.push(rate(p, threads, get)?);
                r.1.push(rate(p, threads, set)?);
            }
        }
    }
    Ok(mounts
        .iter()
        .zip(runs)
        .map(|((name, _), r)| {
            let rows = r
                .into_iter()
                .zip(THREADS)
                .map(|((g, s), threads)| (threads, median(g), median(s)))
                .collect();
            (*name, rows)
        })
        .collect())
}

pub fn run() -> Vec<Figure> {
    let rows = measure_all().unwrap_or_else(|e| die("fuse", e));
    println!(
        "## Through the mount: 100-byte GET (open+read+close) and SET (open O_TRUNC+write+close) \
         over {KEYS} keys, median of {RUNS} windows of {} ms\n",
        WINDOW.as_millis()
    );
    println!(
        "bpfdb runs with `--sync none`: a SET still goes through the engine and is written to \
         the log before `close` returns, without fsync. Its GETs of keys unchanged since their \
         last read come from the kernel's page and attribute caches (one OPEN round trip, no \
         READ); every SET drops them before it is acknowledged. bpfdb-memfs is the naive floor: \
         a hash map behind FUSE with TTL 0 and direct_io, one thread, so each GET costs LOOKUP, \
         OPEN, READ, FLUSH and RELEASE. The three are mounted together and each window goes \
         round them in turn.\n"
    );
    println!(
        "| system | threads | GET ops/s | SET ops/s | GET ratio to floor | SET ratio to floor |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let floor = &rows
        .iter()
        .find(|(name, _)| *name == FLOOR)
        .expect("the floor is measured")
        .1;
    for (name, results) in &rows {
        for (&(threads, g, s), &(_, fg, fs)) in results.iter().zip(floor) {
            println!(
                "| {name} | {threads} | {g:.0} | {s:.0} | {:.2} | {:.2} |",
                g / fg,
                s / fs
            );
        }
    }
    println!(
        "\nTargets: bpfdb GET and SET at least 1.0x the in-memory FUSE floor; GET of an unchanged \
         key at least 3x it.\n"
    );
    commands(
        "fuse",
        &[
            format!("bpfdb {} DATA MNT", BPFDB_ARGS.join(" ")),
            "bpfdb-memfs MNT".into(),
        ],
    );
    vec![figure(&rows)]
}

/// Ops/s of each system, GET and SET side by side for each thread count.
fn figure(rows: &[SystemRates]) -> Figure {
    let categories = THREADS
        .iter()
        .flat_map(|t| [format!("GET, {t} thr"), format!("SET, {t} thr")])
        .collect();
    let series = rows
        .iter()
        .map(|(name, results)| Series {
            name: name.to_string(),
            points: results
                .iter()
                .enumerate()
                .flat_map(|(i, &(_, g, s))| [(2.0 * i as f64, g), (2.0 * i as f64 + 1.0, s)])
                .collect(),
        })
        .collect();
    Figure {
        file: "bench-fuse.png",
        caption: format!(
            "Through the mount: 100-byte GET and SET, ops/s (median of {RUNS} windows)"
        ),
        panels: vec![Panel {
            title: "GET and SET through the mount".into(),
            x: Axis::Categories(categories),
            y_label: "ops/s (log)".into(),
            series,
        }],
    }
}
