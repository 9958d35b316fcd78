//! The core's side of the kernel caches: which opens may use the page
//! cache, what a cached read serves, and which commits tell the kernel to
//! drop a root key's attributes (a recorder stands in for the FUSE
//! notifier; the engine is real).

use std::sync::{Arc, Mutex};

use super::tests::{CREATE, WHO, cat, fs, put, read_all};
use super::txn_tests::{control, mkdir, write_in};
use super::*;

/// An `Fs` whose invalidations land in the returned list.
fn recorded() -> (Fs, Arc<Mutex<Vec<u64>>>) {
    let mut fs = fs();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    fs.set_invalidate(Box::new(move |ino| s.lock().unwrap().push(ino)));
    (fs, seen)
}

fn take(seen: &Mutex<Vec<u64>>) -> Vec<u64> {
    let mut v = std::mem::take(&mut *seen.lock().unwrap());
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn small_root_keys_are_cached_others_are_not() {
    let fs = fs();
    let small = put(&fs, "small", &[b's'; CACHE_MAX_VALUE]);
    let big = put(&fs, "big", &[b'b'; CACHE_MAX_VALUE + 1]);
    let o = fs.open(small, libc::O_RDONLY, WHO).unwrap();
    assert!(
        !o.direct_io,
        "a one-page root key is read through the page cache"
    );
    fs.release(o.fh);
    let o = fs.open(big, libc::O_RDONLY, WHO).unwrap();
    assert!(o.direct_io, "a larger value keeps its open-time snapshot");
    fs.release(o.fh);
    assert!(fs.lookup(ROOT_INO, b"small").unwrap().cacheable);
    // A reader opened while a writer is open bypasses the cache: the
    // kernel sizes the file by the writer's buffer until it commits.
    let w = fs.open(small, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
    let o = fs.open(small, libc::O_RDONLY, WHO).unwrap();
    assert!(o.direct_io);
    fs.release(o.fh);
    fs.release(w.fh);
    let o = fs.open(small, libc::O_RDONLY, WHO).unwrap();
    assert!(!o.direct_io, "the writer is gone");
    fs.release(o.fh);
    // Inside a transaction nothing is cached (last: the transaction's
    // read lock would refuse the root writer above).
    let dir = mkdir(&fs, TXN_INO, "t");
    let attr = fs.lookup(dir, b"small").unwrap();
    assert!(!attr.cacheable);
    let o = fs.open(attr.ino, libc::O_RDONLY, WHO).unwrap();
    assert!(o.direct_io);
    fs.release(o.fh);
}

#[test]
fn a_cached_read_serves_the_value_committed_now() {
    let fs = fs();
    let ino = put(&fs, "k", b"old");
    let o = fs.open(ino, libc::O_RDONLY, WHO).unwrap();
    assert!(!o.direct_io);
    put(&fs, "k", b"newer");
    // The kernel fills its shared page from this read: it must hold what
    // the next reader should see, not what this handle saw at open.
    assert_eq!(read_all(&fs, o.fh), b"newer");
    fs.unlink(ROOT_INO, b"k").unwrap();
    assert_eq!(
        read_all(&fs, o.fh),
        b"newer",
        "removed while open: still readable"
    );
    fs.release(o.fh);
}

#[test]
fn root_commits_invalidate_the_keys_the_kernel_holds() {
    let (fs, seen) = recorded();
    let a = put(&fs, "a", b"1");
    // The root directory's attributes are cached too: a create, remove or
    // rename at the root drops them.
    assert_eq!(
        take(&seen),
        [ROOT_INO, a],
        "the create and the writer's commit"
    );
    let (_, o) = fs
        .create(ROOT_INO, b"a", 0o644, 0o022, CREATE & !libc::O_TRUNC, WHO)
        .unwrap();
    fs.write(o.fh, 0, b"2").unwrap();
    fs.flush(o.fh).unwrap();
    fs.release(o.fh);
    assert_eq!(take(&seen), [a]);
    let change = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    fs.setattr(a, None, change).unwrap();
    assert_eq!(take(&seen), [a], "chmod");
    let b = put(&fs, "b", b"3");
    take(&seen);
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(take(&seen), [ROOT_INO, a, b], "both names of a rename");
    fs.unlink(ROOT_INO, b"b").unwrap();
    assert_eq!(take(&seen), [ROOT_INO, a], "a now names b");
}

#[test]
fn a_transaction_commit_invalidates_every_key_it_changed() {
    let (fs, seen) = recorded();
    let x = put(&fs, "x", b"x");
    let y = put(&fs, "y", b"y");
    let z = put(&fs, "z", b"z");
    let untouched = put(&fs, "u", b"u");
    take(&seen);
    let dir = mkdir(&fs, TXN_INO, "t");
    write_in(&fs, dir, "x", b"X").unwrap();
    fs.unlink(dir, b"y").unwrap();
    fs.rename(dir, b"z", dir, b"w", 0).unwrap();
    assert!(take(&seen).is_empty(), "staged changes are not visible yet");
    control(&fs, dir, "commit").unwrap();
    assert_eq!(
        take(&seen),
        [ROOT_INO, x, y, z],
        "the root, not {untouched}, and w was never looked up"
    );
    // The kernel still holds y's inode; using it makes the kernel look
    // the name up again, which then fails.
    assert_eq!(fs.getattr(y, None, WHO).unwrap_err().errno, libc::ESTALE);
    assert_eq!(
        fs.open(y, libc::O_RDONLY, WHO).unwrap_err().errno,
        libc::ESTALE
    );
    assert_eq!(fs.lookup(ROOT_INO, b"y").unwrap_err().errno, libc::ENOENT);
    assert_eq!(cat(&fs, "x").unwrap(), b"X");
    // An aborted transaction changes nothing and invalidates nothing.
    let dir = mkdir(&fs, TXN_INO, "t2");
    write_in(&fs, dir, "x", b"never").unwrap();
    control(&fs, dir, "abort").unwrap();
    assert!(take(&seen).is_empty());
}

#[test]
fn a_writer_waits_for_the_cached_readers_to_close() {
    let fs = fs();
    let ino = put(&fs, "k", b"old");
    let r = fs.open(ino, libc::O_RDONLY, WHO).unwrap();
    assert!(!r.direct_io);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            // A cat that read the value whole, then closed.
            assert_eq!(read_all(&fs, r.fh), b"old");
            fs.release(r.fh);
        });
        let t = std::time::Instant::now();
        // Its O_TRUNC would set the kernel's size to 0 under the reader.
        let w = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, WHO).unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_millis(10));
        // Meanwhile readers take their own snapshot.
        let o = fs.open(ino, libc::O_RDONLY, WHO).unwrap();
        assert!(o.direct_io);
        fs.release(o.fh);
        fs.release(w.fh);
    });
}

