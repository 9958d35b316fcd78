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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::panic::AssertUnwindSafe;
use std::process::Output;
use std::time::{Duration, Instant};

use bpfdb_tests::{Background, LISTED_RESERVED, Mount, Rng, msg};

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

// ---- the model ----

/// A key of the engine as the daemon lays a tree out; directory 0 is the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EKey {
    /// Entry `name` of a directory: a file's value, or a subdirectory's id.
    Ent(u64, Name),
    /// A directory's record: its parent, its entries and its metadata.
    Rec(u64),
    /// The root's list of subdirectories (the root has no record).
    RootDirs,
    /// The directory id counter.
    NextId,
}

#[derive(Clone, Debug, PartialEq)]
enum EVal {
    File {
        data: Value,
        mode: u32,
    },
    Dir(u64),
    Rec {
        parent: u64,
        names: BTreeSet<Name>,
        mode: u32,
    },
    /// `RootDirs`.
    Names(BTreeSet<Name>),
    /// `NextId` (its value is the daemon's business).
    Counter,
}

/// The committed tree, or a snapshot of it.
type Tree = BTreeMap<EKey, EVal>;
/// A transaction's changes (None: deleted).
type Staged = BTreeMap<EKey, Option<EVal>>;

/// Reading a tree.
trait View {
    fn get(&self, k: &EKey) -> Option<&EVal>;
    /// The names at the top, in byte order.
    fn top_names(&self) -> Vec<Name>;
    /// The committed tree underneath (to pick existing names from without merging).
    fn base(&self) -> &Tree;
}

/// Changing one.
trait Kv: View {
    fn set(&mut self, k: EKey, v: EVal);
    fn remove(&mut self, k: &EKey);
}

fn top_range(t: &Tree) -> impl Iterator<Item = &Name> {
    t.range(EKey::Ent(0, Vec::new())..EKey::Ent(1, Vec::new()))
        .map(|(k, _)| match k {
            EKey::Ent(_, n) => n,
            _ => unreachable!("an entry range"),
        })
}

impl View for Tree {
    fn get(&self, k: &EKey) -> Option<&EVal> {
        BTreeMap::get(self, k)
    }
    fn top_names(&self) -> Vec<Name> {
        top_range(self).cloned().collect()
    }
    fn base(&self) -> &Tree {
        self
    }
}

/// Staged changes over the committed tree: a transaction's view, or a root operation's while
/// the model decides whether it happens. (Under two-phase locking the root cannot change a key
/// once a transaction read or wrote it.)
struct Overlay<'a, S> {
    root: &'a Tree,
    staged: S,
}

impl<S: std::borrow::Borrow<Staged>> View for Overlay<'_, S> {
    fn get(&self, k: &EKey) -> Option<&EVal> {
        match self.staged.borrow().get(k) {
            Some(v) => v.as_ref(),
            None => self.root.get(k),
        }
    }
    fn top_names(&self) -> Vec<Name> {
        let mut names: BTreeSet<Name> = top_range(self.root).cloned().collect();
        let staged = self.staged.borrow();
        for (k, v) in staged.range(EKey::Ent(0, Vec::new())..EKey::Ent(1, Vec::new())) {
            let EKey::Ent(_, n) = k else { continue };
            match v {
                Some(_) => names.insert(n.clone()),
                None => names.remove(n),
            };
        }
        names.into_iter().collect()
    }
    fn base(&self) -> &Tree {
        self.root
    }
}

impl Kv for Overlay<'_, &mut Staged> {
    fn set(&mut self, k: EKey, v: EVal) {
        self.staged.insert(k, Some(v));
    }
    fn remove(&mut self, k: &EKey) {
        self.staged.insert(k.clone(), None);
    }
}

fn merge(root: &mut Tree, staged: Staged) {
    for (k, v) in staged {
        match v {
            Some(v) => root.insert(k, v),
            None => root.remove(&k),
        };
    }
}

/// The engine keys an operation reads and writes, for the locking rules.
#[derive(Default, Debug)]
struct Effects {
    /// Read by the kernel's lookups and by listings (in a transaction, each locks).
    looked: Vec<EKey>,
    /// Read, not written, by the daemon's change.
    read: Vec<EKey>,
    /// Written.
    wrote: Vec<EKey>,
    /// The outcome is the daemon's (a change, or a failure it finds), not a lookup's, the
    /// kernel's or the tool's.
    daemon: bool,
    /// A write that leaves everything as it was.
    no_change: bool,
}

enum Miss {
    NoEnt,
    NotDir,
}

/// The directory `dirs` names, looking each name up.
fn walk(v: &impl View, dirs: &[Name], fx: &mut Effects) -> Result<u64, Miss> {
    let mut dir = 0;
    for name in dirs {
        match lookup(v, dir, name, fx) {
            None => return Err(Miss::NoEnt),
            Some(EVal::Dir(id)) => dir = *id,
            Some(_) => return Err(Miss::NotDir),
        }
    }
    Ok(dir)
}

/// Looks `name` up in `dir`: its entry, and a subdirectory's record.
fn lookup<'v>(v: &'v impl View, dir: u64, name: &[u8], fx: &mut Effects) -> Option<&'v EVal> {
    let key = EKey::Ent(dir, name.to_vec());
    let found = v.get(&key);
    fx.looked.push(key);
    if let Some(EVal::Dir(id)) = found {
        fx.looked.push(EKey::Rec(*id));
    }
    found
}

fn split(path: &Path) -> (&[Name], &Name) {
    let (name, dirs) = path.split_last().expect("a path has a name");
    (dirs, name)
}

fn miss(m: Miss) -> Outcome {
    match m {
        Miss::NoEnt => Outcome::Fails(msg::ENOENT),
        Miss::NotDir => Outcome::Fails(ENOTDIR),
    }
}

/// Entries of directory `dir`, in byte order.
fn entries(v: &impl View, dir: u64) -> Vec<Name> {
    if dir == 0 {
        return v.top_names();
    }
    match v.get(&EKey::Rec(dir)) {
        Some(EVal::Rec { names, .. }) => names.iter().cloned().collect(),
        other => panic!("model: record of directory {dir} is {other:?}"),
    }
}

fn is_empty_dir(v: &impl View, dir: u64) -> bool {
    matches!(v.get(&EKey::Rec(dir)), Some(EVal::Rec { names, .. }) if names.is_empty())
}

/// Subdirectories of `dir`.
fn subdirs(v: &impl View, dir: u64) -> Vec<(Name, u64)> {
    let names: Vec<Name> = if dir == 0 {
        match v.get(&EKey::RootDirs) {
            Some(EVal::Names(s)) => s.iter().cloned().collect(),
            _ => Vec::new(),
        }
    } else {
        entries(v, dir)
    };
    names
        .into_iter()
        .filter_map(|n| match v.get(&EKey::Ent(dir, n.clone())) {
            Some(EVal::Dir(id)) => Some((n, *id)),
            _ => None,
        })
        .collect()
}

/// Every directory, the root first, with its path.
fn all_dirs(v: &impl View) -> Vec<(Path, u64)> {
    let mut out: Vec<(Path, u64)> = vec![(Vec::new(), 0)];
    let mut i = 0;
    while i < out.len() {
        assert!(i < 10_000, "model: a cycle of directories");
        let (path, id) = out[i].clone();
        for (n, sub) in subdirs(v, id) {
            let mut p = path.clone();
            p.push(n);
            out.push((p, sub));
        }
        i += 1;
    }
    out
}

/// The directory at `path`, if there is one.
fn dir_at(v: &impl View, path: &Path) -> Option<u64> {
    let mut fx = Effects::default();
    let (dirs, name) = split(path);
    match lookup(v, walk(v, dirs, &mut fx).ok()?, name, &mut fx) {
        Some(EVal::Dir(id)) => Some(*id),
        _ => None,
    }
}

/// Where `mv -T a b` may go without making the tree over MAX_DEPTH + 1 deep: `b`, or if
/// moving directory `a` there would, its name at the root.
fn shallow_target(v: &impl View, a: &Path, b: Path) -> Path {
    if let Some(id) = dir_at(v, a)
        && b.len() + height(v, id) > MAX_DEPTH + 1
    {
        return vec![b.last().expect("a name").clone()];
    }
    b
}

/// Levels below directory `dir` (0 when it has no subdirectory).
fn height(v: &impl View, dir: u64) -> usize {
    subdirs(v, dir)
        .into_iter()
        .map(|(_, d)| 1 + height(v, d))
        .max()
        .unwrap_or(0)
}

/// Rewrites the list of entries of `dir` (the root's list of subdirectories for the root).
fn update_names(kv: &mut impl Kv, dir: u64, fx: &mut Effects, f: impl FnOnce(&mut BTreeSet<Name>)) {
    if dir == 0 {
        let mut names = match kv.get(&EKey::RootDirs) {
            Some(EVal::Names(s)) => s.clone(),
            _ => BTreeSet::new(),
        };
        f(&mut names);
        kv.set(EKey::RootDirs, EVal::Names(names));
        fx.wrote.push(EKey::RootDirs);
        return;
    }
    let Some(EVal::Rec {
        parent,
        mut names,
        mode,
    }) = kv.get(&EKey::Rec(dir)).cloned()
    else {
        panic!("model: no record of directory {dir}");
    };
    f(&mut names);
    kv.set(
        EKey::Rec(dir),
        EVal::Rec {
            parent,
            names,
            mode,
        },
    );
    fx.wrote.push(EKey::Rec(dir));
}

