//! Open files: what `open` hands out for a key (a copy of the value taken
//! at open, a page-cached reader of a small root key, or a writer's buffer)
//! and for the daemon's own files, and what `read` serves from each. The
//! writers' buffers and their commits are in `writer`, directory handles in
//! `listing`.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use bpfdb::{Error, Meta, NewMeta, Result, Stat};

use super::attrs::file_attr;
use super::ctl::Ctl;
use super::listing::Listing;
use super::space::Space;
use super::writer::Writer;
use super::{Attr, CACHE_MAX_VALUE, Fs, MUST_EXIST, Opened, ino_name, now_ns};
use crate::core::caller::Caller;
use crate::core::handles::lock;
use crate::core::inodes::{
    CTL_INO, Place, ROOT_INO, ROOT_SCOPE, Resolved, SNAP_INO, STATS_INO, TXN_INO,
};

pub(super) enum Handle {
    /// A value as it was at open (`.stats`: as rendered at open).
    Snapshot {
        ino: u64,
        data: Vec<u8>,
        meta: Meta,
    },
    /// A small root key read through the kernel's page cache. The pages are
    /// shared by every reader of the inode, so a read serves the value as
    /// committed now, not as at open: a page filled after a commit's
    /// invalidation then always holds the new value. `data` is the last
    /// value seen, served if the key is removed while open.
    Cached {
        ino: u64,
        key: Vec<u8>,
        data: Vec<u8>,
        meta: Meta,
    },
    Writer(Writer),
    Ctl(Ctl),
    Dir(Listing),
}

impl Handle {
    /// Attributes as this handle sees the file, so the kernel's idea of the
    /// size matches what reads through this handle return.
    pub(super) fn attr(&self, ino: u64) -> Option<Attr> {
        match self {
            Handle::Snapshot { ino: i, data, meta }
            | Handle::Cached {
                ino: i, data, meta, ..
            } if *i == ino => Some(file_attr(ino, meta, data.len())),
            Handle::Writer(w) if w.ino == ino => Some(w.attr()),
            _ => None,
        }
    }

    /// A writer's attributes, for an fstat from the process that opened it
    /// (`Writer::opened_by`).
    pub(super) fn writer_attr(
        &self,
        ino: u64,
        who: Caller,
        process: &OnceLock<u32>,
    ) -> Option<Attr> {
        match self {
            Handle::Writer(w) if w.ino == ino && w.opened_by(who, process) => self.attr(ino),
            _ => None,
        }
    }

    /// `attr`, except for a cached reader, which reads what is committed
    /// now and so has no attributes of its own.
    pub(super) fn own_attr(&self, ino: u64) -> Option<Attr> {
        match self {
            Handle::Cached { .. } => None,
            _ => self.attr(ino),
        }
    }
}

impl Fs {
    pub fn open(&self, ino: u64, flags: i32, who: Caller) -> Result<Opened> {
        match ino {
            STATS_INO => {
                if flags & libc::O_ACCMODE != libc::O_RDONLY {
                    return Err(Error::new(
                        libc::EACCES,
                        "open \".stats\" for writing: it is read-only",
                    ));
                }
                let data = self.stats_text().into_bytes();
                let fh = self.handles.insert(Handle::Snapshot {
                    ino,
                    data,
                    meta: Meta::default(),
                })?;
                return Ok(Opened {
                    fh,
                    direct_io: true,
                });
            }
            CTL_INO => return self.open_ctl(ROOT_SCOPE, flags),
            ROOT_INO | TXN_INO | SNAP_INO => {
                return Err(Error::new(
                    libc::EISDIR,
                    format!("open {}: is a directory", ino_name(ino)),
                ));
            }
            _ => {}
        }
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        match self.inodes.resolve(ino) {
            Resolved::Live(Place::Key { scope, name }) => {
                let space = self.space("open", scope)?;
                self.open_key(ino, &space, &name, flags, who)
                    .map_err(|e| match (&space, e.errno) {
                        // Removed by a transaction while the kernel kept
                        // its lookup: it looks the name up again.
                        (Space::Root, libc::ENOENT) => space.gone_since_lookup(e, "open", &name),
                        _ => e,
                    })
            }
            // A reader just reads the key by its name. A writer's commit
            // would be dropped (writes to a removed file go nowhere), so
            // it gets ESTALE and the kernel looks the name up again.
            Resolved::Unlinked(Place::Key { scope, name }) if !writing => {
                let space = self.space("open", scope)?;
                self.open_key(ino, &space, &name, flags, who)
            }
            Resolved::Unlinked(Place::Key { .. }) => Err(Error::new(
                libc::ESTALE,
                format!(
                    "open {} for writing: replaced since its lookup",
                    self.name_for_log(ino)
                ),
            )),
            Resolved::Live(Place::Ctl { scope }) => self.open_ctl(scope, flags),
            Resolved::Live(Place::Dir { .. }) | Resolved::Unlinked(Place::Dir { .. }) => {
                Err(Error::new(
                    libc::EISDIR,
                    format!("open {}: is a directory", self.name_for_log(ino)),
                ))
            }
            Resolved::Unlinked(Place::Ctl { .. }) | Resolved::Unknown => Err(Error::new(
                libc::ESTALE,
                format!("open inode {ino}: unknown inode"),
            )),
        }
    }

