//! Durable writes through the mount, as users make them: writer
//! *processes* each looping `open(O_CREAT|O_TRUNC)` + `write(100 bytes)` +
//! `close` over keys of their own, against bpfdb `--sync commit` with its
//! default options; and `.txn` commits of 4 keys. Beside them, in the same
//! run: the same loop on a plain directory of the same disk with `fsync`
//! before each close (the kernel's own durable floor), Redis with
//! `appendfsync always` and SQLite with `synchronous=FULL` at the same
//! client counts, and the disk's bare fsync rate, which gives the ideal a
//! group commit can reach.
//!
//! The writers are this bench binary run again (`bpfdb-bench __writer`),
//! so each is a process of its own, as a shell loop would be.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::mount::{Mount, sibling_exe};
use crate::plot::{Axis, Figure, Panel, Series};
use crate::redis::durable_set_rate;
use crate::{bench_dir, commands, die, median};

/// Writer processes: one, a few, more than the cores, many.
pub const WRITERS: [usize; 4] = [1, 4, 16, 64];
/// Length of one measured window, after every writer has started.
const WINDOW: Duration = Duration::from_millis(1500);
/// Runs of each figure; the median is reported (64 processes per window
/// make this section long, so fewer than `RUNS`).
const ROUNDS: usize = 3;
/// Keys each writer cycles over.
const KEYS_PER_WRITER: usize = 100;
/// Keys one `.txn` commit writes.
const TXN_KEYS: usize = 4;
const VALUE: [u8; 100] = [b'd'; 100];
/// Time the writers are given to start before the window opens: 64
/// processes take a while to exec on two cores.
const START_DELAY: Duration = Duration::from_millis(700);
/// fsyncs timed to find the disk's bare fsync rate.
const FSYNC_PROBES: usize = 2000;
/// The hidden subcommand that runs one writer.
pub const WRITER_CMD: &str = "__writer";
const PNG: &str = "bench-mount-durable.png";