/// Adds entry `name` to `dir`: the root lists its subdirectories only.
fn add_entry(kv: &mut impl Kv, dir: u64, name: &Name, v: EVal, fx: &mut Effects) {
    let is_dir = matches!(v, EVal::Dir(_));
    kv.set(EKey::Ent(dir, name.clone()), v);
    fx.wrote.push(EKey::Ent(dir, name.clone()));
    if dir != 0 || is_dir {
        update_names(kv, dir, fx, |n| {
            n.insert(name.clone());
        });
    }
}

fn remove_entry(kv: &mut impl Kv, dir: u64, name: &Name, is_dir: bool, fx: &mut Effects) {
    kv.remove(&EKey::Ent(dir, name.clone()));
    fx.wrote.push(EKey::Ent(dir, name.clone()));
    if dir != 0 || is_dir {
        update_names(kv, dir, fx, |n| {
            n.remove(name);
        });
    }
}

/// Removes everything below directory `dir`, and its record.
fn remove_below(kv: &mut impl Kv, dir: u64) {
    for n in entries(kv, dir) {
        let key = EKey::Ent(dir, n);
        if let Some(EVal::Dir(sub)) = kv.get(&key).cloned() {
            remove_below(kv, sub);
        }
        kv.remove(&key);
    }
    kv.remove(&EKey::Rec(dir));
}

/// What `cat` of `path` prints.
fn read_outcome(v: &impl View, path: &Path, fx: &mut Effects) -> Outcome {
    let (dirs, name) = split(path);
    let dir = match walk(v, dirs, fx) {
        Ok(d) => d,
        Err(m) => return miss(m),
    };
    match lookup(v, dir, name, fx) {
        None => Outcome::Fails(msg::ENOENT),
        Some(EVal::Dir(_)) => Outcome::Fails(EISDIR),
        Some(EVal::File { data, .. }) => Outcome::Value(data.clone()),
        Some(other) => panic!("model: entry {other:?}"),
    }
}

/// One operation, in any tree (`P` is `""` at the root, `.txn/NAME/` in a transaction).
#[derive(Clone, Debug)]
enum Op {
    Write(Path, Value),
    Append(Path, Value),
    Truncate {
        path: Path,
        len: usize,
        no_create: bool,
    },
    Touch(Path),
    Chmod(Path, u32),
    Rename(Path, Path),
    Remove(Path),
    /// `rm -r` (at the root, with neither a transaction nor a snapshot open).
    RemoveTree(Path),
    Read(Path),
    Mkdir(Path),
    Rmdir(Path),
    /// A write or a mkdir of a name over the limit of its directory.
    TooLong {
        path: Path,
        mkdir: bool,
    },
}

/// What the model says an operation gives.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ok,
    /// Success, printing this value.
    Value(Value),
    /// Failure with this text in stderr.
    Fails(&'static str),
    /// Failure with one of these texts in stderr.
    FailsAny(Vec<&'static str>),
    /// Either success (the operation happened) or that failure (nothing happened).
    OkOrFails(&'static str),
}

impl Op {
    fn paths(&self) -> Vec<&Path> {
        match self {
            Op::Write(p, _)
            | Op::Append(p, _)
            | Op::Truncate { path: p, .. }
            | Op::Touch(p)
            | Op::Chmod(p, _)
            | Op::Remove(p)
            | Op::RemoveTree(p)
            | Op::Read(p)
            | Op::Mkdir(p)
            | Op::Rmdir(p) => vec![p],
            Op::Rename(a, b) => vec![a, b],
            Op::TooLong { .. } => vec![],
        }
    }

    /// A name for the step counters.
    fn kind(&self) -> &'static str {
        match self {
            Op::Write(..) => "write",
            Op::Append(..) => "append",
            Op::Truncate { .. } => "truncate",
            Op::Touch(_) => "touch",
            Op::Chmod(..) => "chmod",
            Op::Rename(..) => "mv",
            Op::Remove(_) => "rm",
            Op::RemoveTree(_) => "rm -r",
            Op::Read(_) => "cat",
            Op::Mkdir(_) => "mkdir",
            Op::Rmdir(_) => "rmdir",
            Op::TooLong { .. } => "too long",
        }
    }

    /// The script, its environment (`K`, `A`, `B` name paths; values go through `$T/val`).
    fn script(&self) -> (String, Vec<(&'static str, Vec<u8>)>) {
        let k = |p: &Path| vec![("K", join(p))];
        match self {
            Op::Write(p, _)
            | Op::TooLong {
                path: p,
                mkdir: false,
            } => ("umask 022; cat \"$T/val\" > \"$P$K\"".into(), k(p)),
            Op::Append(p, _) => ("umask 022; cat \"$T/val\" >> \"$P$K\"".into(), k(p)),
            Op::Truncate {
                path,
                len,
                no_create,
            } => (
                format!(
                    "umask 022; truncate {}-s {len} -- \"$P$K\"",
                    if *no_create { "-c " } else { "" }
                ),
                k(path),
            ),
            Op::Touch(p) => ("umask 022; touch -- \"$P$K\"".into(), k(p)),
            Op::Chmod(p, m) => (format!("chmod {m:o} -- \"$P$K\""), k(p)),
            Op::Rename(a, b) => (
                "mv -T -- \"$P$A\" \"$P$B\"".into(),
                vec![("A", join(a)), ("B", join(b))],
            ),
            Op::Remove(p) => ("rm -- \"$P$K\"".into(), k(p)),
            Op::RemoveTree(p) => ("rm -r -- \"$P$K\"".into(), k(p)),
            Op::Read(p) => ("cat -- \"$P$K\"".into(), k(p)),
            Op::Mkdir(p)
            | Op::TooLong {
                path: p,
                mkdir: true,
            } => ("umask 022; mkdir -- \"$P$K\"".into(), k(p)),
            Op::Rmdir(p) => ("rmdir -- \"$P$K\"".into(), k(p)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Op::Write(p, v) => format!("write {} ({} B)", show_path(p), v.len()),
            Op::Append(p, v) => format!("append {} ({} B)", show_path(p), v.len()),
            Op::Truncate {
                path,
                len,
                no_create,
            } => format!(
                "truncate{} {} to {len}",
                if *no_create { " -c" } else { "" },
                show_path(path)
            ),
            Op::Touch(p) => format!("touch {}", show_path(p)),
            Op::Chmod(p, m) => format!("chmod {m:o} {}", show_path(p)),
            Op::Rename(a, b) => format!("mv -T {} {}", show_path(a), show_path(b)),
            Op::Remove(p) => format!("rm {}", show_path(p)),
            Op::RemoveTree(p) => format!("rm -r {}", show_path(p)),
            Op::Read(p) => format!("cat {}", show_path(p)),
            Op::Mkdir(p) => format!("mkdir {}", show_path(p)),
            Op::Rmdir(p) => format!("rmdir {}", show_path(p)),
            Op::TooLong { path, mkdir } => format!(
                "{} {} ({} B name)",
                if *mkdir { "mkdir" } else { "write" },
                show_path(path),
                path.last().map_or(0, Vec::len)
            ),
        }
    }
}

/// A path as the shell names it.
fn join(p: &[Name]) -> Vec<u8> {
    p.join(&b'/')
}

/// A name for messages: short ones whole, long ones by their head and length.
fn show(name: &[u8]) -> String {
    if name.len() <= 24 {
        String::from_utf8_lossy(name).into_owned()
    } else {
        format!(
            "{}..({} B)",
            String::from_utf8_lossy(&name[..16]),
            name.len()
        )
    }
}

fn show_path(p: &[Name]) -> String {
    let names: Vec<String> = p.iter().map(|n| show(n)).collect();
    format!("{:?}", names.join("/"))
}

/// Applies `op` to the model (only when it succeeds); returns what the mount must answer, and
/// records in `fx` the keys it reads and writes. `ids` numbers new directories; `in_txn` says
/// whether it runs in a transaction (where `chmod` is `EPERM`).
fn apply(kv: &mut impl Kv, op: &Op, ids: &mut u64, fx: &mut Effects, in_txn: bool) -> Outcome {
    match op {
        Op::Write(p, v) | Op::Append(p, v) => {
            let (dirs, name) = split(p);
            let Ok(dir) = walk(kv, dirs, fx) else {
                return Outcome::Fails(SH_NO_DIR);
            };
            match lookup(kv, dir, name, fx).cloned() {
                Some(EVal::Dir(_)) => Outcome::Fails(EISDIR),
                Some(EVal::File { data, mode }) => {
                    let new = match op {
                        Op::Append(..) => [&data[..], v].concat(),
                        _ => v.clone(),
                    };
                    fx.no_change = new == data;
                    fx.daemon = true;
                    kv.set(EKey::Ent(dir, name.clone()), EVal::File { data: new, mode });
                    fx.wrote.push(EKey::Ent(dir, name.clone()));
                    Outcome::Ok
                }
                None => {
                    fx.daemon = true;
                    let file = EVal::File {
                        data: v.clone(),
                        mode: FILE_MODE,
                    };
                    add_entry(kv, dir, name, file, fx);
                    Outcome::Ok
                }
                Some(other) => panic!("model: entry {other:?}"),
            }
        }
        Op::Truncate {
            path,
            len,
            no_create,
        } => {
            let (dirs, name) = split(path);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                // truncate -c ignores ENOENT, of the name or of a directory above it.
                Err(Miss::NoEnt) if *no_create => return Outcome::Ok,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).cloned() {
                Some(EVal::Dir(_)) => Outcome::Fails(EISDIR),
                Some(EVal::File { mut data, mode }) => {
                    fx.no_change = data.len() == *len;
                    fx.daemon = true;
                    data.resize(*len, 0);
                    kv.set(EKey::Ent(dir, name.clone()), EVal::File { data, mode });
                    fx.wrote.push(EKey::Ent(dir, name.clone()));
                    Outcome::Ok
                }
                None if *no_create => Outcome::Ok,
                None => {
                    fx.daemon = true;
                    let file = EVal::File {
                        data: vec![0; *len],
                        mode: FILE_MODE,
                    };
                    add_entry(kv, dir, name, file, fx);
                    Outcome::Ok
                }
                Some(other) => panic!("model: entry {other:?}"),
            }
        }
        Op::Touch(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            fx.daemon = true;
            match lookup(kv, dir, name, fx).cloned() {
                // New times: the record's metadata, or the key's.
                Some(EVal::Dir(id)) => fx.wrote.push(EKey::Rec(id)),
                Some(_) => fx.wrote.push(EKey::Ent(dir, name.clone())),
                None => {
                    let file = EVal::File {
                        data: Vec::new(),
                        mode: FILE_MODE,
                    };
                    add_entry(kv, dir, name, file, fx);
                }
            }
            Outcome::Ok
        }
        Op::Chmod(p, new) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).cloned() {
                None => Outcome::Fails(msg::ENOENT),
                // Modes and owners change at the root only.
                Some(_) if in_txn => Outcome::Fails(msg::EPERM),
                Some(EVal::Dir(id)) => {
                    let Some(EVal::Rec {
                        parent,
                        names,
                        mode,
                    }) = kv.get(&EKey::Rec(id)).cloned()
                    else {
                        panic!("model: no record of directory {id}");
                    };
                    fx.daemon = true;
                    fx.no_change = mode == *new;
                    kv.set(
                        EKey::Rec(id),
                        EVal::Rec {
                            parent,
                            names,
                            mode: *new,
                        },
                    );
                    fx.wrote.push(EKey::Rec(id));
                    Outcome::Ok
                }
                Some(EVal::File { data, mode }) => {
                    fx.daemon = true;
                    fx.no_change = mode == *new;
                    kv.set(
                        EKey::Ent(dir, name.clone()),
                        EVal::File { data, mode: *new },
                    );
                    fx.wrote.push(EKey::Ent(dir, name.clone()));
                    Outcome::Ok
                }
                Some(other) => panic!("model: entry {other:?}"),
            }
        }
        Op::Rename(a, b) => rename(kv, a, b, fx),
        Op::Remove(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).map(|v| matches!(v, EVal::Dir(_))) {
                None => Outcome::Fails(msg::ENOENT),
                Some(true) => Outcome::Fails(EISDIR),
                Some(false) => {
                    fx.daemon = true;
                    remove_entry(kv, dir, name, false, fx);
                    Outcome::Ok
                }
            }
        }
        Op::RemoveTree(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            fx.daemon = true;
            match lookup(kv, dir, name, fx).cloned() {
                None => Outcome::Fails(msg::ENOENT),
                Some(EVal::Dir(id)) => {
                    remove_below(kv, id);
                    remove_entry(kv, dir, name, true, fx);
                    Outcome::Ok
                }
                Some(_) => {
                    remove_entry(kv, dir, name, false, fx);
                    Outcome::Ok
                }
            }
        }
        Op::Read(p) => read_outcome(kv, p, fx),
        Op::Mkdir(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            if lookup(kv, dir, name, fx).is_some() {
                return Outcome::Fails(msg::EEXIST);
            }
            fx.daemon = true;
            *ids += 1;
            let id = *ids;
            kv.set(EKey::NextId, EVal::Counter);
            fx.wrote.push(EKey::NextId);
            add_entry(kv, dir, name, EVal::Dir(id), fx);
            kv.set(
                EKey::Rec(id),
                EVal::Rec {
                    parent: dir,
                    names: BTreeSet::new(),
                    mode: DIR_MODE,
                },
            );
            fx.wrote.push(EKey::Rec(id));
            Outcome::Ok
        }
        Op::Rmdir(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).cloned() {
                None => Outcome::Fails(msg::ENOENT),
                Some(EVal::Dir(id)) if !is_empty_dir(kv, id) => {
                    fx.daemon = true;
                    fx.read.extend([
                        if dir == 0 {
                            EKey::RootDirs
                        } else {
                            EKey::Rec(dir)
                        },
                        EKey::Ent(dir, name.clone()),
                        EKey::Rec(id),
                    ]);
                    Outcome::Fails(ENOTEMPTY)
                }
                Some(EVal::Dir(id)) => {
                    fx.daemon = true;
                    remove_entry(kv, dir, name, true, fx);
                    kv.remove(&EKey::Rec(id));
                    fx.wrote.push(EKey::Rec(id));
                    Outcome::Ok
                }
                Some(_) => Outcome::Fails(ENOTDIR),
            }
        }
        Op::TooLong { path, mkdir } => match walk(kv, split(path).0, fx) {
            Err(_) if !mkdir => Outcome::Fails(SH_NO_DIR),
            Err(m) => miss(m),
            Ok(_) => Outcome::Fails(msg::ENAMETOOLONG),
        },
    }
}

