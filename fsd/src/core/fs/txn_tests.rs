//! Transactions, snapshots, `.ctl` and durability on the `Fs` core, with a
//! real engine (root and eBPF needed), no FUSE and no mocks. Each helper
//! makes the calls the kernel makes for the shell command it is named after.

use std::time::{Duration, Instant};

use bpfdb::Options;

use super::tests::{CREATE, WHO, cat, errno, fs, fs_on, list, put, read_all, small_options};
use super::*;

/// `mkdir .txn/NAME` (or `.snap/NAME`): the directory's inode.
pub(super) fn mkdir(fs: &Fs, list_ino: u64, name: &str) -> u64 {
    let attr = fs
        .mkdir(list_ino, name.as_bytes(), 0o755, 0, WHO)
        .unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
    assert_eq!(attr.kind, Kind::Dir);
    attr.ino
}

/// `cat DIR/.ctl`
fn state(fs: &Fs, dir: u64) -> String {
    let ctl = fs.lookup(dir, b".ctl").unwrap();
    let o = fs.open(ctl.ino, libc::O_RDONLY, WHO).unwrap();
    let text = String::from_utf8(read_all(fs, o.fh)).unwrap();
    fs.release(o.fh);
    text
}

/// `echo WORD > DIR/.ctl` (`dir` ROOT_INO: the root `.ctl`); the write's
/// result, which is the command's.
pub(super) fn control(fs: &Fs, dir: u64, word: &str) -> Result<()> {
    let ctl = fs.lookup(dir, b".ctl")?;
    let o = fs.open(ctl.ino, libc::O_WRONLY | libc::O_TRUNC, WHO)?;
    let written = fs.write(o.fh, 0, format!("{word}\n").as_bytes());
    let flushed = fs.flush(o.fh);
    fs.release(o.fh);
    written.and(flushed).map(drop)
}

/// `printf DATA > DIR/NAME`: lookup, then open(O_TRUNC) or create.
pub(super) fn write_in(fs: &Fs, dir: u64, name: &str, data: &[u8]) -> Result<()> {
    let o = match fs.lookup(dir, name.as_bytes()) {
        Ok(attr) => fs.open(attr.ino, libc::O_WRONLY | libc::O_TRUNC, WHO)?,
        Err(e) if e.errno == libc::ENOENT => {
            fs.create(dir, name.as_bytes(), 0o644, 0o022, CREATE, WHO)?
                .1
        }
        Err(e) => return Err(e),
    };
    let r = fs.write(o.fh, 0, data).and_then(|_| fs.flush(o.fh));
    fs.release(o.fh);
    r
}

/// `cat DIR/NAME`
fn cat_in(fs: &Fs, dir: u64, name: &str) -> Result<Vec<u8>> {
    let attr = fs.lookup(dir, name.as_bytes())?;
    let o = fs.open(attr.ino, libc::O_RDONLY, WHO)?;
    let data = read_all(fs, o.fh);
    fs.release(o.fh);
    Ok(data)
}

/// `ls -A DIR` without "." and "..", sorted.
fn ls(fs: &Fs, dir: u64) -> Vec<String> {
    let mut names: Vec<String> = list(fs, dir)
        .into_iter()
        .skip(2)
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    names.sort();
    names
}

