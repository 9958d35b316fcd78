//! `make bench`: every figure next to a baseline measured in the same run.
//!
//! Sections: engine ops against the bare trigger; transactions; durable
//! commits and recovery. Figures are medians of several runs; the output is
//! Markdown so it can be pasted into a report.

mod durability;
mod engine;
mod txn;

use std::time::Instant;

/// Runs of each measurement; the median is reported.
pub const RUNS: usize = 5;

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

pub fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bench: {what}: {e}");
    std::process::exit(1);
}

fn main() {
    let only = std::env::args().nth(1);
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    println!("# bpfdb benchmarks\n");
    if want("engine") {
        engine::run();
    }
    if want("scale") {
        engine::scale();
    }
    if want("txn") {
        txn::run();
    }
    if want("durability") {
        durability::run();
    }
}
