//! A `Session` holds one request slot of the engine and runs operations
//! through it, autocommit or inside a transaction (`txn.rs`): it fills the
//! slot's request, fires the trigger, and turns the response into a Result.

use std::sync::atomic::Ordering;
use std::time::Duration;

use log::debug;

use crate::error::{Error, Result};
use crate::kernel::abi::{self, Detail, HKey, Meta, Op, Slot};
use crate::kernel::engine::Records;
use crate::shared::Inner;
use crate::types::{NewMeta, SetFlags, Stat, check_key, key_hash};

/// Times an op is re-run after a transient conflict with another autocommit
/// op (the engine never waits; a key is locked only for microseconds).
pub const TRANSIENT_RETRIES: u32 = 10_000;

impl Inner {
    /// Takes a free slot, waiting while all are in use.
    pub(crate) fn session(&self) -> Session<'_> {
        let mut free = self.free_slots.lock().unwrap_or_else(|p| p.into_inner());
        if free.is_empty() {
            self.slot_waits.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            if let Some(idx) = free.pop() {
                return Session {
                    db: self,
                    idx,
                    slot: self.engine.slot_ptr(idx),
                    txn: 0,
                    txn_id: 0,
                    last_detail: Detail::None,
                };
            }
            free = self
                .slot_freed
                .wait(free)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One slot, used by one thread at a time; returned to the pool on drop.
pub struct Session<'db> {
    pub(crate) db: &'db Inner,
    pub(crate) idx: u32,
    pub(crate) slot: *mut Slot,
    /// Transaction table index + 1 the ops run in; 0 for autocommit.
    pub(crate) txn: u32,
    pub(crate) txn_id: u64,
    /// Why the last op failed, as the engine said.
    pub(crate) last_detail: Detail,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let mut free = self.db.free_slots.lock().unwrap_or_else(|p| p.into_inner());
        free.push(self.idx);
        self.db.slot_freed.notify_one();
    }
}

fn write_key(dst: &mut [u8; abi::KEY_SIZE], name: &[u8]) {
    dst[..name.len()].copy_from_slice(name);
    dst[name.len()..].fill(0);
}

