//! Open files and directories: snapshots taken at open, write buffers and
//! their commits (staged writes inside a transaction), listings served by
//! offset.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use bpfdb::{Error, Meta, NewMeta, Reservation, Result, SetFlags, Stat};
use log::{debug, warn};

use super::ctl::Ctl;
use super::space::Space;
use super::{Attr, CACHE_MAX_VALUE, Fs, Kind, Opened, file_attr, ino_name, is_reserved, now_ns};
use crate::core::caller::Caller;
use crate::core::handles::lock;
use crate::core::inodes::{
    CTL_INO, Place, ROOT_INO, ROOT_SCOPE, Resolved, SNAP_INO, STATS_INO, TXN_INO,
};
use crate::core::txns::TxnKind;

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

/// A directory as listed at opendir.
pub(super) struct Listing {
    /// ".", "..", and the daemon's own files, with their inodes.
    fixed: Vec<(u64, Kind, &'static [u8])>,
    names: Names,
}

enum Names {
    /// Keys seen from `scope`.
    Keys { scope: u64, names: Vec<Vec<u8>> },
    /// Transaction or snapshot directories: (scope, name).
    Dirs(Vec<(u64, Vec<u8>)>),
}

impl Names {
    fn len(&self) -> usize {
        match self {
            Names::Keys { names, .. } => names.len(),
            Names::Dirs(dirs) => dirs.len(),
        }
    }
}

pub(super) struct Writer {
    ino: u64,
    buf: Vec<u8>,
    /// Metadata of the committed value the buffer started from.
    meta: Meta,
    readable: bool,
    append: bool,
    /// Written (or truncated by a call) since the last commit.
    dirty: bool,
    /// Opened with O_TRUNC and not written since. Shells and dd open, dup
    /// the descriptor and close the original, so a flush comes before the
    /// first write; committing the empty value then would show readers an
    /// empty key in the middle of `printf new > key`. Such a buffer commits
    /// with the first write's flush, at fsync, or at release.
    truncated: bool,
    /// A root key's writer: it commits through the log.
    root: bool,
    /// Counted in `Fs::uses` as a writer with changes not yet committed:
    /// the kernel sizes the file by this buffer meanwhile, so root readers
    /// bypass the page cache, and no process may cache attributes that
    /// differ by who asks (`Fs::getattr`).
    registered: bool,
    /// The last commit failed and nothing changed since, so release must not
    /// retry behind the back of the close() that already reported it.
    failed: bool,
    /// A write failed (over max_value, no room in value memory, a failing
    /// log): the stream the application wrote is incomplete, so the buffer
    /// is never committed and every flush fails with this.
    refused: Option<Error>,
    /// Value memory promised to this buffer's commit (`Db::reserve`).
    room: Reservation,
    /// Commit timestamp of the empty value this handle's `create` committed,
    /// until a commit of its own: a refused write then removes the key
    /// again, so a failed `echo v > new` leaves no empty key behind.
    created: Option<u64>,
    /// A commit of this handle's own not yet known durable: its create's
    /// empty value, whose wait was left to the close. Flush and fsync wait
    /// for it, so `touch new` is durable when close returns, and `echo v >
    /// new` costs one durable commit, not two (the value's commit comes
    /// later in the log, so its fsync covers the create's).
    unsynced: Option<u64>,
    /// Time of the last write or truncation through it (its open until
    /// then): the commit's mtime.
    written_ns: u64,
    /// Who opened it; fstat from the same process shows this buffer.
    by: Caller,
    /// `by`'s process, looked up in /proc the first time it is asked for.
    process: OnceLock<u32>,
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
            Handle::Writer(w) if w.ino == ino => Some(file_attr(ino, &w.meta, w.buf.len())),
            _ => None,
        }
    }

    /// A writer's attributes, for an fstat from the process that opened it.
    /// The thread that opened it is that process without asking /proc (the
    /// common case: a single-threaded writer stats its own file); another
    /// thread costs a look-up of each side's process, once per request
    /// (`process`) and once per handle.
    pub(super) fn writer_attr(
        &self,
        ino: u64,
        who: Caller,
        process: &OnceLock<u32>,
    ) -> Option<Attr> {
        match self {
            Handle::Writer(w)
                if w.ino == ino
                    && (w.by.pid == who.pid
                        || *w.process.get_or_init(|| w.by.process())
                            == *process.get_or_init(|| who.process())) =>
            {
                self.attr(ino)
            }
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

    /// ftruncate on a handle open for writing edits only its buffer.
    /// Ok(false) when `fh` is not a write handle of `ino`.
    pub(super) fn truncate_writer(&self, fh: Option<u64>, ino: u64, len: usize) -> Result<bool> {
        let Some(h) = fh.and_then(|fh| self.handles.get(fh).ok()) else {
            return Ok(false);
        };
        let mut h = lock(&h);
        let Handle::Writer(w) = &mut *h else {
            return Ok(false);
        };
        if w.ino != ino {
            return Ok(false);
        }
        // A refusal goes to the caller, which asked for this truncation.
        if let Err(e) = self.admit(w, len) {
            return Err(self.refuse(w, e, "truncate"));
        }
        w.buf.resize(len, 0);
        w.written_ns = now_ns();
        self.track_writer(w, true);
        w.dirty = true;
        w.truncated = false;
        w.failed = false;
        Ok(true)
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
                let must_exist = SetFlags {
                    no_replace: false,
                    must_exist: true,
                };
                meta = space
                    .set(&self.db, key, &data, staged, must_exist)
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

    /// Counts (`pending`) or uncounts a writer in `Fs::uses`; counting
    /// waits for the key's cached readers to close.
    fn track_writer(&self, w: &mut Writer, pending: bool) {
        if w.registered != pending {
            w.registered = pending;
            self.uses.writer(w.ino, pending);
        }
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

    /// Whether a write to `fh` on inode `ino` could wait for cached readers
    /// (`Fs::may_wait`): a command to a transaction's `.ctl` commits the
    /// keys it changed. Every other write is told by one inode lookup.
    ///
    /// So may a write through a root writer that a FLUSH left uncounted
    /// (dash's `>>` dups the descriptor and closes the original before it
    /// writes): counting it again waits for the key's cached readers.
    pub fn write_may_wait(&self, ino: u64, fh: u64) -> bool {
        let ctl = self.inodes.is_txn_ctl(ino);
        if !ctl && !self.uses.has_cached(ino) {
            return false;
        }
        let Ok(h) = self.handles.get(fh) else {
            return false;
        };
        let scope = match &*lock(&h) {
            Handle::Writer(w) => return w.root && !w.registered,
            Handle::Ctl(c) if ctl && c.scope != ROOT_SCOPE => c.scope,
            _ => return false,
        };
        let Some(open) = self.txns.get(scope) else {
            return false;
        };
        let keys = open.touched_keys();
        let names: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        self.may_wait(None, &names)
    }

    /// Edits the handle's buffer; nothing reaches the engine until flush.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handles.get(fh)?;
        let mut h = lock(&h);
        let w = match &mut *h {
            Handle::Writer(w) => w,
            Handle::Ctl(c) => return self.ctl_write(c, data),
            _ => {
                return Err(Error::new(
                    libc::EBADF,
                    format!("write: handle {fh} is not open for writing"),
                ));
            }
        };
        let start = if w.append {
            w.buf.len()
        } else {
            usize::try_from(offset).unwrap_or(usize::MAX)
        };
        let end = match start.checked_add(data.len()) {
            Some(end) if end <= self.max_value => end,
            _ => {
                let e = Error::new(
                    libc::EFBIG,
                    format!(
                        "value would be {} bytes, over max_value {}",
                        start as u128 + data.len() as u128,
                        self.max_value
                    ),
                );
                return Err(self.refuse(w, e, "write"));
            }
        };
        if let Err(e) = self.admit(w, end.max(w.buf.len())) {
            return Err(self.refuse(w, e, "write"));
        }
        if w.buf.len() < end {
            w.buf.resize(end, 0);
        }
        w.buf[start..end].copy_from_slice(data);
        w.written_ns = now_ns();
        self.track_writer(w, true);
        w.dirty = true;
        w.truncated = false;
        w.failed = false;
        // A single write is at most max_write (1 MiB), so it fits.
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// close(): commits the buffer if it changed; the commit's error is
    /// what close() returns.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let h = self.handles.get(fh)?;
        let mut h = lock(&h);
        match &mut *h {
            Handle::Writer(w) => {
                let r = self.commit(w).and_then(|()| self.settle(w));
                let pending = w.dirty || w.truncated;
                self.track_writer(w, pending);
                r
            }
            _ => Ok(()),
        }
    }

    /// Waits for the handle's own commits that no close has waited for yet
    /// (`Writer::unsynced`).
    fn settle(&self, w: &mut Writer) -> Result<()> {
        if let Some(ts) = w.unsynced {
            self.db.wait_durable(ts)?;
            w.unsynced = None;
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64) -> Result<()> {
        let h = self.handles.get(fh)?;
        let mut h = lock(&h);
        match &mut *h {
            Handle::Writer(w) => {
                w.dirty |= w.truncated;
                let r = self.commit(w).and_then(|()| self.settle(w));
                let pending = w.dirty || w.truncated;
                self.track_writer(w, pending);
                r
            }
            _ => Ok(()),
        }
    }

    /// Drops the handle. An O_TRUNC never written, or a buffer changed after
    /// the last flush (writes through a shared mapping), is committed here;
    /// the error can reach nobody, so it is only logged.
    pub fn release(&self, fh: u64) {
        let Some(h) = self.handles.remove(fh) else {
            return;
        };
        let mut h = lock(&h);
        // A refused write already failed at the caller; nothing to commit.
        if let Handle::Writer(w) = &mut *h
            && w.refused.is_none()
        {
            w.dirty = (w.dirty && !w.failed) || w.truncated;
            if let Err(e) = self.commit(w) {
                warn!("release: {e}; no caller is left to report it to");
            }
        }
        match &mut *h {
            Handle::Writer(w) => self.track_writer(w, false),
            Handle::Cached { ino, .. } => self.uses.close_cached(*ino),
            _ => {}
        }
    }

    fn commit(&self, w: &mut Writer) -> Result<()> {
        if let Some(e) = &w.refused {
            return Err(Error::new(
                e.errno,
                format!(
                    "commit {}: not committed because a write failed ({}); the previous value stays",
                    self.name_for_log(w.ino),
                    e.msg
                ),
            ));
        }
        if !w.dirty {
            return Ok(());
        }
        let result = self.try_commit(w);
        w.failed = result.is_err();
        w.dirty = result.is_err();
        if result.is_ok() {
            w.truncated = false;
            w.created = None;
            // The engine holds the value now; the promise is spent.
            w.room.release();
        }
        result
    }

    /// What a write or truncation to a buffer of `len` bytes passes before
    /// it edits the buffer: a root key's log must be writable now, and the
    /// value must fit in value memory (promised until the commit).
    fn admit(&self, w: &mut Writer, len: usize) -> Result<()> {
        if w.root {
            self.db.log_health()?;
        }
        self.db.reserve(&mut w.room, len)
    }

    /// Marks the buffer never to be committed, because the write `e`
    /// refused left the application's stream incomplete; removes the key
    /// again if this handle's `create` made it. Returns the error as the
    /// caller reports it.
    fn refuse(&self, w: &mut Writer, e: Error, op: &str) -> Error {
        let e = Error::new(
            e.errno,
            format!(
                "{op} {}: {}; the previous value stays",
                self.name_for_log(w.ino),
                e.msg
            ),
        );
        w.refused.get_or_insert_with(|| e.clone());
        w.room.release();
        if let Some(ts) = w.created.take()
            && let Err(u) = self.undo_create(w.ino, ts)
        {
            warn!("{op}: cannot remove the key its create made: {u}");
        }
        e
    }

    /// Removes the key inode `ino` names if it still holds the empty value
    /// its create committed at `ts` (nobody has written it since); at the
    /// root the check and the removal are one transaction.
    fn undo_create(&self, ino: u64, ts: u64) -> Result<()> {
        let Resolved::Live(Place::Key { scope, name }) = self.inodes.resolve(ino) else {
            return Ok(());
        };
        let space = self.space("undo create", scope)?;
        match &space {
            Space::Root => {
                let _quiet = self.root_commit(&[&name]);
                let txn = self.db.begin(false)?;
                match txn.stat(&name) {
                    Ok(st) if st.ts == ts && st.meta.len == 0 => txn.delete(&name)?,
                    // Written or removed by someone else meanwhile: theirs.
                    Ok(_) => return Ok(()),
                    Err(e) if e.errno == libc::ENOENT => return Ok(()),
                    Err(e) => return Err(e),
                }
                txn.commit()?;
                self.root_changed(&name);
                self.root_dir_changed();
            }
            Space::Open(_) => space.delete(&self.db, &name)?,
        }
        debug!(
            "removed {} again: its first write was refused",
            space.show(&name)
        );
        self.inodes.unlinked(&Place::key(scope, &name));
        Ok(())
    }

    /// Commits the buffer (in a transaction: stages it).
    fn try_commit(&self, w: &mut Writer) -> Result<()> {
        let (scope, key) = match self.inodes.resolve(w.ino) {
            Resolved::Live(Place::Key { scope, name }) => (scope, name),
            Resolved::Unlinked(_) => {
                // Like writes to an unlinked file: they go nowhere.
                debug!(
                    "commit inode {}: its key was removed while open; write dropped",
                    w.ino
                );
                return Ok(());
            }
            _ => {
                return Err(Error::new(
                    libc::ESTALE,
                    format!("commit inode {}: the inode was forgotten while open", w.ino),
                ));
            }
        };
        let space = self.space("commit", scope)?;
        let op = if scope == ROOT_SCOPE {
            "commit"
        } else {
            "stage"
        };
        // Mode and owners come from the key as it is now, so a chmod made
        // while this file was open is not undone by the commit.
        let base = match space.stat(&self.db, &key) {
            Ok(st) => st.meta,
            Err(e) if e.errno == libc::ENOENT => w.meta,
            Err(e) => return Err(space.restate(e, op, &key)),
        };
        // The value changed at the last write. An mtime set since then
        // (futimens through the open file: `cp -p`) is later, so it wins.
        let set_since = base.mtime_ns != w.meta.mtime_ns && base.ctime_ns > w.written_ns;
        let mut mode = base.mode;
        // A write by anyone but root clears set-user-ID, and set-group-ID
        // where group-execute is set (as Linux does without CAP_FSETID).
        if !w.by.is_root() {
            mode &= !libc::S_ISUID;
            if mode & libc::S_IXGRP != 0 {
                mode &= !libc::S_ISGID;
            }
        }
        let meta = NewMeta {
            mode,
            uid: base.uid,
            gid: base.gid,
            mtime_ns: if set_since {
                base.mtime_ns
            } else {
                w.written_ns
            },
            ctime_ns: w.written_ns.max(base.ctime_ns),
        };
        let st = space
            .set(&self.db, &key, &w.buf, meta, SetFlags::default())
            .map_err(|e| space.restate(e, op, &key))?;
        w.meta = st.meta;
        if scope == ROOT_SCOPE {
            self.root_changed(&key);
        }
        Ok(())
    }

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
                        let ctl = Place::Ctl { scope };
                        let ctl_ino = self
                            .inodes
                            .listing_ino(&ctl)
                            .unwrap_or_else(|| listing_only_ino(&ctl));
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

    fn list_keys(&self, space: &Space) -> Result<Names> {
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        let limit = self.max_keys;
        space
            .scan(&self.db, |name| {
                // The walk may see a key twice when keys move during it.
                if names.len() < limit && !is_reserved(name) && seen.insert(name.to_vec()) {
                    names.push(name.to_vec());
                }
            })
            .map_err(|e| space.restate_as(e, || format!("readdir {}", space.dir_name())))?;
        Ok(Names::Keys {
            scope: space.scope(),
            names,
        })
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
                        Names::Keys { scope, names } => {
                            let name = &names[i - fixed.len()];
                            (Place::key(*scope, name), Kind::File, &name[..])
                        }
                        Names::Dirs(dirs) => {
                            let (scope, name) = &dirs[i - fixed.len()];
                            (Place::Dir { scope: *scope }, Kind::Dir, &name[..])
                        }
                    };
                    // When the table is full of inodes the kernel holds, a
                    // listing still needs a number; this one is never an
                    // inode the kernel can ask about.
                    let e_ino = self
                        .inodes
                        .listing_ino(&place)
                        .unwrap_or_else(|| listing_only_ino(&place));
                    add(e_ino, next, kind, name)
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

impl Writer {
    fn new(ino: u64, buf: Vec<u8>, meta: Meta, flags: i32, truncated: bool, by: Caller) -> Writer {
        Writer {
            ino,
            buf,
            meta,
            readable: flags & libc::O_ACCMODE == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            dirty: false,
            truncated,
            root: false,
            registered: false,
            failed: false,
            refused: None,
            room: Reservation::default(),
            created: None,
            unsynced: None,
            written_ns: now_ns(),
            by,
            process: OnceLock::new(),
        }
    }
}

/// Above every counted inode number, so the kernel never confuses the two.
fn listing_only_ino(place: &Place) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(place) | 1 << 63
}
