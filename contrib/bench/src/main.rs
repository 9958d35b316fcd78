//! `make bench`: every figure next to a baseline measured in the same run.
//!
//! Sections: engine ops against the bare trigger; scale (op cost, memory,
//! recovery and listing up to a million keys); transactions; durable
//! commits and recovery; GET and SET through the mount against a FUSE
//! floor; directories through the mount (`ls` of a small directory in a
//! large database, path lookups by depth) against tmpfs; durable writes
//! through the mount by writer processes against
//! ext4+fsync, Redis and SQLite; Redis and SQLite on the same machine;
//! memcached UDP GETs served by bpfdb in XDP and in user space against
//! memcached; the exec tracer's added cost per event. Figures are medians of
//! several runs; the output is Markdown so it can be pasted into a report,
//! and with BPFDB_BENCH_OUT set the plots go there as PNG.

mod durability;
mod engine;
mod fuse;
mod memcached;
mod memfloor;
mod memory;
mod mount;
mod mount_durable;
mod plot;
mod redis;
mod scale;
mod sqlite;
mod trace_exec;
mod tree;
mod txn;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// Runs of each measurement; the median is reported.
pub const RUNS: usize = 5;

/// A section prints its tables and returns its plots.
type Section = fn() -> Vec<plot::Figure>;

/// Each section by the name that selects it on the command line.
const SECTIONS: [(&str, Section); 12] = [
    ("engine", engine::run),
    ("scale", scale::run),
    ("memory", memory::run),
    ("txn", txn::run),
    ("durability", durability::run),
    ("fuse", fuse::run),
    ("tree", tree::run),
    ("mount-durable", mount_durable::run),
    ("redis", redis::run),
    ("sqlite", sqlite::run),
    ("memcached", memcached::run),
    ("trace-exec", trace_exec::run),
];

/// Median over RUNS runs of `ops` calls of `f`, in ns per call.
pub fn median_ns_per_op(ops: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..ops {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Where logs, databases and mountpoints go: BPFDB_BENCH_DIR, else the
/// temp dir. Durable figures depend on the disk under it.
pub fn bench_dir() -> PathBuf {
    std::env::var_os("BPFDB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Waits up to `timeout` for `child` to exit; false if it still runs.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let t = Instant::now();
    while matches!(child.try_wait(), Ok(None)) && t.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(10));
    }
    !matches!(child.try_wait(), Ok(None))
}

/// The line that says how to reproduce a section: the bench command, then
/// the outside commands it runs.
pub fn commands(section: &str, inside: &[String]) {
    print!("Commands: `cargo run --release -p bpfdb-bench -- {section}`");
    if !inside.is_empty() {
        let quoted: Vec<String> = inside.iter().map(|c| format!("`{c}`")).collect();
        print!(", which runs {}", quoted.join("; "));
    }
    println!("\n");
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or_else(|| "unknown".into(), |m| m.trim().to_string())
}

pub fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bench: {what}: {e}");
    std::process::exit(1);
}

/// Writes the PNGs into BPFDB_BENCH_OUT and links them; without it, says
/// how to get them.
fn write_plots(figures: &[plot::Figure]) {
    let Some(out) = std::env::var_os("BPFDB_BENCH_OUT").map(PathBuf::from) else {
        if !figures.is_empty() {
            eprintln!("bench: set BPFDB_BENCH_OUT=DIR to write the plots as PNG");
        }
        return;
    };
    if figures.is_empty() {
        return;
    }
    println!("## Plots\n");
    for f in figures {
        plot::write(f, &out).unwrap_or_else(|e| die(f.file, e));
        println!("{}\n\n![{}]({})\n", f.caption, f.caption, f.file);
    }
}

fn main() {
    // No names: every section; otherwise the sections named, in the
    // order SECTIONS lists them.
    let only: Vec<String> = std::env::args().skip(1).collect();
    if only.first().map(String::as_str) == Some(mount_durable::WRITER_CMD) {
        mount_durable::writer_main(&only[1..]);
    }
    if let Some(o) = only.iter().find(|o| !SECTIONS.iter().any(|s| s.0 == *o)) {
        let names: Vec<&str> = SECTIONS.iter().map(|s| s.0).collect();
        die(
            o,
            format!("no such section; sections: {}", names.join(", ")),
        );
    }
    println!("# bpfdb benchmarks\n");
    println!("Generated by `make bench` (`cargo run --release -p bpfdb-bench`).\n");
    println!("| machine | |\n| --- | --- |");
    println!("| CPU | {} |", cpu_model());
    println!(
        "| cores | {} |",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| kernel | {} |",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!();
    let mut figures = Vec::new();
    for (name, run) in SECTIONS {
        if only.is_empty() || only.iter().any(|o| o == name) {
            for f in run() {
                plot::merge(&mut figures, f);
            }
        }
    }
    write_plots(&figures);
}