impl Session<'_> {
    fn slot(&mut self) -> &mut Slot {
        // SAFETY: this session owns slot `idx` exclusively until drop, and the
        // kernel touches it only during `fire`, which we call synchronously.
        unsafe { &mut *self.slot }
    }

    /// Op, flags and the transaction the request runs in.
    fn set_header(&mut self, op: Op, flags: u32) {
        let (txn, txn_id) = (self.txn, self.txn_id);
        let req = &mut self.slot().req;
        req.op = op as u32;
        req.flags = flags;
        req.txn = txn;
        req.txn_id = txn_id;
    }

    fn prepare(&mut self, op: Op, flags: u32, key: &[u8]) -> Result<()> {
        let key = check_key(key)?;
        let seed = self.db.opts.hash_seed;
        self.set_header(op, flags);
        let req = &mut self.slot().req;
        req.hkey = key_hash(key, seed);
        req.key_len = key.len() as u32;
        write_key(&mut req.key, key);
        Ok(())
    }

    /// Fires the trigger and turns the response into a Result, re-running
    /// the op on transient conflicts with other autocommit ops.
    pub(crate) fn run(&mut self, what: &str) -> Result<abi::Resp> {
        let stall = self
            .db
            .log
            .get()
            .map_or(crate::durability::writer::STALL_TIMEOUT, |l| {
                l.stall_timeout()
            });
        let log_deadline = std::time::Instant::now() + stall;
        for _ in 0..TRANSIENT_RETRIES {
            crate::kernel::trigger::fire(self.db.engine.instance, self.idx);
            // SAFETY: see slot(); volatile because the kernel wrote it.
            let resp = unsafe { std::ptr::read_volatile(&(*self.slot).resp) };
            if resp.err == 0 {
                return Ok(resp);
            }
            let detail = Detail::from_raw(resp.detail);
            self.last_detail = detail;
            if detail == Detail::WalFull {
                // The log writer drains the ringbuf at disk speed: wait for
                // it, but not forever (a disk that cannot be written).
                if std::time::Instant::now() >= log_deadline {
                    return Err(Error::new(
                        libc::EAGAIN,
                        format!("{what}: the log buffer stayed full: the log cannot be written"),
                    ));
                }
                if let Some(log) = self.db.log.get() {
                    log.help();
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if detail.transient() {
                std::thread::yield_now();
                continue;
            }
            let pool = match detail {
                Detail::NoSmall => Some(&self.db.engine.small),
                Detail::NoPages => Some(&self.db.engine.pages),
                _ => None,
            };
            if let Some(pool) = pool
                && pool.grow()?
            {
                continue;
            }
            return Err(self.error(what, -resp.err, detail));
        }
        Err(Error::new(
            libc::EBUSY,
            format!("{what}: key stayed busy through {TRANSIENT_RETRIES} retries"),
        ))
    }

    /// Runs a write. Autocommit: inside the checkpoint gate, and returns
    /// once the commit is durable. In a transaction it only stages.
    pub(crate) fn run_write(&mut self, what: &str) -> Result<abi::Resp> {
        let engine = &self.db.engine;
        if engine.small.low() || engine.pages.low() {
            self.db.keeper.wake();
        }
        if self.txn != 0 {
            return self.run(what);
        }
        let resp = {
            let _gate = self.db.gate.read().unwrap_or_else(|p| p.into_inner());
            self.run(what)?
        };
        self.db.durable(resp.ts)?;
        Ok(resp)
    }

    pub(crate) fn error(&mut self, what: &str, errno: i32, detail: Detail) -> Error {
        let key = {
            let k = &self.slot().req.key;
            let n = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            String::from_utf8_lossy(&k[..n]).into_owned()
        };
        let why = match detail {
            Detail::LockedTxn => "key is locked by a transaction",
            Detail::TopLocked => {
                "a transaction holds the top-level keys (its listing, or its own creates and removals)"
            }
            Detail::NoKeys => "key table is full (max_keys)",
            Detail::NoSmall => {
                "value memory is full (runs of values up to a page: max_keys and value_mem)"
            }
            Detail::NoPages => "value memory is full (value_mem)",
            Detail::VersionsFull => "all versions of the key are still needed by readers",
            Detail::TooBig => "value exceeds max_value",
            Detail::BadRequest => "malformed request",
            Detail::Collision => "another key has the same 128-bit hash (rename it)",
            Detail::TxnTooBig => "transaction locks too many keys",
            Detail::TxnInactive => "transaction is no longer active",
            Detail::ReadOnly => "snapshots are read-only",
            Detail::WalFull => "the log buffer is full; the log writer is behind",
            Detail::WalTooBig => "the commit is larger than the log buffer (wal_buffer)",
            Detail::Race | Detail::LockedAutocommit | Detail::CommitBusy => "conflict",
            Detail::None => "",
        };
        let err = Error::new(errno, format!("{what} {key:?}: {why}"));
        debug!("engine {}: {err}", self.db.engine.instance);
        err
    }

    /// Sets up a request that names no key (transaction control, scans).
    pub(crate) fn prepare_keyless(&mut self, op: Op, flags: u32) {
        self.set_header(op, flags);
        self.slot().req.key.fill(0);
    }

    /// Wakes the log writer out of its wait on the ringbuf.
    pub(crate) fn nudge_log(&mut self) {
        self.prepare_keyless(Op::Nop, abi::F_NUDGE);
        crate::kernel::trigger::fire(self.db.engine.instance, self.idx);
    }

    /// The bare trigger: dispatcher runs and returns at once.
    pub fn nop(&mut self) {
        self.slot().req.op = Op::Nop as u32;
        crate::kernel::trigger::fire(self.db.engine.instance, self.idx);
    }

    /// Reads the value of `key` into `out` (replacing its contents).
    pub fn get(&mut self, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        self.get_flags(key, out, 0)
    }

    fn get_flags(&mut self, key: &[u8], out: &mut Vec<u8>, flags: u32) -> Result<Stat> {
        self.prepare(Op::Get, flags, key)?;
        let resp = self.run("get")?;
        let len = resp.meta.len as usize;
        if len > abi::VALUE_LIMIT {
            return Err(Error::new(
                libc::EIO,
                format!("engine returned a value of {len} bytes"),
            ));
        }
        out.clear();
        out.extend_from_slice(&self.slot().data[..len]);
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    /// Metadata of `key` without its value.
    pub fn stat(&mut self, key: &[u8]) -> Result<Stat> {
        self.stat_flags(key, 0)
    }

    /// `get` for a writer about to open `key`: fails with EBUSY at once if
    /// a transaction holds the key, where the write would conflict.
    pub fn get_for_write(&mut self, key: &[u8], out: &mut Vec<u8>) -> Result<Stat> {
        self.get_flags(key, out, abi::F_CHECK_LOCK)
    }

    /// `stat` for a writer about to open `key`, as `get_for_write`.
    pub fn stat_for_write(&mut self, key: &[u8]) -> Result<Stat> {
        self.stat_flags(key, abi::F_CHECK_LOCK)
    }

    fn stat_flags(&mut self, key: &[u8], flags: u32) -> Result<Stat> {
        self.prepare(Op::Get, abi::F_META_ONLY | flags, key)?;
        let resp = self.run("stat")?;
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    /// Replaces value and metadata of `key`, creating it unless
    /// `must_exist`; with `no_replace` an existing key fails with EEXIST.
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        meta: NewMeta,
        flags: SetFlags,
    ) -> Result<Stat> {
        if value.len() > self.db.opts.max_value_bytes as usize {
            let e = Error::new(
                libc::EFBIG,
                format!(
                    "set {:?}: value of {} bytes exceeds max_value {}",
                    String::from_utf8_lossy(key),
                    value.len(),
                    self.db.opts.max_value_bytes
                ),
            );
            debug!("{e}");
            return Err(e);
        }
        let mut f = 0;
        if flags.no_replace {
            f |= abi::F_NOREPLACE;
        }
        if flags.must_exist {
            f |= abi::F_MUST_EXIST;
        }
        self.prepare(Op::Set, f, key)?;
        let slot = self.slot();
        slot.data[..value.len()].copy_from_slice(value);
        slot.req.meta = Meta {
            mtime_ns: meta.mtime_ns,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            len: value.len() as u32,
            ctime_ns: meta.ctime_ns,
        };
        let resp = self.run_write("set")?;
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    /// Replaces only the metadata of an existing key (chmod, chown, touch).
    pub fn set_meta(&mut self, key: &[u8], meta: NewMeta) -> Result<Stat> {
        self.prepare(Op::Set, abi::F_META_ONLY | abi::F_MUST_EXIST, key)?;
        self.slot().req.meta = Meta {
            mtime_ns: meta.mtime_ns,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            len: 0,
            ctime_ns: meta.ctime_ns,
        };
        let resp = self.run_write("set_meta")?;
        Ok(Stat {
            meta: resp.meta,
            ts: resp.ts,
        })
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<u64> {
        self.prepare(Op::Delete, 0, key)?;
        Ok(self.run_write("delete")?.ts)
    }

    /// Moves `from` to `to` in one commit, replacing `to` unless `no_replace`.
    pub fn rename(&mut self, from: &[u8], to: &[u8], no_replace: bool) -> Result<u64> {
        let to = check_key(to)?;
        self.prepare(
            Op::Rename,
            if no_replace { abi::F_NOREPLACE } else { 0 },
            from,
        )?;
        let seed = self.db.opts.hash_seed;
        let req = &mut self.slot().req;
        req.hkey2 = key_hash(to, seed);
        req.key2_len = to.len() as u32;
        write_key(&mut req.key2, to);
        Ok(self.run_write("rename")?.ts)
    }

    /// Calls `f` with the name of every key visible to this session (its
    /// snapshot, or the newest commit). A key that exists unchanged for the
    /// whole walk is passed exactly once, whatever commits run beside it
    /// (POSIX readdir's rule); one created or removed meanwhile may or may
    /// not be. The walk goes by hash bucket (`Engine::records_batch`), the
    /// top-level keys' records map first, then the others' (a key never
    /// changes map: its name picks it), and the engine says which keys of
    /// each batch are visible. In a
    /// read-write transaction the walk first locks the set of top-level
    /// keys (names with no '/'): until the transaction ends nobody else
    /// inserts or removes one, so its scans see no phantoms.
    pub fn scan(&mut self, mut f: impl FnMut(&[u8])) -> Result<()> {
        let mut cursor = ScanCursor::new();
        while self.scan_batch(&mut cursor, &mut f)? {}
        Ok(())
    }

    /// `scan` of the top-level keys only (names with no '/'): a walk of
    /// their own records map, whatever the database holds below them.
    pub fn scan_top(&mut self, mut f: impl FnMut(&[u8])) -> Result<()> {
        let mut cursor = ScanCursor::top();
        while self.scan_batch(&mut cursor, &mut f)? {}
        Ok(())
    }

    /// One batch of `scan`: calls `f` with the visible names among the next
    /// `abi::SCAN_BATCH` records at most, and says whether the walk goes on
    /// (false: every bucket was walked). Between batches the caller may run
    /// other ops; the rule of `scan` holds over the whole walk.
    pub(crate) fn scan_batch(
        &mut self,
        cursor: &mut ScanCursor,
        mut f: impl FnMut(&[u8]),
    ) -> Result<bool> {
        if cursor.done {
            return Ok(false);
        }
        // Each call walks at least one bucket; each of the two maps has
        // at most twice max_keys buckets (a power of two).
        let max_calls = 4 * self.db.engine.layout.max_keys as usize + 4;
        if cursor.calls >= max_calls {
            return Err(Error::new(
                libc::EIO,
                "scan did not reach the end of the records map",
            ));
        }
        if cursor.calls == 0 && self.txn != 0 {
            // Before the first batch is read: no insert or removal of a
            // top-level key by others lands from here to the end of a
            // read-write transaction (a snapshot's scan needs no lock, and
            // the engine takes none for it).
            self.prepare_keyless(Op::Scan, abi::F_LOCK_TOP);
            self.slot().req.count = 0;
            self.run("lock the top-level keys for a scan")?;
        }
        cursor.calls += 1;
        let key_size = std::mem::size_of::<HKey>();
        let ScanCursor { keys, values, .. } = cursor;
        let batch = self
            .db
            .engine
            .records_batch(cursor.map, cursor.next, keys, values)?;
        if batch.count > 0 {
            let n = batch.count;
            self.prepare_keyless(Op::Scan, 0);
            let slot = self.slot();
            slot.req.count = n as u32;
            slot.data[..n * key_size].copy_from_slice(&keys[..n * key_size]);
            self.run("scan")?;
            for i in 0..n {
                if self.slot().data[abi::SCAN_FLAGS + i] == 0 {
                    continue;
                }
                let rec = &values[i * abi::RECORD_SIZE..(i + 1) * abi::RECORD_SIZE];
                let at = abi::RECORD_KEY_LEN_OFF;
                let len = u32::from_ne_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
                let len = (len as usize).min(abi::KEY_MAX);
                if len <= abi::NAME_INLINE {
                    f(&rec[abi::RECORD_NAME_OFF..abi::RECORD_NAME_OFF + len]);
                } else if let Some(name) = self
                    .db
                    .engine
                    .long_name(&keys[i * key_size..(i + 1) * key_size])?
                {
                    // Gone meanwhile: the key was removed during the walk.
                    f(&name[..len]);
                }
            }
        }
        if batch.done && cursor.map == Records::Top && !cursor.top_only {
            // The top level is walked: the keys below it next.
            cursor.map = Records::Below;
            cursor.next = None;
            return Ok(true);
        }
        cursor.done = batch.done;
        cursor.next = Some(batch.next);
        Ok(!batch.done)
    }
}

/// Where a scan is: the buffers one batch of records is read into
/// (`abi::SCAN_BATCH` keys and records, about 1.1 MiB), the records map
/// walked (the top-level keys' first, then, unless `top_only`, the
/// others') and the bucket the next batch starts at.
pub(crate) struct ScanCursor {
    keys: Vec<u8>,
    values: Vec<u8>,
    map: Records,
    top_only: bool,
    next: Option<u32>,
    calls: usize,
    done: bool,
}

impl ScanCursor {
    /// A walk of every key.
    pub(crate) fn new() -> ScanCursor {
        ScanCursor {
            keys: vec![0u8; abi::SCAN_BATCH * std::mem::size_of::<HKey>()],
            values: vec![0u8; abi::SCAN_BATCH * abi::RECORD_SIZE],
            map: Records::Top,
            top_only: false,
            next: None,
            calls: 0,
            done: false,
        }
    }

    /// A walk of the top-level keys only.
    pub(crate) fn top() -> ScanCursor {
        ScanCursor {
            top_only: true,
            ..ScanCursor::new()
        }
    }

    /// Every bucket was walked.
    pub(crate) fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use crate::{Db, NewMeta, Options, SetFlags};

    use super::*;

    /// The engine keeps a record in the map its map key's top bit names
    /// (the top-level keys' or the others'), so a request whose bit
    /// misnames its name is refused, whichever way: a record in the wrong
    /// map would be missed by the walks of the root and by its lock.
    #[test]
    fn a_map_key_whose_top_bit_misnames_the_name_is_refused() {
        let db = Db::open(&Options {
            max_keys: 64,
            value_mem_bytes: 1 << 20,
            slots: 2,
            ..Options::default()
        })
        .unwrap_or_else(|e| panic!("open engine: {e}"));
        let mut s = db.session();
        let meta = NewMeta {
            mode: 0o100644,
            ..NewMeta::default()
        };
        for name in [&b"top"[..], b"\x01dir/below"] {
            s.prepare(Op::Set, 0, name).unwrap();
            s.slot().req.hkey.hi ^= abi::HKEY_TOP;
            s.slot().req.meta = Meta {
                mode: 0o100644,
                ..Meta::default()
            };
            let err = s
                .run_write("set")
                .expect_err("a misnamed map key was taken");
            assert_eq!(err.errno, libc::EINVAL, "{err}");
            let mut out = Vec::new();
            let err = s
                .get(name, &mut out)
                .expect_err("the refused set left a key");
            assert_eq!(err.errno, libc::ENOENT, "{err}");
            // With the bit its name gives it, the same set goes through.
            s.set(name, b"v", meta, SetFlags::default())
                .unwrap_or_else(|e| panic!("set {name:?}: {e}"));
        }
        let mut names = Vec::new();
        s.scan_top(|n| names.push(n.to_vec())).unwrap();
        assert_eq!(
            names,
            [b"top".to_vec()],
            "scan_top lists the top-level keys only"
        );
        names.clear();
        s.scan(|n| names.push(n.to_vec())).unwrap();
        names.sort();
        assert_eq!(names, [b"\x01dir/below".to_vec(), b"top".to_vec()]);
    }
}
