//! The namespace: creating, removing and renaming keys, and the refusals
//! for what the flat key space has no room for (directories outside `.txn`
//! and `.snap`, device nodes, symbolic and hard links).

use bpfdb::{Error, NewMeta, Result};

use super::space::{Parent, Space};
use super::{Attr, Fs, NO_REPLACE, Opened, now_ns, show, valid_key};
use crate::core::caller::Caller;
use crate::core::inodes::Place;
use crate::core::txns::Open;

impl Fs {
    /// `open(O_CREAT)`: commits (in a transaction: stages) an empty value
    /// at once unless the key exists.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Attr, Opened)> {
        let space = self.key_space("create", parent, name)?;
        let key = valid_key("create", name)?;
        space.writable("create", key)?;
        let now = now_ns();
        let meta = NewMeta {
            mode: libc::S_IFREG | (mode & !umask & 0o7777),
            uid: who.uid,
            gid: who.gid,
            mtime_ns: now,
            ctime_ns: now,
        };
        // A shell's `>` never checks close: a log that cannot take the
        // value fails the create, before any key exists.
        if let Space::Root = space {
            self.db
                .log_health()
                .map_err(|e| space.restate(e, "create", key))?;
        }
        // A writer's create is durable by its close (`Writer::unsynced`):
        // its wait is left to that, so one `echo v > new` waits for one fsync.
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let (made, unsynced) = if writing && matches!(space, Space::Root) {
            self.db
                .defer_durability(|| space.set(&self.db, key, &[], meta, NO_REPLACE))
        } else {
            (space.set(&self.db, key, &[], meta, NO_REPLACE), None)
        };
        let created = match made {
            Ok(st) => Some(st),
            // Created by someone else since the kernel's lookup: open it.
            Err(e) if e.errno == libc::EEXIST && flags & libc::O_EXCL == 0 => None,
            Err(e) => return Err(space.restate(e, "create", key)),
        };
        if created.is_some() && matches!(space, Space::Root) {
            self.root_dir_changed();
        }
        let ino = self.inodes.remember(&Place::key(space.scope(), key))?;
        let opened = match created {
            Some(st) => self.open_created(ino, st, unsynced, flags, who),
            None => self.open_key(ino, &space, key, flags, who),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                // The kernel gets an error, so it never holds this lookup.
                self.inodes.forget(ino, 1);
                return Err(e);
            }
        };
        let attr = self.getattr(ino, Some(opened.fh), who)?;
        Ok((attr, opened))
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        let space = self.key_space("unlink", parent, name)?;
        let key = valid_key("unlink", name)?;
        space.writable("unlink", key)?;
        let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[key]));
        space
            .delete(&self.db, key)
            .map_err(|e| space.restate(e, "unlink", key))?;
        if let Space::Root = space {
            self.root_changed(key);
            self.root_dir_changed();
        }
        self.inodes.unlinked(&Place::key(space.scope(), key));
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        match self.parent("rmdir", parent, name)? {
            Parent::List(kind) => self.remove_txn_dir(kind, name),
            Parent::Scope(open) => Err(flat("rmdir", &open, name)),
            Parent::Root => {
                let (errno, why) = match name {
                    b".txn" | b".snap" => (libc::EPERM, "reserved directory"),
                    _ => (libc::ENOTDIR, "not a directory: keys are files"),
                };
                Err(Error::new(errno, format!("rmdir {}: {why}", show(name))))
            }
        }
    }

    /// `mv a b`: one engine commit at the root; inside a transaction, one
    /// staged move. `flags` are renameat2 flags.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let from_dir = self.parent("rename", parent, name)?;
        let to_dir = self.parent("rename", new_parent, new_name)?;
        let what = || format!("rename {} -> {}", show(name), show(new_name));
        let space = match (from_dir, to_dir) {
            (Parent::List(_), _) | (_, Parent::List(_)) => {
                return Err(Error::new(
                    libc::EPERM,
                    format!(
                        "{}: transaction directories cannot be renamed, and keys cannot move into .txn or .snap",
                        what()
                    ),
                ));
            }
            (Parent::Root, Parent::Root) => Space::Root,
            (Parent::Scope(a), Parent::Scope(b)) if a.scope == b.scope => Space::Open(a),
            _ => {
                return Err(Error::new(
                    libc::EXDEV,
                    format!(
                        "{}: keys move only within one directory (the root or one transaction)",
                        what()
                    ),
                ));
            }
        };
        let what = || format!("rename {} -> {}", space.show(name), space.show(new_name));
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(Error::new(
                libc::EINVAL,
                format!("{}: RENAME_EXCHANGE is not supported", what()),
            ));
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(Error::new(
                libc::EINVAL,
                format!("{}: unsupported rename flags {flags:#x}", what()),
            ));
        }
        let from = valid_key("rename", name)?;
        let to = valid_key("rename onto", new_name)?;
        space.writable("rename", from)?;
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[from, to]));
        space
            .rename(&self.db, from, to, no_replace)
            .map_err(|e| space.restate_as(e, what))?;
        if let Space::Root = space {
            self.root_changed(from);
            self.root_changed(to);
            self.root_dir_changed();
        }
        self.inodes.renamed(space.scope(), from, to);
        Ok(())
    }

    /// `mkdir .txn/NAME` begins a transaction, `mkdir .snap/NAME` a
    /// snapshot; anywhere else directories do not exist.
    pub fn mkdir(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        match self.parent("mkdir", parent, name)? {
            Parent::List(kind) => self.make_txn_dir(kind, name),
            Parent::Scope(open) => Err(flat("mkdir", &open, name)),
            Parent::Root => Err(Error::new(
                libc::EPERM,
                format!(
                    "mkdir {}: directories are not supported, keys are files",
                    show(name)
                ),
            )),
        }
    }

    pub fn mknod(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.parent("mknod", parent, name)?;
        Err(Error::new(
            libc::EPERM,
            format!(
                "mknod {}: device nodes and special files are not supported",
                show(name)
            ),
        ))
    }

    pub fn symlink(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.parent("symlink", parent, name)?;
        Err(Error::new(
            libc::EPERM,
            format!("symlink {}: symbolic links are not supported", show(name)),
        ))
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr> {
        self.parent("link", new_parent, new_name)?;
        Err(Error::new(
            libc::EPERM,
            format!(
                "link {} -> {}: hard links are not supported",
                self.name_for_log(ino),
                show(new_name)
            ),
        ))
    }
}

/// mkdir and rmdir inside a transaction directory: the namespace is flat.
fn flat(op: &str, open: &Open, name: &[u8]) -> Error {
    Error::new(
        libc::EPERM,
        format!(
            "{op} {}/{}: a transaction directory holds keys only (flat namespace)",
            open.path(),
            show(name)
        ),
    )
}
