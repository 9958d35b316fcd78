//! `Fs` on a real engine (root and eBPF needed), no FUSE and no mocks.

use bpfdb::{Db, Options};
use std::time::Duration;

use super::*;
use crate::core::caller::Caller;

/// The process the tests act as (pid 1 exists on every machine).
pub(super) const WHO: Caller = Caller {
    uid: 1000,
    gid: 1001,
    pid: 1,
};
pub(super) const CREATE: i32 = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;

pub(super) fn small_options(max_value_bytes: u32) -> Options {
    Options {
        max_keys: 4096,
        max_value_bytes,
        value_mem_bytes: 16 << 20,
        slots: 6,
        ..Options::default()
    }
}

pub(super) fn fs_on(opts: &Options, txn_timeout: Duration) -> Fs {
    let db = Db::open(opts).unwrap_or_else(|e| panic!("open engine: {e}"));
    Fs::new(db, txn_timeout).unwrap_or_else(|e| panic!("start fs: {e}"))
}

fn fs_with(max_value_bytes: u32) -> Fs {
    fs_on(&small_options(max_value_bytes), DEFAULT_TXN_TIMEOUT)
}

pub(super) fn fs() -> Fs {
    fs_with(1 << 20)
}

pub(super) fn errno<T: fmt::Debug>(r: Result<T>) -> i32 {
    r.expect_err("expected an error").errno
}

/// `echo -n data > name`
pub(super) fn put(fs: &Fs, name: &str, data: &[u8]) -> u64 {
    let (attr, o) = fs
        .create(ROOT_INO, name.as_bytes(), 0o644, 0o022, CREATE, WHO)
        .unwrap();
    assert_eq!(fs.write(o.fh, 0, data).unwrap() as usize, data.len());
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    attr.ino
}

pub(super) fn read_all(fs: &Fs, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 4096, |d| d.to_vec()).unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

/// `cat name`
pub(super) fn cat(fs: &Fs, name: &str) -> Result<Vec<u8>> {
    let attr = fs.lookup(ROOT_INO, name.as_bytes())?;
    let o = fs.open(attr.ino, libc::O_RDONLY, WHO)?;
    let data = read_all(fs, o.fh);
    fs.release(o.fh);
    Ok(data)
}

pub(super) fn list(fs: &Fs, ino: u64) -> Vec<Vec<u8>> {
    let fh = fs.opendir(ino).unwrap();
    let mut names = Vec::new();
    fs.readdir(fh, 0, |_, _, _, name| {
        names.push(name.to_vec());
        false
    })
    .unwrap();
    fs.releasedir(fh);
    names
}

#[test]
fn create_write_flush_read_roundtrip() {
    let fs = fs();
    let (attr, o) = fs
        .create(ROOT_INO, b"greeting", 0o666, 0o022, CREATE, WHO)
        .unwrap();
    assert_eq!((attr.size, attr.mode, attr.kind), (0, 0o644, Kind::File));
    assert_eq!((attr.uid, attr.gid, attr.nlink), (1000, 1001, 1));
    // The empty value is committed at create, the written bytes at flush.
    assert_eq!(cat(&fs, "greeting").unwrap(), b"");
    // mtime is the time of the write (POSIX), which the flush commits.
    let before = now_ns();
    fs.write(o.fh, 0, b"hello\n").unwrap();
    assert_eq!(cat(&fs, "greeting").unwrap(), b"");
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    assert_eq!(cat(&fs, "greeting").unwrap(), b"hello\n");
    let attr = fs.getattr(attr.ino, None, WHO).unwrap();
    assert_eq!(attr.size, 6);
    assert!(attr.mtime_ns >= before && attr.mtime_ns <= now_ns());
    assert_eq!(errno(cat(&fs, "missing")), libc::ENOENT);
}

