//! The checks of what the mount shows against the model: outcomes, reads, listings and full
//! comparisons.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Output;
use std::time::Instant;

use crate::model::{EKey, EVal, Effects, View, all_dirs, entries, read_outcome, walk};
use crate::ops::{Outcome, brief, join, show, show_path};
use crate::run::Run;
use crate::{DIR_FIXED, NAME_MAX, Name, Path, ROOT_FIXED, SUB_NAME_MAX, TXN_FIXED, Value};

/// The CRC of POSIX `cksum` (CRC-32, polynomial 0x04C11DB7, MSB first, the length appended in
/// as few bytes as it needs, complemented).
pub(crate) struct Cksum([u32; 256]);

impl Cksum {
    pub(crate) fn new() -> Cksum {
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

/// Where a listing is: the root, the top of a transaction, of a snapshot.
#[derive(Clone, Copy)]
pub(crate) enum Top {
    Root,
    Txn,
    Snap,
}

impl Run {
    #[track_caller]
    pub(crate) fn check_outcome(&self, out: &Output, want: &Outcome, what: &str) {
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
    pub(crate) fn check_paths<'a>(
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
    pub(crate) fn check_listings(
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
            if *dir == 0 {
                fx.looked.extend([EKey::RootDirs, EKey::TopNames]);
            } else {
                fx.looked.push(EKey::Rec(*dir));
            }
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
    pub(crate) fn check_root_listings(&self) {
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
    pub(crate) fn full_compare(&mut self, why: &str) {
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
}
