//! A random-operation test of the whole filesystem against a model (a `BTreeMap` of names to
//! values), in the style of redb's and TigerBeetle's: every step is one or more real processes
//! on a real mount, and after every step what the mount shows must be what the model says.
//!
//! Operations (docs/SEMANTICS.md): write (`cat FILE > k`), append (`>>`), `truncate -s` (with
//! and without `-c`), `touch`, `mv`, `rm`, `cat`, `ls -f`, names over 255 bytes
//! (`ENAMETOOLONG`); transactions (`mkdir .txn/t`, the same operations inside, root operations
//! meanwhile, which must give `EBUSY` on every key the transaction has touched and work on the
//! others; commit, abort, `rmdir` of an active one, or a restart with it open); snapshots
//! (`mkdir .snap/s`, root changes, reads and a listing that must show the model as it was at
//! `mkdir`, `EROFS` on writes); checkpoints; clean restarts (`umount` + start) and crashes
//! (`kill -9` + start), after which every acknowledged operation must be there; bulk creation
//! and deletion of thousands of long-named keys by several shells at once, while the driver
//! lists the root (every key not in the bulk must appear exactly once) and takes a checkpoint.
//!
//! Names are bytes: short ones, and long ones up to 255 bytes, with spaces, quotes, `$`, `\`,
//! `*` and bytes over 0x7f; values are random bytes (NUL and newlines included), mostly small,
//! some up to 300 KB. Each is handed to the shell in an environment variable or a file, never
//! spliced into a script.
//!
//! Checks: after each step, `cat` of every key the step touched (or its `ENOENT`); every 10
//! steps `ls -f` of the root against the model; every 50 steps and after every restart and bulk
//! step, a full comparison (`ls -f`, the `keys` counter of `.stats`, and `cksum` of every key,
//! compared with the model's CRC and size).
//!
//! Most steps are random; a bulk create (1/8 of the way), a clean restart (3/8), a `kill -9`
//! (5/8) and a bulk delete (7/8) come at fixed steps, so that every run has them.
//!
//! Settings (environment): `BPFDB_TEST_SEED` replays a run (the seed is printed at the start
//! and on failure, with the step and the operations that led to it; the fixed steps depend on
//! the number of steps, so replay with the same `BPFDB_FS_MODEL_STEPS`); `BPFDB_FS_MODEL_STEPS`
//! (default 300, about a minute on an idle 2-core machine) sets the number of steps.

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
/// of a key, so the engine's 4 versions per key always suffice).
const TXN_OPS_MAX: u64 = 8;
const SNAP_OPS_MAX: u64 = 3;
/// Operations shown when a step fails.
const HISTORY: usize = 25;

/// Byte values names are made of (besides the first, always a letter): no `/`, no NUL, no
/// newline (listings are read line by line).
const NAME_BYTES: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,+=@%~ '\"$\\*?[]#&;()\xc3\xa9\x80\xff";
const FIRST_BYTES: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

type Key = Vec<u8>;
type Value = Vec<u8>;

/// One file operation, in any directory (`P` is `""` at the root, `.txn/NAME/` in a transaction).
#[derive(Clone, Debug)]
enum Op {
    Write(Key, Value),
    Append(Key, Value),
    Truncate {
        key: Key,
        len: usize,
        no_create: bool,
    },
    Touch(Key),
    Rename(Key, Key),
    Remove(Key),
    Read(Key),
    /// A write of a 256-byte name.
    TooLong(Key),
}

