//! A random-operation test of the whole filesystem against a model, in the style of redb's and
//! TigerBeetle's: every step is one or more real processes on a real mount, and after every
//! step what the mount shows must be what the model says.
//!
//! The model is a tree, kept as the engine keeps one (fsd/src/core/fs/tree.rs): a map of
//! engine keys (an entry per name in each directory, a record per directory listing its entries,
//! the root's list of subdirectories and the id counter) to what they hold. That is what makes
//! it faithful for transactions, which stage and lock engine keys: a transaction's view is its
//! staged keys over the root's, and a root operation gives `EBUSY` exactly when it writes a key
//! the transaction read or wrote (a name it looked up, the record of a directory it looked a
//! name up in, listed or changed, the counter if it made a directory), may give it when it only
//! reads a key the transaction wrote (a directory move's check of the target's ancestors), and
//! works otherwise. The model knows no more of the daemon than that layout: what each
//! operation does and which error it gives is POSIX's, the kernel's and the tools' (and
//! docs/SEMANTICS.md's: `chmod` inside a transaction is `EPERM`).
//!
//! Operations (docs/SEMANTICS.md), at any depth: write (`cat FILE > k`), append (`>>`),
//! `truncate -s` (with and without `-c`), `touch` (of files and directories), `chmod`, `mv -T`
//! of files and of whole directories (between directories, onto a file, an empty or a non-empty
//! directory, below itself), `rm`, `rm -r`, `cat`, `mkdir`, `rmdir`, `ls -f`, names over 255
//! bytes at the root and over 237 below it (`ENAMETOOLONG`); paths through a missing name or a
//! file; transactions (`mkdir .txn/t`, the same operations and listings inside, root operations
//! meanwhile; commit, abort, `rmdir` of an active one, or a restart with it open); snapshots
//! (`mkdir .snap/s`, root changes, reads and listings of every directory that must show the
//! tree as it was at `mkdir`, `EROFS` on changes); checkpoints; clean restarts (`umount` +
//! start) and crashes (`kill -9` + start), after which every acknowledged operation must be
//! there; bulk creation and deletion of thousands of long-named keys at the root by several
//! shells at once, while the driver lists the root (every name not in the bulk must appear
//! exactly once) and takes a checkpoint.
//!
//! Names are bytes: short ones, and long ones up to 255 bytes (237 below the root), with spaces,
//! quotes, `$`, `\`, `*` and bytes over 0x7f; values are random bytes (NUL and newlines
//! included), mostly small, some up to 300 KB. Each is handed to the shell in an environment
//! variable or a file, never spliced into a script. Directories are at most [`MAX_DEPTH`] deep
//! (a move may add one level) and at most [`MAX_DIRS`] at once, mostly with short names.
//!
//! Checks: after each step, `cat` of every path the step touched (its value, or `ENOENT`,
//! `ENOTDIR`, `EISDIR`); every 10 steps `ls -f` of every directory, which must list `.`, `..`
//! (at the root then `.stats`, `.txn`, `.snap`, `.ctl`) and the entries in byte order; every 50
//! steps and after every restart and bulk step, a full comparison (those listings, a `find` of
//! the tree with every entry's type and mode, the `keys` counter of `.stats` against the
//! model's keys, and `cksum` of every file, compared with the model's CRC and size).
//!
//! Most steps are random; a bulk create (1/8 of the way), a clean restart (3/8), a `kill -9`
//! (5/8) and a bulk delete (7/8) come at fixed steps, so that every run has them.
//!
//! Settings (environment): `BPFDB_TEST_SEED` replays a run (the seed is printed at the start
//! and on failure, with the step and the operations that led to it; the fixed steps depend on
//! the number of steps, so replay with the same `BPFDB_FS_MODEL_STEPS`); `BPFDB_FS_MODEL_STEPS`
//! (default 300, under a minute on an idle 2-core machine; 600 take about one) sets the number
//! of steps.
//!
//! Layout: this file (`fs_model/main.rs`, the test target `fs_model`) holds the settings and
//! the test; `model` the tree of engine keys and the views, lookups and edits of it, `ops` the
//! operations and what the model says each gives, `dice` the random choices, `run` the driver
//! and its steps, `run_checks` the comparisons of the mount with the model, `run_txn` root
//! operations, transactions and snapshots.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use bpfdb_tests::{Mount, Rng};

