//! Inode numbers for keys.
//!
//! The kernel addresses files by inode number while the engine addresses
//! them by key, so the daemon keeps a two-way map. An entry lives as long as
//! the kernel holds lookups on it (it tells us with `forget`), which also
//! keeps an inode valid while a file is open after its key was removed or
//! renamed over. Entries handed out by `readdir` carry no lookup and may be
//! evicted when the table is full: the kernel never learned them as inodes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, MutexGuard};

use bpfdb::{Error, Result};

pub const ROOT_INO: u64 = 1;
pub const STATS_INO: u64 = 2;
pub const TXN_INO: u64 = 3;
pub const SNAP_INO: u64 = 4;
/// Numbers below this are reserved for the daemon's own files.
pub const FIRST_KEY_INO: u64 = 16;

/// What an inode number means now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The key currently named by this inode.
    Key(Vec<u8>),
    /// Its key was removed or renamed over while the kernel still held it;
    /// the name it last had.
    Unlinked(Vec<u8>),
    /// Never handed out, or already forgotten.
    Unknown,
}

struct Node {
    name: Vec<u8>,
    /// Entries replied to the kernel minus those it forgot.
    lookups: u64,
    linked: bool,
}

struct Table {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<Vec<u8>, u64>,
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
                by_name: HashMap::new(),
                next_ino: FIRST_KEY_INO,
                capacity: capacity.max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inode of `name`, counting one lookup held by the kernel.
    pub fn remember(&self, name: &[u8]) -> Result<u64> {
        let mut t = self.lock();
        let ino = t.ino_of(name)?;
        if let Some(node) = t.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
        Ok(ino)
    }

    /// The inode to show for `name` in a listing, without a lookup. None when
    /// the table is full of inodes the kernel holds.
    pub fn listing_ino(&self, name: &[u8]) -> Option<u64> {
        self.lock().ino_of(name).ok()
    }

    pub fn resolve(&self, ino: u64) -> Resolved {
        match self.lock().nodes.get(&ino) {
            Some(node) if node.linked => Resolved::Key(node.name.clone()),
            Some(node) => Resolved::Unlinked(node.name.clone()),
            None => Resolved::Unknown,
        }
    }

    /// Whether `ino` is a key inode the table knows (linked or not).
    pub fn is_key(&self, ino: u64) -> bool {
        self.lock().nodes.contains_key(&ino)
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

    /// The key `name` was deleted.
    pub fn unlinked(&self, name: &[u8]) {
        self.lock().unlink(name);
    }

    /// Key `from` became `to` (replacing any `to`): its inode follows it.
    pub fn renamed(&self, from: &[u8], to: &[u8]) {
        let mut t = self.lock();
        t.unlink(to);
        if let Some(ino) = t.by_name.remove(from) {
            if let Some(node) = t.nodes.get_mut(&ino) {
                node.name = to.to_vec();
            }
            t.by_name.insert(to.to_vec(), ino);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().nodes.len()
    }
}

impl Table {
    fn ino_of(&mut self, name: &[u8]) -> Result<u64> {
        if let Some(&ino) = self.by_name.get(name) {
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
                name: name.to_vec(),
                lookups: 0,
                linked: true,
            },
        );
        self.by_name.insert(name.to_vec(), ino);
        Ok(ino)
    }

    fn unlink(&mut self, name: &[u8]) {
        let Some(ino) = self.by_name.remove(name) else {
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
            && self.by_name.get(&node.name) == Some(&ino)
        {
            self.by_name.remove(&node.name);
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

    #[test]
    fn lookups_keep_entries_until_forgotten() {
        let t = Inodes::new(8);
        let a = t.remember(b"a").unwrap();
        assert!(a >= FIRST_KEY_INO);
        assert_eq!(t.remember(b"a").unwrap(), a);
        t.forget(a, 1);
        assert_eq!(t.resolve(a), Resolved::Key(b"a".to_vec()));
        t.forget(a, 1);
        assert_eq!(t.resolve(a), Resolved::Unknown);
        assert_ne!(t.remember(b"a").unwrap(), a);
    }

    #[test]
    fn rename_moves_the_inode_and_unlinks_the_target() {
        let t = Inodes::new(8);
        let a = t.remember(b"a").unwrap();
        let b = t.remember(b"b").unwrap();
        t.renamed(b"a", b"b");
        assert_eq!(t.resolve(a), Resolved::Key(b"b".to_vec()));
        assert_eq!(t.resolve(b), Resolved::Unlinked(b"b".to_vec()));
        assert_eq!(t.remember(b"b").unwrap(), a);
        t.forget(b, 1);
        assert_eq!(t.resolve(b), Resolved::Unknown);
    }

    #[test]
    fn listing_entries_are_evicted_when_full() {
        let t = Inodes::new(2);
        t.listing_ino(b"x").unwrap();
        t.listing_ino(b"y").unwrap();
        let a = t.remember(b"a").unwrap();
        let b = t.remember(b"b").unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.remember(b"c").is_err());
        assert!(t.listing_ino(b"c").is_none());
        t.unlinked(b"a");
        assert_eq!(t.resolve(a), Resolved::Unlinked(b"a".to_vec()));
        t.forget(a, 1);
        assert!(t.remember(b"c").is_ok());
        assert_eq!(t.resolve(b), Resolved::Key(b"b".to_vec()));
    }
}
