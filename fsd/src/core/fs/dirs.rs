//! Directories below the root (`tree` has their keys): mkdir, rmdir, and
//! the changes of a directory's entries that create, unlink and rename
//! make. Each is one atomic change: inside a transaction's directory it is
//! staged in that transaction; at the root it runs in a transaction of its
//! own, retried when it loses a lock to another change (every lock is
//! no-wait), and committed before the reply.
//!
//! A directory's record is read, and so locked shared, by whoever lists it
//! or looks a name up in it inside a transaction, and rewritten (locked
//! exclusive) by whoever adds or removes an entry: two-phase locking makes
//! listings phantom-safe against creates and removals in the directory.

use std::time::Duration;

use bpfdb::{Error, Meta, NewMeta, Result, SetFlags, Stat, Txn};

use super::space::Space;
use super::tree::{self, Entries, EntryKind, ROOT_DIR};
use super::{Attr, Fs, Kind, MUST_EXIST, NO_REPLACE, now_ns, show, valid_key};
use crate::core::caller::Caller;
use crate::core::txns::TxnKind;

/// Attempts of a change at the root that loses locks to other changes
/// before it gives up with EBUSY.
const CHANGE_ATTEMPTS: u32 = 48;

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(4);

/// The key operations of one atomic change of the tree, in one
/// transaction; remembers every key it has tried to write (in a user's
/// transaction, a change that fails after one such try is aborted).
pub(super) struct Change<'a> {
    txn: &'a Txn,
    touched: Vec<Vec<u8>>,
}

impl Change<'_> {
    pub fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        self.txn.get(key, out)
    }

    pub fn stat(&self, key: &[u8]) -> Result<Stat> {
        self.txn.stat(key)
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], meta: NewMeta, f: SetFlags) -> Result<Stat> {
        self.touched.push(key.to_vec());
        self.txn.set(key, value, meta, f)
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.touched.push(key.to_vec());
        self.txn.delete(key)
    }

    /// A write of `to` and a delete of `from`: either may have been
    /// staged when it fails.
    pub fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<()> {
        self.touched.push(from.to_vec());
        self.touched.push(to.to_vec());
        self.txn.rename(from, to, false)
    }

    /// The entries of directory `dir` and its record's metadata (the root
    /// has none: its subdirectories only, and default metadata).
    pub fn entries(&self, dir: u64) -> Result<(Entries, Meta)> {
        let mut v = Vec::new();
        if dir == ROOT_DIR {
            return match self.get(tree::ROOT_DIRS_KEY, &mut v) {
                Ok(_) => Ok((Entries::decode_root(&v)?, Meta::default())),
                Err(e) if e.errno == libc::ENOENT => Ok((Entries::new(ROOT_DIR), Meta::default())),
                Err(e) => Err(e),
            };
        }
        let st = self.get(&tree::dir_key(dir), &mut v).map_err(|e| {
            if e.errno == libc::ENOENT {
                Error::new(libc::ENOENT, "the directory was removed")
            } else {
                e
            }
        })?;
        Ok((Entries::decode(&v)?, st.meta))
    }

    /// Writes the entries of `dir` back; a subdirectory's mtime and ctime
    /// become `now` (an entry was added or removed).
    /// A list longer than `max_value` (long names, or a small
    /// `max_value`) fills the directory before `DIR_MAX_ENTRIES`: ENOSPC.
    pub fn put_entries(&mut self, dir: u64, e: &Entries, meta: &Meta, now: u64) -> Result<()> {
        let full = |err: Error| {
            if err.errno == libc::EFBIG {
                Error::new(
                    libc::ENOSPC,
                    format!(
                        "the directory is full: its list of {} entries is over max_value",
                        e.len()
                    ),
                )
            } else {
                err
            }
        };
        if dir == ROOT_DIR {
            let m = NewMeta {
                mode: libc::S_IFREG,
                ..NewMeta::default()
            };
            self.set(
                tree::ROOT_DIRS_KEY,
                &e.encode_root(),
                m,
                SetFlags::default(),
            )
            .map_err(full)?;
            return Ok(());
        }
        let m = NewMeta {
            mtime_ns: now,
            ctime_ns: now,
            ..NewMeta::of(meta)
        };
        self.set(&tree::dir_key(dir), &e.encode(), m, MUST_EXIST)
            .map_err(full)?;
        Ok(())
    }

    /// A fresh directory id.
    fn next_id(&mut self) -> Result<u64> {
        let mut v = Vec::new();
        let id = match self.get(tree::NEXT_ID_KEY, &mut v) {
            Ok(_) => tree::parse_id(&v)?,
            Err(e) if e.errno == libc::ENOENT => 1,
            Err(e) => return Err(e),
        };
        let m = NewMeta {
            mode: libc::S_IFREG,
            ..NewMeta::default()
        };
        self.set(
            tree::NEXT_ID_KEY,
            &tree::id_value(id + 1),
            m,
            SetFlags::default(),
        )?;
        Ok(id)
    }

    /// The id of directory entry `key`; ENOTDIR if it is a file.
    pub fn dir_id(&self, key: &[u8], st: &Stat) -> Result<u64> {
        if !is_dir(&st.meta) {
            return Err(Error::new(libc::ENOTDIR, "not a directory"));
        }
        let mut v = Vec::new();
        self.get(key, &mut v)?;
        tree::parse_id(&v)
    }
}