fn stat_field(fs: &Fs, name: &str) -> u64 {
    let text = fs.stats_text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn committed_ts(state: &str) -> u64 {
    state
        .trim()
        .strip_prefix("committed at ")
        .and_then(|ts| ts.parse().ok())
        .unwrap_or_else(|| panic!("state {state:?}, want committed"))
}

#[test]
fn mkdir_begins_ls_lists_and_rmdir_forgets() {
    let fs = fs();
    assert_eq!(stat_field(&fs, "txn_active"), 0);
    let t1 = mkdir(&fs, TXN_INO, "t1");
    assert_eq!(fs.lookup(TXN_INO, b"t1").unwrap().ino, t1);
    assert_eq!(fs.getattr(t1, None, WHO).unwrap().kind, Kind::Dir);
    assert_eq!(state(&fs, t1), "active\n");
    assert_eq!(errno(fs.mkdir(TXN_INO, b"t1", 0o755, 0, WHO)), libc::EEXIST);
    // .txn and .snap are separate namespaces.
    let s1 = mkdir(&fs, SNAP_INO, "t1");
    assert_ne!(s1, t1);
    let t2 = mkdir(&fs, TXN_INO, "t2");
    assert_eq!(ls(&fs, TXN_INO), ["t1", "t2"]);
    assert_eq!(ls(&fs, SNAP_INO), ["t1"]);
    assert_eq!(fs.getattr(TXN_INO, None, WHO).unwrap().nlink, 4);
    assert_eq!(stat_field(&fs, "txn_active"), 3);
    // Names follow key-name rules.
    assert_eq!(
        errno(fs.mkdir(TXN_INO, &[b'n'; 256], 0o755, 0, WHO)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.mkdir(TXN_INO, b"a\0b", 0o755, 0, WHO)),
        libc::EINVAL
    );
    // A transaction directory holds `.ctl`; a snapshot's holds none.
    assert_eq!(ls(&fs, t1), [".ctl"]);
    assert_eq!(ls(&fs, s1), Vec::<String>::new());
    assert_eq!(errno(fs.lookup(s1, b".ctl")), libc::ENOENT);

    fs.rmdir(TXN_INO, b"t1").unwrap();
    assert_eq!(ls(&fs, TXN_INO), ["t2"]);
    assert_eq!(errno(fs.lookup(TXN_INO, b"t1")), libc::ENOENT);
    assert_eq!(errno(fs.rmdir(TXN_INO, b"t1")), libc::ENOENT);
    // The kernel may still hold the removed directory's inode.
    assert_eq!(errno(fs.getattr(t1, None, WHO)), libc::ENOENT);
    assert_eq!(errno(fs.lookup(t1, b"k")), libc::ENOENT);
    // mkdir and lookup each gave the kernel one reference.
    fs.forget(t1, 2);
    assert_eq!(errno(fs.getattr(t1, None, WHO)), libc::ESTALE);
    // The name is free again, for a new transaction with a new inode.
    let again = mkdir(&fs, TXN_INO, "t1");
    assert_ne!(again, t1);
    assert_eq!(state(&fs, again), "active\n");
    fs.rmdir(TXN_INO, b"t1").unwrap();
    fs.rmdir(TXN_INO, b"t2").unwrap();
    fs.rmdir(SNAP_INO, b"t1").unwrap();
    assert_eq!(stat_field(&fs, "txn_active"), 0);
    let _ = t2;
}

#[test]
fn commit_makes_every_staged_change_visible_at_once() {
    let fs = fs();
    put(&fs, "alice", b"100");
    put(&fs, "bob", b"7");
    put(&fs, "a", b"A");
    let commits = stat_field(&fs, "txn_commits");
    let t1 = mkdir(&fs, TXN_INO, "t1");
    assert_eq!(cat_in(&fs, t1, "alice").unwrap(), b"100");
    write_in(&fs, t1, "alice", b"50").unwrap();
    write_in(&fs, t1, "fresh", b"new").unwrap();
    fs.unlink(t1, b"bob").unwrap();
    fs.rename(t1, b"a", t1, b"b", 0).unwrap();

    // t1's view: committed keys plus its own writes.
    assert_eq!(ls(&fs, t1), [".ctl", "alice", "b", "fresh"]);
    assert_eq!(cat_in(&fs, t1, "alice").unwrap(), b"50");
    assert_eq!(cat_in(&fs, t1, "b").unwrap(), b"A");
    assert_eq!(fs.lookup(t1, b"alice").unwrap().size, 2);
    assert_eq!(errno(cat_in(&fs, t1, "bob")), libc::ENOENT);
    assert_eq!(errno(cat_in(&fs, t1, "a")), libc::ENOENT);
    // Nobody else sees any of it.
    assert_eq!(ls(&fs, ROOT_INO)[4..], ["a", "alice", "bob"]);
    assert_eq!(cat(&fs, "alice").unwrap(), b"100");
    assert_eq!(errno(cat(&fs, "fresh")), libc::ENOENT);

    control(&fs, t1, "commit").unwrap();
    let ts = committed_ts(&state(&fs, t1));
    assert_eq!(ls(&fs, ROOT_INO)[4..], ["alice", "b", "fresh"]);
    assert_eq!(cat(&fs, "alice").unwrap(), b"50");
    assert_eq!(cat(&fs, "b").unwrap(), b"A");
    assert_eq!(cat(&fs, "fresh").unwrap(), b"new");
    assert_eq!(errno(cat(&fs, "bob")), libc::ENOENT);
    assert_eq!(stat_field(&fs, "txn_commits"), commits + 1);
    // The rename kept the key's metadata; a written key has its owner.
    assert_eq!(fs.lookup(ROOT_INO, b"fresh").unwrap().uid, WHO.uid);

    // After the commit every operation in it is refused.
    assert_eq!(errno(cat_in(&fs, t1, "alice")), libc::ECANCELED);
    assert_eq!(errno(write_in(&fs, t1, "x", b"1")), libc::ECANCELED);
    assert_eq!(errno(fs.unlink(t1, b"alice")), libc::ECANCELED);
    assert_eq!(errno(control(&fs, t1, "commit")), libc::ECANCELED);
    assert_eq!(errno(control(&fs, t1, "abort")), libc::ECANCELED);
    assert_eq!(committed_ts(&state(&fs, t1)), ts);
    fs.rmdir(TXN_INO, b"t1").unwrap();

    // A later transaction commits later.
    let t2 = mkdir(&fs, TXN_INO, "t2");
    write_in(&fs, t2, "x", b"1").unwrap();
    control(&fs, t2, "commit").unwrap();
    assert!(committed_ts(&state(&fs, t2)) > ts);
}

#[test]
fn abort_discards_every_staged_change_and_frees_the_locks() {
    let fs = fs();
    put(&fs, "alice", b"100");
    put(&fs, "bob", b"7");
    let aborts = stat_field(&fs, "txn_aborts");
    let t1 = mkdir(&fs, TXN_INO, "t1");
    write_in(&fs, t1, "alice", b"50").unwrap();
    fs.unlink(t1, b"bob").unwrap();
    write_in(&fs, t1, "new", b"x").unwrap();
    control(&fs, t1, "abort").unwrap();
    assert_eq!(state(&fs, t1), "aborted: aborted by request\n");
    assert_eq!(stat_field(&fs, "txn_aborts"), aborts + 1);
    assert_eq!(cat(&fs, "alice").unwrap(), b"100");
    assert_eq!(cat(&fs, "bob").unwrap(), b"7");
    assert_eq!(errno(cat(&fs, "new")), libc::ENOENT);
    assert_eq!(errno(cat_in(&fs, t1, "alice")), libc::ECANCELED);
    assert_eq!(errno(fs.opendir(t1)), libc::ECANCELED);
    assert_eq!(errno(control(&fs, t1, "commit")), libc::ECANCELED);
    // Its locks are gone.
    put(&fs, "alice", b"60");
    fs.unlink(ROOT_INO, b"bob").unwrap();
    assert_eq!(cat(&fs, "alice").unwrap(), b"60");
    // Unknown commands are EINVAL and change nothing.
    let t2 = mkdir(&fs, TXN_INO, "t2");
    assert_eq!(errno(control(&fs, t2, "rollback")), libc::EINVAL);
    assert_eq!(state(&fs, t2), "active\n");
}

#[test]
fn a_conflict_is_ebusy_then_the_transaction_is_aborted_and_ecanceled() {
    let fs = fs();
    put(&fs, "k", b"1");
    put(&fs, "other", b"1");
    let conflicts = stat_field(&fs, "txn_aborts_conflict");
    let t1 = mkdir(&fs, TXN_INO, "t1");
    let t2 = mkdir(&fs, TXN_INO, "t2");
    // t2 reads k (shared lock); t1's open for writing wants it exclusive.
    assert_eq!(cat_in(&fs, t2, "k").unwrap(), b"1");
    let k1 = fs.lookup(t1, b"k").unwrap();
    assert_eq!(
        errno(fs.open(k1.ino, libc::O_WRONLY | libc::O_TRUNC, WHO)),
        libc::EBUSY
    );
    let reason = state(&fs, t1);
    assert!(
        reason.starts_with("aborted: ") && reason.contains("\"k\"") && reason.contains("set"),
        "{reason}"
    );
    assert_eq!(stat_field(&fs, "txn_aborts_conflict"), conflicts + 1);
    // Every later operation in t1 fails with ECANCELED, on any key.
    assert_eq!(errno(cat_in(&fs, t1, "other")), libc::ECANCELED);
    assert_eq!(errno(write_in(&fs, t1, "brand-new", b"x")), libc::ECANCELED);
    assert_eq!(errno(fs.unlink(t1, b"other")), libc::ECANCELED);
    assert_eq!(
        errno(fs.rename(t1, b"other", t1, b"o2", 0)),
        libc::ECANCELED
    );
    assert_eq!(errno(control(&fs, t1, "commit")), libc::ECANCELED);
    assert_eq!(state(&fs, t1), reason, "the reason changed");

    // t2 holds its lock: autocommit writes of k are EBUSY and abort
    // nothing; reads at the root never block.
    assert_eq!(errno(fs.unlink(ROOT_INO, b"k")), libc::EBUSY);
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"other", ROOT_INO, b"k", 0)),
        libc::EBUSY
    );
    assert_eq!(cat(&fs, "k").unwrap(), b"1");
    assert_eq!(state(&fs, t2), "active\n");
    // A write in t2 itself upgrades its lock, and then a reader conflicts.
    write_in(&fs, t2, "k", b"2").unwrap();
    let t3 = mkdir(&fs, TXN_INO, "t3");
    assert_eq!(errno(cat_in(&fs, t3, "k")), libc::EBUSY);
    let reason = state(&fs, t3);
    assert!(
        reason.starts_with("aborted: ") && reason.contains("\"k\"") && reason.contains("locked"),
        "{reason}"
    );
    control(&fs, t2, "commit").unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"2");
    assert_eq!(stat_field(&fs, "txn_aborts_conflict"), conflicts + 2);
}

