//! Engine API, one thread: GET and SET of 100-byte values against the bare
//! trigger (the dispatcher returning at once), the floor of any op.

use bpfdb::{Db, NewMeta, Options, SetFlags};

use crate::{RUNS, die, median_ns_per_op};

const OPS: usize = 200_000;
/// A working set that stays in the CPU caches, and one that does not (TLB
/// and cache misses on the map memory dominate there).
const KEY_COUNTS: [usize; 2] = [1_000, 100_000];
const VALUE_BYTES: usize = 100;

pub fn run() {
    for nkeys in KEY_COUNTS {
        let opts = Options {
            max_keys: nkeys as u32 * 2,
            value_mem_bytes: 64 << 20,
            slots: 4,
            ..Options::default()
        };
        let db = Db::open(&opts).unwrap_or_else(|e| die("open engine", e));
        let mut s = db.session();
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
                .unwrap_or_else(|e| die("preload", e));
        }
        let floor = median_ns_per_op(OPS, |_| s.nop());
        let mut out = Vec::with_capacity(VALUE_BYTES);
        // A stride that is co-prime with the key count visits keys in an
        // order the caches cannot predict.
        let get = median_ns_per_op(OPS, |i| {
            s.get(&keys[(i * 7919) % nkeys], &mut out)
                .unwrap_or_else(|e| die("get", e));
        });
        let set = median_ns_per_op(OPS, |i| {
            s.set(&keys[(i * 7919) % nkeys], &value, meta, SetFlags::default())
                .unwrap_or_else(|e| die("set", e));
        });
        let del = median_ns_per_op(nkeys.min(OPS), |i| {
            let k = &keys[i % nkeys];
            s.delete(k).unwrap_or_else(|e| die("delete", e));
            s.set(k, &value, meta, SetFlags::default())
                .unwrap_or_else(|e| die("set", e));
        }) - set;
        println!(
            "## Engine API, 1 thread, {VALUE_BYTES}-byte values over {nkeys} keys (median of {RUNS} x {OPS} ops)\n"
        );
        println!("| operation | ns/op | ratio to floor | target |");
        println!("| --- | ---: | ---: | --- |");
        println!("| bare trigger (NOP, floor) | {floor:.0} | 1.00 | |");
        println!("| GET | {get:.0} | {:.2} | <= 2x |", get / floor);
        println!("| SET | {set:.0} | {:.2} | <= 4x |", set / floor);
        println!(
            "| DELETE (delete+set minus set) | {del:.0} | {:.2} | |",
            del / floor
        );
        println!();
    }
}

/// Map memory with 1,000,000 keys of 100-byte values (target: under 1 GiB,
/// as bpftool reports it), and GET cost at that size against 10,000 keys.
pub fn scale() {
    const MILLION: usize = 1_000_000;
    println!("## Scale: 100-byte values\n");
    println!("| keys | GET ns | SET ns | GET ratio to 10k keys | map memory (memlock) | per key |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut base_get = 0.0;
    for nkeys in [10_000usize, 100_000, MILLION] {
        let opts = Options {
            max_keys: nkeys as u32,
            value_mem_bytes: 8 << 20,
            slots: 4,
            ..Options::default()
        };
        let db = Db::open(&opts).unwrap_or_else(|e| die("open engine", e));
        let mut s = db.session();
        let value = vec![b'v'; VALUE_BYTES];
        let meta = NewMeta {
            mode: 0o100644,
            ..NewMeta::default()
        };
        let key = |i: usize| format!("key-{i:08}").into_bytes();
        for i in 0..nkeys {
            s.set(&key(i), &value, meta, SetFlags::default())
                .unwrap_or_else(|e| die("preload", e));
        }
        let keys: Vec<Vec<u8>> = (0..OPS).map(|i| key((i * 7919) % nkeys)).collect();
        let mut out = Vec::new();
        let get = median_ns_per_op(OPS, |i| {
            s.get(&keys[i], &mut out).unwrap_or_else(|e| die("get", e));
        });
        let set = median_ns_per_op(OPS, |i| {
            s.set(&keys[i], &value, meta, SetFlags::default())
                .unwrap_or_else(|e| die("set", e));
        });
        if nkeys == 10_000 {
            base_get = get;
        }
        let mem: u64 = db
            .map_memory()
            .unwrap_or_else(|e| die("map memory", e))
            .iter()
            .map(|m| m.1)
            .sum();
        println!(
            "| {nkeys} | {get:.0} | {set:.0} | {:.2} | {} MiB | {} B |",
            get / base_get,
            mem >> 20,
            mem / nkeys as u64
        );
    }
    println!(
        "\nTargets: 1,000,000 keys within 1 GiB of map memory; GET at 1,000,000 keys within 1.5x of 10,000.\n"
    );
}
