//! The random choice of operations, names, values and directories.

use std::collections::BTreeSet;

use bpfdb_tests::Rng;

use crate::model::{
    Effects, View, all_dirs, dir_at, entries, is_empty_dir, read_outcome, shallow_target, split,
    top_range,
};
use crate::ops::{Op, Outcome};
use crate::{
    DIR_MODES, FILE_MODES, FIRST_BYTES, MAX_DEPTH, MAX_DIRS, MAX_VALUE, NAME_BYTES, NAME_MAX, Name,
    POOL, Path, SUB_NAME_MAX, Value,
};

/// Random choices.
pub(crate) struct Dice {
    pub(crate) rng: Rng,
    pub(crate) pool: Vec<Name>,
    pub(crate) dir_pool: Vec<Name>,
}

impl Dice {
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.rng.range(0, 100) < percent
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
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
    pub(crate) fn pick_dir(&mut self, v: &impl View) -> (Path, u64) {
        let dirs = all_dirs(v);
        if dirs.len() == 1 || self.chance(40) {
            return (Vec::new(), 0);
        }
        dirs[1 + self.below(dirs.len() - 1)].clone()
    }

    /// A path: a name in a directory; now and then one through a name that may be missing or
    /// a file.
    pub(crate) fn pick_path(&mut self, v: &impl View) -> Path {
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
    pub(crate) fn random_op(&mut self, v: &impl View, tree_ok: bool) -> Op {
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
    pub(crate) fn near_op(&mut self, v: &impl View, paths: &BTreeSet<Path>) -> Op {
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
