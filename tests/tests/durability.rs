//! Durability through restarts of the daemon on the same DATA_DIR: a clean unmount (which takes
//! a checkpoint), `echo checkpoint > .ctl`, automatic checkpoints (`--checkpoint-bytes`) and
//! `kill -9`; the format version check; the `--sync` modes.
//!
//! Writes whose exit status matters go through coreutils `echo` (`env echo`): dash's builtin
//! `echo` never reports an error of the `close` that commits a value.

use std::path::PathBuf;

use bpfdb_tests::{Mount, msg, wal};

/// Everything a shell can see of the keys: `ls -A` of the root, then per key its name, size,
/// mode, uid, gid, mtime and ctime (to the nanosecond), type, link count and the md5 of its value;
/// and the key count of `.stats`.
fn state(m: &Mount) -> String {
    let keys = m.stat_keys();
    let listing = m.ok("ls -A
         for f in *; do
           [ -e \"$f\" ] || continue
           printf '%s %s\\n' \"$(stat -c '%n|%s|%a|%u|%g|%y|%z|%F|%h' \"$f\")\" \
             \"$(md5sum < \"$f\" | cut -c1-32)\" || exit 1
         done");
    format!("keys {keys}\n{listing}")
}

/// A bit of everything: values of every storage size (empty, small, at and over the 128-byte
/// small-value limit, pages, 1 MiB of random bytes), binary bytes, odd names, chmod, chown,
/// an mtime with nanoseconds, overwrites, appends, deletes, renames, a committed transaction and
/// an aborted one.
fn populate(m: &Mount) {
    m.ok("dd if=/dev/urandom of=$T/rand bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("set -e
          env echo hello > greeting
          printf 'a\\000b\\377\\n' > bin
          printf '' > empty
          head -c 128 /dev/urandom > small128
          head -c 129 /dev/urandom > medium129
          head -c 5000 /dev/urandom > page5000
          cp $T/rand blob
          env echo space > 'sp ace'
          env echo long > L$(printf 'n%.0s' $(seq 1 254))
          env echo secret > secret && chmod 600 secret
          env echo owned > owned && chown 1234:5678 owned
          env echo old > old && touch -d '2001-02-03 04:05:06.123456789' old
          env echo gone > gone && rm gone
          env echo moved > src && mv src dst
          for i in $(seq 1 50); do env echo $i > counter || exit 1; done
          env echo a >> app && env echo b >> app
          mkdir .txn/ok && env echo t1 > .txn/ok/from-txn && mv .txn/ok/dst .txn/ok/dst2
          env echo commit > .txn/ok/.ctl && rmdir .txn/ok
          mkdir .txn/no && env echo t2 > .txn/no/aborted && env echo abort > .txn/no/.ctl
          rmdir .txn/no");
    assert_eq!(
        m.ok("cat counter app dst2 from-txn"),
        "50\na\nb\nmoved\nt1\n"
    );
    m.fails("cat dst", msg::ENOENT);
}

#[track_caller]
fn assert_same_state(m: &Mount, before: &str, after: &str, when: &str) {
    assert_eq!(before, after, "state differs {when}\n{}", m.log_tail());
}

#[test]
fn a_clean_restart_keeps_every_key_value_and_attribute() {
    let mut m = Mount::new();
    populate(&m);
    let before = state(&m);
    assert!(before.contains("|1048576|"), "{before}");
    m.restart();
    assert_same_state(&m, &before, &state(&m), "after a clean restart");
    m.ok("cmp blob $T/rand");
    m.fails("cat aborted", msg::ENOENT);
    m.fails("cat gone", msg::ENOENT);
    // The restarted database takes writes and keeps them across another restart.
    m.ok("env echo after > after-restart");
    let before = state(&m);
    m.restart();
    assert_same_state(&m, &before, &state(&m), "after a second clean restart");
}

#[test]
fn clean_exit_on_umount_and_sigterm_takes_a_checkpoint() {
    let mut m = Mount::new();
    m.ok("env echo v > k");
    m.umount_expect_clean_exit();
    let ckpt = m.data_dir().join("checkpoint");
    assert!(ckpt.is_file(), "no {} after umount", ckpt.display());
    m.start_again();
    assert_eq!(m.ok("cat k"), "v\n");
    m.ok("env echo w > k2");
    let mtime = std::fs::metadata(&ckpt).and_then(|md| md.modified()).ok();
    m.signal_expect_clean_exit(libc::SIGTERM);
    assert_ne!(
        std::fs::metadata(&ckpt).and_then(|md| md.modified()).ok(),
        mtime,
        "the checkpoint was not rewritten on SIGTERM"
    );
    m.start_again();
    assert_eq!(m.ok("cat k k2"), "v\nw\n");
}

fn segment_numbers(segs: &[PathBuf]) -> Vec<u64> {
    segs.iter()
        .map(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).expect("name");
            name.trim_start_matches("wal-")
                .trim_end_matches(".log")
                .parse()
                .unwrap_or_else(|_| panic!("segment name {name}"))
        })
        .collect()
}

#[test]
fn ctl_checkpoint_deletes_old_segments_and_a_restart_keeps_everything() {
    let mut m = Mount::new();
    populate(&m);
    let old = segment_numbers(&m.wal_segments());
    assert!(
        !old.is_empty(),
        "no log segments in {}",
        m.data_dir().display()
    );
    let before = state(&m);
    m.ok("env echo checkpoint > .ctl");
    assert!(
        m.data_dir().join("checkpoint").is_file(),
        "no checkpoint file"
    );
    let new = segment_numbers(&m.wal_segments());
    let newest_old = old.iter().max().copied().unwrap_or(0);
    assert!(
        new.iter().all(|&n| n > newest_old),
        "segments before the checkpoint {old:?}, after it {new:?}: old ones were kept"
    );
    assert_same_state(&m, &before, &state(&m), "right after the checkpoint");
    // Writes after the checkpoint go to the new log; the restart needs both.
    m.ok("env echo later > after-ckpt && env echo 51 > counter && rm dst2");
    let before = state(&m);
    m.restart();
    assert_same_state(&m, &before, &state(&m), "after checkpoint + restart");
    m.ok("cmp blob $T/rand");
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let mut m = Mount::new();
    populate(&m);
    let before = state(&m);
    m.kill9();
    m.start_again();
    assert_same_state(&m, &before, &state(&m), "after kill -9 and restart");
    m.ok("cmp blob $T/rand");
    // Checkpoint, more writes, kill -9 again: checkpoint plus log replay.
    m.ok("env echo checkpoint > .ctl");
    m.ok("env echo x > post && rm greeting && env echo 99 > counter && chmod 640 secret");
    m.ok("mkdir .txn/t && env echo tx > .txn/t/in-txn && env echo commit > .txn/t/.ctl");
    let before = state(&m);
    m.kill9();
    m.start_again();
    assert_same_state(&m, &before, &state(&m), "after checkpoint, writes, kill -9");
    // And once more without anything in between: recovery is repeatable.
    m.kill9();
    m.start_again();
    assert_same_state(&m, &before, &state(&m), "after a second kill -9");
}

#[test]
fn kill_9_with_an_open_transaction_loses_only_that_transaction() {
    let mut m = Mount::new();
    m.ok("env echo 1 > k && env echo 1 > j");
    m.ok("mkdir .txn/open && env echo 2 > .txn/open/k && env echo 2 > .txn/open/new");
    m.ok("mkdir .txn/done && env echo 3 > .txn/done/j && env echo commit > .txn/done/.ctl");
    m.kill9();
    m.start_again();
    assert_eq!(m.ok("ls && cat k j"), "j\nk\n1\n3\n");
    // Transactions do not survive a restart, nor do their locks.
    assert_eq!(m.ok("ls .txn .snap"), ".snap:\n\n.txn:\n");
    m.ok("env echo 4 > k");
}

#[test]
fn a_clean_shutdown_aborts_open_transactions_and_ends_snapshots() {
    let mut m = Mount::new();
    m.ok("env echo 1 > k");
    m.ok("mkdir .txn/open .snap/s && env echo 2 > .txn/open/k && env echo 2 > .txn/open/new");
    m.restart();
    assert_eq!(m.ok("ls && cat k"), "k\n1\n");
    assert_eq!(m.ok("ls .txn .snap"), ".snap:\n\n.txn:\n");
    m.ok("env echo 3 > k && mkdir .txn/open && rmdir .txn/open");
}

#[test]
fn automatic_checkpoints_bound_the_log_and_lose_nothing() {
    let mut m = Mount::builder()
        .arg("--checkpoint-bytes")
        .arg("65536")
        .start();
    m.ok("for i in $(seq 1 40); do head -c 16384 /dev/urandom > $T/v$i; done");
    m.ok("for i in $(seq 1 40); do cp $T/v$i k$i || exit 1; done");
    // 640 KiB were logged; with a checkpoint every 64 KiB the log must have been cut.
    let ok = bpfdb_tests::wait_until(std::time::Duration::from_secs(5), || {
        m.data_dir().join("checkpoint").is_file()
            && m.wal_segments()
                .iter()
                .map(|p| wal::file_len(p))
                .sum::<u64>()
                < 320 << 10
    });
    let sizes: Vec<(PathBuf, u64)> = m
        .wal_segments()
        .into_iter()
        .map(|p| {
            let n = wal::file_len(&p);
            (p, n)
        })
        .collect();
    assert!(
        ok,
        "after 640 KiB of commits with --checkpoint-bytes 65536: checkpoint file {}, segments {sizes:?}\n{}",
        m.data_dir().join("checkpoint").is_file(),
        m.log_tail()
    );
    m.kill9();
    m.start_again();
    m.ok("for i in $(seq 1 40); do cmp k$i $T/v$i || exit 1; done");
    assert_eq!(m.stat_keys(), 40);
}

#[test]
fn an_unknown_checkpoint_format_version_refuses_to_start() {
    let mut m = Mount::new();
    m.ok("env echo v > k");
    m.umount_expect_clean_exit();
    let ckpt = m.data_dir().join("checkpoint");
    assert!(ckpt.is_file(), "no checkpoint after a clean exit");
    wal::put_u32(&ckpt, wal::VERSION_OFFSET, 4242);
    let (status, log) = m.start_expect_failure(&[]);
    assert!(
        log.lines()
            .any(|l| l.contains("4242") && l.to_lowercase().contains("version")),
        "exit {status}; the log does not name version 4242:\n{log}"
    );
    // The refusal changed nothing: with the version put back, everything is there.
    wal::put_u32(&ckpt, wal::VERSION_OFFSET, wal::CHECKPOINT_VERSION);
    m.start_again();
    assert_eq!(m.ok("cat k"), "v\n");
}

#[test]
fn an_unknown_log_format_version_refuses_to_start() {
    let mut m = Mount::new();
    m.ok("for i in $(seq 1 10); do env echo $i > k$i || exit 1; done");
    m.kill9();
    let seg = m.last_wal_segment();
    assert!(
        !wal::records(&seg).is_empty(),
        "{} holds no records",
        seg.display()
    );
    wal::put_u32(&seg, wal::VERSION_OFFSET, 4243);
    let (status, log) = m.start_expect_failure(&[]);
    assert!(
        log.lines()
            .any(|l| l.contains("4243") && l.to_lowercase().contains("version")),
        "exit {status}; the log does not name version 4243:\n{log}"
    );
    wal::put_u32(&seg, wal::VERSION_OFFSET, wal::SEGMENT_VERSION);
    m.start_again();
    assert_eq!(m.ok("cat k1 k10"), "1\n10\n");
}

/// Writes, a transaction, a 1 MiB value; a clean restart keeps them.
fn works_and_survives_a_restart(m: &mut Mount) {
    m.ok("dd if=/dev/urandom of=$T/rand bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("for i in $(seq 1 20); do env echo $i > k$i || exit 1; done && cp $T/rand blob");
    m.ok("mkdir .txn/t && env echo tx > .txn/t/k1 && env echo commit > .txn/t/.ctl");
    assert_eq!(m.ok("cat k1 k20"), "tx\n20\n");
    m.ok("cmp blob $T/rand");
    let before = state(m);
    m.restart();
    assert_same_state(m, &before, &state(m), "after a clean restart");
}

#[test]
fn sync_none_starts_and_works() {
    let mut m = Mount::builder().arg("--sync").arg("none").start();
    works_and_survives_a_restart(&mut m);
}

#[test]
fn sync_interval_starts_and_works() {
    let mut m = Mount::builder().arg("--sync").arg("interval:50").start();
    works_and_survives_a_restart(&mut m);
}

#[test]
fn sync_commit_and_a_wal_buffer_start_and_work() {
    let mut m = Mount::builder()
        .arg("--sync")
        .arg("commit")
        .arg("--wal-buffer")
        .arg("8M")
        .start();
    works_and_survives_a_restart(&mut m);
}

#[test]
fn an_unknown_sync_value_fails_with_a_clear_message() {
    let mut m = Mount::new();
    m.umount_expect_clean_exit();
    for bad in ["bogus", "interval:", "interval:soon", "commit:5"] {
        let (status, log) = m.start_expect_failure(&["--sync", bad]);
        assert!(
            log.lines().any(|l| l.contains(bad) && l.contains("sync")),
            "--sync {bad}: exit {status}, the message names neither the option nor the value:\n{log}"
        );
    }
    m.start_again();
}

/// Runs `script` on the mount while `strace` watches every thread of the daemon, and returns how
/// many fsync/fdatasync calls the daemon made meanwhile.
fn fsyncs_during(m: &Mount, script: &str) -> usize {
    let pid = m.pid();
    let out = m.scratch().join("strace.out");
    let mut strace = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,sync_file_range",
            "-o",
        ])
        .arg(&out)
        .arg("-p")
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strace");
    // Wait until every thread of the daemon is traced.
    let traced = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("status"))
                        .map(|s| {
                            s.lines().any(|l| {
                                l.starts_with("TracerPid:")
                                    && l.split_whitespace().nth(1) != Some("0")
                            })
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    assert!(
        bpfdb_tests::wait_until(std::time::Duration::from_secs(10), traced),
        "strace did not attach to every thread of the daemon"
    );
    m.ok(script);
    // SIGINT detaches strace cleanly.
    bpfdb_tests::send_signal(strace.id(), libc::SIGINT);
    let status = bpfdb_tests::wait_timeout(&mut strace, std::time::Duration::from_secs(10));
    if status.is_none() {
        let _ = strace.kill();
        let _ = strace.wait();
        panic!("strace did not exit after SIGINT");
    }
    std::fs::read_to_string(&out)
        .expect("strace output")
        .lines()
        .filter(|l| {
            l.contains("fsync(") || l.contains("fdatasync(") || l.contains("sync_file_range(")
        })
        .count()
}

const SEQUENTIAL_WRITES: usize = 40;

fn sequential_writes() -> String {
    format!("for i in $(seq 1 {SEQUENTIAL_WRITES}); do env echo $i > k$i || exit 1; done")
}

#[test]
fn sync_commit_syncs_the_log_before_each_sequential_commit_returns() {
    let m = Mount::new();
    let n = fsyncs_during(&m, &sequential_writes());
    eprintln!("--sync commit: {n} syncs for {SEQUENTIAL_WRITES} commits");
    // Each write waits for its own record to be durable, so group commit cannot merge them.
    assert!(
        n >= SEQUENTIAL_WRITES,
        "{n} fsync/fdatasync calls for {SEQUENTIAL_WRITES} sequential commits with --sync commit"
    );
}

#[test]
fn sync_none_does_not_sync_per_commit() {
    let m = Mount::builder().arg("--sync").arg("none").start();
    let n = fsyncs_during(&m, &sequential_writes());
    eprintln!("--sync none: {n} syncs for {SEQUENTIAL_WRITES} commits");
    assert!(
        n < SEQUENTIAL_WRITES / 4,
        "{n} fsync/fdatasync calls for {SEQUENTIAL_WRITES} sequential commits with --sync none"
    );
    assert_eq!(m.ok("cat k1 k40"), "1\n40\n");
}

#[test]
fn a_checkpoint_during_a_transaction_holds_only_committed_data() {
    let mut m = Mount::new();
    m.ok("env echo 1 > k && env echo 1 > j");
    m.ok("mkdir .txn/late .txn/never");
    m.ok("env echo 2 > .txn/late/k && env echo 2 > .txn/late/new-late");
    m.ok("env echo 3 > .txn/never/j && env echo 3 > .txn/never/new-never");
    m.ok("env echo checkpoint > .ctl");
    // One commits after the checkpoint (its record is in the new log), one never does.
    m.ok("env echo commit > .txn/late/.ctl");
    m.kill9();
    m.start_again();
    assert_eq!(m.ok("ls && cat k j new-late"), "j\nk\nnew-late\n2\n1\n2\n");
}

#[test]
fn the_durability_options_can_be_given_as_o_options() {
    let mut m = Mount::builder()
        .arg("-o")
        .arg("sync=interval:50,wal_buffer=8M,checkpoint_bytes=65536,txn_timeout=5")
        .start();
    works_and_survives_a_restart(&mut m);
    m.umount_expect_clean_exit();
    let (status, log) = m.start_expect_failure(&["-o", "sync=sometimes"]);
    assert!(
        log.lines().any(|l| l.contains("sometimes")),
        "-o sync=sometimes: exit {status}, the message does not name the value:\n{log}"
    );
    m.start_again_with(&["-o", "allow_corrupt_log"]);
    assert_eq!(m.ok("cat k20"), "20\n");
}
