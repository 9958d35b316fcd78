//! Many writers waiting for the log at once: their replies wait for the fsync without holding a
//! FUSE worker, so one fsync acknowledges many of them; and neither a clean unmount nor a
//! `kill -9` that comes while they wait loses a write that was acknowledged.
//!
//! "Acknowledged" means the shell command that wrote returned 0: only then does a writer note
//! the write in its side file. Writes go through coreutils `echo` (`env echo`), which reports an
//! error of the `close` that commits; dash's builtin `echo` does not.
//!
//! The daemon runs under `strace`, which delays each of its fsyncs (a slow disk, see
//! [`FSYNC_DELAY`]), so that the writers are waiting for the disk rather than for a CPU.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bpfdb_tests::acks::{check_writer, not_from_a_dead_daemon, scratch_lines};
use bpfdb_tests::{Background, Mount, assert_ok, is_fuse_mount, wait_until};

/// Writer processes at once: far more than the FUSE workers and the waiter pool together.
const WRITERS: u32 = 64;
/// Keys per writer, each written only by its writer, round-robin.
const KEYS_PER_WRITER: u32 = 10;
/// Keys per writer of the looping writers: few, so that each key is written again before
/// the daemon goes, and a value older than the last acknowledged one could show.
const LOOPING_KEYS_PER_WRITER: u32 = 3;
/// Acknowledged writes each looping writer has before the unmount or crash: one more than its
/// keys, so that it wrote one of them twice.
const ACKS_BEFORE_STOP: usize = LOOPING_KEYS_PER_WRITER as usize + 1;
/// Writes per writer in the bounded run of the group-commit test.
const WRITES_PER_WRITER: u32 = 40;
/// FUSE worker threads: the daemon's default on the 2-core machines these tests run on, set
/// here so the bound below holds on a machine with more CPUs too.
const FUSE_THREADS: u32 = 2;
/// The daemon's waiter pool (fsd/src/daemon/waiters.rs, `WAITERS`).
const WAITER_THREADS: u32 = 4;
/// A daemon whose threads wait for the fsync of their commit can share one fsync among at
/// most this many commits, one per thread that can wait; replies left to the log share it
/// among every writer waiting.
const BLOCKING_SHARE_BOUND: u32 = FUSE_THREADS + WAITER_THREADS;
/// Commits per fsync the group-commit test wants: more than any daemon whose threads wait.
const MIN_COMMITS_PER_FSYNC: f64 = BLOCKING_SHARE_BOUND as f64;
/// How long each fsync of the log takes: strace delays every `fdatasync` of the daemon by this
/// much, as a slow disk would. An idle disk here syncs in under a millisecond, while a fork and
/// exec of `env echo` costs a few milliseconds of the 2 CPUs: one or two commits arrived per
/// fsync whatever the daemon did, so a count of commits per fsync, or of replies waiting,
/// measured the disk rather than the daemon. With 50 ms, about 25 commits share each fsync.
const FSYNC_DELAY: Duration = Duration::from_millis(50);
/// How long strace may take to attach to the daemon, and to detach from it.
const STRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writers may take to get ready, and the barrier to open.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the bounded writers may run (about 10 s on a 2-core machine). Only
/// `BOUNDED_RUN_TIMEOUT / FSYNC_DELAY` fsyncs fit in it: writers that do not finish in time
/// shared fewer than `writes / that` (2.1) writes per fsync, so a daemon whose threads wait
/// for their own fsync fails here (it takes about 165 s, one commit per fsync).
const BOUNDED_RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the looping writers may take to each get `ACKS_BEFORE_STOP` writes acknowledged,
/// and then to have more than `BLOCKING_SHARE_BOUND` replies waiting for an fsync.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the looping writers may take to end once stopped or once the daemon is gone.
const WRITERS_END_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to detach a busy mount after SIGTERM.
const DETACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Pids of the processes whose environment holds `T=scratch`: every shell of a script run in
/// this mount, and every process those started (the daemon and this test have no `T`).
fn processes_of_scripts(scratch: &Path) -> Vec<u32> {
    let mut want = b"T=".to_vec();
    want.extend_from_slice(scratch.as_os_str().as_bytes());
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == want.as_slice()))
        })
        .collect()
}

