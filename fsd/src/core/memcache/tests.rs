//! `serve` on a real engine (root and eBPF needed), without a socket: the
//! commands against `Fs`, the mount's view of their writes, one snapshot
//! for a multi-key get, and replies held until the write is durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpfdb::{Db, LogFaults, NewMeta, Options, SetFlags, SyncMode};

use super::proto::{HEADER_BYTES, Header};
use super::*;
use crate::core::caller::Caller;
use crate::core::fs::{DEFAULT_TXN_TIMEOUT, NEW_KEY_MODE};

/// Longest a test waits for a reply that should come.
const HUNG: Duration = Duration::from_secs(20);

fn options() -> Options {
    Options {
        max_keys: 4096,
        max_value_bytes: 1 << 20,
        value_mem_bytes: 16 << 20,
        slots: 6,
        ..Options::default()
    }
}

fn open(opts: &Options) -> (Db, Fs) {
    let db = Db::open(opts).unwrap_or_else(|e| panic!("open engine: {e}"));
    let fs = Fs::new(db.clone(), DEFAULT_TXN_TIMEOUT).unwrap_or_else(|e| panic!("start fs: {e}"));
    (db, fs)
}

fn frame(id: u16, body: &[u8]) -> Vec<u8> {
    let mut d = Header {
        request_id: id,
        seq: 0,
        count: 1,
        reserved: 0,
    }
    .encode()
    .to_vec();
    d.extend_from_slice(body);
    d
}

/// Serves `datagram` and returns its reply's datagrams; None: no reply.
fn serve_datagram(fs: &Fs, datagram: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    serve(fs, datagram, move |ds| tx.send(ds).unwrap());
    rx.recv_timeout(HUNG).ok()
}

/// The reply to `body` as request 7, its datagrams joined.
fn ask(fs: &Fs, body: &[u8]) -> String {
    let ds = serve_datagram(fs, &frame(7, body)).expect("no reply");
    let mut out = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        let h = Header::parse(d).unwrap();
        assert_eq!(
            (h.request_id, h.seq as usize, h.count as usize),
            (7, i, ds.len())
        );
        out.extend_from_slice(&d[HEADER_BYTES..]);
    }
    String::from_utf8(out).unwrap()
}

fn set(fs: &Fs, key: &str, value: &str) {
    let body = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
    assert_eq!(ask(fs, body.as_bytes()), "STORED\r\n");
}

#[test]
fn set_get_gets_delete_and_version() {
    let (db, fs) = open(&options());
    assert_eq!(ask(&fs, b"get k\r\n"), "END\r\n");
    set(&fs, "k", "hello");
    assert_eq!(ask(&fs, b"get k\r\n"), "VALUE k 0 5\r\nhello\r\nEND\r\n");
    let ts = db.session().stat(b"k").unwrap().ts;
    assert_eq!(
        ask(&fs, b"gets k missing\r\n"),
        format!("VALUE k 0 5 {ts}\r\nhello\r\nEND\r\n")
    );
    set(&fs, "k", "");
    assert_eq!(ask(&fs, b"get k\r\n"), "VALUE k 0 0\r\n\r\nEND\r\n");
    assert_eq!(ask(&fs, b"delete k\r\n"), "DELETED\r\n");
    assert_eq!(ask(&fs, b"delete k\r\n"), "NOT_FOUND\r\n");
    assert_eq!(ask(&fs, b"get k\r\n"), "END\r\n");
    assert_eq!(ask(&fs, b"version\r\n"), format!("VERSION {VERSION}\r\n"));
    // noreply: nothing at all, and the write is done.
    assert_eq!(ask(&fs, b"set q 0 0 1 noreply\r\nx\r\n"), "");
    assert_eq!(ask(&fs, b"get q\r\n"), "VALUE q 0 1\r\nx\r\nEND\r\n");
    assert_eq!(ask(&fs, b"delete q noreply\r\ndelete q noreply\r\n"), "");
    assert_eq!(ask(&fs, b"get q\r\n"), "END\r\n");
}

