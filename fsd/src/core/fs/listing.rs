//! Directory handles: a listing taken at opendir (the root's keys and the
//! daemon's own files, the transactions under `.txn` or `.snap`, the keys
//! one transaction sees, or a subdirectory's entries), in name order,
//! served by offset to readdir.
//!
//! A subdirectory's listing is its record's entry list: it costs what the
//! directory holds, and inside a transaction reading it locks the record,
//! so no create or removal in it can commit before the transaction ends.
//! The root's listing walks every key (the root has no entry list: its
//! keys are written by autocommit writers and eBPF clients alike).

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use bpfdb::{Error, Result};

use super::files::Handle;
use super::space::Space;
use super::tree::{self, Entries, EntryKind, ROOT_DIR};
use super::{Fs, Kind, is_reserved};
use crate::core::handles::lock;
use crate::core::inodes::{CTL_INO, Place, ROOT_INO, Resolved, SNAP_INO, STATS_INO, TXN_INO};
use crate::core::txns::TxnKind;

/// A directory as listed at opendir.
pub(super) struct Listing {
    /// ".", "..", and the daemon's own files, with their inodes.
    fixed: Vec<(u64, Kind, &'static [u8])>,
    names: Names,
}

enum Names {
    /// Entries of directory `dir` as seen from `scope`.
    Keys {
        scope: u64,
        dir: u64,
        items: Vec<(Vec<u8>, EntryKind)>,
    },
    /// Transaction or snapshot directories: (scope, name).
    Dirs(Vec<(u64, Vec<u8>)>),
}

impl Names {
    fn len(&self) -> usize {
        match self {
            Names::Keys { items, .. } => items.len(),
            Names::Dirs(dirs) => dirs.len(),
        }
    }
}

impl Fs {
    /// Lists the directory now; readdir serves this list by offset.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let dot = |ino| (ino, Kind::Dir, &b"."[..]);
        let dotdot = |ino| (ino, Kind::Dir, &b".."[..]);
        let listing = match ino {
            ROOT_INO => Listing {
                fixed: vec![
                    dot(ROOT_INO),
                    dotdot(ROOT_INO),
                    (STATS_INO, Kind::File, b".stats"),
                    (TXN_INO, Kind::Dir, b".txn"),
                    (SNAP_INO, Kind::Dir, b".snap"),
                    (CTL_INO, Kind::File, b".ctl"),
                ],
                names: self.list_keys(&Space::Root)?,
            },
            TXN_INO | SNAP_INO => {
                let kind = if ino == TXN_INO {
                    TxnKind::ReadWrite
                } else {
                    TxnKind::Snapshot
                };
                let dirs = self.txns.list(kind);
                Listing {
                    fixed: vec![dot(ino), dotdot(ROOT_INO)],
                    names: Names::Dirs(dirs.iter().map(|o| (o.scope, o.name.clone())).collect()),
                }
            }
            _ => match self.inodes.resolve(ino) {
                Resolved::Live(Place::Key { scope, name })
                    if tree::dir_of_record(&name).is_some() =>
                {
                    let space = self.space("opendir", scope)?;
                    let mut v = Vec::new();
                    space
                        .get(&self.db, &name, &mut v)
                        .map_err(|e| space.gone_since_lookup(e, "opendir", &name))?;
                    let e = Entries::decode(&v)?;
                    let up = match (e.parent, &space) {
                        (ROOT_DIR, Space::Root) => ROOT_INO,
                        (ROOT_DIR, Space::Open(_)) => self.listing_ino(&Place::Dir { scope }),
                        (p, _) => self.listing_ino(&Place::key(scope, &tree::dir_key(p))),
                    };
                    Listing {
                        fixed: vec![dot(ino), dotdot(up)],
                        names: Names::Keys {
                            scope,
                            dir: tree::dir_of_record(&name).unwrap_or(ROOT_DIR),
                            items: e.iter().map(|(n, k)| (n.to_vec(), k)).collect(),
                        },
                    }
                }
                Resolved::Live(Place::Dir { scope }) => {
                    let space = self.space("opendir", scope)?;
                    let Space::Open(open) = &space else {
                        return Err(Error::new(libc::EIO, "opendir: root scope as a directory"));
                    };
                    let mut fixed = match open.kind {
                        TxnKind::ReadWrite => vec![dot(ino), dotdot(TXN_INO)],
                        TxnKind::Snapshot => vec![dot(ino), dotdot(SNAP_INO)],
                    };
                    if open.kind == TxnKind::ReadWrite {
                        let ctl_ino = self.listing_ino(&Place::Ctl { scope });
                        fixed.push((ctl_ino, Kind::File, b".ctl"));
                    }
                    Listing {
                        fixed,
                        names: self.list_keys(&space)?,
                    }
                }
                Resolved::Unlinked(Place::Dir { .. }) => {
                    return Err(Error::new(
                        libc::ENOENT,
                        format!("opendir {}: removed", self.name_for_log(ino)),
                    ));
                }
                _ => {
                    return Err(Error::new(
                        libc::ENOTDIR,
                        format!("opendir {}: not a directory", self.name_for_log(ino)),
                    ));
                }
            },
        };
        self.handles.insert(Handle::Dir(listing))
    }