/// EINVAL if directory `to` is `id` or below it: walks up from `to`,
/// reading (in a transaction: locking) each record on the way, so a
/// concurrent move of one of them conflicts with this one.
fn check_not_below(c: &Change<'_>, id: u64, to: u64) -> Result<()> {
    let mut dir = to;
    for _ in 0..tree::DIR_MAX_DEPTH {
        if dir == id {
            return Err(Error::new(
                libc::EINVAL,
                "a directory cannot move below itself",
            ));
        }
        if dir == ROOT_DIR {
            return Ok(());
        }
        dir = c.entries(dir)?.0.parent;
    }
    Err(Error::new(
        libc::ELOOP,
        format!(
            "more than {} directories above the target",
            tree::DIR_MAX_DEPTH
        ),
    ))
}

/// The name of entry key `key`, in its directory.
fn entry_name(key: &[u8]) -> &[u8] {
    tree::split(key).map_or(key, |(_, n)| n)
}

/// A regular file's (a key written before types were kept has none).
pub(super) fn is_regular(meta: &Meta) -> bool {
    matches!(meta.mode & libc::S_IFMT, libc::S_IFREG | 0)
}

pub(super) fn is_dir(meta: &Meta) -> bool {
    meta.mode & libc::S_IFMT == libc::S_IFDIR
}

/// `Attr` of directory `id` from its record.
pub(super) fn dir_attr(ino: u64, meta: &Meta, entries: &Entries) -> Attr {
    Attr {
        ino,
        size: u64::from(meta.len),
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        mtime_ns: meta.mtime_ns,
        ctime_ns: meta.ctime_ns.max(meta.mtime_ns),
        kind: Kind::Dir,
        nlink: u32::try_from(entries.subdirs() + 2).unwrap_or(u32::MAX),
        rdev: 0,
        cacheable: false,
    }
}