/// `mv -T a b`: the checks in the order mv and the kernel make them, then the move of one
/// entry (a directory with everything below it).
fn rename(kv: &mut impl Kv, a: &Path, b: &Path, fx: &mut Effects) -> Outcome {
    let (adirs, an) = split(a);
    let pa = match walk(kv, adirs, fx) {
        Ok(d) => d,
        Err(m) => return miss(m),
    };
    let Some(moved) = lookup(kv, pa, an, fx).cloned() else {
        return Outcome::Fails(msg::ENOENT);
    };
    let (bdirs, bn) = split(b);
    let pb = match walk(kv, bdirs, fx) {
        Ok(d) => d,
        Err(m) => return miss(m),
    };
    if a == b {
        return Outcome::Fails(SAME_FILE);
    }
    let target = lookup(kv, pb, bn, fx).cloned();
    let moved_dir = match moved {
        EVal::Dir(id) => Some(id),
        _ => None,
    };
    match (&moved_dir, &target) {
        (Some(_), Some(EVal::File { .. })) => return Outcome::Fails(OVER_FILE),
        (None, Some(EVal::Dir(_))) => return Outcome::Fails(OVER_DIR),
        _ => {}
    }
    if moved_dir.is_some() && b.len() > a.len() && b.starts_with(a) {
        return Outcome::Fails(INTO_ITSELF);
    }
    let replaced = match target {
        Some(EVal::Dir(t)) => Some(t),
        _ => None,
    };
    if let Some(t) = replaced
        && !is_empty_dir(kv, t)
    {
        // Onto a directory above the source: the kernel's answer; else the daemon's.
        fx.daemon = !(a.len() > b.len() && a.starts_with(b));
        fx.read.extend([
            EKey::Ent(pa, an.clone()),
            EKey::Ent(pb, bn.clone()),
            EKey::Rec(t),
        ]);
        return Outcome::FailsAny(vec![ENOTEMPTY, msg::EEXIST]);
    }
    fx.daemon = true;
    if moved_dir.is_some() && pa != pb {
        // The cycle check reads the records from the target's directory up.
        let mut up = Effects::default();
        let _ = walk(kv, bdirs, &mut up);
        fx.read
            .extend(up.looked.into_iter().filter(|k| matches!(k, EKey::Rec(_))));
    }
    kv.remove(&EKey::Ent(pa, an.clone()));
    fx.wrote.push(EKey::Ent(pa, an.clone()));
    kv.set(EKey::Ent(pb, bn.clone()), moved);
    fx.wrote.push(EKey::Ent(pb, bn.clone()));
    if let Some(t) = replaced {
        kv.remove(&EKey::Rec(t));
        fx.wrote.push(EKey::Rec(t));
    }
    // The root lists its subdirectories only.
    let lists = |dir: u64| dir != 0 || moved_dir.is_some();
    if lists(pa) {
        update_names(kv, pa, fx, |n| {
            n.remove(an);
        });
    }
    if lists(pb) {
        update_names(kv, pb, fx, |n| {
            n.insert(bn.clone());
        });
    }
    if let Some(id) = moved_dir
        && pa != pb
    {
        let Some(EVal::Rec { names, mode, .. }) = kv.get(&EKey::Rec(id)).cloned() else {
            panic!("model: no record of directory {id}");
        };
        kv.set(
            EKey::Rec(id),
            EVal::Rec {
                parent: pb,
                names,
                mode,
            },
        );
        fx.wrote.push(EKey::Rec(id));
    }
    Outcome::Ok
}

/// The CRC of POSIX `cksum` (CRC-32, polynomial 0x04C11DB7, MSB first, the length appended in
/// as few bytes as it needs, complemented).
struct Cksum([u32; 256]);