#[test]
fn reader_keeps_the_value_it_opened() {
    let fs = fs();
    let ino = put(&fs, "k", &vec![b'a'; 300_000]);
    let r = fs.open(ino, libc::O_RDONLY, WHO).unwrap();
    assert!(r.direct_io);
    let head = fs.read(r.fh, 0, 10, |d| d.to_vec()).unwrap();
    put(&fs, "k", &vec![b'b'; 200_000]);
    let mut rest = read_all(&fs, r.fh);
    rest.splice(0..10, head);
    assert_eq!(rest, vec![b'a'; 300_000]);
    assert_eq!(fs.getattr(ino, Some(r.fh), WHO).unwrap().size, 300_000);
    assert_eq!(fs.getattr(ino, None, WHO).unwrap().size, 200_000);
    fs.release(r.fh);
}

#[test]
fn append_writes_go_to_the_end() {
    let fs = fs();
    let ino = put(&fs, "log", b"one\n");
    let o = fs.open(ino, libc::O_WRONLY | libc::O_APPEND, WHO).unwrap();
    // The offset is ignored for O_APPEND handles.
    fs.write(o.fh, 0, b"two\n").unwrap();
    fs.write(o.fh, 0, b"three\n").unwrap();
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    assert_eq!(cat(&fs, "log").unwrap(), b"one\ntwo\nthree\n");
}

#[test]
fn writes_edit_the_buffer_and_fill_gaps_with_zeros() {
    let fs = fs();
    let ino = put(&fs, "k", b"abcdef");
    let o = fs.open(ino, libc::O_RDWR, WHO).unwrap();
    fs.write(o.fh, 2, b"XY").unwrap();
    fs.write(o.fh, 8, b"Z").unwrap();
    assert_eq!(read_all(&fs, o.fh), b"abXYef\0\0Z");
    fs.flush(o.fh).unwrap();
    // A second close without changes commits nothing new.
    let mtime = fs.getattr(ino, None, WHO).unwrap().mtime_ns;
    fs.flush(o.fh).unwrap();
    assert_eq!(fs.getattr(ino, None, WHO).unwrap().mtime_ns, mtime);
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"abXYef\0\0Z");
    let w = fs.open(ino, libc::O_WRONLY, WHO).unwrap();
    assert_eq!(errno(fs.read(w.fh, 0, 10, |_| ())), libc::EBADF);
    fs.release(w.fh);
}

#[test]
fn truncate_commits_at_once_or_edits_an_open_writer() {
    let fs = fs();
    let ino = put(&fs, "k", b"hello world");
    let shrink = SetAttr {
        size: Some(5),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(ino, None, shrink).unwrap().size, 5);
    assert_eq!(cat(&fs, "k").unwrap(), b"hello");
    let grow = SetAttr {
        size: Some(8),
        ..SetAttr::default()
    };
    fs.setattr(ino, None, grow).unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"hello\0\0\0");

    let o = fs.open(ino, libc::O_WRONLY, WHO).unwrap();
    assert_eq!(fs.setattr(ino, Some(o.fh), shrink).unwrap().size, 5);
    fs.setattr(ino, Some(o.fh), grow).unwrap();
    let empty = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(ino, Some(o.fh), empty).unwrap();
    fs.write(o.fh, 0, b"new").unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"hello\0\0\0");
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"new");
}

#[test]
fn o_trunc_alone_commits_at_release_or_fsync() {
    let fs = fs();
    let ino = put(&fs, "k", b"data");
    // `printf new > k`: open(O_TRUNC), dup2 and close (a flush), write,
    // close. Readers go from the old value straight to the new one.
    let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    fs.flush(o.fh).unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"data");
    fs.write(o.fh, 0, b"new").unwrap();
    fs.flush(o.fh).unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"new");
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"new");
    // `: > k`: nothing written, the empty value lands at release.
    let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    fs.flush(o.fh).unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"new");
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"");
    // fsync asks for the state to be committed, truncation included.
    put(&fs, "k", b"again");
    let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    fs.fsync(o.fh).unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"");
    fs.release(o.fh);
}

