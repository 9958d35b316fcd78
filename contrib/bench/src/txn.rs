//! Transactions: commit rate of small read-write transactions, abort rate
//! under contention, and a snapshot read against a locking read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bpfdb::{Db, NewMeta, Options, SetFlags};

use crate::plot::Figure;
use crate::{RUNS, commands, die, median, median_ns_per_op};

const KEYS: usize = 10_000;
const WINDOW: Duration = Duration::from_millis(500);

fn db() -> Db {
    let opts = Options {
        max_keys: KEYS as u32 * 2,
        value_mem_bytes: 64 << 20,
        slots: 8,
        ..Options::default()
    };
    let db = Db::open(&opts).unwrap_or_else(|e| die("open engine", e));
    let mut s = db.session();
    for i in 0..KEYS {
        s.set(
            format!("k{i}").as_bytes(),
            b"0",
            meta(),
            SetFlags::default(),
        )
        .unwrap_or_else(|e| die("preload", e));
    }
    drop(s);
    db
}

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    }
}

/// One read-modify-write transaction over `keys`; Ok(true) if committed.
fn rmw(db: &Db, keys: &[usize]) -> bool {
    let t = db.begin(false).unwrap_or_else(|e| die("begin", e));
    let mut out = Vec::new();
    for &k in keys {
        let key = format!("k{k}");
        if t.get(key.as_bytes(), &mut out).is_err()
            || t.set(key.as_bytes(), b"1", meta(), SetFlags::default())
                .is_err()
        {
            return false;
        }
    }
    t.commit().is_ok()
}

/// (commits/s, abort %) of `threads` threads running rmw over keys from `pick`.
fn contend(
    db: &Db,
    threads: usize,
    width: usize,
    pick: impl Fn(u64) -> usize + Sync,
) -> (f64, f64) {
    let (commits, aborts) = (AtomicU64::new(0), AtomicU64::new(0));
    let t = Instant::now();
    std::thread::scope(|sc| {
        for th in 0..threads {
            let (db, pick, commits, aborts) = (db, &pick, &commits, &aborts);
            sc.spawn(move || {
                let mut n = th as u64 * 1_000_003;
                while t.elapsed() < WINDOW {
                    let keys: Vec<usize> = (0..width).map(|j| pick(n * 31 + j as u64)).collect();
                    n += 1;
                    if rmw(db, &keys) {
                        commits.fetch_add(1, Ordering::Relaxed)
                    } else {
                        aborts.fetch_add(1, Ordering::Relaxed)
                    };
                }
            });
        }
    });
    let (c, a) = (
        commits.load(Ordering::Relaxed) as f64,
        aborts.load(Ordering::Relaxed) as f64,
    );
    (c / t.elapsed().as_secs_f64(), 100.0 * a / (c + a).max(1.0))
}

pub fn run() -> Vec<Figure> {
    let db = db();
    println!(
        "## Transactions (no log), {KEYS} keys, median of {RUNS} windows of {} ms\n",
        WINDOW.as_millis()
    );
    println!("| workload | threads | commits/s | abort rate |");
    println!("| --- | ---: | ---: | ---: |");
    for width in [1usize, 4, 16] {
        let runs: Vec<(f64, f64)> = (0..RUNS)
            .map(|_| {
                contend(&db, 1, width, |x| {
                    (x.wrapping_mul(2654435761) as usize) % KEYS
                })
            })
            .collect();
        let rate = median(runs.iter().map(|r| r.0).collect());
        println!("| read-modify-write of {width} keys | 1 | {rate:.0} | 0% |");
    }
    for (name, hot) in [("uniform over all keys", KEYS), ("hot: 4 keys", 4)] {
        let runs: Vec<(f64, f64)> = (0..RUNS)
            .map(|_| contend(&db, 2, 2, |x| (x.wrapping_mul(2654435761) as usize) % hot))
            .collect();
        let rate = median(runs.iter().map(|r| r.0).collect());
        let abort = median(runs.iter().map(|r| r.1).collect());
        println!("| 2-key read-modify-write, {name} | 2 | {rate:.0} | {abort:.1}% |");
    }
    println!();
    const OPS: usize = 100_000;
    let snap = db.begin(true).unwrap_or_else(|e| die("begin snapshot", e));
    let mut out = Vec::new();
    let snap_ns = median_ns_per_op(OPS, |i| {
        snap.get(format!("k{}", i % KEYS).as_bytes(), &mut out)
            .unwrap_or_else(|e| die("snapshot get", e));
    });
    drop(snap);
    // A locking read: one read-write transaction per read, so each read
    // takes and releases its shared lock.
    let locking_ns = median_ns_per_op(OPS / 10, |i| {
        let t = db.begin(false).unwrap_or_else(|e| die("begin", e));
        t.get(format!("k{}", i % KEYS).as_bytes(), &mut out)
            .unwrap_or_else(|e| die("locking get", e));
        t.commit().unwrap_or_else(|e| die("commit", e));
    });
    let begin_ns = median_ns_per_op(OPS / 10, |_| {
        let t = db.begin(false).unwrap_or_else(|e| die("begin", e));
        t.commit().unwrap_or_else(|e| die("commit", e));
    });
    println!("| read | ns/read | ratio to snapshot read |");
    println!("| --- | ---: | ---: |");
    println!("| snapshot read (no lock) | {snap_ns:.0} | 1.00 |");
    println!(
        "| locking read (S lock), txn overhead subtracted | {:.0} | {:.2} |",
        locking_ns - begin_ns,
        (locking_ns - begin_ns) / snap_ns
    );
    println!("| empty read-write txn (begin + commit) | {begin_ns:.0} | |");
    println!();
    commands("txn", &[]);
    Vec::new()
}
