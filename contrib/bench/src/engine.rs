//! Engine API, one thread: GET and SET of 100-byte values against the bare
//! trigger (the dispatcher returning at once), the floor of any op.

use bpfdb::{Db, NewMeta, Options, SetFlags};

use crate::plot::Figure;
use crate::{RUNS, commands, die, median_ns_per_op};

pub const OPS: usize = 200_000;
/// A working set that stays in the CPU caches, and one that does not (TLB
/// and cache misses on the map memory dominate there).
const KEY_COUNTS: [usize; 2] = [1_000, 100_000];
pub const VALUE_BYTES: usize = 100;
/// A stride co-prime with every key count visits keys in an order the
/// caches cannot predict.
const STRIDE: usize = 7919;

/// What one op costs at a given size, each a median of RUNS x OPS ops.
pub struct Costs {
    pub floor_ns: f64,
    pub get_ns: f64,
    pub set_ns: f64,
    /// delete+set minus set: a delete alone would empty the keyspace.
    pub delete_ns: f64,
    /// Kernel memory of all engine maps (bpftool's memlock).
    pub map_bytes: u64,
}

/// The engine as this section loads it: room for twice the keys, memory
/// only (no log).
pub fn options(nkeys: usize) -> Options {
    Options {
        max_keys: nkeys as u32 * 2,
        value_mem_bytes: 64 << 20,
        slots: 4,
        ..Options::default()
    }
}

pub fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    }
}

pub fn key(i: usize) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

/// Loads an engine with `opts`, fills it with `nkeys` keys of VALUE_BYTES,
/// and times the bare trigger, GET, SET and DELETE on it, one thread.
pub fn measure(nkeys: usize, opts: &Options) -> Costs {
    let db = Db::open(opts).unwrap_or_else(|e| die("open engine", e));
    let mut s = db.session();
    let value = vec![b'v'; VALUE_BYTES];
    for i in 0..nkeys {
        s.set(&key(i), &value, meta(), SetFlags::default())
            .unwrap_or_else(|e| die("preload", e));
    }
    // Names are made before the clock starts; the order is the same for
    // every op so that each pays the same cache misses.
    let keys: Vec<Vec<u8>> = (0..OPS).map(|i| key((i * STRIDE) % nkeys)).collect();
    let floor_ns = median_ns_per_op(OPS, |_| s.nop());
    let mut out = Vec::with_capacity(VALUE_BYTES);
    let get_ns = median_ns_per_op(OPS, |i| {
        s.get(&keys[i], &mut out).unwrap_or_else(|e| die("get", e));
    });
    let set_ns = median_ns_per_op(OPS, |i| {
        s.set(&keys[i], &value, meta(), SetFlags::default())
            .unwrap_or_else(|e| die("set", e));
    });
    // Each key once: deleting a key twice in a row would find it gone.
    let delete_ns = median_ns_per_op(nkeys.min(OPS), |i| {
        let k = &keys[i];
        s.delete(k).unwrap_or_else(|e| die("delete", e));
        s.set(k, &value, meta(), SetFlags::default())
            .unwrap_or_else(|e| die("set", e));
    }) - set_ns;
    let map_bytes = db
        .map_memory()
        .unwrap_or_else(|e| die("map memory", e))
        .iter()
        .map(|m| m.1)
        .sum();
    Costs {
        floor_ns,
        get_ns,
        set_ns,
        delete_ns,
        map_bytes,
    }
}

pub fn run() -> Vec<Figure> {
    for nkeys in KEY_COUNTS {
        let c = measure(nkeys, &options(nkeys));
        println!(
            "## Engine API, 1 thread, {VALUE_BYTES}-byte values over {nkeys} keys (median of {RUNS} x {OPS} ops)\n"
        );
        println!("| operation | ns/op | ratio to floor | target |");
        println!("| --- | ---: | ---: | --- |");
        println!("| bare trigger (NOP, floor) | {:.0} | 1.00 | |", c.floor_ns);
        println!(
            "| GET | {:.0} | {:.2} | <= 2x |",
            c.get_ns,
            c.get_ns / c.floor_ns
        );
        println!(
            "| SET | {:.0} | {:.2} | <= 4x |",
            c.set_ns,
            c.set_ns / c.floor_ns
        );
        println!(
            "| DELETE (delete+set minus set) | {:.0} | {:.2} | |",
            c.delete_ns,
            c.delete_ns / c.floor_ns
        );
        println!();
    }
    commands("engine", &[]);
    Vec::new()
}
