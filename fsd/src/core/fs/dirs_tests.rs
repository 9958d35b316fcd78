//! Directories through the core: entries, moves, limits, and phantom
//! protection of listings inside transactions.

use super::tests::{CREATE, WHO, errno, fs, list};
use super::txn_tests::mkdir as txn_dir;
use super::*;
use crate::core::inodes::TXN_INO;

fn mkdir(fs: &Fs, parent: u64, name: &str) -> u64 {
    let a = fs
        .mkdir(parent, name.as_bytes(), 0o755, 0, WHO)
        .unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
    assert_eq!(a.kind, Kind::Dir);
    a.ino
}

fn create(fs: &Fs, parent: u64, name: &str) -> Result<u64> {
    let (a, o) = fs.create(parent, name.as_bytes(), 0o644, 0, CREATE, WHO)?;
    fs.release(o.fh);
    Ok(a.ino)
}

fn names(fs: &Fs, ino: u64) -> Vec<String> {
    list(fs, ino)
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect()
}

#[test]
fn entries_are_listed_in_order_and_follow_their_moves() {
    let fs = fs();
    let a = mkdir(&fs, ROOT_INO, "a");
    let b = mkdir(&fs, a, "b");
    for n in ["z", "m", "a"] {
        create(&fs, b, n).unwrap();
    }
    assert_eq!(names(&fs, b), [".", "..", "a", "m", "z"]);
    assert_eq!(fs.getattr(a, None, WHO).unwrap().nlink, 3);
    // A directory moves with everything below it, its inode unchanged.
    fs.rename(a, b"b", ROOT_INO, b"b2", 0).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"b2").unwrap().ino, b);
    assert_eq!(names(&fs, b), [".", "..", "a", "m", "z"]);
    assert_eq!(names(&fs, a), [".", ".."]);
    // Not below itself (the kernel checks what it has looked up, the
    // daemon every ancestor); not onto a file; not when not empty.
    let c = mkdir(&fs, b, "c");
    let e = mkdir(&fs, c, "e");
    assert_eq!(errno(fs.rename(ROOT_INO, b"b2", e, b"x", 0)), libc::EINVAL);
    assert_eq!(errno(fs.rename(ROOT_INO, b"b2", b, b"x", 0)), libc::EINVAL);
    assert_eq!(errno(fs.rename(ROOT_INO, b"a", b, b"m", 0)), libc::ENOTDIR);
    assert_eq!(errno(fs.rmdir(ROOT_INO, b"b2")), libc::ENOTEMPTY);
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"a", b, b"c", 0)),
        libc::ENOTEMPTY
    );
    fs.rmdir(c, b"e").unwrap();
    // Onto an empty directory: replaces it.
    fs.rename(ROOT_INO, b"a", b, b"c", 0).unwrap();
    assert_eq!(fs.lookup(b, b"c").unwrap().ino, a);
    assert_eq!(errno(fs.getattr(c, None, WHO)), libc::ENOENT);
    for n in ["a", "m", "z"] {
        fs.unlink(b, n.as_bytes()).unwrap();
    }
    fs.rmdir(b, b"c").unwrap();
    fs.rmdir(ROOT_INO, b"b2").unwrap();
    assert_eq!(errno(fs.lookup(ROOT_INO, b"b2")), libc::ENOENT);
}

#[test]
fn names_below_the_root_have_their_own_limit() {
    let fs = fs();
    let d = mkdir(&fs, ROOT_INO, "d");
    let longest = "n".repeat(tree::SUB_NAME_MAX);
    create(&fs, d, &longest).unwrap();
    let over = "n".repeat(tree::SUB_NAME_MAX + 1);
    assert_eq!(errno(create(&fs, d, &over)), libc::ENAMETOOLONG);
    assert_eq!(
        errno(fs.mkdir(d, over.as_bytes(), 0o755, 0, WHO)),
        libc::ENAMETOOLONG
    );
    create(&fs, ROOT_INO, &"r".repeat(bpfdb::abi::KEY_MAX)).unwrap();
}

