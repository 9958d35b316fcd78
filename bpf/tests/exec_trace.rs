//! The exec tracer over a real engine: real execve calls become engine
//! transactions from a kprobe, through the engine's stages and the
//! tracer's continuations; conflicts with user-space transactions defer a
//! count instead of losing it; the counts are logged and recovered.

use std::process::Command;

use bpfdb::{Db, ExecTracer, Options};

/// Execs per test: enough for several group commits, few enough to be quick.
const EXECS: u64 = 40;

fn opts(data_dir: Option<std::path::PathBuf>) -> Options {
    Options {
        max_keys: 4096,
        value_mem_bytes: 16 << 20,
        slots: 4,
        data_dir,
        ..Options::default()
    }
}

fn tracer(db: &Db) -> ExecTracer {
    let _ = env_logger::builder().is_test(true).try_init();
    db.exec_tracer()
        .unwrap_or_else(|e| panic!("attach the exec tracer: {e}"))
}

/// A program of a name no other test execs, so parallel tests and the
/// machine's own execs do not count in it. A symlink, not a copy: a copy's
/// write fd leaks into a child another test thread forks meanwhile, and
/// exec then fails with ETXTBSY (it did in CI). The tracer counts the
/// basename of the path given to execve, which is the link's.
fn program(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::os::unix::fs::symlink("/bin/true", &p).expect("link /bin/true");
    p
}

/// Held by each test for its whole run. Every tracer sees every exec on the
/// machine, so another test's execs would be counted (under their own
/// names) in this test's database at the same moment as its own: two
/// commits racing for the commit lock, where the loser's count is deferred
/// to the next exec of its name, by design. These tests state exact counts
/// for uncontended execs; `every_exec_counts_under_concurrent_execs` is the
/// one about contention.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(p: &std::path::Path, times: u64) {
    for _ in 0..times {
        let st = Command::new(p).status().expect("exec");
        assert!(st.success());
    }
}

fn count(db: &Db, key: &str) -> Option<u64> {
    let mut out = Vec::new();
    match db.session().get(key.as_bytes(), &mut out) {
        Ok(_) => {
            let text = String::from_utf8(out).expect("decimal text");
            assert!(text.ends_with('\n'), "{text:?}");
            Some(text.trim_end().parse().expect("a count"))
        }
        Err(e) if e.errno == libc::ENOENT => None,
        Err(e) => panic!("get {key}: {e}"),
    }
}

#[test]
fn every_exec_is_one_committed_transaction() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&opts(None)).unwrap();
    let t = tracer(&db);
    let p = program(dir.path(), "bpfdb-trace-a");
    assert_eq!(count(&db, "exec.bpfdb-trace-a"), None);
    run(&p, EXECS);
    // The transaction commits inside execve, before the child even runs.
    assert_eq!(count(&db, "exec.bpfdb-trace-a"), Some(EXECS));
    let c = t.counters().unwrap();
    assert!(c.commits >= EXECS && c.lost == 0, "{c:?}");
    let st = db
        .session()
        .get(b"exec.bpfdb-trace-a", &mut Vec::new())
        .unwrap();
    assert_eq!(st.meta.mode, 0o100644);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now.abs_diff(st.meta.mtime_ns) < 60_000_000_000,
        "mtime is wall clock"
    );
}

#[test]
fn a_count_a_transaction_blocks_waits_and_is_not_lost() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&opts(None)).unwrap();
    let t = tracer(&db);
    let p = program(dir.path(), "bpfdb-trace-b");
    run(&p, 1);
    // A user-space transaction reads the key: its shared lock makes the
    // tracer's write conflict (no-wait), so those counts are deferred.
    let txn = db.begin(false).unwrap();
    txn.get(b"exec.bpfdb-trace-b", &mut Vec::new()).unwrap();
    let before = t.counters().unwrap().deferred;
    run(&p, 5);
    assert_eq!(t.counters().unwrap().deferred, before + 5);
    txn.commit().unwrap();
    assert_eq!(
        count(&db, "exec.bpfdb-trace-b"),
        Some(1),
        "{:?}",
        t.counters()
    );
    // The next event carries the five that waited.
    run(&p, 1);
    assert_eq!(count(&db, "exec.bpfdb-trace-b"), Some(7));
}

