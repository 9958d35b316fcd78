//! `bpfdb-memfs MOUNTPOINT`: a flat directory of files kept in a hash map
//! and served over FUSE, with nothing else behind it. `bpfdb-bench fuse`
//! uses it as the floor of what any FUSE filesystem costs per operation.
//! It caches no attributes or entries (TTL 0) and opens files with
//! direct_io, so every open, read and write reaches this process: the cost
//! of FUSE itself. (bpfdb, unlike it, lets the kernel cache root keys'
//! attributes and small values; docs/ARCHITECTURE.md, "The kernel's caches".)
//! Runs in the foreground until unmounted; SIGINT/SIGTERM unmount it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{SigSet, Signal};

/// No caching in the kernel: every lookup and getattr comes here, as in bpfdb.
const TTL: Duration = Duration::ZERO;
const FUSE_THREADS: usize = 4;
/// Bounds what one process can be made to hold.
const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Default)]
struct Files {
    /// name -> (inode, contents): the store itself.
    by_name: HashMap<OsString, (u64, Vec<u8>)>,
    /// inode -> name, so getattr/read/write by inode need no scan.
    names: HashMap<u64, OsString>,
    /// Inodes are never reused; 1 is the root.
    next_ino: u64,
}

impl Files {
    fn data_mut(&mut self, ino: INodeNo) -> Option<&mut Vec<u8>> {
        let name = self.names.get(&ino.0)?;
        self.by_name.get_mut(name).map(|(_, data)| data)
    }
}

struct MemFs {
    files: Mutex<Files>,
    uid: u32,
    gid: u32,
}

impl MemFs {
    fn attr(&self, ino: u64, size: u64, kind: FileType) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm: if kind == FileType::Directory {
                0o755
            } else {
                0o644
            },
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        // A panic in one handler must not take every later request with it.
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for MemFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // As bpfdb does: O_TRUNC arrives with open, not as a separate setattr,
        // so a SET costs the same number of round trips on both.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match self.files().by_name.get(name) {
            Some((ino, data)) => reply.entry(
                &TTL,
                &self.attr(*ino, data.len() as u64, FileType::RegularFile),
                Generation(0),
            ),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.attr(ino.0, 0, FileType::Directory));
        }
        match self.files().data_mut(ino) {
            Some(data) => reply.attr(
                &TTL,
                &self.attr(ino.0, data.len() as u64, FileType::RegularFile),
            ),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.attr(ino.0, 0, FileType::Directory));
        }
        if size.is_some_and(|s| s > MAX_FILE_BYTES) {
            return reply.error(Errno::EFBIG);
        }
        let mut files = self.files();
        let Some(data) = files.data_mut(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(size) = size {
            data.resize(size as usize, 0);
        }
        let len = data.len() as u64;
        reply.attr(&TTL, &self.attr(ino.0, len, FileType::RegularFile));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let mut files = self.files();
        match files.by_name.remove(name) {
            Some((ino, _)) => {
                files.names.remove(&ino);
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino == INodeNo::ROOT {
            return reply.opened(FileHandle(0), FopenFlags::empty());
        }
        let mut files = self.files();
        let Some(data) = files.data_mut(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // With FUSE_ATOMIC_O_TRUNC (see init); kernels without it truncate
        // with setattr first.
        if flags.0 & libc::O_TRUNC != 0 {
            data.clear();
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let mut files = self.files();
        let ino = match files.by_name.get_mut(name) {
            // O_CREAT without O_EXCL on a name that raced into existence.
            Some((ino, data)) => {
                data.clear();
                *ino
            }
            None => {
                files.next_ino += 1;
                let ino = files.next_ino;
                files.by_name.insert(name.to_owned(), (ino, Vec::new()));
                files.names.insert(ino, name.to_owned());
                ino
            }
        };
        reply.created(
            &TTL,
            &self.attr(ino, 0, FileType::RegularFile),
            Generation(0),
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut files = self.files();
        let Some(data) = files.data_mut(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let end = offset.saturating_add(bytes.len() as u64);
        if end > MAX_FILE_BYTES {
            return reply.error(Errno::EFBIG);
        }
        let mut files = self.files();
        let Some(data) = files.data_mut(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if data.len() < end as usize {
            data.resize(end as usize, 0);
        }
        data[offset as usize..end as usize].copy_from_slice(bytes);
        reply.written(bytes.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let files = self.files();
        // Offsets are positions in this listing; a listing that changes
        // between calls may skip or repeat names, which is allowed.
        let dots = [
            (1, FileType::Directory, OsStr::new(".")),
            (1, FileType::Directory, OsStr::new("..")),
        ];
        let entries = dots.into_iter().chain(
            files
                .by_name
                .iter()
                .map(|(name, (ino, _))| (*ino, FileType::RegularFile, name.as_os_str())),
        );
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Unmounts on SIGINT/SIGTERM so the session ends and main returns 0.
fn watch_signals(mountpoint: PathBuf) -> Result<(), String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while set.wait().is_ok() {
                if let Err(e) = umount2(&mountpoint, MntFlags::MNT_DETACH) {
                    eprintln!("bpfdb-memfs: unmounting {}: {e}", mountpoint.display());
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("starting the signal thread: {e}"))
}

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let (Some(mountpoint), None) = (args.next(), args.next()) else {
        return Err("usage: bpfdb-memfs MOUNTPOINT".into());
    };
    let mountpoint = PathBuf::from(mountpoint);
    // Before the FUSE threads start, so they inherit the blocked mask.
    watch_signals(mountpoint.clone())?;
    let fs = MemFs {
        files: Mutex::new(Files {
            next_ino: INodeNo::ROOT.0,
            ..Files::default()
        }),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("bpfdb-memfs".into()),
        fuser::MountOption::Subtype("bpfdb-memfs".into()),
    ];
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    fuser::mount(fs, &mountpoint, &config)
        .map_err(|e| format!("serving {}: {e}", mountpoint.display()))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bpfdb-memfs: {e}");
        std::process::exit(1);
    }
}