impl Cksum {
    fn new() -> Cksum {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = (i as u32) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04C1_1DB7
                } else {
                    c << 1
                };
            }
            *slot = c;
        }
        Cksum(table)
    }

    fn of(&self, data: &[u8]) -> u32 {
        let step = |crc: u32, b: u8| (crc << 8) ^ self.0[((crc >> 24) as u8 ^ b) as usize];
        let mut crc = data.iter().fold(0, |c, &b| step(c, b));
        let mut n = data.len();
        while n > 0 {
            crc = step(crc, n as u8);
            n >>= 8;
        }
        !crc
    }
}

/// An open transaction of the model.
#[derive(Default)]
struct Txn {
    staged: Staged,
    /// Keys it has read, and so locked: every name one of its lookups looked up, the record of
    /// every directory it looked a name up in or listed, the root's list if it listed the top.
    locked: BTreeSet<EKey>,
    /// Paths its operations acted on.
    paths: BTreeSet<Path>,
}

impl Txn {
    fn holds(&self, k: &EKey) -> bool {
        self.locked.contains(k) || self.staged.contains_key(k)
    }

    fn lock_count(&self) -> usize {
        self.locked.len()
            + self
                .staged
                .keys()
                .filter(|k| !self.locked.contains(k))
                .count()
    }

    fn read(&mut self, fx: Effects) {
        self.locked.extend(fx.looked);
        self.locked.extend(fx.read);
        self.locked.extend(fx.wrote);
    }
}

/// Where a listing is: the root, the top of a transaction, of a snapshot.
#[derive(Clone, Copy)]
enum Top {
    Root,
    Txn,
    Snap,
}

/// Random choices.
struct Dice {
    rng: Rng,
    pool: Vec<Name>,
    dir_pool: Vec<Name>,
}

impl Dice {
    fn chance(&mut self, percent: u64) -> bool {
        self.rng.range(0, 100) < percent
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.range(0, n as u64) as usize
    }

    fn random_name(&mut self, len: usize) -> Name {
        let mut name = vec![FIRST_BYTES[self.below(FIRST_BYTES.len())]];
        while name.len() < len {
            name.push(NAME_BYTES[self.below(NAME_BYTES.len())]);
        }
        name
    }

    /// A length for a new name in a directory whose names are at most `max` bytes: at the
    /// root as before directories, below it mostly short.
    fn name_len(&mut self, max: usize) -> usize {
        if max == NAME_MAX {
            return match self.rng.range(0, 10) {
                0..=4 => self.rng.range(1, 12) as usize,
                5..=6 => self.rng.range(12, 100) as usize,
                7 => NAME_MAX,
                _ => self.rng.range(100, NAME_MAX as u64 + 1) as usize,
            };
        }
        match self.rng.range(0, 10) {
            0..=6 => self.rng.range(1, 12) as usize,
            7..=8 => self.rng.range(12, 100) as usize,
            _ => self.rng.range(100, max as u64 + 1) as usize,
        }
    }

    /// A name to act on in directory `dir`: mostly from the pool, often an existing entry,
    /// sometimes a new one; below the root mostly short, never over 237 bytes.
    fn pick_name(&mut self, v: &impl View, dir: u64) -> Name {
        let max = if dir == 0 { NAME_MAX } else { SUB_NAME_MAX };
        match self.rng.range(0, 100) {
            0..=54 => {
                let short = dir != 0 && self.chance(70);
                let fits: Vec<&Name> = self
                    .pool
                    .iter()
                    .filter(|n| n.len() <= if short { 12 } else { max })
                    .collect();
                let i = self.rng.range(0, fits.len() as u64) as usize;
                fits[i].clone()
            }
            55..=84 if dir == 0 && !v.base().is_empty() => {
                // Existing names at the root, as committed (thousands: no merging).
                let n = top_range(v.base()).count();
                if n == 0 {
                    return self.pool[0].clone();
                }
                let i = self.below(n);
                top_range(v.base()).nth(i).expect("index in range").clone()
            }
            55..=84 if dir != 0 => {
                let names = entries(v, dir);
                if names.is_empty() {
                    let i = self.below(POOL / 2) * 2;
                    return self.pool[i].clone();
                }
                names[self.below(names.len())].clone()
            }
            _ => {
                let len = self.name_len(max);
                self.random_name(len)
            }
        }
    }

    /// A directory: the root often, else any.
    fn pick_dir(&mut self, v: &impl View) -> (Path, u64) {
        let dirs = all_dirs(v);
        if dirs.len() == 1 || self.chance(40) {
            return (Vec::new(), 0);
        }
        dirs[1 + self.below(dirs.len() - 1)].clone()
    }

    /// A path: a name in a directory; now and then one through a name that may be missing or
    /// a file.
    fn pick_path(&mut self, v: &impl View) -> Path {
        let (mut path, dir) = self.pick_dir(v);
        let name = self.pick_name(v, dir);
        if self.chance(4) && name.len() <= SUB_NAME_MAX {
            path.push(name);
            let i = self.below(POOL / 2) * 2;
            path.push(self.pool[i].clone());
            return path;
        }
        path.push(name);
        path
    }

    fn random_value(&mut self) -> Value {
        let len = match self.rng.range(0, 100) {
            0..=14 => 0,
            15..=69 => self.rng.range(1, 100),
            70..=93 => self.rng.range(100, 4097),
            94..=97 => self.rng.range(4097, 70_000),
            _ => self.rng.range(70_000, 300_000),
        } as usize;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            v.extend_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        v.truncate(len);
        // Some values are text, one line or several.
        if len > 0 && self.chance(40) {
            for b in &mut v {
                *b = if *b % 13 == 0 { b'\n' } else { b'a' + *b % 26 };
            }
        }
        v
    }

    /// A random operation in view `v`; `rm -r` only if `tree_ok`.
    fn random_op(&mut self, v: &impl View, tree_ok: bool) -> Op {
        let p = self.pick_path(v);
        let cur = match read_outcome(v, &p, &mut Effects::default()) {
            Outcome::Value(d) => d.len(),
            _ => 0,
        };
        match self.rng.range(0, 100) {
            0..=17 => Op::Write(p, self.random_value()),
            18..=27 => {
                let mut val = self.random_value();
                val.truncate(MAX_VALUE.saturating_sub(cur));
                Op::Append(p, val)
            }
            28..=35 => {
                let len = match self.rng.range(0, 10) {
                    0 => 0,
                    1 => self.rng.range(0, 200_000) as usize,
                    _ => self.rng.range(0, cur as u64 + 100) as usize,
                };
                Op::Truncate {
                    path: p,
                    len,
                    no_create: self.chance(30),
                }
            }
            36..=39 => Op::Touch(p),
            40..=53 => self.rename_op(v, p),
            54..=63 => Op::Remove(p),
            64..=76 => Op::Read(p),
            77..=78 => {
                let (mut path, dir) = self.pick_dir(v);
                let len = if dir == 0 {
                    NAME_MAX + 1
                } else {
                    self.rng.range(SUB_NAME_MAX as u64 + 1, NAME_MAX as u64 + 2) as usize
                };
                path.push(self.random_name(len));
                Op::TooLong {
                    path,
                    mkdir: self.chance(30),
                }
            }
            79..=87 => self.mkdir_op(v, p),
            88..=92 => self.rmdir_op(v, p),
            93..=96 => {
                // Modes that keep every directory searchable.
                let modes = match dir_at(v, &p) {
                    Some(_) => DIR_MODES,
                    None => FILE_MODES,
                };
                Op::Chmod(p, modes[self.below(modes.len())])
            }
            _ if tree_ok => {
                let dirs = all_dirs(v);
                if dirs.len() > 1 && self.chance(80) {
                    Op::RemoveTree(dirs[1 + self.below(dirs.len() - 1)].0.clone())
                } else {
                    Op::RemoveTree(p)
                }
            }
            _ => Op::Read(p),
        }
    }

    fn mkdir_op(&mut self, v: &impl View, p: Path) -> Op {
        let dirs = all_dirs(v);
        if dirs.len() > MAX_DIRS {
            return self.rmdir_op(v, p);
        }
        if self.chance(10) {
            return Op::Mkdir(p);
        }
        let shallow: Vec<&(Path, u64)> = dirs.iter().filter(|(p, _)| p.len() < MAX_DEPTH).collect();
        let (mut path, dir) = if self.chance(35) {
            (Vec::new(), 0)
        } else {
            shallow[self.below(shallow.len())].clone()
        };
        let name = if self.chance(70) {
            let i = self.below(self.dir_pool.len());
            self.dir_pool[i].clone()
        } else {
            self.pick_name(v, dir)
        };
        path.push(name);
        Op::Mkdir(path)
    }