#[track_caller]
fn assert_no_writer_left(m: &Mount) {
    let left = processes_of_scripts(m.scratch());
    assert!(
        left.is_empty(),
        "writer processes still running after their script ended: {left:?}"
    );
}

/// Opens the write end of the FIFO `fifo`, once some process waits at its read end: that
/// releases every writer blocked in opening it, and lets the rest through while the returned
/// file stays open.
#[track_caller]
fn open_barrier(fifo: &Path) -> File {
    let mut barrier = None;
    let opened = wait_until(BARRIER_TIMEOUT, || {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(f) => {
                barrier = Some(f);
                true
            }
            // No reader has opened it yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => false,
            Err(e) => panic!("open {} for writing: {e}", fifo.display()),
        }
    });
    assert!(
        opened,
        "no writer opened the barrier {} within {} s",
        fifo.display(),
        BARRIER_TIMEOUT.as_secs()
    );
    barrier.expect("opened")
}

/// A slow disk under the daemon's log: `strace -f` on the daemon, delaying each of its
/// `fdatasync` calls by [`FSYNC_DELAY`] (no other system call is changed). Dropping it
/// detaches strace (SIGINT), so the daemon runs on untraced.
struct SlowFsync {
    strace: std::process::Child,
}

impl SlowFsync {
    #[track_caller]
    fn attach(pid: u32) -> SlowFsync {
        let strace = std::process::Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync"])
            .arg("-e")
            .arg(format!(
                "inject=fdatasync:delay_enter={}us",
                FSYNC_DELAY.as_micros()
            ))
            .arg("-p")
            .arg(pid.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn strace: {e}"));
        let slow = SlowFsync { strace };
        // Every thread of the daemon is traced (strace -f follows the ones started later).
        let traced = || {
            std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                        s.lines().any(|l| {
                            l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                        })
                    })
                })
            })
        };
        assert!(
            wait_until(STRACE_TIMEOUT, traced),
            "strace did not attach to every thread of the daemon within {} s",
            STRACE_TIMEOUT.as_secs()
        );
        slow
    }
}

impl Drop for SlowFsync {
    fn drop(&mut self) {
        bpfdb_tests::send_signal(self.strace.id(), libc::SIGINT);
        if bpfdb_tests::wait_timeout(&mut self.strace, STRACE_TIMEOUT).is_none() {
            let _ = self.strace.kill();
            let _ = self.strace.wait();
            if !std::thread::panicking() {
                panic!(
                    "strace did not detach from the daemon within {} s",
                    STRACE_TIMEOUT.as_secs()
                );
            }
        }
    }
}

/// `WRITERS` writers, each `WRITES_PER_WRITER` times `env echo wN-I > wN_(I % KEYS)`. Each
/// marks `$T/ready_N`, then waits in opening the FIFO `$T/go` until the test opens its other
/// end, so that all of them start writing together. A writer that finished writes its count
/// to `$T/done_N`; a failed write ends it with a message on stderr and `$T/failed_N`.
fn bounded_writers_script() -> String {
    format!(
        r#"
WRITERS={WRITERS}; KEYS={KEYS_PER_WRITER}; WRITES={WRITES_PER_WRITER}
mkfifo $T/go || exit 1
w() {{
  n=$1; i=0
  : > $T/ready_$n
  : < $T/go
  while [ $i -lt $WRITES ]; do
    i=$((i+1))
    env echo w$n-$i > w${{n}}_$((i % KEYS)) || {{
      echo "writer $n: write $i failed" >&2; : > $T/failed_$n; return 1
    }}
  done
  echo $i > $T/done_$n
}}
for n in $(seq 1 $WRITERS); do w $n & done
wait
"#
    )
}