#[test]
fn counts_are_logged_and_recovered() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = program(dir.path(), "bpfdb-trace-c");
    {
        let db = Db::open(&opts(Some(data.clone()))).unwrap();
        let _t = tracer(&db);
        run(&p, EXECS);
        // A kernel caller cannot wait for the fsync; its commits are
        // durable once the log writer's next fsync covers them.
        let ts = db
            .session()
            .get(b"exec.bpfdb-trace-c", &mut Vec::new())
            .unwrap()
            .ts;
        db.wait_durable(ts).unwrap();
    }
    let db = Db::open(&opts(Some(data))).unwrap();
    assert_eq!(count(&db, "exec.bpfdb-trace-c"), Some(EXECS));
}

#[test]
fn every_exec_counts_under_concurrent_execs() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&opts(None)).unwrap();
    let t = tracer(&db);
    let names = ["bpfdb-trace-d", "bpfdb-trace-e"];
    let programs: Vec<_> = names.iter().map(|n| program(dir.path(), n)).collect();
    // Both names at once from two threads: their commits race for the
    // commit lock, and a loser's count waits in `pending`.
    std::thread::scope(|s| {
        for p in &programs {
            s.spawn(|| run(p, EXECS));
        }
    });
    // One more exec of each, alone, carries whatever waited.
    for p in &programs {
        run(p, 1);
    }
    let c = t.counters().unwrap();
    for n in names {
        assert_eq!(count(&db, &format!("exec.{n}")), Some(EXECS + 1), "{c:?}");
    }
    assert_eq!(c.lost, 0, "{c:?}");
    assert_eq!(c.events, 2 * (EXECS + 1), "{c:?}");
}

/// A deferred event gives its client slot back. The slot's state holds the
/// event's name, so the count must go into `pending` under that name before
/// the slot is given back: a task that claims the slot next rewrites it.
/// The tracer idles after giving the slot back (a test hook) while another
/// name is exec'd over and over, so other events take the slot inside that
/// window on purpose.
#[test]
fn a_deferred_count_stays_with_its_name_when_its_slot_is_taken_at_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&Options {
        // About 10-30 ms here: dozens of execs of the other name.
        trace_defer_pause_loops: 1 << 22,
        ..opts(None)
    })
    .unwrap();
    let t = tracer(&db);
    let mine = program(dir.path(), "bpfdb-trace-f");
    let other = program(dir.path(), "bpfdb-trace-g");
    run(&mine, 1);
    // A reader's shared lock makes the next count of `mine` conflict.
    let txn = db.begin(false).unwrap();
    txn.get(b"exec.bpfdb-trace-f", &mut Vec::new()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let others = std::thread::scope(|s| {
        let execs = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                run(&other, 1);
                n += 1;
            }
            n
        });
        // Let the other name's execs get going, then defer one of mine.
        while t.counters().unwrap().events < 4 {
            std::thread::yield_now();
        }
        let before = t.counters().unwrap().deferred;
        run(&mine, 1);
        assert_eq!(t.counters().unwrap().deferred, before + 1);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        execs.join().unwrap()
    });
    txn.commit().unwrap();
    // The next exec of each name carries what waited under it.
    run(&mine, 1);
    run(&other, 1);
    let c = t.counters().unwrap();
    assert_eq!(count(&db, "exec.bpfdb-trace-f"), Some(3), "{c:?}");
    assert_eq!(count(&db, "exec.bpfdb-trace-g"), Some(others + 1), "{c:?}");
    assert_eq!(c.lost, 0, "{c:?}");
}
