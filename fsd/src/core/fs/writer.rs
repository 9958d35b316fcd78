//! Writers: a key opened for writing gets a private buffer that writes
//! edit; flush, fsync or release commit it with one engine `set` (at the
//! root, through the log; in a transaction, staged). A write the engine
//! could not take marks the buffer refused, and undoes the handle's create.

use std::sync::OnceLock;

use bpfdb::{Error, Meta, NewMeta, Reservation, Result, SetFlags};
use log::{debug, warn};

use super::attrs::file_attr;
use super::files::Handle;
use super::space::Space;
use super::tree;
use super::{Attr, Fs, MUST_EXIST, now_ns};
use crate::core::caller::Caller;
use crate::core::handles::lock;
use crate::core::inodes::{Place, ROOT_SCOPE, Resolved};

/// The handle of a key opened for writing: its buffer and the state of
/// its commit.
pub(super) struct Writer {
    pub(super) ino: u64,
    pub(super) buf: Vec<u8>,
    /// Metadata of the committed value the buffer started from.
    meta: Meta,
    pub(super) readable: bool,
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
    pub(super) root: bool,
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
    pub(super) created: Option<u64>,
    /// A commit of this handle's own not yet known durable: its create's
    /// empty value, whose wait was left to the close. Flush and fsync wait
    /// for it, so `touch new` is durable when close returns, and `echo v >
    /// new` costs one durable commit, not two (the value's commit comes
    /// later in the log, so its fsync covers the create's).
    pub(super) unsynced: Option<u64>,
    /// Time of the last write or truncation through it (its open until
    /// then): the commit's mtime.
    written_ns: u64,
    /// Who opened it; fstat from the same process shows this buffer.
    by: Caller,
    /// `by`'s process, looked up in /proc the first time it is asked for.
    process: OnceLock<u32>,
}

impl Writer {
    pub(super) fn new(
        ino: u64,
        buf: Vec<u8>,
        meta: Meta,
        flags: i32,
        truncated: bool,
        by: Caller,
    ) -> Writer {
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

    /// Attributes as this buffer has the file.
    /// Its next write, by anyone but root, takes set-ID bits off the mode.
    fn drops_set_id(&self) -> bool {
        !self.by.is_root() && without_set_id(self.meta.mode) != self.meta.mode
    }

    pub(super) fn attr(&self) -> Attr {
        file_attr(self.ino, &self.meta, self.buf.len())
    }

    /// Whether `who`'s process opened it. The thread that opened it is that
    /// process without asking /proc (the common case: a single-threaded
    /// writer stats its own file); another thread costs a look-up of each
    /// side's process, once per request (`process`) and once per handle.
    pub(super) fn opened_by(&self, who: Caller, process: &OnceLock<u32>) -> bool {
        self.by.pid == who.pid
            || *self.process.get_or_init(|| self.by.process())
                == *process.get_or_init(|| who.process())
    }
}

impl Fs {
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
        self.edited(w);
        Ok(true)
    }

    /// A write by anyone but root takes the set-ID bits off at once, as
    /// Linux does at the write itself, so that the writer's fstat and other
    /// processes' stat show them gone before the buffer commits (its commit
    /// clears them too). Inside a transaction only the writer's view
    /// changes: the staged commit carries the mode.
    fn drop_set_id(&self, w: &mut Writer) -> Result<()> {
        w.meta.mode = without_set_id(w.meta.mode);
        let Resolved::Live(Place::Key { scope, name }) = self.inodes.resolve(w.ino) else {
            return Ok(()); // removed while open: the writes go nowhere
        };
        let space = self.space("write", scope)?;
        let Space::Root = space else { return Ok(()) };
        let cur = match space.stat(&self.db, &name) {
            Ok(st) => st.meta,
            Err(e) if e.errno == libc::ENOENT => return Ok(()),
            Err(e) => return Err(space.restate(e, "write", &name)),
        };
        if without_set_id(cur.mode) == cur.mode {
            return Ok(());
        }
        let meta = NewMeta {
            mode: without_set_id(cur.mode),
            uid: cur.uid,
            gid: cur.gid,
            mtime_ns: cur.mtime_ns,
            ctime_ns: now_ns().max(cur.ctime_ns),
        };
        let _quiet = self.root_commit(&[&name]);
        let st = space
            .set_meta(&self.db, &name, meta)
            .map_err(|e| space.restate(e, "write", &name))?;
        self.root_changed(&name);
        w.meta.mode = st.meta.mode;
        w.meta.ctime_ns = st.meta.ctime_ns;
        Ok(())
    }

    /// A chmod, chown or set-ID removal committed while `ino` is open for
    /// writing: its writers show the new mode and owners from now on (their
    /// fstat), as the commit of their buffer will keep them. This is also
    /// how the kernel's removal of set-ID bits at a write by another user,
    /// which comes as a setattr, reaches the writer's own view.
    pub(super) fn writers_take_meta(&self, ino: u64, meta: &Meta) {
        self.handles.for_each(|h| {
            if let Handle::Writer(w) = h
                && w.ino == ino
            {
                w.meta.mode = meta.mode;
                w.meta.uid = meta.uid;
                w.meta.gid = meta.gid;
                w.meta.ctime_ns = w.meta.ctime_ns.max(meta.ctime_ns);
            }
        });
    }