#[test]
fn commands_of_one_datagram_run_in_order_until_a_refusal() {
    let (_db, fs) = open(&options());
    assert_eq!(
        ask(
            &fs,
            b"set a 0 0 1\r\n1\r\nget a\r\nbogus\r\nset b 0 0 1\r\n2\r\n"
        ),
        "STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\nERROR\r\n"
    );
    assert_eq!(
        ask(&fs, b"get b\r\n"),
        "END\r\n",
        "nothing after a refusal runs"
    );
    let many = "version\r\n".repeat(proto::MAX_COMMANDS + 1);
    let reply = ask(&fs, many.as_bytes());
    assert_eq!(reply.matches("VERSION").count(), proto::MAX_COMMANDS);
    assert!(reply.ends_with("CLIENT_ERROR more than 64 commands in one datagram\r\n"));
}

#[test]
fn malformed_requests_are_refused_or_dropped() {
    let (_db, fs) = open(&options());
    assert!(serve_datagram(&fs, b"\0\x01\0\0\0\x01").is_none(), "short");
    let mut fragment = frame(1, b"get k\r\n");
    fragment[5] = 2;
    assert!(serve_datagram(&fs, &fragment).is_none(), "1 of 2");
    assert_eq!(ask(&fs, b"get .stats\r\n").lines().count(), 1);
    assert!(ask(&fs, b"set .txn 0 0 1\r\nx\r\n").starts_with("CLIENT_ERROR keys beginning"));
    assert!(ask(&fs, b"set k 0 0 5\r\nab").starts_with("CLIENT_ERROR bad data chunk"));
    assert!(ask(&fs, b"set k 3 0 1\r\nx\r\n").starts_with("CLIENT_ERROR flags must be 0"));
    assert_eq!(ask(&fs, b"incr k 1\r\n"), "ERROR\r\n");
    assert_eq!(
        ask(&fs, b"get k\r\n"),
        "END\r\n",
        "no refused set stored anything"
    );
    // A valid frame with an empty body: an empty reply, no datagram.
    assert_eq!(serve_datagram(&fs, &frame(2, b"")), Some(Vec::new()));
}

#[test]
fn engine_errors_are_server_errors_with_their_message() {
    let opts = Options {
        max_value_bytes: 1000,
        ..options()
    };
    let (db, fs) = open(&opts);
    let big = "x".repeat(1001);
    let reply = ask(&fs, format!("set k 0 0 1001\r\n{big}\r\n").as_bytes());
    assert!(
        reply.starts_with("SERVER_ERROR set \"k\"") && reply.contains("File too large"),
        "{reply}"
    );
    // A key a transaction holds is busy.
    let txn = db.begin(false).unwrap();
    txn.set(b"held", b"t", NewMeta::default(), SetFlags::default())
        .unwrap();
    let reply = ask(&fs, b"set held 0 0 1\r\nx\r\n");
    assert!(
        reply.starts_with("SERVER_ERROR") && reply.contains("busy"),
        "{reply}"
    );
    drop(txn);
}