use dice::Dice;
use model::{Tree, all_dirs};
use run::Run;
use run_checks::Cksum;

mod dice;
mod model;
mod ops;
mod run;
mod run_checks;
mod run_txn;

const DEFAULT_STEPS: u64 = 300;
/// Largest value the test writes; appends stay under the daemon's 1 MiB `max_value`.
const MAX_VALUE: usize = 1 << 20;
/// Names of the pool most operations pick from, so that they meet: overwrite, rename onto,
/// delete what exists.
const POOL: usize = 40;
/// Names `mkdir` mostly picks from, short ones, so that the same names meet in several
/// directories.
const DIR_POOL: usize = 8;
/// Longest name at the root, and below it (the daemon's `tree::SUB_NAME_MAX`).
const NAME_MAX: usize = 255;
const SUB_NAME_MAX: usize = 237;
/// At most this many directories at once; `mkdir` makes them at most this deep (a move of a
/// directory may add one level).
const MAX_DIRS: usize = 24;
const MAX_DEPTH: usize = 4;
/// Bulk steps create between these many keys, with names of 200 to 255 bytes; the first one
/// (at 1/8 of the run) at least `FIRST_BULK`, over 1 MiB of names (about 5,300 names of 200
/// bytes fill one scan batch).
const BULK_MIN: usize = 1500;
const BULK_MAX: usize = 3500;
const FIRST_BULK: usize = 5500;
/// Keys the bulk batches may hold at once.
const BULK_CAP: usize = 10_000;
/// Shells that create or delete one bulk batch together.
const BULK_SHELLS: usize = 3;
/// Operations in one transaction or under one snapshot (a snapshot sees at most 3 new versions
/// of a key, so the engine's 4 versions per key always suffice: no `rm -r` under a snapshot).
const TXN_OPS_MAX: u64 = 8;
const SNAP_OPS_MAX: u64 = 3;
/// A transaction takes no more operations once the model counts this many keys it holds: the
/// engine's limit is 128, and one operation locks up to about 30 (two paths of up to 6 names,
/// each name's entry and each directory's record, and what it writes).
const TXN_LOCKS_SOFT: usize = 64;
/// Operations shown when a step fails.
const HISTORY: usize = 25;
/// Modes files and directories are made with (the scripts set `umask 022`), and `chmod` sets.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
const FILE_MODES: [u32; 4] = [0o644, 0o600, 0o640, 0o664];
const DIR_MODES: [u32; 4] = [0o755, 0o700, 0o750, 0o775];

/// What the tools print for errnos `msg` has no text for, and their own refusals.
const ENOTEMPTY: &str = "Directory not empty";
const ENOTDIR: &str = "Not a directory";
const EISDIR: &str = "Is a directory";
/// dash, when `>` cannot open because a directory on the path is missing or a file.
const SH_NO_DIR: &str = "Directory nonexistent";
/// mv's own words.
const SAME_FILE: &str = "are the same file";
const OVER_DIR: &str = "cannot overwrite directory";
const OVER_FILE: &str = "cannot overwrite non-directory";
/// mv, when the kernel says EINVAL: a directory moving below itself.
const INTO_ITSELF: &str = "to a subdirectory of itself";

/// Byte values names are made of (besides the first, always a letter): no `/`, no NUL, no
/// newline (listings are read line by line), no 0x01 (the listing script's separator).
const NAME_BYTES: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,+=@%~ '\"$\\*?[]#&;()\xc3\xa9\x80\xff";
const FIRST_BYTES: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The fixed entries `ls -f` lists first: at the root, at the top of a transaction, at the top
/// of a snapshot, and in a subdirectory.
const ROOT_FIXED: &[&str] = &[".", "..", ".stats", ".txn", ".snap", ".ctl"];
const TXN_FIXED: &[&str] = &[".", "..", ".ctl"];
const DIR_FIXED: &[&str] = &[".", ".."];

