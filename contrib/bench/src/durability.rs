//! Durable commits: commit rate with 1, 4 and 16 writers under each sync
//! mode (group commit shares fsyncs), recovery speed, checkpoint pause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bpfdb::{Db, NewMeta, Options, SetFlags, SyncMode};

use crate::{RUNS, die, median};

const WINDOW: Duration = Duration::from_millis(1000);

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

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    }
}

/// Durable autocommit SETs of 100 bytes per second with `writers` threads.
fn rate(db: &Db, writers: usize) -> f64 {
    let n = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|sc| {
        for w in 0..writers {
            let (db, n) = (db, &n);
            sc.spawn(move || {
                let mut s = db.session();
                let mut i = 0u64;
                while t.elapsed() < WINDOW {
                    let key = format!("w{w}-{}", i % 1000);
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

pub fn run() {
    let base = std::env::var_os("BPFDB_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "## Durable commits (100-byte autocommit SET), log on {}, median of {RUNS} windows of {} ms\n",
        base.display(),
        WINDOW.as_millis()
    );
    println!("| sync | writers | commits/s | ratio to 1 writer |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, sync) in [("commit", SyncMode::Commit), ("none", SyncMode::None)] {
        let dir = tempfile::tempdir_in(&base).unwrap_or_else(|e| die("tempdir", e));
        let db = Db::open(&opts(dir.path(), sync)).unwrap_or_else(|e| die("open", e));
        let mut one = 0.0;
        for writers in [1usize, 4, 16] {
            let r = median((0..RUNS).map(|_| rate(&db, writers)).collect());
            if writers == 1 {
                one = r;
            }
            println!("| {name} | {writers} | {r:.0} | {:.2} |", r / one);
        }
    }
    println!();
    // Recovery: write ~256 MiB of log (4 KiB values), reopen, time it.
    let dir = tempfile::tempdir_in(&base).unwrap_or_else(|e| die("tempdir", e));
    let log_bytes = {
        let db = Db::open(&opts(dir.path(), SyncMode::None)).unwrap_or_else(|e| die("open", e));
        let mut s = db.session();
        let v = vec![b'r'; 4096];
        for i in 0..60_000u32 {
            s.set(
                format!("r{}", i % 20_000).as_bytes(),
                &v,
                meta(),
                SetFlags::default(),
            )
            .unwrap_or_else(|e| die("set", e));
        }
        db.log_bytes()
    };
    let t = Instant::now();
    let db = Db::open(&opts(dir.path(), SyncMode::Commit)).unwrap_or_else(|e| die("reopen", e));
    let secs = t.elapsed().as_secs_f64();
    let gib = log_bytes as f64 / (1u64 << 30) as f64;
    println!("| recovery | log MiB | seconds (incl. engine load) | s per GiB |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| replay 60,000 commits of 4 KiB | {} | {secs:.2} | {:.1} |",
        log_bytes >> 20,
        secs / gib
    );
    println!();
    // Checkpoint pause: how long writers are held while a checkpoint of
    // 20,000 4 KiB keys starts (the snapshot is written while they run).
    let r = db.checkpoint().unwrap_or_else(|e| die("checkpoint", e));
    println!("| checkpoint | keys | writers paused | total |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| 20,000 keys of 4 KiB | {} | {:.2} ms | {:.2} s |",
        r.keys,
        r.pause.as_secs_f64() * 1e3,
        r.total.as_secs_f64()
    );
    println!();
}