    /// An operation that meets what a transaction holds: on one of the `paths` it acted on or
    /// a directory above one, on another entry of a directory on such a path (overwriting it
    /// must work; removing or renaming it changes the directory, which must not), or a new
    /// entry in such a directory.
    fn near_op(&mut self, v: &impl View, paths: &BTreeSet<Path>) -> Op {
        let i = self.below(paths.len());
        let mut p = paths.iter().nth(i).expect("index in range").clone();
        p.truncate(1 + self.below(p.len()));
        let dir_path = match dir_at(v, &p) {
            Some(_) => p.clone(),
            None => split(&p).0.to_vec(),
        };
        let mut fresh = dir_path.clone();
        fresh.push(if self.chance(50) {
            let i = self.below(self.dir_pool.len());
            self.dir_pool[i].clone()
        } else {
            let len = self.rng.range(1, 12) as usize;
            self.random_name(len)
        });
        // An existing entry of that directory, if it is one and has any.
        let dir = if dir_path.is_empty() {
            Some(0)
        } else {
            dir_at(v, &dir_path)
        };
        let mut sibling = dir_path.clone();
        match dir.map(|d| self.pick_name(v, d)) {
            Some(name) => sibling.push(name),
            None => sibling = fresh.clone(),
        }
        match self.rng.range(0, 100) {
            0..=19 => Op::Write(p, self.random_value()),
            20..=34 => Op::Write(fresh, self.random_value()),
            35..=44 => Op::Write(sibling, self.random_value()),
            45..=54 => Op::Mkdir(fresh),
            55..=59 if dir_at(v, &p).is_some() => Op::Rmdir(p),
            55..=59 => Op::Remove(p),
            60..=64 => Op::Remove(sibling),
            65..=72 => {
                let b = self.pick_path(v);
                Op::Rename(p, b)
            }
            73..=80 => {
                let a = self.pick_path(v);
                let b = shallow_target(v, &a, fresh);
                Op::Rename(a, b)
            }
            81..=86 => {
                let b = shallow_target(v, &sibling, fresh);
                Op::Rename(sibling, b)
            }
            87..=91 => Op::Truncate {
                path: p,
                len: self.rng.range(0, 10) as usize,
                no_create: self.chance(50),
            },
            _ => Op::Touch(p),
        }
    }

    fn rmdir_op(&mut self, v: &impl View, p: Path) -> Op {
        let dirs = all_dirs(v);
        if dirs.len() == 1 || self.chance(25) {
            return Op::Rmdir(p);
        }
        let empty: Vec<&(Path, u64)> = dirs[1..]
            .iter()
            .filter(|(_, id)| is_empty_dir(v, *id))
            .collect();
        if !empty.is_empty() && self.chance(75) {
            return Op::Rmdir(empty[self.below(empty.len())].0.clone());
        }
        Op::Rmdir(dirs[1 + self.below(dirs.len() - 1)].0.clone())
    }

    /// `mv -T a b`: of a file or (often) a directory; onto itself, below itself, onto a
    /// directory, to another directory (not below `a`) under the same or a new name, or
    /// anywhere.
    fn rename_op(&mut self, v: &impl View, p: Path) -> Op {
        let dirs = all_dirs(v);
        let a = if dirs.len() > 1 && self.chance(50) {
            dirs[1 + self.below(dirs.len() - 1)].0.clone()
        } else {
            p
        };
        let an = split(&a).1.clone();
        let a_dir = dir_at(v, &a);
        let b = match self.rng.range(0, 100) {
            0..=4 => a.clone(),
            5..=14 if a_dir.is_some() => {
                let mut b = a.clone();
                for _ in 0..self.rng.range(1, 3) {
                    let i = self.below(self.dir_pool.len());
                    b.push(self.dir_pool[i].clone());
                }
                b
            }
            15..=29 if dirs.len() > 1 => dirs[1 + self.below(dirs.len() - 1)].0.clone(),
            30..=59 => {
                let outside: Vec<&(Path, u64)> =
                    dirs.iter().filter(|(d, _)| !d.starts_with(&a)).collect();
                let (mut d, dir) = outside[self.below(outside.len())].clone();
                if self.chance(50) && (dir == 0 || an.len() <= SUB_NAME_MAX) {
                    d.push(an);
                } else {
                    let len = self.rng.range(1, 12) as usize;
                    d.push(self.random_name(len));
                }
                d
            }
            _ => self.pick_path(v),
        };
        Op::Rename(a.clone(), shallow_target(v, &a, b))
    }
}

struct Run {
    m: Mount,
    dice: Dice,
    seed: u64,
    steps: u64,
    step: u64,
    root: Tree,
    /// The last directory number the model gave.
    dir_ids: u64,
    /// Live bulk batches: their names, by batch number.
    bulk: BTreeMap<u64, Vec<Name>>,
    next_id: u64,
    /// The most keys the model counted in one transaction.
    max_txn_locks: usize,
    history: VecDeque<String>,
    done: BTreeMap<&'static str, u64>,
    /// Time spent per kind of step, for the summary.
    spent: BTreeMap<&'static str, Duration>,
    cksum: Cksum,
}

impl Run {
    fn count(&mut self, what: &'static str) {
        *self.done.entry(what).or_insert(0) += 1;
    }

    fn note(&mut self, what: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history
            .push_back(format!("step {}: {what}", self.step));
    }