    /// The handle of a key `create` has just committed empty.
    pub(super) fn open_created(
        &self,
        ino: u64,
        created: Stat,
        unsynced: Option<u64>,
        flags: i32,
        who: Caller,
    ) -> Result<Opened> {
        let meta = created.meta;
        let handle = if flags & libc::O_ACCMODE == libc::O_RDONLY {
            Handle::Snapshot {
                ino,
                data: Vec::new(),
                meta,
            }
        } else {
            let mut w = Writer::new(ino, Vec::new(), meta, flags, false, who);
            w.created = Some(created.ts);
            w.unsynced = unsynced;
            Handle::Writer(w)
        };
        self.insert_handle(handle)
    }

    /// Opens a key: a reader copies the value; a writer gets a buffer. At
    /// the root nothing is written until flush; in a transaction the open
    /// stages a write at once (the value as it is, or empty for O_TRUNC),
    /// taking the key's exclusive lock, so a conflict fails the open.
    pub(super) fn open_key(
        &self,
        ino: u64,
        space: &Space,
        key: &[u8],
        flags: i32,
        who: Caller,
    ) -> Result<Opened> {
        let fail = |e| space.restate(e, "open", key);
        let mut data = Vec::new();
        let handle = if flags & libc::O_ACCMODE == libc::O_RDONLY {
            let meta = space.get(&self.db, key, &mut data).map_err(fail)?.meta;
            if matches!(space, Space::Root)
                && data.len() <= CACHE_MAX_VALUE
                && self.uses.open_cached(ino)
            {
                Handle::Cached {
                    ino,
                    key: key.to_vec(),
                    data,
                    meta,
                }
            } else {
                Handle::Snapshot { ino, data, meta }
            }
        } else {
            space.writable("open for writing", key)?;
            // A root writer commits through the log: if it cannot be
            // written now, say so here, where even a shell looks.
            if let Space::Root = space {
                self.db.log_health().map_err(fail)?;
            }
            let truncate = flags & libc::O_TRUNC != 0;
            let mut meta = if truncate {
                space.stat_for_write(&self.db, key).map_err(fail)?.meta
            } else {
                space
                    .get_for_write(&self.db, key, &mut data)
                    .map_err(fail)?
                    .meta
            };
            if let Space::Open(_) = space {
                let staged = NewMeta {
                    mode: meta.mode,
                    uid: meta.uid,
                    gid: meta.gid,
                    // An unchanged value keeps its times; a truncation is
                    // a change.
                    mtime_ns: if truncate { now_ns() } else { meta.mtime_ns },
                    ctime_ns: if truncate { now_ns() } else { meta.ctime_ns },
                };
                meta = space
                    .set(&self.db, key, &data, staged, MUST_EXIST)
                    .map_err(fail)?
                    .meta;
            }
            // Staged already in a transaction; at the root the truncation
            // waits for the first write (see `Writer::truncated`).
            let pending_truncate = truncate && matches!(space, Space::Root);
            Handle::Writer(Writer::new(ino, data, meta, flags, pending_truncate, who))
        };
        self.insert_handle(handle)
    }

    /// Numbers a key's handle; counts a root writer in `Fs::uses` (a cached
    /// reader was counted when it was granted).
    fn insert_handle(&self, mut handle: Handle) -> Result<Opened> {
        if let Handle::Writer(w) = &mut handle {
            w.root = self.inodes.is_root_key(w.ino);
        }
        let cached_ino = match &handle {
            Handle::Cached { ino, .. } => Some(*ino),
            _ => None,
        };
        let cached = cached_ino.is_some();
        let fh = self.handles.insert(handle).inspect_err(|_| {
            if let Some(ino) = cached_ino {
                self.uses.close_cached(ino);
            }
        })?;
        if let Ok(h) = self.handles.get(fh)
            && let Handle::Writer(w) = &mut *lock(&h)
        {
            self.track_writer(w, true);
        }
        let opens = if cached {
            &self.counters.cached_opens
        } else {
            &self.counters.direct_opens
        };
        opens.fetch_add(1, Ordering::Relaxed);
        Ok(Opened {
            fh,
            direct_io: !cached,
        })
    }

    /// Calls `f` with the bytes at `offset`, at most `size` of them.
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let h = self.handles.get(fh)?;
        let mut h = lock(&h);
        if let Handle::Cached { ino, key, data, .. } = &mut *h
            && self.inodes.names_root_key(*ino, key)
        {
            let mut now = Vec::new();
            match self.db.session().get(key, &mut now) {
                Ok(_) => *data = now,
                // Removed while open: like a removed file, still readable.
                Err(e) if e.errno == libc::ENOENT => {}
                Err(e) => return Err(Space::Root.restate(e, "read", key)),
            }
        }
        let is_key = match &*h {
            Handle::Snapshot { ino, .. } => *ino != STATS_INO,
            Handle::Cached { .. } | Handle::Writer(_) => true,
            Handle::Ctl(_) | Handle::Dir(_) => false,
        };
        if is_key {
            self.counters.key_reads.fetch_add(1, Ordering::Relaxed);
        }
        let data: &[u8] = match &*h {
            Handle::Snapshot { data, .. } | Handle::Cached { data, .. } => data,
            Handle::Writer(w) if w.readable => &w.buf,
            Handle::Writer(w) => {
                return Err(Error::new(
                    libc::EBADF,
                    format!("read {}: opened write-only", self.name_for_log(w.ino)),
                ));
            }
            Handle::Ctl(c) => match c.readable_text() {
                Some(text) => text,
                None => {
                    return Err(Error::new(libc::EBADF, "read .ctl: opened write-only"));
                }
            },
            Handle::Dir(_) => {
                return Err(Error::new(
                    libc::EISDIR,
                    format!("read: handle {fh} is a directory"),
                ));
            }
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(f(&data[start..end]))
    }
}