#[test]
fn fstat_after_unlink_answers_from_the_open_handle() {
    let fs = fs();
    let ino = put(&fs, "k", b"value");
    let r = fs.open(ino, libc::O_RDONLY, WHO).unwrap();
    fs.unlink(ROOT_INO, b"k").unwrap();
    let attr = fs.getattr(ino, None, WHO).unwrap();
    assert_eq!((attr.size, attr.nlink), (5, 0));
    assert_eq!(read_all(&fs, r.fh), b"value");
    fs.release(r.fh);
    assert_eq!(errno(fs.getattr(ino, None, WHO)), libc::ENOENT);
}

#[test]
fn efbig_keeps_the_previous_value() {
    let fs = fs_with(4096);
    let ino = put(&fs, "k", b"old");
    let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    fs.write(o.fh, 0, &[1; 4096]).unwrap();
    assert_eq!(errno(fs.write(o.fh, 4096, b"x")), libc::EFBIG);
    // The application's stream is incomplete: close reports it and the
    // value stays as it was.
    assert_eq!(errno(fs.flush(o.fh)), libc::EFBIG);
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"old");

    let o = fs.open(ino, libc::O_WRONLY | libc::O_APPEND, WHO).unwrap();
    assert_eq!(errno(fs.write(o.fh, 0, &[2; 4094])), libc::EFBIG);
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"old");

    // Refused as the very first write after O_TRUNC: not even the
    // truncation is committed.
    let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    assert_eq!(errno(fs.write(o.fh, 0, &[3; 5000])), libc::EFBIG);
    assert_eq!(errno(fs.flush(o.fh)), libc::EFBIG);
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"old");

    let huge = SetAttr {
        size: Some(4097),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(ino, None, huge)), libc::EFBIG);
    assert_eq!(cat(&fs, "k").unwrap(), b"old");
}

#[test]
fn create_exclusive_and_create_existing() {
    let fs = fs();
    let ino = put(&fs, "k", b"keep");
    let excl = CREATE | libc::O_EXCL;
    assert_eq!(
        errno(fs.create(ROOT_INO, b"k", 0o644, 0, excl, WHO)),
        libc::EEXIST
    );
    // Without O_EXCL an existing key is opened as it is.
    let (attr, o) = fs
        .create(ROOT_INO, b"k", 0o600, 0, libc::O_RDWR | libc::O_CREAT, WHO)
        .unwrap();
    assert_eq!((attr.ino, attr.size, attr.mode), (ino, 4, 0o644));
    assert_eq!(read_all(&fs, o.fh), b"keep");
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"keep");
    // Read-only create makes an empty key.
    let (attr, o) = fs
        .create(
            ROOT_INO,
            b"ro",
            0o644,
            0,
            libc::O_RDONLY | libc::O_CREAT,
            WHO,
        )
        .unwrap();
    assert_eq!(attr.size, 0);
    assert_eq!(errno(fs.write(o.fh, 0, b"x")), libc::EBADF);
    fs.release(o.fh);
    assert_eq!(cat(&fs, "ro").unwrap(), b"");
}

