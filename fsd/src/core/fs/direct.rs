//! Whole-value operations on root keys for servers beside the mount (the
//! memcached protocol, `core::memcache`): reads of keys from one moment,
//! and a write of a whole value in one commit. They keep the mount exact
//! as the FUSE paths do: a commit first waits for the key's cached readers
//! (`root_commit`), and drops the kernel's attributes of the key, and of
//! the root when a key appears, before it returns, so any reply sent after
//! it is seen by every later `cat`. A removal is `Fs::unlink` at the root.

use bpfdb::{Error, Meta, NewMeta, Result, Stat};

use super::dirs::is_regular;
use super::writer::without_set_id;
use super::{Fs, MUST_EXIST, NO_REPLACE, now_ns, restate, show, valid_key};

/// Permission bits of a key a `store_key` creates.
pub const NEW_KEY_MODE: u32 = 0o644;

/// Times `store_key` looks at the key again after another writer created
/// or removed it between its look and its commit.
const STORE_ATTEMPTS: u32 = 8;

impl Fs {
    /// Reads root `keys`: one key with one autocommit read, several from
    /// one snapshot, so a transaction that committed some of them is seen
    /// whole or not at all. `found` gets each key present with its value
    /// and stat, and returns false to stop; missing keys are skipped.
    pub fn read_keys(
        &self,
        keys: &[&[u8]],
        mut found: impl FnMut(&[u8], &[u8], &Stat) -> bool,
    ) -> Result<()> {
        let snapshot = match keys.len() {
            0 | 1 => None,
            n => Some(
                self.db
                    .begin(true)
                    .map_err(|e| restate(e, || format!("get of {n} keys: snapshot")))?,
            ),
        };
        let mut value = Vec::new();
        for &name in keys {
            let key = valid_key("get", name)?;
            let got = match &snapshot {
                Some(txn) => txn.get(key, &mut value),
                None => self.db.session().get(key, &mut value),
            };
            match got {
                // Only a regular file holds a value.
                Ok(st) if !is_regular(&st.meta) => {}
                Ok(st) if !found(key, &value, &st) => break,
                Ok(_) => {}
                Err(e) if e.errno == libc::ENOENT => {}
                Err(e) => return Err(restate(e, || format!("get {}", show(key)))),
            }
        }
        Ok(())
    }

    /// Commits `value` as root key `name` (memcached's set). A new key gets
    /// mode `NEW_KEY_MODE` and the daemon's owner; an existing key keeps
    /// its owners and mode, less set-user-ID and set-group-ID (as a write
    /// by anyone but root clears them: the writer is a network client).
    pub fn store_key(&self, name: &[u8], value: &[u8]) -> Result<Stat> {
        let key = valid_key("set", name)?;
        let what = || format!("set {}", show(key));
        // A log that cannot be written fails now, not after the stall timeout.
        self.db.log_health().map_err(|e| restate(e, what))?;
        let _quiet = self.root_commit(&[key]);
        for _ in 0..STORE_ATTEMPTS {
            let now = now_ns();
            let (meta, flags) = match self.db.session().stat(key) {
                Ok(st) if !is_regular(&st.meta) => {
                    return Err(Error::new(
                        libc::EPERM,
                        format!("{}: not a regular file (a directory, a link, ...)", what()),
                    ));
                }
                Ok(st) => (rewritten(&st.meta, now), MUST_EXIST),
                Err(e) if e.errno == libc::ENOENT => (self.new_key_meta(now), NO_REPLACE),
                Err(e) => return Err(restate(e, what)),
            };
            match self.db.session().set(key, value, meta, flags) {
                Ok(st) => {
                    self.root_changed(key);
                    if flags.no_replace {
                        self.root_dir_changed();
                    }
                    return Ok(st);
                }
                // Created or removed by another writer since the look.
                Err(e)
                    if (e.errno == libc::EEXIST && flags.no_replace)
                        || (e.errno == libc::ENOENT && flags.must_exist) => {}
                Err(e) => return Err(restate(e, what)),
            }
        }
        Err(Error::new(
            libc::EBUSY,
            format!(
                "{}: other writers created and removed the key through {STORE_ATTEMPTS} attempts",
                what()
            ),
        ))
    }

    fn new_key_meta(&self, now: u64) -> NewMeta {
        NewMeta {
            mode: libc::S_IFREG | NEW_KEY_MODE,
            uid: self.owner.uid,
            gid: self.owner.gid,
            mtime_ns: now,
            ctime_ns: now,
        }
    }
}

/// The metadata of an existing key rewritten at `now` by a writer that is
/// not root.
fn rewritten(m: &Meta, now: u64) -> NewMeta {
    NewMeta {
        mode: without_set_id(m.mode),
        uid: m.uid,
        gid: m.gid,
        mtime_ns: now,
        ctime_ns: now.max(m.ctime_ns),
    }
}