#[test]
fn open_for_writing_locks_at_once_and_only_flush_stages_the_buffer() {
    let fs = fs();
    put(&fs, "k", b"old");
    let t1 = mkdir(&fs, TXN_INO, "t1");
    let k = fs.lookup(t1, b"k").unwrap();
    let w = fs
        .open(k.ino, libc::O_WRONLY | libc::O_APPEND, WHO)
        .unwrap();
    // Nothing written yet, but the key is locked for t1.
    assert_eq!(errno(fs.unlink(ROOT_INO, b"k")), libc::EBUSY);
    fs.write(w.fh, 0, b"+1").unwrap();
    assert_eq!(cat_in(&fs, t1, "k").unwrap(), b"old");
    fs.flush(w.fh).unwrap();
    assert_eq!(cat_in(&fs, t1, "k").unwrap(), b"old+1");
    // Closing stages; it never commits.
    fs.release(w.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"old");
    // O_TRUNC stages the empty value at open.
    let w = fs.open(k.ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    assert_eq!(cat_in(&fs, t1, "k").unwrap(), b"");
    fs.write(w.fh, 0, b"late").unwrap();
    // Commit takes what was staged; the buffer is staged too late.
    control(&fs, t1, "commit").unwrap();
    assert_eq!(cat(&fs, "k").unwrap(), b"");
    assert_eq!(errno(fs.flush(w.fh)), libc::ECANCELED);
    fs.release(w.fh);
    assert_eq!(cat(&fs, "k").unwrap(), b"");

    // truncate(2) and touch stage at once; chmod and chown are refused.
    let t2 = mkdir(&fs, TXN_INO, "t2");
    put(&fs, "j", b"hello");
    let j = fs.lookup(t2, b"j").unwrap();
    let size = SetAttr {
        size: Some(2),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(j.ino, None, size).unwrap().size, 2);
    let touch = SetAttr {
        mtime_ns: Some(1_000_000_000),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(j.ino, None, touch).unwrap().mtime_ns,
        1_000_000_000
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(j.ino, None, chmod)), libc::EPERM);
    assert_eq!(cat(&fs, "j").unwrap(), b"hello");
    control(&fs, t2, "commit").unwrap();
    assert_eq!(cat(&fs, "j").unwrap(), b"he");
    let attr = fs.lookup(ROOT_INO, b"j").unwrap();
    assert_eq!((attr.mtime_ns, attr.mode), (1_000_000_000, 0o644));
}

