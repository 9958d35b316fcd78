//! `make bench`: engine costs against the bare trigger, measured in one run.
//!
//! Every figure is the median of RUNS runs of OPS operations; ratios divide
//! by the floor measured in the same process a moment earlier.

use std::time::Instant;

use bpfdb::{Db, NewMeta, Options, Session, SetFlags};

const RUNS: usize = 7;
const OPS: usize = 200_000;
/// Key counts: a working set that stays in the CPU caches, and one that
/// does not (TLB and cache misses on the map memory dominate there).
const KEY_COUNTS: [usize; 2] = [1_000, 100_000];
const VALUE_BYTES: usize = 100;

fn median_ns_per_op(mut f: impl FnMut(usize)) -> f64 {
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..OPS {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / OPS as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

fn engine_section(s: &mut Session<'_>, nkeys: usize) {
    let keys: Vec<Vec<u8>> = (0..nkeys)
        .map(|i| format!("key-{i:08}").into_bytes())
        .collect();
    let value = vec![b'v'; VALUE_BYTES];
    let meta = NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    };
    for k in &keys {
        s.set(k, &value, meta, SetFlags::default())
            .expect("preload");
    }
    let floor = median_ns_per_op(|_| s.nop());
    let mut out = Vec::with_capacity(VALUE_BYTES);
    let get = median_ns_per_op(|i| {
        s.get(&keys[(i * 7919) % nkeys], &mut out).expect("get");
    });
    let set = median_ns_per_op(|i| {
        s.set(&keys[(i * 7919) % nkeys], &value, meta, SetFlags::default())
            .expect("set");
    });
    println!(
        "## Engine API, 1 thread, {VALUE_BYTES}-byte values over {nkeys} keys (median of {RUNS} x {OPS} ops)\n"
    );
    println!("| operation | ns/op | ratio to floor | target |");
    println!("| --- | ---: | ---: | --- |");
    println!("| bare trigger (NOP, floor) | {floor:.0} | 1.00 | |");
    println!("| GET | {get:.0} | {:.2} | <= 2x |", get / floor);
    println!("| SET | {set:.0} | {:.2} | <= 4x |", set / floor);
    println!();
}

fn main() {
    for nkeys in KEY_COUNTS {
        let opts = Options {
            max_keys: nkeys as u32 * 2,
            value_mem_bytes: 64 << 20,
            slots: 4,
            ..Options::default()
        };
        let db = Db::open(&opts).unwrap_or_else(|e| {
            eprintln!("bench: cannot open engine: {e}");
            std::process::exit(1);
        });
        let mut s = db.session();
        engine_section(&mut s, nkeys);
    }
}
