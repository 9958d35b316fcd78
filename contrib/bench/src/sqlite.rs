//! SQLite on the same disk: durable one-row update transactions in WAL
//! mode with synchronous=FULL (each commit fsyncs the WAL), each writer on
//! its own connection, against bpfdb's sync=commit autocommit SETs.

use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};

use crate::durability::{WINDOW, WRITERS, commit_rates, durable_figure};
use crate::engine::VALUE_BYTES;
use crate::plot::{Figure, Series};
use crate::{RUNS, bench_dir, commands, die, median};

const ROWS: i64 = 1000;
/// Writers wait for the database lock rather than fail: SQLite lets one
/// write transaction run at a time.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const SETUP: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
    CREATE TABLE kv(k INTEGER PRIMARY KEY, v BLOB);";
const UPDATE: &str = "UPDATE kv SET v = ?1 WHERE k = ?2";

fn err(e: rusqlite::Error) -> String {
    format!("sqlite: {e}")
}

/// A writer's connection: synchronous is per connection, WAL is kept in
/// the file.
fn connect(path: &Path) -> Result<Connection, String> {
    let c = Connection::open(path).map_err(err)?;
    c.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    c.execute_batch("PRAGMA synchronous=FULL;").map_err(err)?;
    Ok(c)
}

fn create(path: &Path) -> Result<(), String> {
    let mut c = Connection::open(path).map_err(err)?;
    c.execute_batch(SETUP).map_err(err)?;
    let t = c.transaction().map_err(err)?;
    {
        let mut ins = t.prepare("INSERT INTO kv VALUES (?1, ?2)").map_err(err)?;
        for k in 0..ROWS {
            ins.execute(params![k, [b'v'; VALUE_BYTES]]).map_err(err)?;
        }
    }
    t.commit().map_err(err)
}

/// Committed transactions per second with `writers` threads over WINDOW,
/// each BEGIN IMMEDIATE; UPDATE of one row; COMMIT.
fn rate(path: &Path, writers: usize) -> Result<f64, String> {
    let n = AtomicU64::new(0);
    // The window starts once every writer has its connection.
    let ready = Barrier::new(writers + 1);
    let t = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (n, ready) = (&n, &ready);
                sc.spawn(move || -> Result<(), String> {
                    let c = connect(path);
                    let t = {
                        ready.wait();
                        Instant::now()
                    };
                    let mut c = c?;
                    let mut i = 0u64;
                    let mut value = [b'u'; VALUE_BYTES];
                    while t.elapsed() < WINDOW {
                        let row = (w as i64 + i as i64 * writers as i64) % ROWS;
                        // A new value each time: SQLite skips writing (and
                        // so fsyncing) a row updated to the bytes it holds.
                        value[..8].copy_from_slice(&i.to_le_bytes());
                        let tx = c
                            .transaction_with_behavior(TransactionBehavior::Immediate)
                            .map_err(err)?;
                        tx.prepare_cached(UPDATE)
                            .and_then(|mut s| s.execute(params![value, row]))
                            .map_err(err)?;
                        tx.commit().map_err(err)?;
                        i += 1;
                    }
                    n.fetch_add(i, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        ready.wait();
        let t = Instant::now();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err("writer thread panicked".into()))
        })?;
        Ok::<_, String>(t.elapsed())
    })?;
    Ok(n.load(Ordering::Relaxed) as f64 / t.as_secs_f64())
}

/// Median commits/s of `writers` connections on a database of its own
/// (for the through-the-mount comparison).
pub fn durable_rate(writers: usize) -> Result<f64, String> {
    let dir = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
    let path = dir.path().join("kv.db");
    create(&path)?;
    let runs = (0..RUNS)
        .map(|_| rate(&path, writers))
        .collect::<Result<_, _>>()?;
    Ok(median(runs))
}

/// (writers, median commits/s) for each of WRITERS.
fn measure() -> Result<Vec<(usize, f64)>, String> {
    let dir = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
    let path = dir.path().join("kv.db");
    create(&path)?;
    WRITERS
        .iter()
        .map(|&w| {
            let runs = (0..RUNS)
                .map(|_| rate(&path, w))
                .collect::<Result<_, _>>()?;
            Ok((w, median(runs)))
        })
        .collect()
}

pub fn run() -> Vec<Figure> {
    let sqlite = measure().unwrap_or_else(|e| die("sqlite", e));
    let bpfdb = commit_rates();
    println!(
        "## Durable commits: bpfdb sync=commit against SQLite {} (WAL, synchronous=FULL), data on {}, \
         median of {RUNS} windows of {} ms\n",
        rusqlite::version(),
        bench_dir().display(),
        WINDOW.as_millis()
    );
    println!(
        "SQLite: a table of {ROWS} rows of {VALUE_BYTES} bytes; each commit is BEGIN IMMEDIATE, \
         an UPDATE of one row, COMMIT, each writer on its own connection. bpfdb: an autocommit \
         SET of {VALUE_BYTES} bytes.\n"
    );
    println!("| writers | bpfdb commits/s | SQLite commits/s | ratio bpfdb / SQLite |");
    println!("| ---: | ---: | ---: | ---: |");
    for (&(w, b), &(_, s)) in bpfdb.iter().zip(&sqlite) {
        println!("| {w} | {b:.0} | {s:.0} | {:.2} |", b / s);
    }
    println!("\nTarget: at 16 writers bpfdb >= SQLite with synchronous=FULL (ratio >= 1.00).\n");
    commands("sqlite", &[]);
    vec![durable_figure(vec![Series {
        name: "SQLite WAL synchronous=FULL".into(),
        points: sqlite.iter().map(|&(w, r)| (w as f64, r)).collect(),
    }])]
}
