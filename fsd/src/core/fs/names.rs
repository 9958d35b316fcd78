//! The namespace: creating, removing and renaming keys and directories
//! (the changes of a subdirectory's entries are in `dirs`), symbolic links
//! and special files, and the refusal of hard links.

use bpfdb::{Error, NewMeta, Result};

use super::dirs::{dir_attr, is_regular};
use super::space::{Parent, Space};
use super::tree::{self, Entries, ROOT_DIR};
use super::{Attr, Fs, NO_REPLACE, Opened, now_ns, show};
use crate::core::caller::Caller;
use crate::core::inodes::Place;

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
        let (space, dir) = self.key_space("create", parent, name)?;
        let key = &self.entry_key("create", dir, name)?[..];
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
        let (made, unsynced) = if dir != ROOT_DIR {
            (self.create_entry(&space, dir, key, &[], meta), None)
        } else if writing && matches!(space, Space::Root) {
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
        if created.is_some() && dir == ROOT_DIR && matches!(space, Space::Root) {
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
        let (space, dir) = self.key_space("unlink", parent, name)?;
        let key = &self.entry_key("unlink", dir, name)?[..];
        space.writable("unlink", key)?;
        let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[key]));
        // A regular file at the root goes in one engine op; anything else
        // has an entry to remove with it (the kernel never unlinks a
        // directory, memcached's delete may try: EISDIR).
        let regular = |st: bpfdb::Stat| is_regular(&st.meta);
        if dir != ROOT_DIR || !space.stat(&self.db, key).is_ok_and(regular) {
            self.unlink_entry(&space, dir, key)?;
        } else {
            space
                .delete(&self.db, key)
                .map_err(|e| space.restate(e, "unlink", key))?;
        }
        if let (Space::Root, ROOT_DIR) = (&space, dir) {
            self.root_changed(key);
            self.root_dir_changed();
        }
        self.inodes.unlinked(&Place::key(space.scope(), key));
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        let (space, dir) = match self.parent("rmdir", parent, name)? {
            Parent::List(kind) => return self.remove_txn_dir(kind, name),
            Parent::Root if matches!(name, b".txn" | b".snap") => {
                return Err(Error::new(
                    libc::EPERM,
                    format!("rmdir {}: reserved directory", show(name)),
                ));
            }
            other => other.keys().unwrap_or((Space::Root, ROOT_DIR)),
        };
        let key = self.entry_key("rmdir", dir, name)?;
        space.writable("rmdir", &key)?;
        let id = self.remove_dir(&space, dir, name)?;
        self.inodes
            .unlinked(&Place::key(space.scope(), &tree::dir_key(id)));
        Ok(())
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
        let (Some((space, from_dir)), Some((to_space, to_dir))) = (from_dir.keys(), to_dir.keys())
        else {
            return Err(Error::new(
                libc::EPERM,
                format!(
                    "{}: transaction directories cannot be renamed, and keys cannot move into .txn or .snap",
                    what()
                ),
            ));
        };
        if space.scope() != to_space.scope() {
            return Err(Error::new(
                libc::EXDEV,
                format!(
                    "{}: keys move only within one tree (the root's or one transaction's)",
                    what()
                ),
            ));
        }
        let from = self.entry_key("rename", from_dir, name)?;
        let to = self.entry_key("rename onto", to_dir, new_name)?;
        let what = || format!("rename {} -> {}", space.show(&from), space.show(&to));
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
        space.writable("rename", &from)?;
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        let _quiet = matches!(space, Space::Root).then(|| self.root_commit(&[&from, &to]));
        // Files at the root move in one engine op, as before directories:
        // no transaction, so no retries when a transaction holds a key.
        let is_file = |k: &[u8]| space.stat(&self.db, k).map(|st| is_regular(&st.meta));
        let files_at_root = from_dir == ROOT_DIR
            && to_dir == ROOT_DIR
            && is_file(&from).unwrap_or(false)
            && is_file(&to).unwrap_or(true);
        let replaced_dir = if files_at_root {
            space
                .rename(&self.db, &from, &to, no_replace)
                .map_err(|e| space.restate_as(e, what))?;
            if let Space::Root = space {
                self.root_changed(&from);
                self.root_changed(&to);
            }
            None
        } else {
            self.move_entry(&space, (from_dir, &from), (to_dir, &to), no_replace)?
        };
        if let Space::Root = space
            && (from_dir == ROOT_DIR || to_dir == ROOT_DIR)
        {
            self.root_dir_changed();
        }
        self.inodes.renamed(space.scope(), &from, &to);
        if let Some(id) = replaced_dir {
            self.inodes
                .unlinked(&Place::key(space.scope(), &tree::dir_key(id)));
        }
        Ok(())
    }

    /// `mkdir .txn/NAME` begins a transaction, `mkdir .snap/NAME` a
    /// snapshot; anywhere else it makes a directory (`dirs`).
    pub fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        who: Caller,
    ) -> Result<Attr> {
        let (space, dir) = match self.parent("mkdir", parent, name)? {
            Parent::List(kind) => return self.make_txn_dir(kind, name),
            other => other.keys().unwrap_or((Space::Root, ROOT_DIR)),
        };
        let key = self.entry_key("mkdir", dir, name)?;
        space.writable("mkdir", &key)?;
        let (id, meta) = self.make_dir(&space, dir, name, mode & !umask, who)?;
        let ino = self
            .inodes
            .remember(&Place::key(space.scope(), &tree::dir_key(id)))?;
        Ok(dir_attr(ino, &meta, &Entries::new(dir)))
    }

    /// mknod: a regular file, a FIFO, a character or block device node or
    /// a socket, as a key of that type (a device's number is its value).
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        who: Caller,
    ) -> Result<Attr> {
        let value = match mode & libc::S_IFMT {
            libc::S_IFCHR | libc::S_IFBLK => rdev.to_le_bytes().to_vec(),
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => Vec::new(),
            0 => return self.mknod(parent, name, mode | libc::S_IFREG, umask, rdev, who),
            t => {
                return Err(Error::new(
                    libc::EINVAL,
                    format!("mknod {}: file type {t:#o}", show(name)),
                ));
            }
        };
        let perm = mode & !umask & 0o7777;
        self.make_node(
            "mknod",
            parent,
            name,
            (mode & libc::S_IFMT) | perm,
            &value,
            who,
        )
    }

    /// A symbolic link: a key of type `S_IFLNK` whose value is the target.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], who: Caller) -> Result<Attr> {
        if target.is_empty() || target.len() >= libc::PATH_MAX as usize {
            return Err(Error::new(
                if target.is_empty() {
                    libc::ENOENT
                } else {
                    libc::ENAMETOOLONG
                },
                format!("symlink {}: a target of {} bytes", show(name), target.len()),
            ));
        }
        self.make_node("symlink", parent, name, libc::S_IFLNK | 0o777, target, who)
    }

    /// Creates a key that is not a regular file's or a directory's.
    fn make_node(
        &self,
        op: &str,
        parent: u64,
        name: &[u8],
        mode: u32,
        value: &[u8],
        who: Caller,
    ) -> Result<Attr> {
        let (space, dir) = self.key_space(op, parent, name)?;
        let key = &self.entry_key(op, dir, name)?[..];
        space.writable(op, key)?;
        let now = now_ns();
        let meta = NewMeta {
            mode,
            uid: who.uid,
            gid: who.gid,
            mtime_ns: now,
            ctime_ns: now,
        };
        let st = self.create_entry(&space, dir, key, value, meta)?;
        if dir == ROOT_DIR && matches!(space, Space::Root) {
            self.root_dir_changed();
        }
        let ino = self.inodes.remember(&Place::key(space.scope(), key))?;
        Ok(self.node_attr(&space, ino, key, &st))
    }

    /// The target of the symbolic link `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let (place, _) = self.place_of("readlink", ino)?;
        let Place::Key { scope, name: key } = place else {
            return Err(Error::new(libc::EINVAL, "readlink: not a symbolic link"));
        };
        let space = self.space("readlink", scope)?;
        let mut v = Vec::new();
        let st = space
            .get(&self.db, &key, &mut v)
            .map_err(|e| space.restate(e, "readlink", &key))?;
        if st.meta.mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(Error::new(
                libc::EINVAL,
                format!("readlink {}: not a symbolic link", space.show(&key)),
            ));
        }
        Ok(v)
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