#[test]
fn reserved_names_and_unsupported_kinds_are_eperm() {
    let fs = fs();
    put(&fs, "x", b"1");
    for name in RESERVED {
        assert_eq!(
            errno(fs.create(ROOT_INO, name, 0o644, 0, CREATE, WHO)),
            libc::EPERM
        );
        assert_eq!(errno(fs.unlink(ROOT_INO, name)), libc::EPERM);
        assert_eq!(
            errno(fs.rename(ROOT_INO, b"x", ROOT_INO, name, 0)),
            libc::EPERM
        );
        assert_eq!(
            errno(fs.rename(ROOT_INO, name, ROOT_INO, b"y", 0)),
            libc::EPERM
        );
    }
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, WHO).unwrap();
    assert_eq!(d.kind, Kind::Dir);
    assert_eq!(errno(fs.rmdir(ROOT_INO, b"x")), libc::ENOTDIR);
    fs.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(
        errno(fs.create(TXN_INO, b"k", 0o644, 0, CREATE, WHO)),
        libc::EPERM
    );
    let l = fs.symlink(ROOT_INO, b"l", b"x", WHO).unwrap();
    assert_eq!(
        (l.kind, fs.readlink(l.ino).unwrap()),
        (Kind::Symlink, b"x".to_vec())
    );
    let n = fs
        .mknod(ROOT_INO, b"n", libc::S_IFCHR | 0o644, 0, 0x0103, WHO)
        .unwrap();
    assert_eq!((n.kind, n.rdev), (Kind::CharDevice, 0x0103));
    assert_eq!(errno(fs.readlink(n.ino)), libc::EINVAL);
    let x = fs.lookup(ROOT_INO, b"x").unwrap().ino;
    assert_eq!(errno(fs.link(x, ROOT_INO, b"h")), libc::EPERM);
    assert_eq!(errno(fs.rmdir(ROOT_INO, b".txn")), libc::EPERM);
    assert_eq!(fs.lookup(ROOT_INO, b".ctl").unwrap().ino, CTL_INO);
    assert_eq!(errno(fs.lookup(TXN_INO, b"x")), libc::ENOENT);
    assert_eq!(errno(fs.lookup(x, b"y")), libc::ENOTDIR);
    assert_eq!(errno(fs.open(ROOT_INO, libc::O_RDONLY, WHO)), libc::EISDIR);
    assert_eq!(list(&fs, TXN_INO), [b".".to_vec(), b"..".to_vec()]);
    assert_eq!(cat(&fs, "x").unwrap(), b"1");
}

#[test]
fn bad_names() {
    let fs = fs();
    let long = vec![b'n'; 256];
    assert_eq!(
        errno(fs.create(ROOT_INO, &long, 0o644, 0, CREATE, WHO)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(fs.lookup(ROOT_INO, &long)), libc::ENAMETOOLONG);
    assert_eq!(
        errno(fs.create(ROOT_INO, b"a\0b", 0o644, 0, CREATE, WHO)),
        libc::EINVAL
    );
    let max = String::from_utf8(vec![b'm'; 255]).unwrap();
    put(&fs, &max, b"ok");
    assert_eq!(cat(&fs, &max).unwrap(), b"ok");
}

#[test]
fn rename_replace_noreplace_exchange() {
    let fs = fs();
    let a = put(&fs, "a", b"A");
    let b = put(&fs, "b", b"B");
    put(&fs, "c", b"C");
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(errno(cat(&fs, "a")), libc::ENOENT);
    assert_eq!(cat(&fs, "b").unwrap(), b"A");
    // The inode follows its key; the replaced one no longer names a key.
    assert_eq!(fs.lookup(ROOT_INO, b"b").unwrap().ino, a);
    // An inode looked up before its key was replaced reads the key as it is
    // now; writing through it is refused so the kernel looks up again.
    assert_eq!(fs.getattr(b, None, WHO).unwrap().size, 1);
    let r = fs.open(b, libc::O_RDONLY, WHO).unwrap();
    assert_eq!(read_all(&fs, r.fh), b"A");
    fs.release(r.fh);
    assert_eq!(errno(fs.open(b, libc::O_WRONLY, WHO)), libc::ESTALE);

    let noreplace = libc::RENAME_NOREPLACE;
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"b", ROOT_INO, b"c", noreplace)),
        libc::EEXIST
    );
    assert_eq!(cat(&fs, "b").unwrap(), b"A");
    assert_eq!(cat(&fs, "c").unwrap(), b"C");
    fs.rename(ROOT_INO, b"b", ROOT_INO, b"d", noreplace)
        .unwrap();
    assert_eq!(cat(&fs, "d").unwrap(), b"A");
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"c", ROOT_INO, b"d", libc::RENAME_EXCHANGE)),
        libc::EINVAL
    );
    assert_eq!(cat(&fs, "c").unwrap(), b"C");
    fs.rename(ROOT_INO, b"d", ROOT_INO, b"d", 0).unwrap();
    assert_eq!(cat(&fs, "d").unwrap(), b"A");
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"nope", ROOT_INO, b"e", 0)),
        libc::ENOENT
    );
}

