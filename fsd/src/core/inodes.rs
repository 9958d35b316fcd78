//! Inode numbers for keys, transaction directories and their `.ctl`.
//!
//! The kernel addresses files by inode number while the engine addresses
//! them by key, so the daemon keeps a two-way map from numbers to places. A
//! key has one place per scope it is seen from (the root, or the directory of
//! an open transaction or snapshot), so the same key inside `.txn/t1` and at
//! the root gets two numbers and a number is never reused. An entry lives as
//! long as the kernel holds lookups on it (it tells us with `forget`), which
//! also keeps an inode valid while a file is open after its key was removed
//! or renamed over. Entries handed out by `readdir` carry no lookup and may be
//! evicted when the table is full: the kernel never learned them as inodes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, MutexGuard};

use bpfdb::{Error, Result};

pub const ROOT_INO: u64 = 1;
pub const STATS_INO: u64 = 2;
pub const TXN_INO: u64 = 3;
pub const SNAP_INO: u64 = 4;
/// The root `.ctl`.
pub const CTL_INO: u64 = 5;
/// Numbers below this are reserved for the daemon's own files.
pub const FIRST_KEY_INO: u64 = 16;

/// The scope of keys at the mount root; transactions and snapshots get
/// scopes from 1 up, never reused.
pub const ROOT_SCOPE: u64 = 0;

/// What an inode number stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// Key `name` as seen from `scope`.
    Key { scope: u64, name: Vec<u8> },
    /// The directory `.txn/NAME` or `.snap/NAME` of scope `scope`.
    Dir { scope: u64 },
    /// `.ctl` inside the directory of transaction `scope`.
    Ctl { scope: u64 },
}

impl Place {
    pub fn key(scope: u64, name: &[u8]) -> Place {
        Place::Key {
            scope,
            name: name.to_vec(),
        }
    }

    fn scope(&self) -> u64 {
        match self {
            Place::Key { scope, .. } | Place::Dir { scope } | Place::Ctl { scope } => *scope,
        }
    }
}

/// What an inode number means now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The place currently named by this inode.
    Live(Place),
    /// Its key was removed or renamed over (or its transaction directory
    /// removed) while the kernel still held it; the place it last had.
    Unlinked(Place),
    /// Never handed out, or already forgotten.
    Unknown,
}

struct Node {
    place: Place,
    /// Entries replied to the kernel minus those it forgot.
    lookups: u64,
    linked: bool,
}

struct Table {
    nodes: HashMap<u64, Node>,
    by_place: HashMap<Place, u64>,
    next_ino: u64,
    capacity: usize,
}

pub struct Inodes {
    table: Mutex<Table>,
}