/// The anomaly: t lists d and sees it empty; a create in d commits; t
/// commits a verdict that d was empty. Serializable only if the create
/// waits for t (here: EBUSY while t holds its listing).
#[test]
fn a_listing_in_a_transaction_holds_off_creates_and_removals_in_it() {
    let fs = fs();
    let d = mkdir(&fs, ROOT_INO, "d");
    create(&fs, d, "old").unwrap();
    let t = txn_dir(&fs, TXN_INO, "t");
    let td = fs.lookup(t, b"d").unwrap().ino;
    assert_eq!(names(&fs, td), [".", "..", "old"]);
    assert_eq!(errno(create(&fs, d, "new")), libc::EBUSY);
    assert_eq!(errno(fs.unlink(d, b"old")), libc::EBUSY);
    assert_eq!(errno(fs.mkdir(d, b"sub", 0o755, 0, WHO)), libc::EBUSY);
    // A name t found missing is held off too.
    let t2 = txn_dir(&fs, TXN_INO, "t2");
    let t2d = fs.lookup(t2, b"d").unwrap().ino;
    assert_eq!(errno(fs.lookup(t2d, b"x")), libc::ENOENT);
    super::txn_tests::control(&fs, t, "commit").unwrap();
    assert_eq!(errno(create(&fs, d, "x")), libc::EBUSY);
    super::txn_tests::control(&fs, t2, "commit").unwrap();
    create(&fs, d, "x").unwrap();
    create(&fs, d, "new").unwrap();
    assert_eq!(names(&fs, d), [".", "..", "new", "old", "x"]);
}

#[test]
fn a_transaction_stages_a_tree_and_commits_it_at_once() {
    let fs = fs();
    let t = txn_dir(&fs, TXN_INO, "t");
    let a = mkdir(&fs, t, "a");
    let b = mkdir(&fs, a, "b");
    create(&fs, b, "k").unwrap();
    fs.rename(t, b"a", t, b"a2", 0).unwrap();
    assert_eq!(errno(fs.lookup(ROOT_INO, b"a2")), libc::ENOENT);
    assert_eq!(names(&fs, t)[..], [".", "..", ".ctl", "a2"]);
    super::txn_tests::control(&fs, t, "commit").unwrap();
    let a2 = fs.lookup(ROOT_INO, b"a2").unwrap().ino;
    let b2 = fs.lookup(a2, b"b").unwrap().ino;
    assert_eq!(names(&fs, b2), [".", "..", "k"]);
}

/// Two transactions each move one of two directories below the other:
/// both staged, both committed, the tree would be a cycle cut off from the
/// root. The second has to read what the first wrote (here the entry it
/// moved; in general the records on the path to its target, which its
/// lookups and its ancestor walk read), so it conflicts instead.
#[test]
fn two_crossing_moves_cannot_both_commit_a_cycle() {
    let fs = fs();
    mkdir(&fs, ROOT_INO, "a");
    mkdir(&fs, ROOT_INO, "b");
    let t1 = txn_dir(&fs, TXN_INO, "t1");
    let t2 = txn_dir(&fs, TXN_INO, "t2");
    let b1 = fs.lookup(t1, b"b").unwrap().ino;
    fs.rename(t1, b"a", b1, b"x", 0).unwrap();
    let a2 = fs.lookup(t2, b"a").map(|a| a.ino);
    let moved = a2.and_then(|a2| fs.rename(t2, b"b", a2, b"y", 0));
    assert_eq!(errno(moved), libc::EBUSY);
    super::txn_tests::control(&fs, t1, "commit").unwrap();
    assert_eq!(
        errno(super::txn_tests::control(&fs, t2, "commit")),
        libc::ECANCELED
    );
    let b = fs.lookup(ROOT_INO, b"b").unwrap().ino;
    let x = fs.lookup(b, b"x").unwrap().ino;
    assert_eq!(names(&fs, x), [".", ".."]);
    assert_eq!(errno(fs.lookup(ROOT_INO, b"a")), libc::ENOENT);
}