    /// A write or truncation changed the buffer: it is to be committed
    /// (the application's latest change, so an earlier failed commit no
    /// longer stands), and counted as pending.
    fn edited(&self, w: &mut Writer) {
        w.written_ns = now_ns();
        self.track_writer(w, true);
        w.dirty = true;
        w.truncated = false;
        w.failed = false;
    }

    /// Counts (`pending`) or uncounts a writer in `Fs::uses`; counting
    /// waits for the key's cached readers to close.
    pub(super) fn track_writer(&self, w: &mut Writer, pending: bool) {
        if w.registered != pending {
            w.registered = pending;
            self.uses.writer(w.ino, pending);
        }
    }

    /// Whether a write to `fh` on inode `ino` could wait for cached readers
    /// (`Fs::may_wait`): a command to a transaction's `.ctl` commits the
    /// keys it changed. Every other write is told by one inode lookup.
    ///
    /// So may a write through a root writer that a FLUSH left uncounted
    /// (dash's `>>` dups the descriptor and closes the original before it
    /// writes): counting it again waits for the key's cached readers. So
    /// may a non-root writer's first write to a set-ID key, which commits
    /// the mode without those bits.
    pub fn write_may_wait(&self, ino: u64, fh: u64) -> bool {
        let ctl = self.inodes.is_txn_ctl(ino);
        if !ctl && !self.uses.has_cached(ino) {
            return false;
        }
        let Ok(h) = self.handles.get(fh) else {
            return false;
        };
        let scope = match &*lock(&h) {
            // Counted again, or about to commit the removal of set-ID bits
            // (`drop_set_id`): either waits for the key's cached readers.
            Handle::Writer(w) => {
                return w.root && (!w.registered || w.drops_set_id());
            }
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
            Some(end) if end <= self.max_value_bytes => end,
            _ => {
                let e = Error::new(
                    libc::EFBIG,
                    format!(
                        "value would be {} bytes, over max_value {}",
                        start as u128 + data.len() as u128,
                        self.max_value_bytes
                    ),
                );
                return Err(self.refuse(w, e, "write"));
            }
        };
        if let Err(e) = self.admit(w, end.max(w.buf.len())) {
            return Err(self.refuse(w, e, "write"));
        }
        // Before the buffer changes: a write that fails leaves it as it was.
        if w.drops_set_id() {
            self.drop_set_id(w)?;
        }
        if w.buf.len() < end {
            w.buf.resize(end, 0);
        }
        w.buf[start..end].copy_from_slice(data);
        self.edited(w);
        // A single write is at most max_write (1 MiB), so it fits.
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// close(): commits the buffer if it changed; the commit's error is
    /// what close() returns.
    pub fn flush(&self, fh: u64) -> Result<()> {
        self.commit_handle(fh, false)
    }

    /// fsync(): commits the buffer, an O_TRUNC not yet written included.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        self.commit_handle(fh, true)
    }

    /// Commits `fh`'s buffer if it is a writer's; `with_truncation`: also
    /// a truncation waiting for the first write (see `Writer::truncated`).
    /// The writer stays counted in `Fs::uses` while changes are pending.
    fn commit_handle(&self, fh: u64, with_truncation: bool) -> Result<()> {
        let h = self.handles.get(fh)?;
        let mut h = lock(&h);
        match &mut *h {
            Handle::Writer(w) => {
                if with_truncation {
                    w.dirty |= w.truncated;
                }
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
        // In a subdirectory the key was made with its entry, in a
        // transaction of its own: it stays, empty.
        if tree::split(&name).is_some() {
            return Ok(());
        }
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
        let mode = if w.by.is_root() {
            base.mode
        } else {
            without_set_id(base.mode)
        };
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
        // A key in a subdirectory exists only with its entry: one removed
        // meanwhile (with its directory, perhaps) is not made again.
        let in_subdir = tree::split(&key).is_some();
        let flags = if in_subdir {
            MUST_EXIST
        } else {
            SetFlags::default()
        };
        let st = match space.set(&self.db, &key, &w.buf, meta, flags) {
            Err(e) if in_subdir && e.errno == libc::ENOENT => {
                debug!(
                    "commit {}: removed while open; write dropped",
                    space.show(&key)
                );
                return Ok(());
            }
            r => r.map_err(|e| space.restate(e, op, &key))?,
        };
        w.meta = st.meta;
        if scope == ROOT_SCOPE {
            self.root_changed(&key);
        }
        Ok(())
    }
}

/// `mode` after a write by anyone but root: without set-user-ID, and
/// without set-group-ID where group-execute is set (as Linux does without
/// CAP_FSETID).
pub(super) fn without_set_id(mode: u32) -> u32 {
    let mut mode = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    mode
}