type Name = Vec<u8>;
type Value = Vec<u8>;
/// A path from the top of a tree (the root, or a transaction's or snapshot's directory): its
/// names.
type Path = Vec<Name>;

#[test]
fn random_operations_match_a_model() {
    let seed = Rng::seed_from_env_or_time("fs_model");
    let steps = match std::env::var("BPFDB_FS_MODEL_STEPS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("BPFDB_FS_MODEL_STEPS={s:?} is not a number")),
        Err(_) => DEFAULT_STEPS,
    };
    let mut rng = Rng::new(seed);
    let mut pool = Vec::with_capacity(POOL);
    let mut run_rng = Rng::new(rng.next_u64());
    let mut seen = BTreeSet::new();
    let name = |rng: &mut Rng, len: usize| {
        let mut name = vec![FIRST_BYTES[rng.range(0, FIRST_BYTES.len() as u64) as usize]];
        while name.len() < len {
            name.push(NAME_BYTES[rng.range(0, NAME_BYTES.len() as u64) as usize]);
        }
        name
    };
    while pool.len() < POOL {
        // Short, medium and long names, some exactly 255 bytes.
        let len = match pool.len() % 4 {
            0 | 1 => run_rng.range(1, 8) as usize,
            2 => run_rng.range(20, 80) as usize,
            _ if pool.len() % 8 == 3 => 255,
            _ => run_rng.range(150, 256) as usize,
        };
        let n = name(&mut run_rng, len);
        if seen.insert(n.clone()) {
            pool.push(n);
        }
    }
    // Short names for directories, a few of them the pool's too.
    let mut dir_pool: Vec<Name> = vec![pool[0].clone(), pool[1].clone()];
    while dir_pool.len() < DIR_POOL {
        let len = run_rng.range(1, 6) as usize;
        let n = name(&mut run_rng, len);
        if !dir_pool.contains(&n) {
            dir_pool.push(n);
        }
    }
    let mut run = Run {
        m: Mount::new(),
        dice: Dice {
            rng,
            pool,
            dir_pool,
        },
        seed,
        steps,
        step: 0,
        root: Tree::new(),
        dir_ids: 0,
        bulk: BTreeMap::new(),
        next_id: 0,
        max_txn_locks: 0,
        history: VecDeque::new(),
        done: BTreeMap::new(),
        spent: BTreeMap::new(),
        cksum: Cksum::new(),
    };
    let started = Instant::now();
    for step in 0..steps {
        run.step = step;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run.one_step()));
        if let Err(panic) = result {
            let mut history = String::new();
            for h in &run.history {
                writeln!(history, "  {h}").expect("write to String");
            }
            eprintln!(
                "fs_model FAILED at step {step} of {steps} after {:?}; replay with \
                 BPFDB_TEST_SEED={seed} BPFDB_FS_MODEL_STEPS={steps}\nlast operations:\n{history}",
                started.elapsed()
            );
            std::panic::resume_unwind(panic);
        }
    }
    run.step = steps;
    run.full_compare("at the end");
    let dirs = all_dirs(&run.root).len() - 1;
    eprintln!(
        "fs_model: {steps} steps in {:?}, {} keys and {dirs} directories at the end, at most {} \
         keys held by a transaction; done: {:?}; time: {:?}",
        started.elapsed(),
        run.root.len(),
        run.max_txn_locks,
        run.done,
        run.spent
    );
    // A default run exercises everything (at least one of each kind).
    if steps >= DEFAULT_STEPS {
        for what in [
            "root op",
            "root op on a locked key",
            "txn op",
            "txn commit",
            "txn abort",
            "snapshot",
            "checkpoint",
            "clean restart",
            "kill -9",
            "bulk create",
            "mkdir done",
            "directory removed",
        ] {
            assert!(
                run.done.get(what).copied().unwrap_or(0) > 0,
                "seed {seed}: {steps} steps did no `{what}`: {:?}",
                run.done
            );
        }
    }
}
