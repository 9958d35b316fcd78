//! Directories through the mount: what `ls` of a small directory costs per
//! entry, in an empty database and in one of a million keys (a
//! subdirectory's listing reads its own entry list, so the second should
//! cost what the first does), what `ls` of a small root costs when the
//! million keys sit below it (the root's listing walks the top-level keys'
//! own records map, whose bucket array follows `--max-keys`: so also in an
//! empty database mounted with the big one's `--max-keys`), and what a
//! path lookup costs by depth; each against tmpfs, the same calls without
//! FUSE.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bpfdb::{Db, Options, SetFlags, SyncMode};

use crate::engine::{VALUE_BYTES, key, meta};
use crate::mount::{Mount, sibling_exe};
use crate::{bench_dir, commands, die, median_ns_per_op};

/// Keys of the large database, written through the engine.
const BIG: usize = 1_000_000;
/// Where the large database's keys sit: at the root, or below it, under
/// the prefix the daemon gives the files of a directory (`\x01<id>/`; no
/// directory of this bench gets the id).
const AT_ROOT: &str = "";
const BELOW: &str = "\x01ffffffff/";
/// Listings of the root per run (when it walked every key of the
/// database, one took half a second).
const ROOT_LS_OPS: usize = 2;
/// Keys per populating transaction (as many as one may lock).
const TXN_KEYS: usize = bpfdb::abi::TXN_MAX_LOCKS;
/// Entries of the directory listed.
const ENTRIES: usize = 10;
/// Depths of the paths looked up: a file below this many directories.
const DEPTHS: [usize; 5] = [1, 2, 4, 8, 16];
/// Listings and lookups per run.
const LS_OPS: usize = 2_000;
const STAT_OPS: usize = 5_000;

/// Writes `n` keys named `prefix` + key(i) into a log in `dir` through
/// the engine.
fn populate(n: usize, prefix: &str, dir: &Path) {
    let opts = Options {
        max_keys: max_keys_for(n) as u32,
        data_dir: Some(dir.to_path_buf()),
        sync: SyncMode::None,
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    };
    let db = Db::open(&opts).unwrap_or_else(|e| die("open", e));
    let value = vec![b'v'; VALUE_BYTES];
    for first in (0..n).step_by(TXN_KEYS) {
        let t = db.begin(false).unwrap_or_else(|e| die("begin", e));
        for i in first..(first + TXN_KEYS).min(n) {
            let name = [prefix.as_bytes(), &key(i)].concat();
            t.set(&name, &value, meta(), SetFlags::default())
                .unwrap_or_else(|e| die("populate", e));
        }
        t.commit().unwrap_or_else(|e| die("commit", e));
    }
}

/// Makes `d` with ENTRIES files and, for each depth, `p/p/.../f`.
fn make_tree(root: &Path) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let d = root.join("d");
    std::fs::create_dir(&d).map_err(|e| io("mkdir d", e))?;
    for i in 0..ENTRIES {
        std::fs::write(d.join(format!("entry{i:02}")), b"v").map_err(|e| io("write", e))?;
    }
    let deepest = *DEPTHS.last().unwrap_or(&1);
    let mut p = root.to_path_buf();
    for depth in 1..=deepest {
        p.push("p");
        std::fs::create_dir(&p).map_err(|e| io("mkdir p", e))?;
        if DEPTHS.contains(&depth) {
            std::fs::write(p.join("f"), b"v").map_err(|e| io("write f", e))?;
        }
    }
    Ok(())
}

fn deep_path(root: &Path, depth: usize) -> PathBuf {
    let mut p = root.to_path_buf();
    for _ in 0..depth {
        p.push("p");
    }
    p.join("f")
}

/// ns per `ls` of `d` (opendir, readdir to the end, closedir), checked.
fn ls_ns(root: &Path) -> f64 {
    let d = root.join("d");
    median_ns_per_op(LS_OPS, |_| {
        let n = std::fs::read_dir(&d)
            .unwrap_or_else(|e| die("ls d", e))
            .count();
        if n != ENTRIES {
            die("ls d", format!("{n} entries, not {ENTRIES}"));
        }
    })
}

/// ns per `ls` of the root, which holds `entries` (`d`, `p`, and in the
/// mount the four reserved entries).
fn ls_root_ns(root: &Path, entries: usize) -> f64 {
    median_ns_per_op(ROOT_LS_OPS, |_| {
        let n = std::fs::read_dir(root)
            .unwrap_or_else(|e| die("ls root", e))
            .count();
        if n != entries {
            die("ls root", format!("{n} entries, not {entries}"));
        }
    })
}

/// ns per `stat` of the file at each depth.
fn stat_ns(root: &Path) -> Vec<f64> {
    DEPTHS
        .iter()
        .map(|&depth| {
            let p = deep_path(root, depth);
            median_ns_per_op(STAT_OPS, |_| {
                std::fs::metadata(&p).unwrap_or_else(|e| die("stat", e));
            })
        })
        .collect()
}

struct Figures {
    ls: f64,
    /// None where the root holds the million keys.
    ls_root: Option<f64>,
    stat: Vec<f64>,
}