/// A non-root writer's first write to a set-ID key commits the mode
/// without those bits (`drop_set_id`), and that commit waits for the key's
/// cached readers like any commit at the root: the adapter must serve that
/// write on the waiter pool, not on a FUSE worker, or the readers' closes
/// could find no worker free. `write_may_wait` is how it tells.
#[test]
fn a_non_root_first_write_to_a_set_id_key_is_one_that_may_wait() {
    let fs = fs();
    for (mode, may_wait) in [(0o6755, true), (0o755, false)] {
        let ino = put(&fs, "k", b"old");
        let change = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        fs.setattr(ino, None, change).unwrap();
        let r = fs.open(ino, libc::O_RDONLY, WHO).unwrap();
        assert!(!r.direct_io, "a cached reader");
        let w = fs.open(ino, libc::O_WRONLY, WHO).unwrap();
        assert_eq!(
            fs.write_may_wait(ino, w.fh),
            may_wait,
            "first write by uid {} to a key of mode {mode:o}",
            WHO.uid
        );
        fs.release(r.fh);
        fs.write(w.fh, 0, b"new").unwrap();
        fs.release(w.fh);
        let attr = fs.lookup(ROOT_INO, b"k").unwrap();
        assert_eq!(attr.mode & 0o7777, 0o755, "set-ID bits gone at the write");
    }
}