    fn ctx(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn sh(&self, script: &str, env: &[(&str, Vec<u8>)]) -> Output {
        let env: Vec<(&str, &OsStr)> = env
            .iter()
            .map(|(k, v)| (*k, OsStr::from_bytes(v)))
            .collect();
        self.m.sh_env(script, &env)
    }

    #[track_caller]
    fn ok(&self, script: &str) -> String {
        let out = self.m.sh(script);
        assert!(
            out.status.success(),
            "{}: `{script}` failed: {}",
            self.ctx(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    // ---- running operations ----

    /// Runs `op` in tree `top` and checks its outcome against `want`; returns whether it
    /// succeeded.
    #[track_caller]
    fn run_op(&mut self, top: &str, op: &Op, want: &Outcome) -> bool {
        if let Op::Write(_, v) | Op::Append(_, v) = op {
            std::fs::write(self.m.scratch().join("val"), v).expect("write $T/val");
        }
        if let Op::TooLong { .. } = op {
            std::fs::write(self.m.scratch().join("val"), b"x").expect("write $T/val");
        }
        let (script, mut env) = op.script();
        env.push(("P", top.as_bytes().to_vec()));
        self.note(format!("{top}: {} -> want {}", op.describe(), brief(want)));
        let out = self.sh(&script, &env);
        self.check_outcome(&out, want, &format!("{} in {top:?}", op.describe()));
        out.status.success()
    }

    #[track_caller]
    fn check_outcome(&self, out: &Output, want: &Outcome, what: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = match want {
            Outcome::Ok => out.status.success(),
            Outcome::Value(v) => out.status.success() && out.stdout == *v,
            Outcome::Fails(m) => !out.status.success() && stderr.contains(m),
            Outcome::FailsAny(ms) => !out.status.success() && ms.iter().any(|m| stderr.contains(m)),
            Outcome::OkOrFails(m) => out.status.success() || stderr.contains(m),
        };
        assert!(
            ok,
            "{}: {what}: want {}, got {} with stdout {} and stderr {stderr:?}",
            self.ctx(),
            brief(want),
            out.status,
            brief(&Outcome::Value(out.stdout.clone()))
        );
    }

    /// `cat TOP/PATH` of each path, against what `view` says; the lookups go to `fx`.
    #[track_caller]
    fn check_paths<'a>(
        &self,
        top: &str,
        view: &impl View,
        paths: impl IntoIterator<Item = &'a Path>,
        fx: &mut Effects,
    ) {
        for p in paths {
            assert!(
                p[0].len() <= NAME_MAX && p[1..].iter().all(|n| n.len() <= SUB_NAME_MAX),
                "{}: the test made a path over the name limits: {}",
                self.ctx(),
                show_path(p)
            );
            let want = read_outcome(view, p, fx);
            let out = self.sh(
                "cat -- \"$P$K\"",
                &[("K", join(p)), ("P", top.as_bytes().to_vec())],
            );
            self.check_outcome(
                &out,
                &want,
                &format!("check: cat {} in {top:?}", show_path(p)),
            );
        }
    }

    /// `ls -f` of each of `dirs` of tree `top` (`""` for the root, `.txn/t1/`, `.snap/s2/`):
    /// each must list its fixed entries, then what `view` says, in byte order. The lookups
    /// and records read go to `fx`.
    #[track_caller]
    fn check_listings(
        &self,
        top: &str,
        kind: Top,
        view: &impl View,
        dirs: &[(Path, u64)],
        fx: &mut Effects,
    ) {
        let mut list = Vec::new();
        for (p, _) in dirs {
            list.extend_from_slice(top.as_bytes());
            if p.is_empty() && top.is_empty() {
                list.push(b'.');
            }
            list.extend_from_slice(&join(p));
            list.push(b'\n');
        }
        std::fs::write(self.m.scratch().join("dirs"), list).expect("write $T/dirs");
        let out = self.m.sh(
            "while IFS= read -r d; do printf '\\001\\n'; ls -f -- \"$d\" || exit 1; done \
             < \"$T/dirs\"",
        );
        assert!(
            out.status.success(),
            "{}: ls -f of {} directories of {top:?}: {}",
            self.ctx(),
            dirs.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: Vec<Vec<&[u8]>> = Vec::new();
        for line in out.stdout.split(|&b| b == b'\n') {
            if line == b"\x01" {
                got.push(Vec::new());
            } else if let Some(last) = got.last_mut() {
                last.push(line);
            }
        }
        // The last line ends with a newline: an empty "line" after it.
        if let Some(last) = got.last_mut()
            && last.last() == Some(&&b""[..])
        {
            last.pop();
        }
        assert_eq!(
            got.len(),
            dirs.len(),
            "{}: ls -f output {:?}",
            self.ctx(),
            String::from_utf8_lossy(&out.stdout)
        );
        for ((path, dir), got) in dirs.iter().zip(&got) {
            let mut walked = Effects::default();
            let _ = walk(view, path, &mut walked);
            fx.looked.extend(walked.looked);
            fx.looked.push(if *dir == 0 {
                EKey::RootDirs
            } else {
                EKey::Rec(*dir)
            });
            let fixed = match (path.is_empty(), kind) {
                (true, Top::Root) => ROOT_FIXED,
                (true, Top::Txn) => TXN_FIXED,
                _ => DIR_FIXED,
            };
            let names = entries(view, *dir);
            let want: Vec<&[u8]> = fixed
                .iter()
                .map(|f| f.as_bytes())
                .chain(names.iter().map(Vec::as_slice))
                .collect();
            if *got == want {
                continue;
            }
            let mut problems = Vec::new();
            let mut seen: HashMap<&[u8], u32> = HashMap::new();
            for n in got {
                *seen.entry(n).or_insert(0) += 1;
            }
            for n in &want {
                match seen.remove(n) {
                    Some(1) => {}
                    None => problems.push(format!("{} missing", show(n))),
                    Some(c) => problems.push(format!("{} listed {c} times", show(n))),
                }
            }
            for n in seen.keys() {
                problems.push(format!("{} listed, not in the model", show(n)));
            }
            if problems.is_empty() {
                let first = got.iter().zip(&want).position(|(g, w)| g != w);
                problems.push(format!("out of order from entry {first:?}"));
            }
            panic!(
                "{}: ls -f {top}{} ({} entries expected, {} listed): {} problems, first {:?}",
                self.ctx(),
                show_path(path),
                want.len(),
                got.len(),
                problems.len(),
                &problems[..problems.len().min(8)]
            );
        }
    }

    /// `ls -f` of every directory at the root.
    #[track_caller]
    fn check_root_listings(&self) {
        self.check_listings(
            "",
            Top::Root,
            &self.root,
            &all_dirs(&self.root),
            &mut Effects::default(),
        );
    }

    /// The model's own invariants: each record lists its directory's entries, the root's list
    /// its subdirectories, and every directory has a record.
    fn model_self_check(&self) {
        let mut listed: BTreeMap<u64, BTreeSet<&Name>> = BTreeMap::new();
        let mut root_dirs = BTreeSet::new();
        for (k, v) in &self.root {
            match (k, v) {
                (EKey::Ent(d, n), _) => {
                    if let EVal::Dir(id) = v {
                        assert!(
                            self.root.contains_key(&EKey::Rec(*id)),
                            "model: no record of {id}"
                        );
                        if *d == 0 {
                            root_dirs.insert(n.clone());
                        }
                    }
                    if *d != 0 {
                        listed.entry(*d).or_default().insert(n);
                    }
                }
                (EKey::Rec(id), EVal::Rec { names, .. }) => {
                    let want: BTreeSet<&Name> = names.iter().collect();
                    assert_eq!(
                        listed.get(id).cloned().unwrap_or_default(),
                        want,
                        "model: record of {id}"
                    );
                }
                _ => {}
            }
        }
        let want = match self.root.get(&EKey::RootDirs) {
            Some(EVal::Names(s)) => s.clone(),
            _ => BTreeSet::new(),
        };
        assert_eq!(root_dirs, want, "model: the root's directories");
    }

    /// Every path, type and mode (`find`), `ls -f` of every directory, `.stats` keys, and the
    /// `cksum` (CRC and size) of every file.
    #[track_caller]
    fn full_compare(&mut self, why: &str) {
        let started = Instant::now();
        self.model_self_check();
        self.check_root_listings();
        let keys = self.m.stat_keys();
        assert_eq!(
            keys,
            self.root.len() as u64,
            "{}: .stats keys against the model's keys (files, 2 per directory, the root's list \
             of directories and the id counter)",
            self.ctx()
        );
        // The model's entries, depth first.
        let mut want: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut files: Vec<(Vec<u8>, &Value)> = Vec::new();
        for (path, dir) in all_dirs(&self.root) {
            if !path.is_empty() {
                let Some(EVal::Rec { mode, .. }) = self.root.get(&EKey::Rec(dir)) else {
                    panic!("model: no record of {dir}");
                };
                want.insert([format!("d {mode:o} ").as_bytes(), &join(&path)].concat());
            }
            for n in entries(&self.root, dir) {
                if let Some(EVal::File { data, mode }) = self.root.get(&EKey::Ent(dir, n.clone())) {
                    let mut p = path.clone();
                    p.push(n);
                    want.insert([format!("f {mode:o} ").as_bytes(), &join(&p)].concat());
                    files.push((join(&p), data));
                }
            }
        }
        let out = self.m.sh(
            "find . -mindepth 1 \\( -path ./.txn -o -path ./.snap -o -path ./.stats \
             -o -path ./.ctl \\) -prune -o \\( -type d -printf 'd %m %P\\n' \\) \
             -o -printf '%y %m %P\\n'",
        );
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: find: {}",
            self.ctx(),
            String::from_utf8_lossy(&out.stderr)
        );
        let got: BTreeSet<Vec<u8>> = out
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if got != want {
            let missing: Vec<String> = want.difference(&got).take(8).map(|l| show(l)).collect();
            let extra: Vec<String> = got.difference(&want).take(8).map(|l| show(l)).collect();
            panic!(
                "{}: full compare ({why}): find lists {} entries, the model {}: missing {missing:?}, \
                 not in the model {extra:?}",
                self.ctx(),
                got.len(),
                want.len()
            );
        }
        let mut names = Vec::new();
        for (p, _) in &files {
            names.extend_from_slice(p);
            names.push(b'\n');
        }
        std::fs::write(self.m.scratch().join("all"), names).expect("write $T/all");
        let out = self.m.sh("xargs -r -d '\\n' cksum -- < \"$T/all\"");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: cksum of every file: {}",
            self.ctx(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: HashMap<&[u8], (u32, usize)> = HashMap::new();
        for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let mut parts = line.splitn(3, |&b| b == b' ');
            let (Some(crc), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!(
                    "{}: cksum line {:?}",
                    self.ctx(),
                    String::from_utf8_lossy(line)
                );
            };
            let num = |b: &[u8]| String::from_utf8_lossy(b).parse::<u64>().expect("a number");
            got.insert(name, (num(crc) as u32, num(size) as usize));
        }
        let mut wrong = Vec::new();
        for (p, v) in &files {
            let want = (self.cksum.of(v), v.len());
            match got.get(p.as_slice()) {
                Some(g) if *g == want => {}
                g => wrong.push(format!("{}: cksum {g:?}, model {want:?}", show(p))),
            }
        }
        assert!(
            wrong.is_empty(),
            "{}: full compare ({why}): {} files differ from the model, first {:?}",
            self.ctx(),
            wrong.len(),
            &wrong[..wrong.len().min(8)]
        );
        let (nfiles, ndirs) = (files.len(), want.len() - files.len());
        self.note(format!(
            "full compare ({why}): {nfiles} files, {ndirs} directories in {:?}",
            started.elapsed()
        ));
        *self.spent.entry("(full compares)").or_default() += started.elapsed();
    }

    /// Counts a directory operation that worked (`on_dir`: its first path was a directory).
    fn count_done(&mut self, op: &Op, fx: &Effects, on_dir: bool) {
        match op {
            Op::Mkdir(_) => self.count("mkdir done"),
            Op::Rmdir(_) => self.count("directory removed"),
            Op::RemoveTree(_) if on_dir => self.count("directory removed"),
            Op::Rename(..) if on_dir => self.count("mv of a directory done"),
            Op::Rename(..)
                if fx
                    .wrote
                    .iter()
                    .any(|k| matches!(k, EKey::Rec(_) | EKey::RootDirs)) =>
            {
                self.count("mv of a file between directories done")
            }
            _ => {}
        }
    }

    // ---- steps ----

    /// One operation at the root; returns the paths it acted on. With a transaction open, an
    /// operation that writes a key the transaction holds must give EBUSY and change nothing;
    /// one that only reads a key it wrote may; the others must work. `rm -r` only when neither
    /// a transaction nor a snapshot is open.
    fn root_op(&mut self, txn: Option<&Txn>, snapshot: bool) -> Vec<Path> {
        let op = match txn {
            // Half of them where the transaction has been.
            Some(t) if !t.paths.is_empty() && self.dice.chance(50) => {
                self.dice.near_op(&self.root, &t.paths)
            }
            _ => self.dice.random_op(&self.root, txn.is_none() && !snapshot),
        };
        let on_dir = op
            .paths()
            .first()
            .is_some_and(|p| dir_at(&self.root, p).is_some());
        let mut staged = Staged::new();
        let mut fx = Effects::default();
        let want = apply(
            &mut Overlay {
                root: &self.root,
                staged: &mut staged,
            },
            &op,
            &mut self.dir_ids,
            &mut fx,
            false,
        );
        let (want, kind) = match txn {
            Some(t) => busy_rule(t, &fx, want),
            None => (want, "root op"),
        };
        self.count(kind);
        if want == Outcome::Fails(msg::EBUSY)
            && let Some(t) = txn
            && fx
                .wrote
                .iter()
                .any(|k| !matches!(k, EKey::Ent(..)) && t.holds(k))
        {
            self.count("EBUSY for a directory's record, list or counter");
        }
        self.count(op.kind());
        let ok = self.run_op("", &op, &want);
        if ok {
            self.count_done(&op, &fx, on_dir);
            merge(&mut self.root, staged);
        }
        let paths: Vec<Path> = op.paths().into_iter().cloned().collect();
        self.check_paths("", &self.root, &paths, &mut Effects::default());
        paths
    }

    fn txn_step(&mut self) {
        self.next_id += 1;
        let dir = format!(".txn/t{}", self.next_id);
        self.note(format!("mkdir {dir}"));
        self.ok(&format!("mkdir {dir}"));
        let mut t = Txn::default();
        let prefix = format!("{dir}/");
        let n = self.dice.rng.range(1, TXN_OPS_MAX + 1);
        for _ in 0..n {
            if t.lock_count() > TXN_LOCKS_SOFT {
                self.count("txn at its lock budget");
                break;
            }
            match self.dice.rng.range(0, 100) {
                0..=64 => {
                    let op = self.dice.random_op(
                        &Overlay {
                            root: &self.root,
                            staged: &t.staged,
                        },
                        false,
                    );
                    let on_dir = op.paths().first().is_some_and(|p| {
                        let view = Overlay {
                            root: &self.root,
                            staged: &t.staged,
                        };
                        dir_at(&view, p).is_some()
                    });
                    let mut fx = Effects::default();
                    let want = apply(
                        &mut Overlay {
                            root: &self.root,
                            staged: &mut t.staged,
                        },
                        &op,
                        &mut self.dir_ids,
                        &mut fx,
                        true,
                    );
                    self.count("txn op");
                    self.count(op.kind());
                    if self.run_op(&prefix, &op, &want) {
                        self.count_done(&op, &fx, on_dir);
                    }
                    t.read(fx);
                    let paths: Vec<Path> = op.paths().into_iter().cloned().collect();
                    let mut fx = Effects::default();
                    self.check_paths(
                        &prefix,
                        &Overlay {
                            root: &self.root,
                            staged: &t.staged,
                        },
                        &paths,
                        &mut fx,
                    );
                    t.read(fx);
                    t.paths.extend(paths);
                }
                65..=84 => {
                    self.root_op(Some(&t), false);
                }
                85..=94 => {
                    let (path, id) = self.dice.pick_dir(&Overlay {
                        root: &self.root,
                        staged: &t.staged,
                    });
                    self.count(if path.is_empty() {
                        "txn listing"
                    } else {
                        "txn listing of a subdirectory"
                    });
                    self.note(format!("ls -f {prefix}{}", show_path(&path)));
                    let mut fx = Effects::default();
                    let view = Overlay {
                        root: &self.root,
                        staged: &t.staged,
                    };
                    self.check_listings(&prefix, Top::Txn, &view, &[(path.clone(), id)], &mut fx);
                    t.read(fx);
                    if !path.is_empty() {
                        t.paths.insert(path);
                    }
                }
                _ => self.checkpoint(),
            }
        }
        self.max_txn_locks = self.max_txn_locks.max(t.lock_count());
        let name = dir[".txn/".len()..].to_owned();
        let state = self.m.txn_state(&name);
        assert_eq!(state, "active", "{}: {dir}/.ctl", self.ctx());
        match self.dice.rng.range(0, 100) {
            0..=64 => {
                self.note(format!("commit {dir}"));
                self.count("txn commit");
                self.ok(&format!("env echo commit > {dir}/.ctl"));
                let state = self.m.txn_state(&name);
                assert!(
                    state.starts_with("committed at "),
                    "{}: {dir}/.ctl after commit: {state:?}",
                    self.ctx()
                );
                merge(&mut self.root, std::mem::take(&mut t.staged));
                self.ok(&format!("rmdir {dir}"));
            }
            65..=84 => {
                self.note(format!("abort {dir}"));
                self.count("txn abort");
                self.ok(&format!("env echo abort > {dir}/.ctl"));
                let state = self.m.txn_state(&name);
                assert!(
                    state.starts_with("aborted: "),
                    "{}: {dir}/.ctl after abort: {state:?}",
                    self.ctx()
                );
                self.ok(&format!("rmdir {dir}"));
            }
            85..=95 => {
                self.note(format!("rmdir {dir} while active"));
                self.count("txn rmdir while active");
                self.ok(&format!("rmdir {dir}"));
            }
            96..=97 => {
                self.note(format!("kill -9 with {dir} open"));
                self.count("txn open at kill -9");
                self.m.kill9();
                self.m.start_again();
            }
            _ => {
                self.note(format!("clean restart with {dir} open"));
                self.count("txn open at restart");
                self.m.restart();
            }
        }
        assert_eq!(
            self.ok("ls -A .txn"),
            "",
            "{}: .txn after {dir} ended",
            self.ctx()
        );
        // Every path it acted on now holds what the root model says (committed or not), and
        // every directory lists what it says.
        self.check_paths("", &self.root, &t.paths, &mut Effects::default());
        self.check_root_listings();
        assert_eq!(self.m.stat("txn_active"), 0, "{}: txn_active", self.ctx());
    }

    fn snapshot_step(&mut self) {
        self.next_id += 1;
        let dir = format!(".snap/s{}", self.next_id);
        self.note(format!("mkdir {dir}"));
        self.count("snapshot");
        self.ok(&format!("mkdir {dir}"));
        let at_mkdir = self.root.clone();
        let mut changed: BTreeSet<Path> = BTreeSet::new();
        for _ in 0..self.dice.rng.range(1, SNAP_OPS_MAX + 1) {
            changed.extend(self.root_op(None, true));
        }
        if self.dice.chance(20) {
            self.checkpoint();
        }
        let prefix = format!("{dir}/");
        self.note(format!("ls -f of every directory of {dir}"));
        self.check_listings(
            &prefix,
            Top::Snap,
            &at_mkdir,
            &all_dirs(&at_mkdir),
            &mut Effects::default(),
        );
        // What changed since, and a few others.
        for _ in 0..2 {
            changed.insert(self.dice.pick_path(&at_mkdir));
        }
        self.check_paths(&prefix, &at_mkdir, &changed, &mut Effects::default());
        if self.dice.chance(30) {
            self.snapshot_write(&prefix, &at_mkdir);
        }
        self.ok(&format!("rmdir {dir}"));
    }

    /// A change in a snapshot: EROFS, unless a lookup or the kernel fails it first.
    fn snapshot_write(&mut self, prefix: &str, at_mkdir: &Tree) {
        let p = self.dice.pick_path(at_mkdir);
        let (dirs, name) = split(&p);
        let mut fx = Effects::default();
        let dir = walk(at_mkdir, dirs, &mut fx);
        let found = match dir {
            Ok(d) => lookup(at_mkdir, d, name, &mut fx).cloned(),
            Err(_) => None,
        };
        let (script, want) = match self.dice.rng.range(0, 4) {
            0 => (
                "env echo x > \"$P$K\"",
                match (&dir, &found) {
                    (Err(_), _) => Outcome::Fails(SH_NO_DIR),
                    (_, Some(EVal::Dir(_))) => Outcome::Fails(EISDIR),
                    _ => Outcome::Fails(msg::EROFS),
                },
            ),
            1 => (
                "mkdir -- \"$P$K\"",
                match (dir, &found) {
                    (Err(m), _) => miss(m),
                    (_, Some(_)) => Outcome::Fails(msg::EEXIST),
                    _ => Outcome::Fails(msg::EROFS),
                },
            ),
            2 => (
                "rm -- \"$P$K\"",
                match (dir, &found) {
                    (Err(m), _) => miss(m),
                    (_, None) => Outcome::Fails(msg::ENOENT),
                    (_, Some(EVal::Dir(_))) => Outcome::Fails(EISDIR),
                    _ => Outcome::Fails(msg::EROFS),
                },
            ),
            _ => (
                "rmdir -- \"$P$K\"",
                match (dir, &found) {
                    (Err(m), _) => miss(m),
                    (_, None) => Outcome::Fails(msg::ENOENT),
                    (_, Some(EVal::Dir(_))) => Outcome::Fails(msg::EROFS),
                    _ => Outcome::Fails(ENOTDIR),
                },
            ),
        };
        self.note(format!("{script} with K={} in {prefix}", show_path(&p)));
        self.count("change in a snapshot");
        let out = self.sh(
            script,
            &[("K", join(&p)), ("P", prefix.as_bytes().to_vec())],
        );
        self.check_outcome(&out, &want, &format!("{script} in a snapshot"));
    }

    fn clean_restart(&mut self) {
        self.note("clean restart".into());
        self.count("clean restart");
        self.m.restart();
        self.full_compare("after a clean restart");
    }

    fn crash(&mut self) {
        self.note("kill -9 and restart".into());
        self.count("kill -9");
        self.m.kill9();
        self.m.start_again();
        self.full_compare("after kill -9");
    }

    fn checkpoint(&mut self) {
        self.note("checkpoint".into());
        self.count("checkpoint");
        self.ok("env echo checkpoint > .ctl");
    }

    /// `count` new long-named keys at the root, written by [`BULK_SHELLS`] shells at once
    /// while the driver lists the root and takes a checkpoint.
    fn bulk_create(&mut self, count: usize) {
        self.next_id += 1;
        let batch = self.next_id;
        let mut names = Vec::with_capacity(count);
        let mut parts = vec![Vec::new(); BULK_SHELLS];
        for i in 0..count {
            let head = format!("bulk{batch}-{i:05}-");
            let len = self.dice.rng.range(200, 256) as usize;
            let mut name = head.into_bytes();
            while name.len() < len {
                name.push(NAME_BYTES[self.dice.below(62)]);
            }
            let value = format!("b{batch}.{i}");
            let part = &mut parts[i % BULK_SHELLS];
            part.extend_from_slice(&name);
            part.push(b'\n');
            part.extend_from_slice(value.as_bytes());
            part.push(b'\n');
            self.root.insert(
                EKey::Ent(0, name.clone()),
                EVal::File {
                    data: value.into_bytes(),
                    mode: FILE_MODE,
                },
            );
            names.push(name);
        }
        self.note(format!("bulk create of batch {batch}: {count} keys"));
        self.count("bulk create");
        let shells: Vec<Background> = parts
            .iter()
            .enumerate()
            .map(|(s, part)| {
                let file = format!("bulk{batch}.{s}");
                std::fs::write(self.m.scratch().join(&file), part).expect("write bulk part");
                self.m.spawn_sh(&format!(
                    "umask 022
                     while IFS= read -r k && IFS= read -r v; do
                       printf %s \"$v\" > \"$k\" || exit 1
                     done < \"$T/{file}\""
                ))
            })
            .collect();
        self.observe_bulk(&names);
        for s in shells {
            let out = s.finish(Duration::from_secs(300));
            assert!(
                out.status.success(),
                "{}: a bulk create shell: {}",
                self.ctx(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.bulk.insert(batch, names);
        self.full_compare("after a bulk create");
    }

    /// Deletes one bulk batch with `rm` from [`BULK_SHELLS`] shells at once, observed likewise.
    fn bulk_delete(&mut self) {
        let Some((&batch, _)) = self.bulk.iter().next() else {
            return;
        };
        let names = self.bulk.remove(&batch).expect("a live batch");
        // Some of the batch may have been moved or deleted since: rm what is still there.
        let live: Vec<Name> = names
            .iter()
            .filter(|n| {
                matches!(
                    self.root.get(&EKey::Ent(0, n.to_vec())),
                    Some(EVal::File { .. })
                )
            })
            .cloned()
            .collect();
        self.note(format!("bulk delete of batch {batch}: {} keys", live.len()));
        self.count("bulk delete");
        let shells: Vec<Background> = live
            .chunks(live.len().div_ceil(BULK_SHELLS).max(1))
            .enumerate()
            .map(|(s, part)| {
                let file = format!("rm{batch}.{s}");
                let mut text = Vec::new();
                for n in part {
                    text.extend_from_slice(n);
                    text.push(b'\n');
                }
                std::fs::write(self.m.scratch().join(&file), text).expect("write rm part");
                self.m
                    .spawn_sh(&format!("xargs -r -d '\\n' rm -- < \"$T/{file}\""))
            })
            .collect();
        for n in &live {
            self.root.remove(&EKey::Ent(0, n.clone()));
        }
        self.observe_bulk(&live);
        for s in shells {
            let out = s.finish(Duration::from_secs(300));
            assert!(
                out.status.success(),
                "{}: a bulk delete shell: {}",
                self.ctx(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.full_compare("after a bulk delete");
    }

    /// While a bulk step runs: two listings of the root, where every name outside `moving`
    /// must appear exactly once and those in it at most once, and a checkpoint between them.
    fn observe_bulk(&mut self, moving: &[Name]) {
        let moving: BTreeSet<&[u8]> = moving.iter().map(Vec::as_slice).collect();
        for n in 0..2 {
            if n == 1 {
                self.checkpoint();
            }
            let out = self.m.sh("ls -f");
            assert!(
                out.status.success(),
                "{}: ls -f during a bulk step",
                self.ctx()
            );
            let mut seen: HashMap<&[u8], u32> = HashMap::new();
            for name in out.stdout.split(|&b| b == b'\n').filter(|n| !n.is_empty()) {
                *seen.entry(name).or_insert(0) += 1;
            }
            let mut problems = Vec::new();
            let top: BTreeSet<&[u8]> = top_range(&self.root).map(Vec::as_slice).collect();
            for k in top.iter().filter(|k| !moving.contains(*k)) {
                match seen.get(k) {
                    Some(1) => {}
                    None => problems.push(format!("{} missing", show(k))),
                    Some(c) => problems.push(format!("{} listed {c} times", show(k))),
                }
            }
            for (k, c) in &seen {
                if moving.contains(k) {
                    if *c > 1 {
                        problems.push(format!("{} (being changed) listed {c} times", show(k)));
                    }
                } else if !top.contains(k)
                    && !LISTED_RESERVED.iter().any(|r| r.as_bytes() == *k)
                    && *k != b".".as_slice()
                    && *k != b"..".as_slice()
                {
                    problems.push(format!("{} listed, not in the model", show(k)));
                }
            }
            self.note(format!(
                "ls -f during the bulk step: {} entries",
                seen.len()
            ));
            assert!(
                problems.is_empty(),
                "{}: ls -f while {} keys were being created or deleted: the others must each \
                 appear once: {} problems, first {:?}",
                self.ctx(),
                moving.len(),
                problems.len(),
                &problems[..problems.len().min(8)]
            );
        }
    }

    fn one_step(&mut self) {
        let started = Instant::now();
        let kind = self.one_step_kind();
        let checks = Instant::now();
        if self.step % 10 == 9 {
            self.check_root_listings();
        }
        if self.step % 50 == 49 {
            self.full_compare("periodic");
        }
        *self.spent.entry("periodic checks").or_default() += checks.elapsed();
        *self.spent.entry(kind).or_default() += checks - started;
    }

    /// Runs one step; returns its kind. Most are random; a bulk create, a clean restart, a
    /// `kill -9` and a bulk delete come at fixed points, so every run has them.
    fn one_step_kind(&mut self) -> &'static str {
        let at = |eighths: u64| self.step == self.steps * eighths / 8;
        if at(1) {
            // Thousands of keys early in every run: over 1 MiB of names, so that a listing
            // of the root takes more than one scan batch from here on.
            let n = self
                .dice
                .rng
                .range(FIRST_BULK as u64, FIRST_BULK as u64 + 1000) as usize;
            self.bulk_create(n);
            return "bulk";
        }
        if at(3) {
            self.clean_restart();
            return "clean restart";
        }
        if at(5) {
            self.crash();
            return "kill -9";
        }
        if at(7) {
            self.bulk_delete();
            return "bulk";
        }
        match self.dice.rng.range(0, 1000) {
            0..=599 => {
                self.root_op(None, false);
                "root op"
            }
            600..=639 => {
                let (path, id) = self.dice.pick_dir(&self.root);
                self.note(format!("ls -f {}", show_path(&path)));
                self.count("listing");
                self.check_listings(
                    "",
                    Top::Root,
                    &self.root,
                    &[(path, id)],
                    &mut Effects::default(),
                );
                "listing"
            }
            640..=759 => {
                self.txn_step();
                "transaction"
            }
            760..=849 => {
                self.snapshot_step();
                "snapshot"
            }
            850..=985 => {
                self.checkpoint();
                "checkpoint"
            }
            986..=990 => {
                self.clean_restart();
                "clean restart"
            }
            991..=995 => {
                self.crash();
                "kill -9"
            }
            _ => {
                let in_bulk: usize = self.bulk.values().map(Vec::len).sum();
                if in_bulk + BULK_MAX <= BULK_CAP && self.dice.chance(60) {
                    let n = self.dice.rng.range(BULK_MIN as u64, BULK_MAX as u64 + 1) as usize;
                    self.bulk_create(n);
                } else {
                    self.bulk_delete();
                }
                "bulk"
            }
        }
    }
}

/// What a root operation must give while transaction `t` is open: `EBUSY` (and no change) if
/// it writes a key `t` holds; success or `EBUSY` if it only reads a key `t` wrote; what the
/// model says otherwise. Failures found by lookups, the kernel or the tool come first; one the
/// daemon finds may come as `EBUSY` if it reads a key `t` holds.
fn busy_rule(t: &Txn, fx: &Effects, want: Outcome) -> (Outcome, &'static str) {
    const LOCKED: &str = "root op on a locked key";
    let writes_held = fx.wrote.iter().any(|k| t.holds(k));
    let reads_staged = fx.read.iter().any(|k| t.staged.contains_key(k));
    match want {
        Outcome::Fails(_) | Outcome::FailsAny(_) if !fx.daemon => (want, "root op"),
        Outcome::Fails(m) if writes_held || fx.read.iter().any(|k| t.holds(k)) => {
            (Outcome::FailsAny(vec![m, msg::EBUSY]), LOCKED)
        }
        Outcome::FailsAny(mut ms) if writes_held || fx.read.iter().any(|k| t.holds(k)) => {
            ms.push(msg::EBUSY);
            (Outcome::FailsAny(ms), LOCKED)
        }
        Outcome::Ok if writes_held && fx.no_change => (Outcome::OkOrFails(msg::EBUSY), LOCKED),
        Outcome::Ok if writes_held => (Outcome::Fails(msg::EBUSY), LOCKED),
        Outcome::Ok if reads_staged => (
            Outcome::OkOrFails(msg::EBUSY),
            "root op reading a key a transaction wrote",
        ),
        want => (want, "root op"),
    }
}

/// An outcome for messages (values by size and head).
fn brief(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "success".into(),
        Outcome::Fails(m) => format!("failure {m:?}"),
        Outcome::FailsAny(ms) => format!("failure {ms:?}"),
        Outcome::OkOrFails(m) => format!("success or failure {m:?}"),
        Outcome::Value(v) => format!(
            "{} bytes {:?}",
            v.len(),
            String::from_utf8_lossy(&v[..v.len().min(24)])
        ),
    }
}

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
