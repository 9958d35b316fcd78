//! The FUSE adapter: turns fuser requests into `Fs` calls and `Fs` results
//! into replies. Every error that reaches the kernel is logged here, once.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bpfdb::Error;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, info, warn};

use crate::core::caller::Caller;
use crate::core::fs::{Attr, Fs, Kind, Opened, SetAttr, now_ns};
pub use crate::daemon::kernel_cache::KernelCache;
use crate::daemon::waiters::Waiters;

/// How long the kernel may keep a root key's entry and attributes. Not what
/// keeps them right: every commit that changes a root key drops them first
/// (`KernelCache`); this only bounds how long a missed drop could last.
const CACHE_TTL: Duration = Duration::from_secs(3600);

/// Everything else (the daemon's own files, transaction directories and
/// their keys) is asked for each time.
const TTL: Duration = Duration::ZERO;

fn ttl(a: &Attr) -> &'static Duration {
    if a.cacheable { &CACHE_TTL } else { &TTL }
}

/// Writes arrive in pieces of at most this; one piece may be a whole value.
const MAX_WRITE: u32 = 1 << 20;

pub struct FuseFs {
    fs: Arc<Fs>,
    /// Runs what may wait for cached readers (`Fs::may_wait`).
    waiters: Waiters<Fs>,
}

impl FuseFs {
    /// The adapter over `fs`, which others (the memcached server) may share.
    pub fn new(fs: Arc<Fs>) -> std::io::Result<FuseFs> {
        Ok(FuseFs {
            waiters: Waiters::new(fs.clone())?,
            fs,
        })
    }

    /// Runs `op` here, or on the waiters' pool when `may_wait`.
    fn run(&self, may_wait: bool, op: impl FnOnce(&Fs) + Send + 'static) {
        if may_wait {
            self.waiters.run(op);
        } else {
            op(&self.fs);
        }
    }

    /// `run` for an operation that may commit: the reply goes out once what
    /// it committed is durable, from whichever thread sees that
    /// (`Fs::durably`), so no worker waits for the disk.
    fn run_durably<T: Send + 'static>(
        &self,
        may_wait: bool,
        op: impl FnOnce(&Fs) -> bpfdb::Result<T> + Send + 'static,
        reply: impl FnOnce(bpfdb::Result<T>) + Send + 'static,
    ) {
        self.run(may_wait, move |fs| fs.durably(op, reply));
    }
}

/// Logs an error on its way to the user and turns it into an errno.
fn fail(e: &Error) -> Errno {
    match e.errno {
        // The kernel retries with a fresh lookup; the user rarely sees it.
        libc::ESTALE => debug!("{e}"),
        // Also every create's probe for the new name: routine, not a warning.
        libc::ENOENT
        | libc::EFBIG
        | libc::EPERM
        | libc::ENAMETOOLONG
        | libc::EBUSY
        | libc::EEXIST
        | libc::EINVAL
        | libc::EACCES
        | libc::ENOTDIR
        | libc::EISDIR
        | libc::EROFS
        | libc::EXDEV
        | libc::ECANCELED => info!("{e}"),
        _ => warn!("{e}"),
    }
    Errno::from_i32(e.errno)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn reply_entry(reply: ReplyEntry, r: bpfdb::Result<Attr>) {
    match r {
        Ok(a) => reply.entry(ttl(&a), &file_attr(&a), Generation(0)),
        Err(e) => reply.error(fail(&e)),
    }
}

fn reply_attr(reply: ReplyAttr, r: bpfdb::Result<Attr>) {
    match r {
        Ok(a) => reply.attr(ttl(&a), &file_attr(&a)),
        Err(e) => reply.error(fail(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: bpfdb::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(&e)),
    }
}

/// stat's st_blocks counts 512-byte units, whatever the block size.
const STAT_BLOCK_BYTES: u64 = 512;

/// The I/O size stat suggests (st_blksize): one page.
const IO_BLOCK_BYTES: u32 = 4096;

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let t = time(a.mtime_ns);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(STAT_BLOCK_BYTES),
        atime: t,
        mtime: t,
        ctime: time(a.ctime_ns),
        crtime: t,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: IO_BLOCK_BYTES,
        flags: 0,
    }
}

/// Readers need no FLUSH at close: only a writer's flush commits.
fn fopen_flags(o: &Opened, open_flags: i32) -> FopenFlags {
    let cache = if o.direct_io {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::FOPEN_KEEP_CACHE
    };
    if open_flags & libc::O_ACCMODE == libc::O_RDONLY {
        cache | FopenFlags::FOPEN_NOFLUSH
    } else {
        cache
    }
}