#[test]
fn a_snapshot_sees_one_moment_takes_no_locks_and_is_read_only() {
    let fs = fs();
    put(&fs, "x", b"1");
    put(&fs, "y", b"2");
    let s1 = mkdir(&fs, SNAP_INO, "s1");
    put(&fs, "x", b"10");
    fs.unlink(ROOT_INO, b"y").unwrap();
    put(&fs, "z", b"3");
    assert_eq!(ls(&fs, s1), ["x", "y"]);
    assert_eq!(cat_in(&fs, s1, "x").unwrap(), b"1");
    assert_eq!(cat_in(&fs, s1, "y").unwrap(), b"2");
    assert_eq!(errno(cat_in(&fs, s1, "z")), libc::ENOENT);
    // Stable across a transaction's commit, and no lock conflicts with it.
    let t1 = mkdir(&fs, TXN_INO, "t1");
    write_in(&fs, t1, "x", b"20").unwrap();
    assert_eq!(cat_in(&fs, s1, "x").unwrap(), b"1");
    control(&fs, t1, "commit").unwrap();
    assert_eq!(cat_in(&fs, s1, "x").unwrap(), b"1");
    assert_eq!(cat(&fs, "x").unwrap(), b"20");
    assert!(stat_field(&fs, "oldest_snapshot_age_ms") < 60_000);

    // Every write is EROFS and changes nothing.
    let x = fs.lookup(s1, b"x").unwrap();
    assert_eq!(errno(write_in(&fs, s1, "x", b"v")), libc::EROFS);
    assert_eq!(errno(write_in(&fs, s1, "new", b"v")), libc::EROFS);
    assert_eq!(errno(fs.open(x.ino, libc::O_RDWR, WHO)), libc::EROFS);
    assert_eq!(errno(fs.unlink(s1, b"x")), libc::EROFS);
    assert_eq!(errno(fs.rename(s1, b"x", s1, b"w", 0)), libc::EROFS);
    for change in [
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
        SetAttr {
            mtime_ns: Some(1),
            ..SetAttr::default()
        },
    ] {
        assert_eq!(errno(fs.setattr(x.ino, None, change)), libc::EROFS);
    }
    assert_eq!(errno(fs.mkdir(s1, b"d", 0o755, 0, WHO)), libc::EROFS);
    assert_eq!(cat_in(&fs, s1, "x").unwrap(), b"1");
    // Ending it counts as a commit, never an abort.
    let aborts = stat_field(&fs, "txn_aborts");
    fs.rmdir(SNAP_INO, b"s1").unwrap();
    assert_eq!(stat_field(&fs, "txn_aborts"), aborts);
    assert_eq!(stat_field(&fs, "oldest_snapshot_age_ms"), 0);
}