    /// The keys at the top of `space` (the root, or a transaction's), in
    /// name order; what is not a regular file takes its type from the
    /// root's list (`tree::ROOT_DIRS_KEY`).
    fn list_keys(&self, space: &Space) -> Result<Names> {
        let what = || format!("readdir {}", space.dir_name());
        let mut v = Vec::new();
        let typed = match space.get(&self.db, tree::ROOT_DIRS_KEY, &mut v) {
            Ok(_) => Entries::decode_root(&v)?,
            Err(e) if e.errno == libc::ENOENT => Entries::new(ROOT_DIR),
            Err(e) => return Err(space.restate_as(e, what)),
        };
        let mut seen = HashSet::new();
        let mut items = Vec::new();
        let limit = self.max_keys;
        space
            .scan_top(&self.db, |name| {
                // The walk may see a key twice when keys move during it.
                if items.len() < limit
                    && !is_reserved(name)
                    && !tree::is_internal(name)
                    && seen.insert(name.to_vec())
                {
                    let kind = typed.get(name).unwrap_or(tree::REGULAR);
                    items.push((name.to_vec(), kind));
                }
            })
            .map_err(|e| space.restate_as(e, what))?;
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Names::Keys {
            scope: space.scope(),
            dir: ROOT_DIR,
            items,
        })
    }

    /// The inode a listing shows for `place`.
    fn listing_ino(&self, place: &Place) -> u64 {
        self.inodes
            .listing_ino(place)
            .unwrap_or_else(|| listing_only_ino(place))
    }

    /// Calls `add(ino, next_offset, kind, name)` for each entry from
    /// `offset` on, until it returns true (the reply is full).
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, Kind, &[u8]) -> bool,
    ) -> Result<()> {
        let h = self.handles.get(fh)?;
        let h = lock(&h);
        let Handle::Dir(listing) = &*h else {
            return Err(Error::new(
                libc::ENOTDIR,
                format!("readdir: handle {fh} is not a directory"),
            ));
        };
        let fixed = &listing.fixed;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for i in start..fixed.len().saturating_add(listing.names.len()) {
            let next = i as u64 + 1;
            let full = match fixed.get(i) {
                Some(&(e_ino, kind, name)) => add(e_ino, next, kind, name),
                None => {
                    let (place, kind, name) = match &listing.names {
                        Names::Keys { scope, dir, items } => {
                            let (name, kind) = &items[i - fixed.len()];
                            match kind {
                                EntryKind::File(t) => {
                                    let key = tree::entry_key(*dir, name);
                                    (Place::key(*scope, &key), Kind::of_mode(*t), &name[..])
                                }
                                EntryKind::Dir(id) => {
                                    let key = tree::dir_key(*id);
                                    (Place::key(*scope, &key), Kind::Dir, &name[..])
                                }
                            }
                        }
                        Names::Dirs(dirs) => {
                            let (scope, name) = &dirs[i - fixed.len()];
                            (Place::Dir { scope: *scope }, Kind::Dir, &name[..])
                        }
                    };
                    // When the table is full of inodes the kernel holds, a
                    // listing still needs a number; this one is never an
                    // inode the kernel can ask about.
                    add(self.listing_ino(&place), next, kind, name)
                }
            };
            if full {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }
}

/// Above every counted inode number, so the kernel never confuses the two.
fn listing_only_ino(place: &Place) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(place) | 1 << 63
}