/// What one writer process does in its loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// open O_CREAT|O_TRUNC, write, close.
    Set,
    /// The same with fsync before close (a plain directory).
    SetFsync,
    /// mkdir .txn/NAME, 4 writes, `commit` into its .ctl, rmdir.
    Txn,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Set => "set",
            Work::SetFsync => "set-fsync",
            Work::Txn => "txn",
        }
    }

    fn parse(s: &str) -> Option<Work> {
        [Work::Set, Work::SetFsync, Work::Txn]
            .into_iter()
            .find(|w| w.name() == s)
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `bpfdb-bench __writer WORK DIR ID START_NS END_NS`: loops WORK in DIR
/// between the two times (epoch ns) and prints how many it completed.
pub fn writer_main(args: &[String]) -> ! {
    let [work, dir, id, start, end] = args else {
        die(WRITER_CMD, "usage: __writer WORK DIR ID START_NS END_NS");
    };
    let work = Work::parse(work).unwrap_or_else(|| die(WRITER_CMD, work));
    let dir = PathBuf::from(dir);
    let parse = |s: &String| s.parse::<u128>().unwrap_or_else(|e| die(WRITER_CMD, e));
    let (start, end) = (parse(start), parse(end));
    let id: usize = id.parse().unwrap_or_else(|e| die(WRITER_CMD, e));
    let keys: Vec<PathBuf> = (0..KEYS_PER_WRITER)
        .map(|k| dir.join(format!("w{id}_{k}")))
        .collect();
    while now_ns() < start {
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut done = 0u64;
    let mut i = 0usize;
    while now_ns() < end {
        let r = match work {
            Work::Set | Work::SetFsync => set(&keys[i % KEYS_PER_WRITER], work == Work::SetFsync),
            Work::Txn => txn(&dir, id, i),
        };
        r.unwrap_or_else(|e| die(WRITER_CMD, e));
        done += 1;
        i += 1;
    }
    println!("{done}");
    std::process::exit(0)
}

fn set(path: &Path, fsync: bool) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(&VALUE)?;
    if fsync {
        f.sync_data()?;
    }
    // close(2) reports a failed commit; File's drop would ignore it.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: `fd` is ours, taken out of the File, and closed once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn txn(mnt: &Path, id: usize, i: usize) -> std::io::Result<()> {
    let t = mnt.join(".txn").join(format!("w{id}-{i}"));
    std::fs::create_dir(&t)?;
    for k in 0..TXN_KEYS {
        std::fs::write(t.join(format!("t{id}_{k}")), VALUE)?;
    }
    std::fs::write(t.join(".ctl"), b"commit\n")?;
    std::fs::remove_dir(&t)
}

/// Operations per second of `writers` processes doing `work` in `dir`
/// over one window.
fn rate(work: Work, dir: &Path, writers: usize) -> Result<f64, String> {
    let me = std::env::current_exe().map_err(|e| format!("bench binary: {e}"))?;
    let start = now_ns() + START_DELAY.as_nanos();
    let end = start + WINDOW.as_nanos();
    let children = (0..writers)
        .map(|id| {
            Command::new(&me)
                .arg(WRITER_CMD)
                .arg(work.name())
                .arg(dir)
                .args([id.to_string(), start.to_string(), end.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting a writer: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut total = 0u64;
    for c in children {
        let out = c
            .wait_with_output()
            .map_err(|e| format!("waiting for a writer: {e}"))?;
        if !out.status.success() {
            return Err(format!("a {} writer failed: {}", work.name(), out.status));
        }
        let n: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("a writer's count: {e}"))?;
        total += n;
    }
    if now_ns() < start {
        return Err("the window closed before it opened".into());
    }
    Ok(total as f64 / WINDOW.as_secs_f64())
}

fn median_rate(work: Work, dir: &Path, writers: usize) -> Result<f64, String> {
    let runs = (0..ROUNDS)
        .map(|_| rate(work, dir, writers))
        .collect::<Result<_, _>>()?;
    Ok(median(runs))
}

/// Bare fsyncs per second of the bench disk as a log makes them: append
/// 100 bytes, fdatasync, in a loop on one thread (the bound on group
/// commits per second).
fn fsync_rate(dir: &Path) -> Result<f64, String> {
    let path = dir.join("fsync-probe");
    let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = std::time::Instant::now();
    for i in 0..FSYNC_PROBES {
        f.write_all_at(&VALUE, (i * VALUE.len()) as u64)
            .and_then(|()| f.sync_data())
            .map_err(|e| format!("fsync probe: {e}"))?;
    }
    Ok(FSYNC_PROBES as f64 / t.elapsed().as_secs_f64())
}

/// A bpfdb counter from `.stats`.
fn stat(mnt: &Path, name: &str) -> u64 {
    std::fs::read_to_string(mnt.join(".stats"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

struct Row {
    writers: usize,
    bpfdb_set: f64,
    /// The same SETs with `--sync none`: what the mount costs without any
    /// fsync, so the gap to `bpfdb_set` is what durability costs.
    bpfdb_nosync: f64,
    bpfdb_txn: f64,
    commits_per_fsync: f64,
    ext4: f64,
    redis: f64,
    sqlite: f64,
}

fn measure(cmds: &mut Vec<String>) -> Result<(Vec<Row>, f64), String> {
    let bpfdb = sibling_exe("bpfdb")?;
    let data = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
    let plain = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
    let nosync_data = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
    let args = ["-f", "--sync", "commit"];
    let nosync_args = ["-f", "--sync", "none"];
    cmds.push(format!("bpfdb {} DATA MNT", args.join(" ")));
    cmds.push(format!("bpfdb {} DATA MNT", nosync_args.join(" ")));
    let mount = Mount::daemon(&bpfdb, &args, Some(data.path()))?;
    let nosync = Mount::daemon(&bpfdb, &nosync_args, Some(nosync_data.path()))?;
    let mnt = mount.path();
    let fsyncs = fsync_rate(plain.path())?;
    let mut rows = Vec::new();
    for writers in WRITERS {
        let (c0, f0) = (stat(&mnt, "log_commits"), stat(&mnt, "log_fsyncs"));
        let bpfdb_set = median_rate(Work::Set, &mnt, writers)?;
        let (c1, f1) = (stat(&mnt, "log_commits"), stat(&mnt, "log_fsyncs"));
        rows.push(Row {
            writers,
            bpfdb_set,
            bpfdb_nosync: median_rate(Work::Set, &nosync.path(), writers)?,
            bpfdb_txn: median_rate(Work::Txn, &mnt, writers)?,
            commits_per_fsync: (c1 - c0) as f64 / (f1 - f0).max(1) as f64,
            ext4: median_rate(Work::SetFsync, plain.path(), writers)?,
            redis: durable_set_rate(writers, cmds)?,
            sqlite: crate::sqlite::durable_rate(writers)?,
        });
    }
    Ok((rows, fsyncs))
}

pub fn run() -> Vec<Figure> {
    let mut cmds = Vec::new();
    let (rows, fsyncs) = measure(&mut cmds).unwrap_or_else(|e| die("mount-durable", e));
    println!(
        "## Durable writes through the mount: writer processes, data on {} (median of {ROUNDS} \
         windows of {} ms)\n",
        bench_dir().display(),
        WINDOW.as_millis()
    );
    println!(
        "Each bpfdb writer is a process looping `open(O_CREAT|O_TRUNC)`, `write` of \
         {} bytes, `close` over {KEYS_PER_WRITER} keys of its own, through a mount with default \
         options (`--sync commit`: close returns once the commit is fsynced). `.txn`: `mkdir \
         .txn/NAME`, {TXN_KEYS} such writes, `commit` into its `.ctl`, `rmdir`. ext4+fsync: the \
         same SET loop in a plain directory of the same disk with `fdatasync` before `close`. \
         Redis: `appendfsync always`, redis-benchmark SET with as many clients. SQLite: WAL, \
         `synchronous=FULL`, one UPDATE per transaction, as many connections (threads). \
         `--sync none`: the same bpfdb SET loop on a mount that never fsyncs, so the gap between \
         the two bpfdb columns is what durability costs and the rest is the mount's own cost. \
         The disk's bare fdatasync rate (appending {} bytes each time, as a log does) is \
         {fsyncs:.0}/s.\n",
        VALUE.len(),
        VALUE.len()
    );
    println!(
        "| writers | bpfdb SET/s | bpfdb `--sync none` SET/s | bpfdb 4-key .txn/s | commits per fsync | ext4+fsync/s | Redis SET/s | SQLite/s | bpfdb / Redis | bpfdb / SQLite | bpfdb / ext4+fsync | bpfdb / own 1-writer | durable / `--sync none` |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let one = rows[0].bpfdb_set;
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.writers,
            r.bpfdb_set,
            r.bpfdb_nosync,
            r.bpfdb_txn,
            r.commits_per_fsync,
            r.ext4,
            r.redis,
            r.sqlite,
            r.bpfdb_set / r.redis,
            r.bpfdb_set / r.sqlite,
            r.bpfdb_set / r.ext4,
            r.bpfdb_set / one,
            r.bpfdb_set / r.bpfdb_nosync
        );
    }
    if let Some(r16) = rows.iter().find(|r| r.writers == 16) {
        let ideal = 16.0 * fsyncs;
        println!(
            "\nAt 16 writers bpfdb makes {:.0} durable SETs/s: {:.2}x ext4+fsync, and {:.2} of the \
             fsync-limited ideal ({ideal:.0}/s: 16 commits per bare fsync).\n",
            r16.bpfdb_set,
            r16.bpfdb_set / r16.ext4,
            r16.bpfdb_set / ideal
        );
    }
    println!(
        "Targets: 1 writer >= 1.0x Redis with one client; 16 writers >= 1.5x Redis with 16 \
         clients and >= 8x bpfdb's own 1-writer rate; 64 writers no slower than 16.\n"
    );
    commands("mount-durable", &cmds);
    vec![figure(&rows)]
}

fn figure(rows: &[Row]) -> Figure {
    let series = |name: &str, f: fn(&Row) -> f64| Series {
        name: name.into(),
        points: rows.iter().map(|r| (r.writers as f64, f(r))).collect(),
    };
    Figure {
        file: PNG,
        caption: format!(
            "Durable writes through the mount by writer processes (median of {ROUNDS} windows of {} ms)",
            WINDOW.as_millis()
        ),
        panels: vec![Panel {
            title: "Durable writes".into(),
            x: Axis::Log("writer processes (clients)".into()),
            y_label: "writes/s (log)".into(),
            series: vec![
                series("bpfdb SET (mount)", |r| r.bpfdb_set),
                series("bpfdb SET, --sync none", |r| r.bpfdb_nosync),
                series("bpfdb 4-key .txn (mount)", |r| r.bpfdb_txn),
                series("ext4 + fdatasync", |r| r.ext4),
                series("Redis appendfsync always", |r| r.redis),
                series("SQLite synchronous=FULL", |r| r.sqlite),
            ],
        }],
    }
}