#[test]
fn namespace_rules_inside_transaction_directories() {
    let fs = fs();
    put(&fs, "k", b"v");
    let t1 = mkdir(&fs, TXN_INO, "t1");
    let t2 = mkdir(&fs, TXN_INO, "t2");
    let s1 = mkdir(&fs, SNAP_INO, "s1");
    // Directories inside are staged; snapshots are read-only.
    let d = fs.mkdir(t1, b"d", 0o755, 0, WHO).unwrap();
    assert_eq!(d.kind, Kind::Dir);
    assert_eq!(errno(fs.lookup(ROOT_INO, b"d")), libc::ENOENT);
    fs.rmdir(t1, b"d").unwrap();
    assert_eq!(errno(fs.rmdir(t1, b"k")), libc::ENOTDIR);
    assert_eq!(errno(fs.rmdir(s1, b"k")), libc::EROFS);
    fs.symlink(t1, b"l", b"k", WHO).unwrap();
    assert_eq!(errno(fs.lookup(ROOT_INO, b"l")), libc::ENOENT);
    // .txn holds transactions only; they cannot be renamed.
    assert_eq!(
        errno(fs.create(TXN_INO, b"k", 0o644, 0, CREATE, WHO)),
        libc::EPERM
    );
    assert_eq!(errno(fs.unlink(TXN_INO, b"t1")), libc::EPERM);
    assert_eq!(
        errno(fs.rename(TXN_INO, b"t1", TXN_INO, b"t3", 0)),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"k", TXN_INO, b"k", 0)),
        libc::EPERM
    );
    let chmod = SetAttr {
        mode: Some(0o700),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(t1, None, chmod)), libc::EPERM);
    // Keys move only within one directory.
    assert_eq!(errno(fs.rename(ROOT_INO, b"k", t1, b"k", 0)), libc::EXDEV);
    assert_eq!(errno(fs.rename(t1, b"k", ROOT_INO, b"k2", 0)), libc::EXDEV);
    assert_eq!(errno(fs.rename(t1, b"k", t2, b"k", 0)), libc::EXDEV);
    assert_eq!(errno(fs.rename(s1, b"k", ROOT_INO, b"k2", 0)), libc::EXDEV);
    // `.ctl` is reserved in a transaction directory.
    let ctl = fs.lookup(t1, b".ctl").unwrap();
    assert_eq!((ctl.kind, ctl.mode), (Kind::File, 0o600));
    assert_eq!(errno(fs.unlink(t1, b".ctl")), libc::EPERM);
    assert_eq!(errno(fs.rename(t1, b"k", t1, b".ctl", 0)), libc::EPERM);
    assert_eq!(
        errno(fs.create(t1, b".ctl", 0o644, 0, CREATE | libc::O_EXCL, WHO)),
        libc::EPERM
    );
    assert_eq!(errno(fs.setattr(ctl.ino, None, chmod)), libc::EPERM);
    // None of that touched the transactions.
    assert_eq!(state(&fs, t1), "active\n");
    assert_eq!(state(&fs, t2), "active\n");

    // The same key has its own inode at the root, in each transaction and
    // in the snapshot; all of them work independently and forget works.
    let root_k = fs.lookup(ROOT_INO, b"k").unwrap().ino;
    let t1_k = fs.lookup(t1, b"k").unwrap().ino;
    let t2_k = fs.lookup(t2, b"k").unwrap().ino;
    let s1_k = fs.lookup(s1, b"k").unwrap().ino;
    let mut inos = vec![root_k, t1_k, t2_k, s1_k, t1, t2, s1, ctl.ino];
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), 8);
    fs.forget(t1_k, 1);
    assert_eq!(errno(fs.getattr(t1_k, None, WHO)), libc::ESTALE);
    assert_eq!(fs.getattr(root_k, None, WHO).unwrap().size, 1);
    assert_eq!(fs.getattr(s1_k, None, WHO).unwrap().size, 1);
    // Removing a transaction leaves its inodes dead, the others alive.
    fs.rmdir(TXN_INO, b"t2").unwrap();
    assert_eq!(errno(fs.getattr(t2_k, None, WHO)), libc::ENOENT);
    assert_eq!(state(&fs, t1), "active\n");
}