/// A directory whose entry list outgrows `max_value` (here 4 KiB: long
/// names fill it after a few dozen) is full: ENOSPC, not EFBIG, and
/// nothing of the refused create stays.
#[test]
fn a_list_over_max_value_is_a_full_directory() {
    let fs = super::tests::fs_on(
        &super::tests::small_options(4096),
        super::DEFAULT_TXN_TIMEOUT,
    );
    let d = mkdir(&fs, ROOT_INO, "d");
    let mut made = 0;
    let err = loop {
        match create(&fs, d, &format!("{made:03}{}", "n".repeat(200))) {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 100, "a 4 KiB list took 100 names of 203 bytes");
    };
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
    assert_eq!(made, 4096 / (2 + 203));
    assert_eq!(names(&fs, d).len(), 2 + made);
    // A short name still fits where a long one did not.
    create(&fs, d, "s").unwrap();
}

/// memcached works on root keys and may name a directory or a link there:
/// its `get` is a miss, its `set` refused, its `delete` (an unlink) EISDIR,
/// and the directory stays whole.
#[test]
fn memcached_paths_leave_directories_and_links_alone() {
    let fs = fs();
    let d = mkdir(&fs, ROOT_INO, "d");
    create(&fs, d, "k").unwrap();
    fs.symlink(ROOT_INO, b"l", b"d/k", WHO).unwrap();
    let mut hits = Vec::new();
    fs.read_keys(&[b"d", b"l"], |k, _, _| {
        hits.push(k.to_vec());
        true
    })
    .unwrap();
    assert!(hits.is_empty(), "{hits:?}");
    assert_eq!(errno(fs.store_key(b"d", b"v")), libc::EPERM);
    assert_eq!(errno(fs.store_key(b"l", b"v")), libc::EPERM);
    assert_eq!(errno(fs.unlink(ROOT_INO, b"d")), libc::EISDIR);
    assert_eq!(names(&fs, d), [".", "..", "k"]);
    assert_eq!(
        fs.readlink(fs.lookup(ROOT_INO, b"l").unwrap().ino).unwrap(),
        b"d/k"
    );
}

/// The same anomaly at the root, whose files are plain engine keys that
/// anyone (one-op creates, memcached, eBPF clients) may add or remove: t
/// lists its root; until t ends, a change of the root's names waits for
/// it. A new value of a listed file changes no name and goes through.
#[test]
fn a_listing_of_the_root_in_a_transaction_holds_off_creates_and_removals_there() {
    let fs = fs();
    create(&fs, ROOT_INO, "old").unwrap();
    let t = txn_dir(&fs, TXN_INO, "t");
    assert_eq!(names(&fs, t), [".", "..", ".ctl", "old"]);
    assert_eq!(errno(create(&fs, ROOT_INO, "new")), libc::EBUSY);
    assert_eq!(errno(fs.unlink(ROOT_INO, b"old")), libc::EBUSY);
    let moved = fs.rename(ROOT_INO, b"old", ROOT_INO, b"old2", 0);
    assert_eq!(errno(moved), libc::EBUSY);
    let linked = fs.symlink(ROOT_INO, b"l", b"old", WHO);
    assert_eq!(errno(linked), libc::EBUSY);
    assert_eq!(errno(fs.mkdir(ROOT_INO, b"d", 0o755, 0, WHO)), libc::EBUSY);
    assert_eq!(errno(fs.store_key(b"mc", b"v")), libc::EBUSY);
    fs.store_key(b"old", b"new value").unwrap();
    super::txn_tests::control(&fs, t, "commit").unwrap();
    create(&fs, ROOT_INO, "new").unwrap();
    fs.store_key(b"mc", b"v").unwrap();
    fs.rename(ROOT_INO, b"old", ROOT_INO, b"old2", 0).unwrap();
    let root: Vec<_> = names(&fs, ROOT_INO)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(root, ["mc", "new", "old2"]);
}