#[test]
fn writer_commits_to_the_key_it_was_renamed_to() {
    let fs = fs();
    let ino = put(&fs, "old", b"1");
    let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    fs.write(o.fh, 0, b"2").unwrap();
    fs.rename(ROOT_INO, b"old", ROOT_INO, b"new", 0).unwrap();
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    assert_eq!(cat(&fs, "new").unwrap(), b"2");
    assert_eq!(errno(cat(&fs, "old")), libc::ENOENT);
}

#[test]
fn unlink_deletes_and_an_open_writer_does_not_resurrect() {
    let fs = fs();
    let ino = put(&fs, "k", b"v");
    let o = fs.open(ino, libc::O_WRONLY, WHO).unwrap();
    fs.write(o.fh, 0, b"w").unwrap();
    fs.unlink(ROOT_INO, b"k").unwrap();
    assert_eq!(errno(cat(&fs, "k")), libc::ENOENT);
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    assert_eq!(errno(cat(&fs, "k")), libc::ENOENT);
    assert_eq!(errno(fs.unlink(ROOT_INO, b"k")), libc::ENOENT);
}

#[test]
fn chmod_chown_touch_persist() {
    let fs = fs();
    let ino = put(&fs, "k", b"value");
    let change = SetAttr {
        mode: Some(0o600),
        uid: Some(42),
        gid: Some(43),
        ..SetAttr::default()
    };
    let attr = fs.setattr(ino, None, change).unwrap();
    assert_eq!((attr.mode, attr.uid, attr.gid), (0o600, 42, 43));
    let touch = SetAttr {
        mtime_ns: Some(1_234_567_890),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(ino, None, touch).unwrap().mtime_ns,
        1_234_567_890
    );
    // A later write keeps mode and owners, even when the chmod happened
    // while the writer was open.
    let o = fs.open(ino, libc::O_WRONLY | libc::O_APPEND, WHO).unwrap();
    let chmod = SetAttr {
        mode: Some(0o640),
        ..SetAttr::default()
    };
    fs.setattr(ino, None, chmod).unwrap();
    fs.write(o.fh, 0, b"!").unwrap();
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    let attr = fs.getattr(ino, None, WHO).unwrap();
    assert_eq!((attr.mode, attr.uid, attr.gid), (0o640, 42, 43));
    assert!(attr.mtime_ns > 1_234_567_890);
    assert_eq!(cat(&fs, "k").unwrap(), b"value!");
    // Only metadata changed: the value is the same after a chown.
    let chown = SetAttr {
        uid: Some(7),
        ..SetAttr::default()
    };
    fs.setattr(ino, None, chown).unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"value!");
    assert_eq!(fs.lookup(ROOT_INO, b"k").unwrap().uid, 7);
}

#[test]
fn readdir_lists_fixed_entries_then_keys() {
    let fs = fs();
    let names = ["a", "b", "c"];
    for n in names {
        put(&fs, n, n.as_bytes());
    }
    let mut got = list(&fs, ROOT_INO);
    assert_eq!(
        got[..6],
        [
            b".".to_vec(),
            b"..".to_vec(),
            b".stats".to_vec(),
            b".txn".to_vec(),
            b".snap".to_vec(),
            b".ctl".to_vec()
        ]
    );
    let mut keys = got.split_off(6);
    keys.sort();
    assert_eq!(keys, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

    // Served by offset: a reply that fills up resumes where it stopped,
    // and a listed key carries the inode its lookup gives.
    let fh = fs.opendir(ROOT_INO).unwrap();
    let mut first = Vec::new();
    fs.readdir(fh, 0, |ino, next, _, name| {
        first.push((ino, next, name.to_vec()));
        first.len() == 7
    })
    .unwrap();
    assert_eq!(first.len(), 7);
    let (ino, next, name) = first[6].clone();
    assert_eq!(next, 7);
    let name = String::from_utf8(name).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, name.as_bytes()).unwrap().ino, ino);
    let mut rest = Vec::new();
    fs.readdir(fh, next, |_, _, kind, name| {
        assert_eq!(kind, Kind::File);
        rest.push(name.to_vec());
        false
    })
    .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(!rest.contains(&name.into_bytes()));
    fs.releasedir(fh);
}