#[test]
fn rmdir_of_an_active_transaction_aborts_it_and_frees_its_locks() {
    let fs = fs();
    put(&fs, "k", b"1");
    let t1 = mkdir(&fs, TXN_INO, "t1");
    write_in(&fs, t1, "k", b"2").unwrap();
    let ctl = fs.lookup(t1, b".ctl").unwrap();
    let reader = fs.open(ctl.ino, libc::O_RDONLY, WHO).unwrap();
    assert_eq!(errno(fs.unlink(ROOT_INO, b"k")), libc::EBUSY);
    fs.rmdir(TXN_INO, b"t1").unwrap();
    put(&fs, "k", b"3");
    assert_eq!(cat(&fs, "k").unwrap(), b"3");
    // A `.ctl` open before the rmdir reads what it read at open; new
    // commands find no transaction.
    assert_eq!(read_all(&fs, reader.fh), b"active\n");
    fs.release(reader.fh);
    assert_eq!(errno(fs.open(ctl.ino, libc::O_WRONLY, WHO)), libc::ESTALE);
}

#[test]
fn mkdir_gives_eagain_when_every_transaction_entry_is_in_use() {
    let opts = Options {
        max_txns: 3,
        ..small_options(1 << 20)
    };
    let fs = fs_on(&opts, DEFAULT_TXN_TIMEOUT);
    mkdir(&fs, TXN_INO, "t1");
    mkdir(&fs, SNAP_INO, "s1");
    mkdir(&fs, TXN_INO, "t2");
    assert_eq!(errno(fs.mkdir(TXN_INO, b"t3", 0o755, 0, WHO)), libc::EAGAIN);
    assert_eq!(
        errno(fs.mkdir(SNAP_INO, b"s2", 0o755, 0, WHO)),
        libc::EAGAIN
    );
    assert_eq!(ls(&fs, TXN_INO), ["t1", "t2"]);
    fs.rmdir(SNAP_INO, b"s1").unwrap();
    mkdir(&fs, TXN_INO, "t3");
    assert_eq!(ls(&fs, TXN_INO), ["t1", "t2", "t3"]);
}

