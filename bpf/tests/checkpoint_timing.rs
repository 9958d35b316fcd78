//! Checkpoint and recovery timing at scale: not a test of behaviour, a
//! measurement, so it is ignored by default. Run it alone:
//!
//! ```text
//! BPFDB_CKPT_KEYS=1000000 BPFDB_CKPT_RUNS=5 \
//!   cargo test --release -p bpfdb --test checkpoint_timing -- --ignored --nocapture
//! ```
//!
//! It fills a fresh data dir with `BPFDB_CKPT_KEYS` keys of 100 bytes (as
//! the bench's scale section does: `key-NNNNNNNN`, 128 keys per
//! transaction, sync none), then takes `BPFDB_CKPT_RUNS` checkpoints and
//! does as many `Db::open`s, each recovering from the checkpoint (the log
//! after it is empty), and an open of an empty dir (the engine load, the
//! floor of any start). It prints each run, the medians, and how much the
//! process's peak RSS (VmHWM) grew during each (reset before each through
//! /proc/self/clear_refs). Data go under BPFDB_BENCH_DIR, else the temp dir.
//! BPFDB_CKPT_HEADROOM sets max_keys in percent of the keys (120).

use std::path::Path;
use std::time::Instant;

use bpfdb::{Db, NewMeta, Options, SetFlags, SyncMode};

const VALUE_BYTES: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn opts(nkeys: usize, dir: &Path) -> Options {
    // max_keys over the keys, in percent (BPFDB_CKPT_HEADROOM, 120 as the
    // bench's scale section sizes it; lower it to fit 10M keys in RAM).
    let headroom = env_usize("BPFDB_CKPT_HEADROOM", 120);
    Options {
        max_keys: (nkeys * headroom / 100).max(1024) as u32,
        value_mem_bytes: 8 << 20,
        slots: 4,
        data_dir: Some(dir.to_path_buf()),
        sync: SyncMode::None,
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    }
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Runs `f` and returns its result with how many MiB the peak RSS rose
/// above the RSS at its start.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, f64) {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = status_kib("VmRSS");
    let r = f();
    let grown = status_kib("VmHWM").saturating_sub(base);
    (r, grown as f64 / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn checkpoint_and_recovery_timing() {
    // RUST_LOG=bpfdb::durability::recovery=info shows the checkpoint load
    // alone, without the engine load around it.
    let _ = env_logger::builder().is_test(true).try_init();
    let nkeys = env_usize("BPFDB_CKPT_KEYS", 1_000_000);
    let runs = env_usize("BPFDB_CKPT_RUNS", 5);
    let base = std::env::var_os("BPFDB_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).unwrap();
    let empty = tempfile::tempdir_in(&base).unwrap();
    let o = opts(nkeys, dir.path());
    let meta = NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    };
    let t = Instant::now();
    let db = Db::open(&o).unwrap();
    let value = vec![b'v'; VALUE_BYTES];
    let per_txn = bpfdb::abi::TXN_MAX_LOCKS;
    for first in (0..nkeys).step_by(per_txn) {
        let txn = db.begin(false).unwrap();
        for i in first..(first + per_txn).min(nkeys) {
            txn.set(
                format!("key-{i:08}").as_bytes(),
                &value,
                meta,
                SetFlags::default(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }
    println!(
        "populated {nkeys} keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut ckpt = Vec::new();
    for run in 0..runs {
        let (r, grown) = peak_growth(|| db.checkpoint().unwrap());
        assert_eq!(r.keys as usize, nkeys);
        let size = std::fs::metadata(dir.path().join("checkpoint"))
            .unwrap()
            .len();
        println!(
            "checkpoint run {run}: {:.3} s, file {} MiB, peak RSS +{grown:.1} MiB",
            r.total.as_secs_f64(),
            size >> 20
        );
        ckpt.push(r.total.as_secs_f64());
    }
    drop(db);
    let mut load = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let (db, grown) = peak_growth(|| Db::open(&opts(nkeys, empty.path())).unwrap());
        let s = t.elapsed().as_secs_f64();
        drop(db);
        println!("engine load run {run}: {s:.3} s, peak RSS +{grown:.1} MiB");
        load.push(s);
    }
    let mut recover = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let (db, grown) = peak_growth(|| Db::open(&o).unwrap());
        let s = t.elapsed().as_secs_f64();
        assert_eq!(db.stats().keys as usize, nkeys);
        drop(db);
        println!("recovery run {run}: {s:.3} s, peak RSS +{grown:.1} MiB");
        recover.push(s);
    }
    println!(
        "MEDIANS {nkeys} keys: checkpoint {:.3} s, engine load {:.3} s, recovery (Db::open) {:.3} s",
        median(ckpt),
        median(load),
        median(recover)
    );
}
