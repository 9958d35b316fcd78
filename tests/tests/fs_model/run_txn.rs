//! Root operations (with a transaction open or not), transactions and snapshots.

use std::collections::BTreeSet;

use bpfdb_tests::msg;

use crate::model::{
    EKey, EVal, Effects, Overlay, Staged, Tree, all_dirs, dir_at, lookup, merge, miss, split, walk,
};
use crate::ops::{Outcome, apply, join, show_path};
use crate::run::Run;
use crate::run_checks::Top;
use crate::{EISDIR, ENOTDIR, Path, SH_NO_DIR, SNAP_OPS_MAX, TXN_LOCKS_SOFT, TXN_OPS_MAX};

/// An open transaction of the model.
#[derive(Default)]
pub(crate) struct Txn {
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

impl Run {
    /// One operation at the root; returns the paths it acted on. With a transaction open, an
    /// operation that writes a key the transaction holds must give EBUSY and change nothing;
    /// one that only reads a key it wrote may; the others must work. `rm -r` only when neither
    /// a transaction nor a snapshot is open.
    pub(crate) fn root_op(&mut self, txn: Option<&Txn>, snapshot: bool) -> Vec<Path> {
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
            Some(t)
                if want == Outcome::Ok && t.locked.contains(&EKey::TopNames) && {
                    changes_root_names(&self.root, &staged)
                } =>
            {
                (
                    Outcome::Fails(msg::EBUSY),
                    "root op changing a listed root's names",
                )
            }
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

    pub(crate) fn txn_step(&mut self) {
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

    pub(crate) fn snapshot_step(&mut self) {
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
}

/// Whether `staged` adds a name to the root of `root` or takes one away.
fn changes_root_names(root: &Tree, staged: &Staged) -> bool {
    staged
        .iter()
        .any(|(k, v)| matches!(k, EKey::Ent(0, _)) && v.is_some() != root.contains_key(k))
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