#[test]
fn an_idle_transaction_is_aborted_after_the_timeout_and_a_busy_one_is_not() {
    let fs = fs_on(&small_options(1 << 20), Duration::from_secs(1));
    put(&fs, "k", b"1");
    put(&fs, "busy", b"1");
    let idle = mkdir(&fs, TXN_INO, "idle");
    let live = mkdir(&fs, TXN_INO, "live");
    let snap = mkdir(&fs, SNAP_INO, "snap");
    write_in(&fs, idle, "k", b"2").unwrap();
    let start = Instant::now();
    // The live one works every 200 ms, the idle one holds its lock on k.
    let freed = loop {
        assert_eq!(cat_in(&fs, live, "busy").unwrap(), b"1");
        if fs.unlink(ROOT_INO, b"k").is_ok() {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never aborted");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(freed >= Duration::from_secs(1), "aborted after {freed:?}");
    assert_eq!(state(&fs, idle), "aborted: idle for 1 s\n");
    assert_eq!(errno(cat_in(&fs, idle, "k")), libc::ECANCELED);
    // The directory stays until rmdir.
    assert_eq!(ls(&fs, TXN_INO), ["idle", "live"]);
    assert_eq!(state(&fs, live), "active\n");
    // Snapshots never time out, and count as open.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(cat_in(&fs, snap, "busy").unwrap(), b"1");
    assert!(stat_field(&fs, "oldest_snapshot_age_ms") >= 1500);
    fs.rmdir(TXN_INO, b"idle").unwrap();
}

#[test]
fn root_ctl_takes_a_checkpoint_and_refuses_other_words() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..small_options(1 << 20)
    };
    let fs = fs_on(&opts, DEFAULT_TXN_TIMEOUT);
    put(&fs, "k", &[7; 10_000]);
    assert!(stat_field(&fs, "log_bytes") > 10_000);
    let ctl = fs.lookup(ROOT_INO, b".ctl").unwrap();
    assert_eq!((ctl.ino, ctl.mode, ctl.kind), (CTL_INO, 0o600, Kind::File));
    let o = fs.open(CTL_INO, libc::O_RDONLY, WHO).unwrap();
    assert!(o.direct_io);
    let usage = String::from_utf8(read_all(&fs, o.fh)).unwrap();
    fs.release(o.fh);
    assert!(usage.contains("checkpoint"), "{usage}");
    assert!(!dir.path().join("checkpoint").exists());

    control(&fs, ROOT_INO, "checkpoint").unwrap();
    assert!(dir.path().join("checkpoint").exists());
    assert!(stat_field(&fs, "log_bytes") < 10_000);
    assert_eq!(
        errno(control(&fs, ROOT_INO, "checkpoint now")),
        libc::EINVAL
    );
    assert_eq!(errno(control(&fs, ROOT_INO, "commit")), libc::EINVAL);
    // `echo checkpoint > .ctl` truncates first: that is allowed.
    let trunc = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(CTL_INO, None, trunc).unwrap();
    assert_eq!(errno(fs.unlink(ROOT_INO, b".ctl")), libc::EPERM);
}