/// Makes the tree in `root` and times it; the root is listed if it
/// holds `root_entries`.
fn measure(root: &Path, root_entries: Option<usize>) -> Result<Figures, String> {
    make_tree(root)?;
    Ok(Figures {
        ls: ls_ns(root),
        ls_root: root_entries.map(|n| ls_root_ns(root, n)),
        stat: stat_ns(root),
    })
}

/// `--max-keys` of a mount made for `keys` keys.
fn max_keys_for(keys: usize) -> usize {
    keys + keys / 5 + 1000
}

/// A daemon over `keys` keys named `prefix` + key(i), mounted with the
/// `--max-keys` of `capacity` keys.
fn bpfdb_mount(
    keys: usize,
    prefix: &str,
    capacity: usize,
) -> Result<(Mount, tempfile::TempDir), String> {
    let data = tempfile::Builder::new()
        .prefix("bpfdb-bench-tree")
        .tempdir_in(bench_dir())
        .map_err(|e| format!("data dir: {e}"))?;
    if keys > 0 {
        populate(keys, prefix, data.path());
    }
    let max = max_keys_for(capacity).to_string();
    let args = ["-f", "--sync", "none", "--max-keys", &max];
    let m = Mount::daemon(&sibling_exe("bpfdb")?, &args, Some(data.path()))?;
    Ok((m, data))
}

pub fn run() -> Vec<crate::plot::Figure> {
    let t = Instant::now();
    let tmpfs = Mount::tmpfs().unwrap_or_else(|e| die("tmpfs", e));
    let base = measure(&tmpfs.path(), Some(2)).unwrap_or_else(|e| die("tmpfs tree", e));
    drop(tmpfs);
    let mut rows = Vec::new();
    for (keys, prefix, capacity) in [
        (0, AT_ROOT, 0),
        (0, AT_ROOT, BIG),
        (BIG, AT_ROOT, BIG),
        (BIG, BELOW, BIG),
    ] {
        let (m, _data) =
            bpfdb_mount(keys, prefix, capacity).unwrap_or_else(|e| die("bpfdb mount", e));
        let small_root = keys == 0 || prefix == BELOW;
        let f =
            measure(&m.path(), small_root.then_some(6)).unwrap_or_else(|e| die("bpfdb tree", e));
        let place = if prefix == BELOW { "below" } else { "at" };
        let max = max_keys_for(capacity);
        rows.push((
            format!("bpfdb, {keys} keys {place} the root, `--max-keys {max}`"),
            f,
        ));
    }
    println!(
        "## Directories through the mount: `ls` of a {ENTRIES}-entry directory, `ls` of the root and `stat` by path depth (median of {} runs)\n",
        crate::RUNS
    );
    println!(
        "`ls` is opendir + readdir to the end + closedir of `d`, {LS_OPS} per run; `ls /` the same of the root, which holds `d` and `p` (and in the mount `.stats`, `.txn`, `.snap`, `.ctl`), {ROOT_LS_OPS} per run; `stat` is of `p/.../p/f` below DEPTH directories, {STAT_OPS} per run. The million keys are written through the engine before the daemon starts, at the root or below it (named as the files of a directory are); the directory listed holds {ENTRIES} files either way. Section time {:.0} s.\n",
        t.elapsed().as_secs_f64()
    );
    print!("| | `ls` µs | per entry µs | `ls /` µs |");
    for d in DEPTHS {
        print!(" stat depth {d} µs |");
    }
    println!();
    println!(
        "| --- | ---: | ---: | ---: |{}",
        " ---: |".repeat(DEPTHS.len())
    );
    let line = |name: &str, f: &Figures| {
        print!(
            "| {name} | {:.1} | {:.2} |",
            f.ls / 1e3,
            f.ls / 1e3 / ENTRIES as f64
        );
        match f.ls_root {
            Some(ns) => print!(" {:.1} |", ns / 1e3),
            None => print!(" (a million entries) |"),
        }
        for s in &f.stat {
            print!(" {:.1} |", s / 1e3);
        }
        println!();
    };
    line("tmpfs", &base);
    for (name, f) in &rows {
        line(name, f);
    }
    println!();
    if let [(_, small), (_, roomy), (_, big), (_, below)] = &rows[..] {
        println!(
            "`ls` of the {ENTRIES}-entry directory with {BIG} keys in the database costs {:.2}x what it costs in an empty one; against tmpfs {:.1}x. `ls` of the root with {BIG} keys below it costs {:.2}x what it costs in an empty database of the same `--max-keys`, and {:.1}x an empty one of a small `--max-keys`: the root's listing walks the top-level keys' own records map, whose bucket array follows `--max-keys`, not the keys below the root. A lookup per path component: stat at depth 16 costs {:.1}x depth 1 (tmpfs {:.1}x).\n",
            big.ls / small.ls,
            big.ls / base.ls,
            below.ls_root.unwrap_or(0.0) / roomy.ls_root.unwrap_or(1.0),
            below.ls_root.unwrap_or(0.0) / small.ls_root.unwrap_or(1.0),
            big.stat[DEPTHS.len() - 1] / big.stat[0],
            base.stat[DEPTHS.len() - 1] / base.stat[0],
        );
    }
    commands(
        "tree",
        &["bpfdb -f --sync none --max-keys KEYSx1.2+1000 DATA MNT".into()],
    );
    Vec::new()
}