#[test]
fn stats_file_content() {
    let fs = fs();
    put(&fs, "a", b"12345");
    put(&fs, "b", &[7; 1000]);
    let attr = fs.lookup(ROOT_INO, b".stats").unwrap();
    assert_eq!((attr.ino, attr.mode), (STATS_INO, 0o444));
    let o = fs.open(STATS_INO, libc::O_RDONLY, WHO).unwrap();
    assert!(o.direct_io);
    let text = String::from_utf8(read_all(&fs, o.fh)).unwrap();
    fs.release(o.fh);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(field("keys"), 2);
    assert_eq!(field("value_bytes"), 1005);
    assert_eq!(field("max_keys"), 4096);
    assert_eq!(field("pages_total"), 4096);
    // Both values are runs of their size classes; neither takes a page.
    let granules = |len| (bpfdb::abi::value_storage(len).0 / bpfdb::abi::GRANULE) as u64;
    assert_eq!(field("pages_used"), 0);
    assert_eq!(field("small_granules_used"), granules(5) + granules(1000));
    assert!(field("ops_set") >= 4);
    // Kernel memory, by what holds it: each pool holds the segment it got
    // at open, and the small pool at most AHEAD_SEGMENTS more (the page pool
    // was never used); the total counts every part.
    assert!(field("small_granules_ready") >= field("small_granules_used"));
    assert!(field("pages_ready") >= field("pages_used"));
    let segments = field("memory_segments");
    assert!(
        (2..=2 + bpfdb::AHEAD_SEGMENTS).contains(&segments),
        "{text}"
    );
    assert!(field("memory_records_bytes") > 0);
    assert!(
        field("kernel_memory_bytes")
            >= field("memory_wal_bytes")
                + field("memory_records_bytes")
                + field("memory_slots_bytes")
                + field("memory_small_bytes")
                + field("memory_pages_bytes"),
        "{text}"
    );
    for name in [
        "records",
        "small_granules_total",
        "small_runs_lost",
        "ops_get",
        "ops_delete",
        "ops_rename",
        "ops_scan",
        "commits",
        "conflicts",
        "versions_reclaimed",
        "read_retries",
        "errors",
        "txn_commits",
        "txn_aborts",
        "txn_aborts_conflict",
        "txn_active",
        "oldest_snapshot_age_ms",
        "log_bytes",
        "key_reads",
        "cached_opens",
        "direct_opens",
        "slot_waits",
        "worker_waits",
        "log_commits",
        "log_fsyncs",
        "log_acks_waiting",
    ] {
        field(name);
    }
    assert_eq!(text.lines().count(), 42);
    // Memory only: no log.
    assert_eq!(field("log_bytes"), 0);
    // The size a stat shows is the length of the text at that moment.
    let len = text.len() as u64;
    assert!(
        (len - 8..=len + 8).contains(&attr.size),
        "{} vs {len}",
        attr.size
    );
    assert_eq!(errno(fs.open(STATS_INO, libc::O_WRONLY, WHO)), libc::EACCES);
    assert_eq!(errno(fs.open(STATS_INO, libc::O_RDWR, WHO)), libc::EACCES);
}

#[test]
fn statfs_reports_value_memory_and_keys() {
    let fs = fs();
    let before = fs.statfs();
    assert_eq!(
        (before.files, before.namelen, before.bsize),
        (4096, 255, 4096)
    );
    assert!(before.blocks >= (16 << 20) / 4096);
    put(&fs, "big", &[1; 100_000]);
    let after = fs.statfs();
    assert_eq!(after.ffree, before.ffree - 1);
    assert!(after.bfree < before.bfree);
}