/// Every key's value and metadata, as `ls -l` and `cat` would show them.
fn snapshot_of_keys(fs: &Fs) -> Vec<(String, Vec<u8>, u32, u32, u32, u64)> {
    let mut out: Vec<_> = ls(fs, ROOT_INO)[4..]
        .iter()
        .map(|name| {
            let a = fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
            let value = cat(fs, name).unwrap();
            (name.clone(), value, a.mode, a.uid, a.gid, a.mtime_ns)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_restart_keeps_every_key_value_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |seed| Options {
        data_dir: Some(dir.path().to_path_buf()),
        hash_seed: seed,
        ..small_options(1 << 20)
    };
    let fs = fs_on(&opts(1), DEFAULT_TXN_TIMEOUT);
    for i in 0..50 {
        put(&fs, &format!("k{i}"), format!("value {i}").as_bytes());
    }
    put(
        &fs,
        "big",
        &(0..1 << 20).map(|i| i as u8).collect::<Vec<_>>(),
    );
    let k1 = fs.lookup(ROOT_INO, b"k1").unwrap().ino;
    let meta = SetAttr {
        mode: Some(0o640),
        uid: Some(42),
        gid: Some(43),
        mtime_ns: Some(1_234_567_890_123),
        ..SetAttr::default()
    };
    fs.setattr(k1, None, meta).unwrap();
    control(&fs, ROOT_INO, "checkpoint").unwrap();
    // After the checkpoint: a delete, a rename, a transaction, a touch.
    fs.unlink(ROOT_INO, b"k2").unwrap();
    fs.rename(ROOT_INO, b"k3", ROOT_INO, b"moved", 0).unwrap();
    let t1 = mkdir(&fs, TXN_INO, "t1");
    write_in(&fs, t1, "k4", b"from t1").unwrap();
    write_in(&fs, t1, "t1-new", b"new").unwrap();
    control(&fs, t1, "commit").unwrap();
    let t2 = mkdir(&fs, TXN_INO, "t2");
    write_in(&fs, t2, "never", b"aborted").unwrap();
    let k5 = fs.lookup(ROOT_INO, b"k5").unwrap().ino;
    let touch = SetAttr {
        mtime_ns: Some(987_654_321),
        ..SetAttr::default()
    };
    fs.setattr(k5, None, touch).unwrap();
    let before = snapshot_of_keys(&fs);
    assert_eq!(before.len(), 51);
    drop(fs);

    // A new seed: the log stores names, not hashes.
    let fs = fs_on(&opts(2), DEFAULT_TXN_TIMEOUT);
    assert_eq!(snapshot_of_keys(&fs), before);
    assert_eq!(errno(cat(&fs, "never")), libc::ENOENT);
    assert_eq!(ls(&fs, TXN_INO), Vec::<String>::new());
    let k1 = fs.lookup(ROOT_INO, b"k1").unwrap();
    assert_eq!(
        (k1.mode, k1.uid, k1.gid, k1.mtime_ns),
        (0o640, 42, 43, 1_234_567_890_123)
    );
    // And once more, from the checkpoint alone.
    control(&fs, ROOT_INO, "checkpoint").unwrap();
    drop(fs);
    let fs = fs_on(&opts(3), DEFAULT_TXN_TIMEOUT);
    assert_eq!(snapshot_of_keys(&fs), before);
}