/// What the model says an operation gives.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ok,
    /// Success, printing this value.
    Value(Value),
    /// Failure with this text in stderr.
    Fails(&'static str),
    /// Either success or that failure, with no change either way (a root write of a locked key
    /// that changes nothing: whether it commits at all is the daemon's business).
    OkOrFails(&'static str),
}

impl Op {
    fn keys(&self) -> Vec<&Key> {
        match self {
            Op::Write(k, _)
            | Op::Append(k, _)
            | Op::Truncate { key: k, .. }
            | Op::Touch(k)
            | Op::Remove(k)
            | Op::Read(k) => vec![k],
            Op::Rename(a, b) => vec![a, b],
            Op::TooLong(_) => vec![],
        }
    }

    /// The same operation on `k` instead of its (first) key.
    fn on(self, k: Key) -> Op {
        match self {
            Op::Write(_, v) => Op::Write(k, v),
            Op::Append(_, v) => Op::Append(k, v),
            Op::Truncate { len, no_create, .. } => Op::Truncate {
                key: k,
                len,
                no_create,
            },
            Op::Touch(_) => Op::Touch(k),
            Op::Rename(_, b) => Op::Rename(k, b),
            Op::Remove(_) => Op::Remove(k),
            Op::Read(_) => Op::Read(k),
            Op::TooLong(n) => Op::TooLong(n),
        }
    }

    fn writes(&self) -> bool {
        !matches!(self, Op::Read(_))
    }

    /// The script, its environment (`K`, `A`, `B` name keys; values go through `$T/val`).
    fn script(&self) -> (String, Vec<(&'static str, Key)>) {
        match self {
            Op::Write(k, _) | Op::TooLong(k) => ("cat \"$T/val\" > \"$P$K\"".into(), kv(k)),
            Op::Append(k, _) => ("cat \"$T/val\" >> \"$P$K\"".into(), kv(k)),
            Op::Truncate {
                key,
                len,
                no_create,
            } => (
                format!(
                    "truncate {}-s {len} -- \"$P$K\"",
                    if *no_create { "-c " } else { "" }
                ),
                kv(key),
            ),
            Op::Touch(k) => ("touch -- \"$P$K\"".into(), kv(k)),
            Op::Rename(a, b) => (
                "mv -T -- \"$P$A\" \"$P$B\"".into(),
                vec![("A", a.clone()), ("B", b.clone())],
            ),
            Op::Remove(k) => ("rm -- \"$P$K\"".into(), kv(k)),
            Op::Read(k) => ("cat -- \"$P$K\"".into(), kv(k)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Op::Write(k, v) => format!("write {} ({} B)", show(k), v.len()),
            Op::Append(k, v) => format!("append {} ({} B)", show(k), v.len()),
            Op::Truncate {
                key,
                len,
                no_create,
            } => format!(
                "truncate{} {} to {len}",
                if *no_create { " -c" } else { "" },
                show(key)
            ),
            Op::Touch(k) => format!("touch {}", show(k)),
            Op::Rename(a, b) => format!("mv {} {}", show(a), show(b)),
            Op::Remove(k) => format!("rm {}", show(k)),
            Op::Read(k) => format!("cat {}", show(k)),
            Op::TooLong(k) => format!("write {} ({} B name)", show(k), k.len()),
        }
    }
}

fn kv(k: &Key) -> Vec<(&'static str, Key)> {
    vec![("K", k.clone())]
}

/// A name for messages: short ones whole, long ones by their head and length.
fn show(name: &[u8]) -> String {
    if name.len() <= 24 {
        format!("{:?}", String::from_utf8_lossy(name))
    } else {
        format!(
            "{:?}..({} B)",
            String::from_utf8_lossy(&name[..16]),
            name.len()
        )
    }
}

/// The keys an operation acts on, read and written: the root's map, or a transaction's view.
trait Kv {
    fn get(&self, k: &[u8]) -> Option<Value>;
    fn set(&mut self, k: &[u8], v: Value);
    fn remove(&mut self, k: &[u8]);
}

impl Kv for BTreeMap<Key, Value> {
    fn get(&self, k: &[u8]) -> Option<Value> {
        BTreeMap::get(self, k).cloned()
    }
    fn set(&mut self, k: &[u8], v: Value) {
        self.insert(k.to_vec(), v);
    }
    fn remove(&mut self, k: &[u8]) {
        BTreeMap::remove(self, k);
    }
}

/// A transaction's view: its staged changes (None: deleted) over the root as committed now.
/// (Under two-phase locking the root cannot change a key once the transaction touched it.)
struct TxnView<'a> {
    root: &'a BTreeMap<Key, Value>,
    staged: &'a mut BTreeMap<Key, Option<Value>>,
}

impl Kv for TxnView<'_> {
    fn get(&self, k: &[u8]) -> Option<Value> {
        match self.staged.get(k) {
            Some(v) => v.clone(),
            None => self.root.get(k).cloned(),
        }
    }
    fn set(&mut self, k: &[u8], v: Value) {
        self.staged.insert(k.to_vec(), Some(v));
    }
    fn remove(&mut self, k: &[u8]) {
        self.staged.insert(k.to_vec(), None);
    }
}

/// Applies `op` to the model; returns what the mount must answer.
fn apply(kv: &mut impl Kv, op: &Op) -> Outcome {
    match op {
        Op::Write(k, v) => {
            kv.set(k, v.clone());
            Outcome::Ok
        }
        Op::Append(k, v) => {
            let mut cur = kv.get(k).unwrap_or_default();
            cur.extend_from_slice(v);
            kv.set(k, cur);
            Outcome::Ok
        }
        Op::Truncate {
            key,
            len,
            no_create,
        } => {
            match kv.get(key) {
                None if *no_create => {}
                cur => {
                    let mut cur = cur.unwrap_or_default();
                    cur.resize(*len, 0);
                    kv.set(key, cur);
                }
            }
            Outcome::Ok
        }
        Op::Touch(k) => {
            if kv.get(k).is_none() {
                kv.set(k, Vec::new());
            }
            Outcome::Ok
        }
        Op::Rename(a, b) => match kv.get(a) {
            None => Outcome::Fails(msg::ENOENT),
            Some(_) if a == b => Outcome::Fails("are the same file"),
            Some(v) => {
                kv.remove(a);
                kv.set(b, v);
                Outcome::Ok
            }
        },
        Op::Remove(k) => match kv.get(k) {
            None => Outcome::Fails(msg::ENOENT),
            Some(_) => {
                kv.remove(k);
                Outcome::Ok
            }
        },
        Op::Read(k) => match kv.get(k) {
            None => Outcome::Fails(msg::ENOENT),
            Some(v) => Outcome::Value(v),
        },
        Op::TooLong(_) => Outcome::Fails(msg::ENAMETOOLONG),
    }
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
struct Txn {
    staged: BTreeMap<Key, Option<Value>>,
    /// Keys it has locked: every name one of its operations looked up.
    locked: BTreeSet<Key>,
}

struct Run {
    m: Mount,
    rng: Rng,
    seed: u64,
    steps: u64,
    step: u64,
    root: BTreeMap<Key, Value>,
    pool: Vec<Key>,
    /// Live bulk batches: their names, by batch number.
    bulk: BTreeMap<u64, Vec<Key>>,
    next_id: u64,
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

    fn sh(&self, script: &str, env: &[(&str, Key)]) -> Output {
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

    // ---- random choices ----

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.range(0, 100) < percent
    }

    fn random_name(&mut self, len: usize) -> Key {
        let mut name = vec![FIRST_BYTES[self.rng.range(0, FIRST_BYTES.len() as u64) as usize]];
        while name.len() < len {
            name.push(NAME_BYTES[self.rng.range(0, NAME_BYTES.len() as u64) as usize]);
        }
        name
    }

    fn name_len(&mut self) -> usize {
        match self.rng.range(0, 10) {
            0..=4 => self.rng.range(1, 12) as usize,
            5..=6 => self.rng.range(12, 100) as usize,
            7 => 255,
            _ => self.rng.range(100, 256) as usize,
        }
    }

    /// A name to act on: mostly from the pool, often an existing key, sometimes a new one.
    fn pick_name(&mut self) -> Key {
        match self.rng.range(0, 100) {
            0..=54 => self.pool[self.rng.range(0, POOL as u64) as usize].clone(),
            55..=84 if !self.root.is_empty() => {
                let i = self.rng.range(0, self.root.len() as u64) as usize;
                self.root.keys().nth(i).expect("index in range").clone()
            }
            _ => {
                let len = self.name_len();
                self.random_name(len)
            }
        }
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

    /// A random file operation on names from [`Run::pick_name`], in the view of the root with
    /// `staged` (a transaction's changes; empty at the root) over it.
    fn random_op(&mut self, staged: &BTreeMap<Key, Option<Value>>) -> Op {
        let k = self.pick_name();
        let cur = match staged.get(&k) {
            Some(v) => v.as_ref().map_or(0, Vec::len),
            None => self.root.get(&k).map_or(0, Vec::len),
        };
        match self.rng.range(0, 100) {
            0..=21 => Op::Write(k, self.random_value()),
            22..=33 => {
                let mut v = self.random_value();
                v.truncate(MAX_VALUE.saturating_sub(cur));
                Op::Append(k, v)
            }
            34..=43 => {
                let len = match self.rng.range(0, 10) {
                    0 => 0,
                    1 => self.rng.range(0, 200_000) as usize,
                    _ => self.rng.range(0, cur as u64 + 100) as usize,
                };
                Op::Truncate {
                    key: k,
                    len,
                    no_create: self.chance(30),
                }
            }
            44..=48 => Op::Touch(k),
            49..=66 => {
                let b = if self.chance(5) {
                    k.clone()
                } else {
                    self.pick_name()
                };
                Op::Rename(k, b)
            }
            67..=80 => Op::Remove(k),
            81..=98 => Op::Read(k),
            _ => Op::TooLong(self.random_name(256)),
        }
    }

    // ---- running operations ----

    /// Runs `op` in directory `prefix` and checks its outcome against `want`.
    #[track_caller]
    fn run_op(&mut self, prefix: &str, op: &Op, want: &Outcome) {
        if let Op::Write(_, v) | Op::Append(_, v) = op {
            std::fs::write(self.m.scratch().join("val"), v).expect("write $T/val");
        }
        if let Op::TooLong(_) = op {
            std::fs::write(self.m.scratch().join("val"), b"x").expect("write $T/val");
        }
        let (script, mut env) = op.script();
        env.push(("P", prefix.as_bytes().to_vec()));
        self.note(format!(
            "{prefix}: {} -> want {}",
            op.describe(),
            brief(want)
        ));
        let out = self.sh(&script, &env);
        self.check_outcome(&out, want, &format!("{} in {prefix:?}", op.describe()));
    }

    #[track_caller]
    fn check_outcome(&self, out: &Output, want: &Outcome, what: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = match want {
            Outcome::Ok => out.status.success(),
            Outcome::Value(v) => out.status.success() && out.stdout == *v,
            Outcome::Fails(m) => !out.status.success() && stderr.contains(m),
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

    /// `cat PREFIX/KEY` of each key, against its expected value (None: `ENOENT`).
    #[track_caller]
    fn check_keys(&self, prefix: &str, expect: &[(Key, Option<Value>)]) {
        for (k, v) in expect {
            let want = match v {
                Some(v) => Outcome::Value(v.clone()),
                None => Outcome::Fails(msg::ENOENT),
            };
            let out = self.sh(
                "cat -- \"$P$K\"",
                &[("K", k.clone()), ("P", prefix.as_bytes().to_vec())],
            );
            self.check_outcome(
                &out,
                &want,
                &format!("check: cat {} in {prefix:?}", show(k)),
            );
        }
    }

    /// What the root model says of `keys` (names over 255 bytes left out).
    fn root_expect<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a Key>,
    ) -> Vec<(Key, Option<Value>)> {
        keys.into_iter()
            .filter(|k| k.len() <= 255)
            .map(|k| (k.clone(), self.root.get(k).cloned()))
            .collect()
    }

    /// `ls -f DIR` must list exactly `want` (plus `.`, `..` and `extra`), each once.
    #[track_caller]
    fn check_listing<'a>(
        &self,
        dir: &str,
        want: impl Iterator<Item = &'a Key>,
        extra: &[&str],
    ) -> usize {
        let out = self.sh("ls -f -- \"$DIR\"", &[("DIR", dir.as_bytes().to_vec())]);
        assert!(
            out.status.success(),
            "{}: ls -f {dir}: {}",
            self.ctx(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut seen: HashMap<&[u8], u32> = HashMap::new();
        for name in out.stdout.split(|&b| b == b'\n').filter(|n| !n.is_empty()) {
            *seen.entry(name).or_insert(0) += 1;
        }
        let mut problems = Vec::new();
        let mut expected = 0;
        for fixed in [".", ".."].iter().chain(extra) {
            expected += 1;
            if seen.remove(fixed.as_bytes()) != Some(1) {
                problems.push(format!("{fixed} not listed once"));
            }
        }
        for k in want {
            expected += 1;
            match seen.remove(k.as_slice()) {
                Some(1) => {}
                None => problems.push(format!("{} missing", show(k))),
                Some(n) => problems.push(format!("{} listed {n} times", show(k))),
            }
        }
        for k in seen.keys() {
            problems.push(format!("{} listed, not in the model", show(k)));
        }
        assert!(
            problems.is_empty(),
            "{}: ls -f {dir} ({expected} entries expected): {} problems, first {:?}",
            self.ctx(),
            problems.len(),
            &problems[..problems.len().min(8)]
        );
        expected
    }

    #[track_caller]
    fn check_root_listing(&self) {
        self.check_listing(".", self.root.keys(), &LISTED_RESERVED);
    }

    /// Names, `.stats` keys, and the `cksum` (CRC and size) of every key.
    #[track_caller]
    fn full_compare(&mut self, why: &str) {
        let started = Instant::now();
        self.check_root_listing();
        let keys = self.m.stat_keys();
        assert_eq!(
            keys,
            self.root.len() as u64,
            "{}: .stats keys against the model",
            self.ctx()
        );
        let mut names = Vec::new();
        for k in self.root.keys() {
            names.extend_from_slice(k);
            names.push(b'\n');
        }
        std::fs::write(self.m.scratch().join("all"), names).expect("write $T/all");
        let out = self.m.sh("xargs -r -d '\\n' cksum -- < \"$T/all\"");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: cksum of every key: {}",
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
        for (k, v) in &self.root {
            let want = (self.cksum.of(v), v.len());
            match got.get(k.as_slice()) {
                Some(g) if *g == want => {}
                g => wrong.push(format!("{}: cksum {g:?}, model {want:?}", show(k))),
            }
        }
        assert!(
            wrong.is_empty(),
            "{}: full compare ({why}): {} keys differ from the model, first {:?}",
            self.ctx(),
            wrong.len(),
            &wrong[..wrong.len().min(8)]
        );
        self.note(format!(
            "full compare ({why}): {} keys in {:?}",
            self.root.len(),
            started.elapsed()
        ));
        *self.spent.entry("(full compares)").or_default() += started.elapsed();
    }

    // ---- steps ----

    /// One file operation at the root; returns the names it acted on. With a transaction
    /// open, writes of keys it locked must give EBUSY and change nothing.
    fn root_op(&mut self, txn: Option<&Txn>) -> Vec<Key> {
        let mut op = self.random_op(&BTreeMap::new());
        if let Some(t) = txn
            && !t.locked.is_empty()
            && self.chance(50)
        {
            // Half of them on a key the transaction holds.
            let i = self.rng.range(0, t.locked.len() as u64) as usize;
            op = op.on(t.locked.iter().nth(i).expect("index in range").clone());
        }
        let busy =
            txn.is_some_and(|t| op.writes() && op.keys().iter().any(|k| t.locked.contains(*k)));
        let want = if busy {
            // The lookups that come first still fail on what is missing.
            match &op {
                Op::Rename(a, _) | Op::Remove(a) if !self.root.contains_key(a) => {
                    Outcome::Fails(msg::ENOENT)
                }
                Op::Rename(a, b) if a == b => Outcome::Fails("are the same file"),
                Op::Truncate {
                    key,
                    no_create: true,
                    ..
                } if !self.root.contains_key(key) => Outcome::Ok,
                Op::Append(k, v) if v.is_empty() && self.root.contains_key(k) => {
                    Outcome::OkOrFails(msg::EBUSY)
                }
                Op::Write(k, v) if self.root.get(k) == Some(v) => Outcome::OkOrFails(msg::EBUSY),
                Op::Truncate { key, len, .. }
                    if self.root.get(key).is_some_and(|c| c.len() == *len) =>
                {
                    Outcome::OkOrFails(msg::EBUSY)
                }
                _ => Outcome::Fails(msg::EBUSY),
            }
        } else {
            apply(&mut self.root, &op)
        };
        self.count(if busy {
            "root op on a locked key"
        } else {
            "root op"
        });
        self.run_op("", &op, &want);
        let keys: Vec<Key> = op.keys().into_iter().cloned().collect();
        self.check_keys("", &self.root_expect(&keys));
        keys
    }

    fn txn_step(&mut self) {
        self.next_id += 1;
        let dir = format!(".txn/t{}", self.next_id);
        self.note(format!("mkdir {dir}"));
        self.ok(&format!("mkdir {dir}"));
        let mut t = Txn {
            staged: BTreeMap::new(),
            locked: BTreeSet::new(),
        };
        let prefix = format!("{dir}/");
        let n = self.rng.range(1, TXN_OPS_MAX + 1);
        for _ in 0..n {
            match self.rng.range(0, 100) {
                0..=64 => {
                    let op = self.random_op(&t.staged);
                    let want = apply(
                        &mut TxnView {
                            root: &self.root,
                            staged: &mut t.staged,
                        },
                        &op,
                    );
                    self.count("txn op");
                    self.run_op(&prefix, &op, &want);
                    // Its lookups locked every name it acted on, and the check's `cat` does
                    // if they did not.
                    let view = TxnView {
                        root: &self.root,
                        staged: &mut t.staged,
                    };
                    let expect: Vec<(Key, Option<Value>)> = op
                        .keys()
                        .into_iter()
                        .filter(|k| k.len() <= 255)
                        .map(|k| (k.clone(), view.get(k)))
                        .collect();
                    t.locked.extend(expect.iter().map(|(k, _)| k.clone()));
                    self.check_keys(&prefix, &expect);
                }
                65..=84 => {
                    self.root_op(Some(&t));
                }
                85..=94 => {
                    self.count("txn listing");
                    let mut view: BTreeMap<Key, Value> = self.root.clone();
                    for (k, v) in &t.staged {
                        match v {
                            Some(v) => view.insert(k.clone(), v.clone()),
                            None => view.remove(k),
                        };
                    }
                    self.note(format!("ls -f {dir}"));
                    self.check_listing(&dir, view.keys(), &[".ctl"]);
                }
                _ => self.checkpoint(),
            }
        }
        let name = dir[".txn/".len()..].to_owned();
        let state = self.m.txn_state(&name);
        assert_eq!(state, "active", "{}: {dir}/.ctl", self.ctx());
        match self.rng.range(0, 100) {
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
                for (k, v) in &t.staged {
                    match v {
                        Some(v) => self.root.insert(k.clone(), v.clone()),
                        None => self.root.remove(k),
                    };
                }
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
        // Every key it touched now holds what the root model says (committed or not).
        let expect = self.root_expect(t.locked.iter().chain(t.staged.keys()));
        self.check_keys("", &expect);
        assert_eq!(self.m.stat("txn_active"), 0, "{}: txn_active", self.ctx());
    }

    fn snapshot_step(&mut self) {
        self.next_id += 1;
        let dir = format!(".snap/s{}", self.next_id);
        self.note(format!("mkdir {dir}"));
        self.count("snapshot");
        self.ok(&format!("mkdir {dir}"));
        let at_mkdir = self.root.clone();
        let mut changed: BTreeSet<Key> = BTreeSet::new();
        for _ in 0..self.rng.range(1, SNAP_OPS_MAX + 1) {
            changed.extend(self.root_op(None));
        }
        if self.chance(20) {
            self.checkpoint();
        }
        self.note(format!("ls -f {dir}"));
        self.check_listing(&dir, at_mkdir.keys(), &[]);
        // What changed since, and a few others.
        for _ in 0..2 {
            changed.insert(self.pick_name());
        }
        let expect: Vec<(Key, Option<Value>)> = changed
            .into_iter()
            .filter(|k| k.len() <= 255)
            .map(|k| {
                let v = at_mkdir.get(&k).cloned();
                (k, v)
            })
            .collect();
        let prefix = format!("{dir}/");
        self.check_keys(&prefix, &expect);
        if self.chance(30) {
            let k = self.pick_name();
            self.note(format!("write {} in {dir}", show(&k)));
            let out = self.sh(
                "env echo x > \"$P$K\"",
                &[("K", k), ("P", prefix.into_bytes())],
            );
            self.check_outcome(&out, &Outcome::Fails(msg::EROFS), "a write in a snapshot");
        }
        self.ok(&format!("rmdir {dir}"));
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

    /// `count` new long-named keys, written by [`BULK_SHELLS`] shells at once while the driver
    /// lists the root and takes a checkpoint.
    fn bulk_create(&mut self, count: usize) {
        self.next_id += 1;
        let batch = self.next_id;
        let mut names = Vec::with_capacity(count);
        let mut parts = vec![Vec::new(); BULK_SHELLS];
        for i in 0..count {
            let head = format!("bulk{batch}-{i:05}-");
            let len = self.rng.range(200, 256) as usize;
            let mut name = head.into_bytes();
            while name.len() < len {
                name.push(NAME_BYTES[self.rng.range(0, 62) as usize]);
            }
            let value = format!("b{batch}.{i}");
            let part = &mut parts[i % BULK_SHELLS];
            part.extend_from_slice(&name);
            part.push(b'\n');
            part.extend_from_slice(value.as_bytes());
            part.push(b'\n');
            self.root.insert(name.clone(), value.into_bytes());
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
                    "while IFS= read -r k && IFS= read -r v; do
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
        // Some of the batch may have been renamed or deleted since: rm what is still there.
        let live: Vec<Key> = names
            .iter()
            .filter(|n| self.root.contains_key(*n))
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
            self.root.remove(n);
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

    /// While a bulk step runs: two listings of the root, where every key outside `moving` must
    /// appear exactly once and those in it at most once, and a checkpoint between them.
    fn observe_bulk(&mut self, moving: &[Key]) {
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
            for k in self.root.keys().filter(|k| !moving.contains(k.as_slice())) {
                match seen.get(k.as_slice()) {
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
                } else if !self.root.contains_key(*k)
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
            self.check_root_listing();
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
            // takes more than one scan batch from here on.
            let n = self.rng.range(FIRST_BULK as u64, FIRST_BULK as u64 + 1000) as usize;
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
        match self.rng.range(0, 1000) {
            0..=599 => {
                self.root_op(None);
                "root op"
            }
            600..=639 => {
                self.note("ls -f".into());
                self.count("listing");
                self.check_root_listing();
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
                if in_bulk + BULK_MAX <= BULK_CAP && self.chance(60) {
                    let n = self.rng.range(BULK_MIN as u64, BULK_MAX as u64 + 1) as usize;
                    self.bulk_create(n);
                } else {
                    self.bulk_delete();
                }
                "bulk"
            }
        }
    }
}

/// An outcome for messages (values by size and head).
fn brief(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "success".into(),
        Outcome::Fails(m) => format!("failure {m:?}"),
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
    while pool.len() < POOL {
        // Short, medium and long names, some exactly 255 bytes.
        let len = match pool.len() % 4 {
            0 | 1 => run_rng.range(1, 8) as usize,
            2 => run_rng.range(20, 80) as usize,
            _ if pool.len() % 8 == 3 => 255,
            _ => run_rng.range(150, 256) as usize,
        };
        let mut name = vec![FIRST_BYTES[run_rng.range(0, FIRST_BYTES.len() as u64) as usize]];
        while name.len() < len {
            name.push(NAME_BYTES[run_rng.range(0, NAME_BYTES.len() as u64) as usize]);
        }
        if seen.insert(name.clone()) {
            pool.push(name);
        }
    }
    let mut run = Run {
        m: Mount::new(),
        rng,
        seed,
        steps,
        step: 0,
        root: BTreeMap::new(),
        pool,
        bulk: BTreeMap::new(),
        next_id: 0,
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
    eprintln!(
        "fs_model: {steps} steps in {:?}, {} keys at the end; done: {:?}; time: {:?}",
        started.elapsed(),
        run.root.len(),
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
        ] {
            assert!(
                run.done.get(what).copied().unwrap_or(0) > 0,
                "seed {seed}: {steps} steps did no `{what}`: {:?}",
                run.done
            );
        }
    }
}