fn ns_of(t: TimeOrNow) -> u64 {
    match t {
        TimeOrNow::Now => now_ns(),
        TimeOrNow::SpecificTime(t) => t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        // O_TRUNC then arrives with open instead of as a separate setattr, so
        // the truncation lands in the handle's buffer and commits at close.
        if config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            info!("kernel lacks FUSE_ATOMIC_O_TRUNC; O_TRUNC comes as a truncate");
        }
        // A root key's attributes are cached; when a commit drops them, the
        // refetch compares mtime and size and drops stale pages too.
        if config
            .add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
            .is_err()
        {
            warn!("kernel lacks FUSE_AUTO_INVAL_DATA; cached pages could outlive a commit");
        }
        // Files are opened with direct I/O, which refuses shared mappings
        // unless the kernel is told the daemon copes with them.
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_err()
        {
            info!("kernel lacks FUSE_DIRECT_IO_ALLOW_MMAP; shared mmap of keys fails");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.fs.lookup(parent.0, name.as_bytes()))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.fs.getattr(ino.0, fh.map(|f| f.0), caller(req)))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // atime always equals mtime, so an atime-only change is a no-op.
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime_ns: mtime.map(ns_of),
            by: caller(req),
        };
        let (ino, fh) = (ino.0, fh.map(|f| f.0));
        self.run_durably(
            self.fs.may_wait(Some(ino), &[]),
            move |fs| fs.setattr(ino, fh, change),
            move |r| reply_attr(reply, r),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let who = caller(req);
        self.fs.durably(
            |fs| fs.mknod(parent.0, name.as_bytes(), mode, umask, rdev, who),
            move |r| reply_entry(reply, r),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let who = caller(req);
        reply_entry(
            reply,
            self.fs.mkdir(parent.0, name.as_bytes(), mode, umask, who),
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run_durably(
            self.fs.may_wait(None, &[&name]),
            move |fs| fs.unlink(parent.0, &name),
            move |r| reply_empty(reply, r),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.rmdir(parent.0, name.as_bytes()))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let who = caller(req);
        let target = target.as_os_str().as_bytes();
        reply_entry(
            reply,
            self.fs.symlink(parent.0, link_name.as_bytes(), target, who),
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        self.run_durably(
            self.fs.may_wait(None, &[&name, &newname]),
            move |fs| fs.rename(parent.0, &name, newparent.0, &newname, flags.bits()),
            move |r| reply_empty(reply, r),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.fs.link(ino.0, newparent.0, newname.as_bytes()))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (ino, flags, who) = (ino.0, flags.0, caller(req));
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        self.run(
            writing && self.fs.may_wait(Some(ino), &[]),
            move |fs| match fs.open(ino, flags, who) {
                Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o, flags)),
                Err(e) => reply.error(fail(&e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The reply is sent while the handle is locked, straight from its
        // buffer, to avoid copying up to 1 MiB per read.
        let mut reply = Some(reply);
        let r = self.fs.read(fh.0, offset, size, |data| {
            if let Some(reply) = reply.take() {
                reply.data(data);
            }
        });
        if let (Err(e), Some(reply)) = (r, reply) {
            reply.error(fail(&e));
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Only a transaction's `.ctl` commit, or a writer counted again
        // beside cached readers, may wait; other writes are served in
        // place, without copying their data.
        let reply_written = move |r: bpfdb::Result<u32>| match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail(&e)),
        };
        if self.fs.write_may_wait(ino.0, fh.0) {
            let data = data.to_vec();
            self.run_durably(true, move |fs| fs.write(fh.0, offset, &data), reply_written);
            return;
        }
        self.fs
            .durably(|fs| fs.write(fh.0, offset, data), reply_written);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fs
            .durably(|fs| fs.flush(fh.0), move |r| reply_empty(reply, r));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Nobody hears how a commit made here ends; its durability is left
        // to the log all the same, so no worker waits for it.
        self.fs.durably(
            |fs| {
                fs.release(fh.0);
                Ok(())
            },
            |r| {
                if let Err(e) = r {
                    warn!("release: {e}; no caller is left to report it to");
                }
            },
        );
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fs
            .durably(|fs| fs.fsync(fh.0), move |r| reply_empty(reply, r));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(fh.0, offset, |ino, next, kind, name| {
            reply.add(INodeNo(ino), next, file_type(kind), OsStr::from_bytes(name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    // The kernel checks the recorded modes itself (`default_permissions`,
    // always on) and so never asks; nothing more to check here.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let who = caller(req);
        self.fs.durably(
            |fs| fs.create(parent.0, name.as_bytes(), mode, umask, flags, who),
            move |r| match r {
                Ok((a, o)) => reply.created(
                    ttl(&a),
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(o.fh),
                    fopen_flags(&o, flags),
                ),
                Err(e) => reply.error(fail(&e)),
            },
        );
    }

    // Keys have no extended attributes. ENOSYS (answered here, so fuser
    // logs no not-implemented warning) makes the kernel stop asking: it
    // would otherwise send a getxattr of security.capability before every
    // write, a whole round trip per SET. Users get EOPNOTSUPP.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    // No ioctls: ENOTTY is what isatty() and friends expect to hear.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        info!("setxattr {name:?}: extended attributes are not supported");
        reply.error(Errno::ENOTSUP);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::NO_XATTR);
    }
}