impl Inodes {
    /// `capacity` bounds the entries kept at once; the caller sizes it from
    /// the engine's key table plus the handles that can pin removed keys.
    pub fn new(capacity: usize) -> Inodes {
        Inodes {
            table: Mutex::new(Table {
                nodes: HashMap::new(),
                by_place: HashMap::new(),
                next_ino: FIRST_KEY_INO,
                capacity: capacity.max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inode of `place`, counting one lookup held by the kernel.
    pub fn remember(&self, place: &Place) -> Result<u64> {
        let mut t = self.lock();
        let ino = t.ino_of(place)?;
        if let Some(node) = t.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
        Ok(ino)
    }

    /// The inode to show for `place` in a listing, without a lookup. None
    /// when the table is full of inodes the kernel holds.
    pub fn listing_ino(&self, place: &Place) -> Option<u64> {
        self.lock().ino_of(place).ok()
    }

    /// The inode of `place` if the kernel holds a lookup on it (and so may
    /// have cached its attributes and pages); None otherwise.
    pub fn held(&self, place: &Place) -> Option<u64> {
        let t = self.lock();
        let ino = *t.by_place.get(place)?;
        t.nodes
            .get(&ino)
            .is_some_and(|n| n.lookups > 0)
            .then_some(ino)
    }

    /// Whether `ino` now names root key `key`.
    pub fn names_root_key(&self, ino: u64, key: &[u8]) -> bool {
        self.lock().nodes.get(&ino).is_some_and(|n| {
            n.linked && matches!(&n.place, Place::Key { scope, name } if *scope == ROOT_SCOPE && name == key)
        })
    }

    /// Whether `ino` is the `.ctl` of a transaction directory.
    pub fn is_txn_ctl(&self, ino: u64) -> bool {
        self.lock()
            .nodes
            .get(&ino)
            .is_some_and(|n| matches!(n.place, Place::Ctl { .. }))
    }

    /// Whether `ino` is (or was, until removed) a key at the root.
    pub fn is_root_key(&self, ino: u64) -> bool {
        self.lock()
            .nodes
            .get(&ino)
            .is_some_and(|n| matches!(n.place, Place::Key { scope, .. } if scope == ROOT_SCOPE))
    }

    pub fn resolve(&self, ino: u64) -> Resolved {
        match self.lock().nodes.get(&ino) {
            Some(node) if node.linked => Resolved::Live(node.place.clone()),
            Some(node) => Resolved::Unlinked(node.place.clone()),
            None => Resolved::Unknown,
        }
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        let mut t = self.lock();
        let Some(node) = t.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(nlookup);
        if node.lookups == 0 {
            t.drop_node(ino);
        }
    }

    /// `place` is gone (key deleted, transaction directory removed).
    pub fn unlinked(&self, place: &Place) {
        self.lock().unlink(place);
    }

    /// Scope `scope` ended: every place in it is gone. Inodes the kernel
    /// holds stay (unlinked) until it forgets them.
    pub fn scope_removed(&self, scope: u64) {
        let mut t = self.lock();
        let gone: Vec<Place> = t
            .by_place
            .keys()
            .filter(|p| p.scope() == scope)
            .cloned()
            .collect();
        for place in gone {
            t.unlink(&place);
        }
    }

    /// Key `from` became `to` in `scope` (replacing any `to`): its inode
    /// follows it.
    pub fn renamed(&self, scope: u64, from: &[u8], to: &[u8]) {
        let mut t = self.lock();
        let to = Place::key(scope, to);
        t.unlink(&to);
        if let Some(ino) = t.by_place.remove(&Place::key(scope, from)) {
            if let Some(node) = t.nodes.get_mut(&ino) {
                node.place = to.clone();
            }
            t.by_place.insert(to, ino);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().nodes.len()
    }
}

impl Table {
    fn ino_of(&mut self, place: &Place) -> Result<u64> {
        if let Some(&ino) = self.by_place.get(place) {
            return Ok(ino);
        }
        if self.nodes.len() >= self.capacity {
            self.evict_unreferenced();
            if self.nodes.len() >= self.capacity {
                return Err(Error::new(
                    libc::ENOSPC,
                    format!(
                        "inode table full: the kernel holds {} inodes",
                        self.nodes.len()
                    ),
                ));
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                place: place.clone(),
                lookups: 0,
                linked: true,
            },
        );
        self.by_place.insert(place.clone(), ino);
        Ok(ino)
    }

    fn unlink(&mut self, place: &Place) {
        let Some(ino) = self.by_place.remove(place) else {
            return;
        };
        if let Entry::Occupied(mut e) = self.nodes.entry(ino) {
            if e.get().lookups == 0 {
                e.remove();
            } else {
                e.get_mut().linked = false;
            }
        }
    }

    fn drop_node(&mut self, ino: u64) {
        if let Some(node) = self.nodes.remove(&ino)
            && node.linked
            && self.by_place.get(&node.place) == Some(&ino)
        {
            self.by_place.remove(&node.place);
        }
    }

    fn evict_unreferenced(&mut self) {
        let idle: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.lookups == 0)
            .map(|(&ino, _)| ino)
            .collect();
        for ino in idle {
            self.drop_node(ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &[u8]) -> Place {
        Place::key(ROOT_SCOPE, name)
    }

    #[test]
    fn lookups_keep_entries_until_forgotten() {
        let t = Inodes::new(8);
        let a = t.remember(&root(b"a")).unwrap();
        assert!(a >= FIRST_KEY_INO);
        assert_eq!(t.remember(&root(b"a")).unwrap(), a);
        t.forget(a, 1);
        assert_eq!(t.resolve(a), Resolved::Live(root(b"a")));
        t.forget(a, 1);
        assert_eq!(t.resolve(a), Resolved::Unknown);
        assert_ne!(t.remember(&root(b"a")).unwrap(), a);
    }

    #[test]
    fn rename_moves_the_inode_and_unlinks_the_target() {
        let t = Inodes::new(8);
        let a = t.remember(&root(b"a")).unwrap();
        let b = t.remember(&root(b"b")).unwrap();
        t.renamed(ROOT_SCOPE, b"a", b"b");
        assert_eq!(t.resolve(a), Resolved::Live(root(b"b")));
        assert_eq!(t.resolve(b), Resolved::Unlinked(root(b"b")));
        assert_eq!(t.remember(&root(b"b")).unwrap(), a);
        t.forget(b, 1);
        assert_eq!(t.resolve(b), Resolved::Unknown);
    }

    #[test]
    fn listing_entries_are_evicted_when_full() {
        let t = Inodes::new(2);
        t.listing_ino(&root(b"x")).unwrap();
        t.listing_ino(&root(b"y")).unwrap();
        let a = t.remember(&root(b"a")).unwrap();
        let b = t.remember(&root(b"b")).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.remember(&root(b"c")).is_err());
        assert!(t.listing_ino(&root(b"c")).is_none());
        t.unlinked(&root(b"a"));
        assert_eq!(t.resolve(a), Resolved::Unlinked(root(b"a")));
        t.forget(a, 1);
        assert!(t.remember(&root(b"c")).is_ok());
        assert_eq!(t.resolve(b), Resolved::Live(root(b"b")));
    }

    #[test]
    fn scopes_get_their_own_numbers_and_end_together() {
        let t = Inodes::new(16);
        let at_root = t.remember(&root(b"k")).unwrap();
        let in_txn = t.remember(&Place::key(7, b"k")).unwrap();
        let dir = t.remember(&Place::Dir { scope: 7 }).unwrap();
        let listed = t.listing_ino(&Place::key(7, b"other")).unwrap();
        assert_ne!(at_root, in_txn);
        assert_ne!(dir, in_txn);
        t.renamed(7, b"k", b"k2");
        assert_eq!(t.resolve(at_root), Resolved::Live(root(b"k")));
        assert_eq!(t.resolve(in_txn), Resolved::Live(Place::key(7, b"k2")));
        t.scope_removed(7);
        assert_eq!(t.resolve(in_txn), Resolved::Unlinked(Place::key(7, b"k2")));
        assert_eq!(t.resolve(dir), Resolved::Unlinked(Place::Dir { scope: 7 }));
        assert_eq!(t.resolve(listed), Resolved::Unknown);
        assert_eq!(t.resolve(at_root), Resolved::Live(root(b"k")));
        t.forget(in_txn, 1);
        t.forget(dir, 1);
        assert_eq!(t.len(), 1);
    }
}
