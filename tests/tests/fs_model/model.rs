//! The model: the engine keys of a tree, views of it (the committed tree, a transaction's staged
//! keys over it), the effects an operation has on keys, and the walks, lookups and edits the
//! operations are made of.

use std::collections::{BTreeMap, BTreeSet};

use bpfdb_tests::msg;

use crate::ops::Outcome;
use crate::{EISDIR, ENOTDIR, MAX_DEPTH, Name, Path, Value};

/// A key of the engine as the daemon lays a tree out; directory 0 is the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EKey {
    /// Entry `name` of a directory: a file's value, or a subdirectory's id.
    Ent(u64, Name),
    /// A directory's record: its parent, its entries and its metadata.
    Rec(u64),
    /// The root's list of subdirectories (the root has no record).
    RootDirs,
    /// The directory id counter.
    NextId,
    /// Not a key: the engine's lock on the set of root names (keys with no '/'), which a
    /// transaction's listing of its top takes (bpf/src/bpf/top.bpf.h).
    TopNames,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum EVal {
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
pub(crate) type Tree = BTreeMap<EKey, EVal>;
/// A transaction's changes (None: deleted).
pub(crate) type Staged = BTreeMap<EKey, Option<EVal>>;

/// Reading a tree.
pub(crate) trait View {
    fn get(&self, k: &EKey) -> Option<&EVal>;
    /// The names at the top, in byte order.
    fn top_names(&self) -> Vec<Name>;
    /// The committed tree underneath (to pick existing names from without merging).
    fn base(&self) -> &Tree;
}

/// Changing one.
pub(crate) trait Kv: View {
    fn set(&mut self, k: EKey, v: EVal);
    fn remove(&mut self, k: &EKey);
}

pub(crate) fn top_range(t: &Tree) -> impl Iterator<Item = &Name> {
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
pub(crate) struct Overlay<'a, S> {
    pub(crate) root: &'a Tree,
    pub(crate) staged: S,
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

pub(crate) fn merge(root: &mut Tree, staged: Staged) {
    for (k, v) in staged {
        match v {
            Some(v) => root.insert(k, v),
            None => root.remove(&k),
        };
    }
}

/// The engine keys an operation reads and writes, for the locking rules.
#[derive(Default, Debug)]
pub(crate) struct Effects {
    /// Read by the kernel's lookups and by listings (in a transaction, each locks).
    pub(crate) looked: Vec<EKey>,
    /// Read, not written, by the daemon's change.
    pub(crate) read: Vec<EKey>,
    /// Written.
    pub(crate) wrote: Vec<EKey>,
    /// The outcome is the daemon's (a change, or a failure it finds), not a lookup's, the
    /// kernel's or the tool's.
    pub(crate) daemon: bool,
    /// A write that leaves everything as it was.
    pub(crate) no_change: bool,
}

pub(crate) enum Miss {
    NoEnt,
    NotDir,
}

/// The directory `dirs` names, looking each name up.
pub(crate) fn walk(v: &impl View, dirs: &[Name], fx: &mut Effects) -> Result<u64, Miss> {
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
pub(crate) fn lookup<'v>(
    v: &'v impl View,
    dir: u64,
    name: &[u8],
    fx: &mut Effects,
) -> Option<&'v EVal> {
    let key = EKey::Ent(dir, name.to_vec());
    let found = v.get(&key);
    fx.looked.push(key);
    if let Some(EVal::Dir(id)) = found {
        fx.looked.push(EKey::Rec(*id));
    }
    found
}

pub(crate) fn split(path: &Path) -> (&[Name], &Name) {
    let (name, dirs) = path.split_last().expect("a path has a name");
    (dirs, name)
}

pub(crate) fn miss(m: Miss) -> Outcome {
    match m {
        Miss::NoEnt => Outcome::Fails(msg::ENOENT),
        Miss::NotDir => Outcome::Fails(ENOTDIR),
    }
}

/// Entries of directory `dir`, in byte order.
pub(crate) fn entries(v: &impl View, dir: u64) -> Vec<Name> {
    if dir == 0 {
        return v.top_names();
    }
    match v.get(&EKey::Rec(dir)) {
        Some(EVal::Rec { names, .. }) => names.iter().cloned().collect(),
        other => panic!("model: record of directory {dir} is {other:?}"),
    }
}

pub(crate) fn is_empty_dir(v: &impl View, dir: u64) -> bool {
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
pub(crate) fn all_dirs(v: &impl View) -> Vec<(Path, u64)> {
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
pub(crate) fn dir_at(v: &impl View, path: &Path) -> Option<u64> {
    let mut fx = Effects::default();
    let (dirs, name) = split(path);
    match lookup(v, walk(v, dirs, &mut fx).ok()?, name, &mut fx) {
        Some(EVal::Dir(id)) => Some(*id),
        _ => None,
    }
}

/// Where `mv -T a b` may go without making the tree over MAX_DEPTH + 1 deep: `b`, or if
/// moving directory `a` there would, its name at the root.
pub(crate) fn shallow_target(v: &impl View, a: &Path, b: Path) -> Path {
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
pub(crate) fn update_names(
    kv: &mut impl Kv,
    dir: u64,
    fx: &mut Effects,
    f: impl FnOnce(&mut BTreeSet<Name>),
) {
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
pub(crate) fn add_entry(kv: &mut impl Kv, dir: u64, name: &Name, v: EVal, fx: &mut Effects) {
    let is_dir = matches!(v, EVal::Dir(_));
    kv.set(EKey::Ent(dir, name.clone()), v);
    fx.wrote.push(EKey::Ent(dir, name.clone()));
    if dir != 0 || is_dir {
        update_names(kv, dir, fx, |n| {
            n.insert(name.clone());
        });
    }
}

pub(crate) fn remove_entry(
    kv: &mut impl Kv,
    dir: u64,
    name: &Name,
    is_dir: bool,
    fx: &mut Effects,
) {
    kv.remove(&EKey::Ent(dir, name.clone()));
    fx.wrote.push(EKey::Ent(dir, name.clone()));
    if dir != 0 || is_dir {
        update_names(kv, dir, fx, |n| {
            n.remove(name);
        });
    }
}

/// Removes everything below directory `dir`, and its record.
pub(crate) fn remove_below(kv: &mut impl Kv, dir: u64) {
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
pub(crate) fn read_outcome(v: &impl View, path: &Path, fx: &mut Effects) -> Outcome {
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