impl Fs {
    /// Runs `f` as one atomic change in `space` (see the module comment).
    pub(super) fn change<T>(
        &self,
        space: &Space,
        what: impl Fn() -> String,
        mut f: impl FnMut(&mut Change<'_>) -> Result<T>,
    ) -> Result<T> {
        if let Space::Open(o) = space {
            if o.kind == TxnKind::Snapshot {
                return Err(Error::new(
                    libc::EROFS,
                    format!("{}: snapshots are read-only", what()),
                ));
            }
            let mut c = Change {
                txn: &o.txn,
                touched: Vec::new(),
            };
            let r = f(&mut c);
            for k in &c.touched {
                o.touch(k);
            }
            // A change that failed after staging part of itself would leave
            // the transaction's tree half changed: it is aborted instead.
            if let Err(e) = &r
                && !c.touched.is_empty()
                && o.is_active()
            {
                let why = format!("{}: {}; a directory change failed halfway", what(), e.msg);
                let _ = o.txn.abort_because(&why);
            }
            return r.map_err(|e| space.restate_as(e, &what));
        }
        let mut attempt = 0;
        loop {
            let txn = self
                .db
                .begin(false)
                .map_err(|e| space.restate_as(e, &what))?;
            let mut c = Change {
                txn: &txn,
                touched: Vec::new(),
            };
            let r = f(&mut c).and_then(|v| txn.commit().map(|_| v));
            match r {
                Ok(v) => {
                    for k in &c.touched {
                        self.root_changed(k);
                    }
                    return Ok(v);
                }
                // Lost a lock to another change: it is aborted; again.
                Err(e) if e.errno == libc::EBUSY && attempt + 1 < CHANGE_ATTEMPTS => {
                    drop(txn);
                    attempt += 1;
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => return Err(space.restate_as(e, &what)),
            }
        }
    }

    /// mkdir of `name` in directory `dir` of `space`; returns the new
    /// directory's id and its record's metadata.
    pub(super) fn make_dir(
        &self,
        space: &Space,
        dir: u64,
        name: &[u8],
        mode: u32,
        who: Caller,
    ) -> Result<(u64, Meta)> {
        let key = self.entry_key("mkdir", dir, name)?;
        let what = || format!("mkdir {}", space.show(&key));
        let now = now_ns();
        let made = self.change(space, what, |c| {
            let (mut parent, pmeta) = c.entries(dir)?;
            // A directory with set-group-ID passes its group and the bit on.
            let (gid, sgid) = if dir != ROOT_DIR && pmeta.mode & libc::S_ISGID != 0 {
                (pmeta.gid, libc::S_ISGID)
            } else {
                (who.gid, 0)
            };
            if c.stat(&key).is_ok() {
                return Err(Error::new(libc::EEXIST, "the name exists"));
            }
            let id = c.next_id()?;
            parent.insert(name, EntryKind::Dir(id))?;
            let meta = NewMeta {
                mode: libc::S_IFDIR | (mode & 0o7777) | sgid,
                uid: who.uid,
                gid,
                mtime_ns: now,
                ctime_ns: now,
            };
            c.set(&key, &tree::id_value(id), meta, NO_REPLACE)?;
            let st = c.set(
                &tree::dir_key(id),
                &Entries::new(dir).encode(),
                meta,
                NO_REPLACE,
            )?;
            c.put_entries(dir, &parent, &pmeta, now)?;
            Ok((id, st.meta))
        })?;
        if dir == ROOT_DIR && matches!(space, Space::Root) {
            self.root_dir_changed();
        }
        Ok(made)
    }

    /// rmdir of `name` in directory `dir`: ENOTEMPTY unless it has no
    /// entries. Returns the removed directory's id.
    pub(super) fn remove_dir(&self, space: &Space, dir: u64, name: &[u8]) -> Result<u64> {
        let key = self.entry_key("rmdir", dir, name)?;
        let what = || format!("rmdir {}", space.show(&key));
        let now = now_ns();
        let id = self.change(space, what, |c| {
            let (mut parent, pmeta) = c.entries(dir)?;
            let st = c.stat(&key)?;
            let id = c.dir_id(&key, &st)?;
            if !c.entries(id)?.0.is_empty() {
                return Err(Error::new(libc::ENOTEMPTY, "the directory is not empty"));
            }
            parent.remove(name);
            c.delete(&tree::dir_key(id))?;
            c.delete(&key)?;
            c.put_entries(dir, &parent, &pmeta, now)?;
            Ok(id)
        })?;
        if dir == ROOT_DIR && matches!(space, Space::Root) {
            self.root_dir_changed();
        }
        Ok(id)
    }

    /// Creates key `key` (value `value`, metadata `meta`: a regular file, a
    /// symbolic link, a FIFO, a device node or a socket) with its entry in
    /// directory `dir` (at the root, in its list if it is not a regular
    /// file). EEXIST if the name is taken.
    pub(super) fn create_entry(
        &self,
        space: &Space,
        dir: u64,
        key: &[u8],
        value: &[u8],
        meta: NewMeta,
    ) -> Result<Stat> {
        let name = entry_name(key);
        let kind = EntryKind::of_file(meta.mode);
        let what = || format!("create {}", space.show(key));
        let now = meta.mtime_ns;
        self.change(space, what, |c| {
            let listed = dir != ROOT_DIR || kind.listed_at_root();
            let (mut parent, pmeta) = if listed {
                c.entries(dir)?
            } else {
                (Entries::new(ROOT_DIR), Meta::default())
            };
            let gid = if pmeta.mode & libc::S_ISGID != 0 {
                pmeta.gid
            } else {
                meta.gid
            };
            if c.stat(key).is_ok() {
                return Err(Error::new(libc::EEXIST, "the name exists"));
            }
            parent.insert(name, kind)?;
            let st = c.set(key, value, NewMeta { gid, ..meta }, NO_REPLACE)?;
            if listed {
                c.put_entries(dir, &parent, &pmeta, now)?;
            }
            Ok(st)
        })
    }

    /// Removes the key `key` (not a directory) and its entry in `dir`.
    pub(super) fn unlink_entry(&self, space: &Space, dir: u64, key: &[u8]) -> Result<()> {
        let name = entry_name(key);
        let what = || format!("unlink {}", space.show(key));
        let now = now_ns();
        self.change(space, what, |c| {
            let st = c.stat(key)?;
            if is_dir(&st.meta) {
                return Err(Error::new(
                    libc::EISDIR,
                    "is a directory (rmdir removes it)",
                ));
            }
            let listed = dir != ROOT_DIR || EntryKind::of_file(st.meta.mode).listed_at_root();
            c.delete(key)?;
            if listed {
                let (mut parent, pmeta) = c.entries(dir)?;
                parent.remove(name);
                c.put_entries(dir, &parent, &pmeta, now)?;
            }
            Ok(())
        })
    }

    /// Moves entry `from` (of directory `from.0`) to `to`, replacing a
    /// file there, or an empty directory if it moves a directory. A
    /// directory moves as its one entry, whatever is below it; it may not
    /// move below itself. Returns the id of a directory it replaced.
    pub(super) fn move_entry(
        &self,
        space: &Space,
        (from_dir, from): (u64, &[u8]),
        (to_dir, to): (u64, &[u8]),
        no_replace: bool,
    ) -> Result<Option<u64>> {
        let (name, new_name) = (entry_name(from), entry_name(to));
        let what = || format!("rename {} -> {}", space.show(from), space.show(to));
        let now = now_ns();
        self.change(space, what, |c| {
            let st = c.stat(from)?;
            if from == to {
                return Ok(None);
            }
            let moved = if is_dir(&st.meta) {
                Some(c.dir_id(from, &st)?)
            } else {
                None
            };
            let (replaced, replaced_kind) = match c.stat(to) {
                Ok(_) if no_replace => return Err(Error::new(libc::EEXIST, "the target exists")),
                Ok(t) => match (moved, is_dir(&t.meta)) {
                    (Some(_), false) => {
                        return Err(Error::new(libc::ENOTDIR, "the target is a file"));
                    }
                    (None, true) => {
                        return Err(Error::new(libc::EISDIR, "the target is a directory"));
                    }
                    (Some(_), true) => {
                        let id = c.dir_id(to, &t)?;
                        (Some(id), Some(EntryKind::Dir(id)))
                    }
                    (None, false) => (None, Some(EntryKind::of_file(t.meta.mode))),
                },
                Err(e) if e.errno == libc::ENOENT => (None, None),
                Err(e) => return Err(e),
            };
            if let Some(t) = replaced
                && !c.entries(t)?.0.is_empty()
            {
                return Err(Error::new(
                    libc::ENOTEMPTY,
                    "the target directory is not empty",
                ));
            }
            if let Some(id) = moved
                && from_dir != to_dir
            {
                check_not_below(c, id, to_dir)?;
            }
            let kind = moved.map_or_else(|| EntryKind::of_file(st.meta.mode), EntryKind::Dir);
            // The root lists only what is not a regular file.
            let src_listed = from_dir != ROOT_DIR || kind.listed_at_root();
            let dst_listed = to_dir != ROOT_DIR
                || kind.listed_at_root()
                || replaced_kind.is_some_and(EntryKind::listed_at_root);
            let mut src = if src_listed {
                Some(c.entries(from_dir)?)
            } else {
                None
            };
            let mut dst = if dst_listed && (to_dir != from_dir || src.is_none()) {
                Some(c.entries(to_dir)?)
            } else {
                None
            };
            if let Some((e, _)) = &mut src {
                e.remove(name);
            }
            if dst_listed {
                let e = match (&mut dst, &mut src) {
                    (Some((e, _)), _) | (None, Some((e, _))) => e,
                    (None, None) => return Err(Error::new(libc::EIO, "no entry list to update")),
                };
                if to_dir == ROOT_DIR && !kind.listed_at_root() {
                    e.remove(new_name);
                } else {
                    e.insert(new_name, kind)?;
                }
            }
            // Every check is done: the writes.
            if let Some(t) = replaced {
                c.delete(&tree::dir_key(t))?;
            }
            if let Some(id) = moved
                && from_dir != to_dir
            {
                let (mut own, meta) = c.entries(id)?;
                own.parent = to_dir;
                let m = NewMeta {
                    ctime_ns: now,
                    ..NewMeta::of(&meta)
                };
                c.set(&tree::dir_key(id), &own.encode(), m, MUST_EXIST)?;
            }
            c.rename(from, to)?;
            if let Some((e, meta)) = &src {
                c.put_entries(from_dir, e, meta, now)?;
            }
            if let Some((e, meta)) = &dst {
                c.put_entries(to_dir, e, meta, now)?;
            }
            Ok(replaced)
        })
    }

    /// Attributes of the directory whose record is `record`, in `space`.
    pub(super) fn dir_attr_of(&self, space: &Space, ino: u64, record: &[u8]) -> Result<Attr> {
        let mut v = Vec::new();
        let st = space.get(&self.db, record, &mut v)?;
        Ok(dir_attr(ino, &st.meta, &Entries::decode(&v)?))
    }

    /// The key of entry `name` of directory `dir`; names in
    /// subdirectories are at most `tree::SUB_NAME_MAX` bytes.
    pub(super) fn entry_key(&self, op: &str, dir: u64, name: &[u8]) -> Result<Vec<u8>> {
        let name = valid_key(op, name)?;
        if dir != ROOT_DIR && name.len() > tree::SUB_NAME_MAX {
            return Err(Error::new(
                libc::ENAMETOOLONG,
                format!(
                    "{op} {}: names in a subdirectory are at most {} bytes",
                    show(name),
                    tree::SUB_NAME_MAX
                ),
            ));
        }
        Ok(tree::entry_key(dir, name))
    }
}

/// Pause before attempt `n`: doubling from 20 us up to `MAX_BACKOFF`,
/// with jitter, so that two changes that keep taking each other's locks
/// drift apart.
fn backoff(n: u32) -> Duration {
    let base = Duration::from_micros(20 << n.min(8)).min(MAX_BACKOFF);
    let jitter = u64::from(now_ns() as u32 % 1000);
    base.mul_f64(0.5 + jitter as f64 / 2000.0)
}