#[test]
fn set_keeps_an_existing_keys_owner_and_mode_and_gives_new_keys_the_daemons() {
    let (db, fs) = open(&options());
    set(&fs, "new", "v");
    let st = db.session().stat(b"new").unwrap();
    assert_eq!(st.meta.mode, libc::S_IFREG | NEW_KEY_MODE);
    assert_eq!(st.meta.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(st.meta.gid, nix::unistd::getegid().as_raw());
    let meta = NewMeta {
        mode: libc::S_IFREG | libc::S_ISUID | libc::S_ISGID | 0o750,
        uid: 1000,
        gid: 1001,
        mtime_ns: 1,
        ctime_ns: 1,
    };
    db.session()
        .set(b"old", b"v", meta, SetFlags::default())
        .unwrap();
    set(&fs, "old", "w");
    let st = db.session().stat(b"old").unwrap();
    assert_eq!(
        (st.meta.mode, st.meta.uid, st.meta.gid),
        (libc::S_IFREG | 0o750, 1000, 1001),
        "mode and owners kept, set-user-ID and set-group-ID cleared"
    );
    assert!(st.meta.mtime_ns > 1 && st.meta.ctime_ns >= st.meta.mtime_ns);
}

#[test]
fn writes_drop_the_kernels_attributes_before_replying() {
    let (_db, mut fs) = open(&options());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    fs.set_invalidate(Box::new(move |ino| s.lock().unwrap().push(ino)));
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    set(&fs, "k", "1");
    assert_eq!(take(), [ROOT_INO], "a new key changes the root directory");
    let who = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    let ino = fs.lookup(ROOT_INO, b"k").unwrap().ino;
    assert_eq!(fs.getattr(ino, None, who).unwrap().size, 1);
    set(&fs, "k", "22");
    assert_eq!(take(), [ino], "the kernel holds k: its attributes go");
    assert_eq!(fs.getattr(ino, None, who).unwrap().size, 2);
    assert_eq!(ask(&fs, b"delete k\r\n"), "DELETED\r\n");
    assert_eq!(take(), [ino, ROOT_INO]);
}

/// Gets of `a` and `b` at least, and how many changes of their value they
/// must see (the writer and the reader run in turns of a few hundred).
const SNAPSHOT_GETS: u32 = 2000;
const SNAPSHOT_CHANGES: u32 = 20;

/// A transaction writes the same number to `a` and `b` again and again;
/// every `get a b` must show them equal: one snapshot, never half a commit.
#[test]
fn a_multi_key_get_reads_one_snapshot() {
    let (db, fs) = open(&options());
    set(&fs, "a", "0");
    set(&fs, "b", "0");
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + HUNG;
    std::thread::scope(|s| {
        s.spawn(|| {
            let meta = NewMeta {
                mode: libc::S_IFREG | 0o644,
                ..NewMeta::default()
            };
            for i in 1..=u64::MAX {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return;
                }
                let v = i.to_string();
                let Ok(txn) = db.begin(false) else { continue };
                let wrote = txn
                    .set(b"a", v.as_bytes(), meta, SetFlags::default())
                    .is_ok()
                    && txn
                        .set(b"b", v.as_bytes(), meta, SetFlags::default())
                        .is_ok();
                if wrote {
                    let _ = txn.commit();
                }
            }
        });
        let (mut gets, mut changed) = (0, 0);
        let mut last = String::new();
        while (gets < SNAPSHOT_GETS || changed < SNAPSHOT_CHANGES) && Instant::now() < deadline {
            gets += 1;
            let reply = ask(&fs, b"get a b\r\n");
            let values: Vec<&str> = reply.lines().skip(1).step_by(2).take(2).collect();
            assert_eq!(values.len(), 2, "{reply}");
            assert_eq!(values[0], values[1], "half a commit seen: {reply}");
            if values[0] != last {
                changed += 1;
                last = values[0].to_string();
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            changed >= SNAPSHOT_CHANGES,
            "the writer hardly ran: {changed} values seen in {gets} gets"
        );
    });
}

#[test]
fn a_write_is_acknowledged_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let faults = LogFaults::new();
    faults.set_time_bounds(Duration::from_millis(500), Duration::from_secs(5));
    let opts = Options {
        data_dir: Some(dir.path().to_path_buf()),
        sync: SyncMode::Commit,
        log_faults: Some(faults.clone()),
        ..options()
    };
    let (_db, fs) = open(&opts);
    set(&fs, "warm", "up");
    for body in [&b"set k 0 0 1\r\nv\r\n"[..], b"delete k\r\n"] {
        faults.hold_syncs();
        let (tx, rx) = mpsc::channel();
        serve(&fs, &frame(1, body), move |ds| tx.send(ds).unwrap());
        assert!(faults.wait_sync_held(HUNG), "no fsync began");
        assert!(rx.try_recv().is_err(), "acknowledged before its fsync");
        faults.release_syncs();
        let ds = rx.recv_timeout(HUNG).expect("no reply after the fsync");
        assert_eq!(ds.len(), 1);
    }
    // Reads wait for nothing, even while an fsync is held.
    faults.hold_syncs();
    let (tx, rx) = mpsc::channel();
    serve(&fs, &frame(1, b"get warm\r\n"), move |ds| {
        tx.send(ds).unwrap()
    });
    assert!(rx.try_recv().is_ok(), "a get waited");
    faults.release_syncs();
}