/// `WRITERS` writers looping until `$T/stop` exists or a write fails (the daemon is gone):
/// `env echo wN-I > wN_(I % LOOPING_KEYS_PER_WRITER)`, each write noted as `KEY VALUE` in `$T/attempt_N` before
/// and in `$T/ack_N` once it returned 0. A writer that ended writes its count to `$T/end_N`;
/// its stderr goes to `$T/err_N`.
fn looping_writers_script() -> String {
    format!(
        r#"
WRITERS={WRITERS}; KEYS={LOOPING_KEYS_PER_WRITER}
w() {{
  n=$1; i=0
  while [ ! -e $T/stop ]; do
    i=$((i+1)); k=w${{n}}_$((i % KEYS)); v=w$n-$i
    echo "$k $v" >> $T/attempt_$n
    env echo $v > $k || break
    echo "$k $v" >> $T/ack_$n
  done
  echo $i > $T/end_$n
}}
for n in $(seq 1 $WRITERS); do w $n 2> $T/err_$n & done
wait
"#
    )
}

/// Starts the looping writers and returns once each of them had `ACKS_BEFORE_STOP` writes
/// acknowledged and more replies are waiting for an fsync (`log_acks_waiting` in `.stats`) than a daemon whose
/// threads wait for their own commits' fsync could have waiting; returns them and how many
/// replies were waiting.
#[track_caller]
fn start_looping_writers(m: &Mount) -> (Background, u64) {
    let writers = m.spawn_sh(&looping_writers_script());
    let all_acked = wait_until(LOAD_TIMEOUT, || {
        (1..=WRITERS).all(|n| scratch_lines(m, &format!("ack_{n}")).len() >= ACKS_BEFORE_STOP)
    });
    assert!(
        all_acked,
        "not every writer got {ACKS_BEFORE_STOP} writes acknowledged within {} s\n{}",
        LOAD_TIMEOUT.as_secs(),
        m.log_tail()
    );
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let mut most = 0;
    loop {
        let waiting = m.stat("log_acks_waiting");
        if waiting > u64::from(BLOCKING_SHARE_BOUND) {
            return (writers, waiting);
        }
        most = most.max(waiting);
        assert!(
            Instant::now() < deadline,
            "never more than {most} replies waiting for an fsync in {} s of {WRITERS} writers \
             writing\n{}",
            LOAD_TIMEOUT.as_secs(),
            m.log_tail()
        );
    }
}

/// After the looping writers ended: each wrote its end marker, and none is left running.
#[track_caller]
fn assert_writers_ended(m: &Mount, out: &std::process::Output) {
    assert_ok(out, "the writers' script");
    let unended: Vec<u32> = (1..=WRITERS)
        .filter(|n| scratch_lines(m, &format!("end_{n}")).is_empty())
        .collect();
    assert!(
        unended.is_empty(),
        "writers {unended:?} never reached the end of their loop"
    );
    assert_no_writer_left(m);
}

/// The stderr lines of every looping writer, as `writer N: LINE`.
fn writer_errors(m: &Mount) -> Vec<String> {
    (1..=WRITERS)
        .flat_map(|n| {
            scratch_lines(m, &format!("err_{n}"))
                .into_iter()
                .map(move |l| format!("writer {n}: {l}"))
        })
        .collect()
}

