//! The driver: the state of a run, running one operation, and the steps (a random one or a
//! fixed one; restarts, crashes, checkpoints and bulk steps).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Output;
use std::time::{Duration, Instant};

use bpfdb_tests::{Background, LISTED_RESERVED, Mount};

use crate::dice::Dice;
use crate::model::{EKey, EVal, Effects, Tree, top_range};
use crate::ops::{Op, Outcome, brief, show, show_path};
use crate::run_checks::{Cksum, Top};
use crate::{
    BULK_CAP, BULK_MAX, BULK_MIN, BULK_SHELLS, FILE_MODE, FIRST_BULK, HISTORY, NAME_BYTES, Name,
};

pub(crate) struct Run {
    pub(crate) m: Mount,
    pub(crate) dice: Dice,
    pub(crate) seed: u64,
    pub(crate) steps: u64,
    pub(crate) step: u64,
    pub(crate) root: Tree,
    /// The last directory number the model gave.
    pub(crate) dir_ids: u64,
    /// Live bulk batches: their names, by batch number.
    pub(crate) bulk: BTreeMap<u64, Vec<Name>>,
    pub(crate) next_id: u64,
    /// The most keys the model counted in one transaction.
    pub(crate) max_txn_locks: usize,
    pub(crate) history: VecDeque<String>,
    pub(crate) done: BTreeMap<&'static str, u64>,
    /// Time spent per kind of step, for the summary.
    pub(crate) spent: BTreeMap<&'static str, Duration>,
    pub(crate) cksum: Cksum,
}

impl Run {
    pub(crate) fn count(&mut self, what: &'static str) {
        *self.done.entry(what).or_insert(0) += 1;
    }

    pub(crate) fn note(&mut self, what: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history
            .push_back(format!("step {}: {what}", self.step));
    }

    pub(crate) fn ctx(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    pub(crate) fn sh(&self, script: &str, env: &[(&str, Vec<u8>)]) -> Output {
        let env: Vec<(&str, &OsStr)> = env
            .iter()
            .map(|(k, v)| (*k, OsStr::from_bytes(v)))
            .collect();
        self.m.sh_env(script, &env)
    }

    #[track_caller]
    pub(crate) fn ok(&self, script: &str) -> String {
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
    pub(crate) fn run_op(&mut self, top: &str, op: &Op, want: &Outcome) -> bool {
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

    /// Counts a directory operation that worked (`on_dir`: its first path was a directory).
    pub(crate) fn count_done(&mut self, op: &Op, fx: &Effects, on_dir: bool) {
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

    pub(crate) fn one_step(&mut self) {
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

    pub(crate) fn checkpoint(&mut self) {
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
}