/// Checks the database a restarted daemon recovered against the writers' side files: every
/// key holds its last acknowledged value or one attempted after it (a key never acknowledged
/// holds nothing or an attempted value), and there is no other key. Returns the number of
/// acknowledged writes.
#[track_caller]
fn check_recovered(m: &Mount, after: &str) -> usize {
    let values = m.values(".");
    let ctx = |what: String| format!("after {after}: {what}\n{}", m.log_tail());
    let mut acks = 0;
    for n in 1..=WRITERS {
        let attempts = scratch_lines(m, &format!("attempt_{n}"));
        let acked = scratch_lines(m, &format!("ack_{n}"));
        let (count, _) =
            check_writer(&values, &attempts, &acked).unwrap_or_else(|e| panic!("{}", ctx(e)));
        acks += count;
    }
    let unknown: Vec<&String> = values
        .keys()
        .filter(|k| {
            let Some((w, j)) = k.strip_prefix('w').and_then(|r| r.split_once('_')) else {
                return true;
            };
            let attempted = format!("{k} ");
            !(w.parse::<u32>().is_ok_and(|n| (1..=WRITERS).contains(&n))
                && j.parse::<u32>().is_ok_and(|j| j < LOOPING_KEYS_PER_WRITER)
                && scratch_lines(m, &format!("attempt_{w}"))
                    .iter()
                    .any(|l| l.starts_with(&attempted)))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "{}",
        ctx(format!("keys nobody wrote: {unknown:?}"))
    );
    acks
}

#[test]
fn sixty_four_writers_share_each_fsync() {
    let started = Instant::now();
    let m = Mount::builder().threads(FUSE_THREADS).start();
    let slow_disk = SlowFsync::attach(m.pid());
    let before = m.stats();
    let writers = m.spawn_sh(&bounded_writers_script());
    let ready = wait_until(BARRIER_TIMEOUT, || {
        (1..=WRITERS).all(|n| m.scratch().join(format!("ready_{n}")).exists())
    });
    assert!(
        ready,
        "not every writer got ready within {} s",
        BARRIER_TIMEOUT.as_secs()
    );
    let barrier = open_barrier(&m.scratch().join("go"));
    let ended = |n: u32| {
        ["done", "failed"]
            .iter()
            .any(|what| m.scratch().join(format!("{what}_{n}")).exists())
    };
    let writes = u64::from(WRITERS * WRITES_PER_WRITER);
    if !wait_until(BOUNDED_RUN_TIMEOUT, || (1..=WRITERS).all(ended)) {
        let fsyncs_fit = BOUNDED_RUN_TIMEOUT.as_millis() / FSYNC_DELAY.as_millis();
        panic!(
            "only {} of {WRITERS} writers finished their {writes} writes within {} s: at \
             most {fsyncs_fit} fsyncs of {} ms fit in that, so fewer than {:.1} writes shared \
             each fsync; .stats now: {:?}\n{}",
            (1..=WRITERS).filter(|&n| ended(n)).count(),
            BOUNDED_RUN_TIMEOUT.as_secs(),
            FSYNC_DELAY.as_millis(),
            writes as f64 / fsyncs_fit as f64,
            m.stats(),
            m.log_tail()
        );
    }
    let out = writers.finish(WRITERS_END_TIMEOUT);
    drop(barrier);
    let after = m.stats();
    drop(slow_disk);

    // Every write succeeded.
    let stdout = assert_ok(&out, "the writers' script");
    assert!(
        out.stderr.is_empty(),
        "writes failed:\n{}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_tail()
    );
    let want = WRITES_PER_WRITER.to_string();
    for n in 1..=WRITERS {
        assert_eq!(
            scratch_lines(&m, &format!("done_{n}")),
            [want.as_str()],
            "writer {n} did not finish its writes"
        );
    }
    assert_no_writer_left(&m);
    // Each key holds its writer's last write to it.
    let values = m.values(".");
    let mut want_values = BTreeMap::new();
    for n in 1..=WRITERS {
        for i in 1..=WRITES_PER_WRITER {
            want_values.insert(format!("w{n}_{}", i % KEYS_PER_WRITER), format!("w{n}-{i}"));
        }
    }
    assert!(
        values == want_values,
        "the keys do not hold each writer's last writes: got {} keys, {:?}...",
        values.len(),
        values
            .iter()
            .filter(|(k, v)| want_values.get(*k) != Some(*v))
            .take(10)
            .collect::<Vec<_>>()
    );

    // And they shared the fsyncs.
    let delta = |name: &str| {
        let (b, a) = (before.get(name), after.get(name));
        match (b, a) {
            (Some(b), Some(a)) => a - b,
            _ => panic!(".stats has no `{name}`: before {before:?}, after {after:?}"),
        }
    };
    let commits = delta("log_commits");
    let fsyncs = delta("log_fsyncs");
    // Every write commits at least once (its close; creating a key is one more).
    assert!(
        commits >= writes,
        "{commits} commits logged for {writes} acknowledged writes"
    );
    assert!(fsyncs > 0, "{commits} commits logged, no fsync");
    let per_fsync = commits as f64 / fsyncs as f64;
    eprintln!(
        "{WRITERS} writers x {WRITES_PER_WRITER} writes, {FUSE_THREADS} FUSE threads: \
         {commits} commits, {fsyncs} fsyncs, {per_fsync:.1} commits per fsync; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        per_fsync > MIN_COMMITS_PER_FSYNC,
        "{per_fsync:.1} commits per fsync ({commits} commits, {fsyncs} fsyncs) for {WRITERS} \
         writers: no more than threads that wait for their own fsync would share\n{}",
        m.log_tail()
    );
}

#[test]
fn unmount_under_sixty_four_waiting_writers_loses_no_acknowledged_write() {
    let started = Instant::now();
    let mut m = Mount::builder().threads(FUSE_THREADS).start();
    let slow_disk = SlowFsync::attach(m.pid());
    let (writers, waiting) = start_looping_writers(&m);
    // The writers work in the mount (their working directory), so `umount` is EBUSY: SIGTERM
    // detaches it and the daemon serves them until the last one leaves. They are stopped once
    // the mount is detached; the daemon then exits (0) with them.
    let (mnt, scratch) = (m.path().to_owned(), m.scratch().to_owned());
    let stopper = std::thread::spawn(move || {
        let detached = wait_until(DETACH_TIMEOUT, || !is_fuse_mount(&mnt));
        std::fs::write(scratch.join("stop"), "").expect("touch stop");
        (detached, writers.finish(WRITERS_END_TIMEOUT))
    });
    m.signal_expect_clean_exit(libc::SIGTERM);
    drop(slow_disk);
    let (detached, out) = stopper
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(
        detached,
        "the mount was still attached {} s after SIGTERM",
        DETACH_TIMEOUT.as_secs()
    );
    assert_writers_ended(&m, &out);
    // A detached mount goes on serving whoever still works in it: nobody's write failed.
    let errors = writer_errors(&m);
    assert!(
        errors.is_empty(),
        "writes failed during a clean unmount: {errors:#?}\n{}",
        m.all_logs()
    );
    for n in 1..=WRITERS {
        assert_eq!(
            scratch_lines(&m, &format!("attempt_{n}")),
            scratch_lines(&m, &format!("ack_{n}")),
            "writer {n}: a write that returned was not acknowledged"
        );
    }

    m.start_again();
    let acks = check_recovered(&m, "a clean unmount under 64 writers");
    eprintln!(
        "SIGTERM with {waiting} replies waiting for an fsync: {acks} acknowledged writes \
         recovered; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn kill_9_under_sixty_four_waiting_writers_loses_no_acknowledged_write() {
    let started = Instant::now();
    let mut m = Mount::builder().threads(FUSE_THREADS).start();
    let slow_disk = SlowFsync::attach(m.pid());
    let (writers, waiting) = start_looping_writers(&m);
    m.kill9_daemon();
    drop(slow_disk);
    std::fs::write(m.scratch().join("stop"), "").expect("touch stop");
    // The writers end on the dead mount (ENOTCONN, or ECONNABORTED for those whose reply was
    // waiting) before it is detached, so none of them can reach the directory underneath.
    let out = writers.finish(WRITERS_END_TIMEOUT);
    m.detach_dead_mount();
    assert_writers_ended(&m, &out);
    let errors = writer_errors(&m);
    let unexpected = not_from_a_dead_daemon(&errors);
    assert!(
        unexpected.is_empty(),
        "writes failed for other reasons than the crash: {unexpected:#?}"
    );
    let interrupted = (1..=WRITERS)
        .filter(|n| {
            scratch_lines(&m, &format!("attempt_{n}")).len()
                > scratch_lines(&m, &format!("ack_{n}")).len()
        })
        .count();

    m.start_again();
    let acks = check_recovered(&m, "kill -9 under 64 writers");
    eprintln!(
        "kill -9 with {waiting} replies waiting for an fsync: {acks} acknowledged writes \
         recovered, {interrupted} writers interrupted mid-write; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
