//! Crashes: the daemon is `kill -9`ed while shells write, and restarted on the same DATA_DIR;
//! logs damaged the way a crash or a bad disk leaves them (a torn tail, a flipped byte) are
//! recovered or refused.
//!
//! "Acknowledged" means the shell command that wrote returned 0: only then does a writer note
//! the write in its side file. Writes whose exit status matters go through coreutils `echo`
//! (`env echo`): dash's builtin `echo` never reports an error of the `close` that commits.

use std::collections::BTreeSet;
use std::time::Duration;

use bpfdb_tests::acks::{check_writer, not_from_a_dead_daemon, scratch_lines};
use bpfdb_tests::{Mount, Rng, wait_until, wal};

const ROUNDS: u32 = 8;
const KEY_WRITERS: u32 = 3;
/// Keys per key writer, rewritten round-robin.
const KEYS_PER_WRITER: u32 = 16;
/// Keys every transaction of the transaction writer writes, all with its id.
const TXN_KEYS: u32 = 4;
const BANK_ACCOUNTS: u32 = 4;
const BANK_TOTAL: i64 = 1000;

/// The writers of one round (`$R` is the round), and a checkpointer (`echo checkpoint > .ctl`
/// every 100 ms) so that crashes also hit checkpoints and log rotations. Each loops until
/// `$T/stop` exists or one of its operations fails (the daemon is gone). Side files, appended
/// across rounds (`ack_ckpt` counts the checkpoints):
/// `attempt_wW`/`ack_wW` (`KEY VALUE` before and after each write of key writer W),
/// `attempt_txn`/`ack_txn` (each transaction id before BEGIN and after its commit returned 0).
/// A transaction writes its id to the `TXN_KEYS` keys `t_J`, deletes the key `n_PREV` of the
/// one before it and creates `n_ID`. It finds `n_PREV` in a listing of the root outside the
/// transaction (tw is the only writer of `n_*`): a listing inside it would lock the root's names
/// against the key writers' creates until it commits.
/// Each writer's stderr goes to a file of its own (`err_R-NAME`), so that the messages of
/// several processes cannot interleave.
const WRITERS: &str = r#"
kw() {
  w=$1; i=0
  while [ ! -e $T/stop ]; do
    i=$((i+1)); k=w${w}_$((i % KEYS)); v=r$R-w$w-$i
    echo "$k $v" >> $T/attempt_w$w
    env echo $v > $k || break
    echo "$k $v" >> $T/ack_w$w
  done
}
tw() {
  i=0
  while [ ! -e $T/stop ]; do
    i=$((i+1)); id=r$R-t$i; t=.txn/$id
    echo $id >> $T/attempt_txn
    mkdir $t || break
    j=0
    while [ $j -lt $TXN_KEYS ]; do env echo $id > $t/t_$j || break 2; j=$((j+1)); done
    for f in n_*; do if [ -e "$f" ]; then rm "$t/$f" || break 2; fi; done
    env echo $id > $t/n_$id || break
    env echo commit > $t/.ctl || break
    echo $id >> $T/ack_txn
    rmdir $t || break
  done
}
bw() {
  i=0
  while [ ! -e $T/stop ]; do
    i=$((i+1)); t=.txn/r$R-b$i
    from=$((i % 4)); to=$(( (from + 1 + (i / 4) % 3) % 4 ))
    mkdir $t || break
    a=$(cat $t/b$from) && b=$(cat $t/b$to) || break
    env echo $((a - 7)) > $t/b$from && env echo $((b + 7)) > $t/b$to || break
    env echo commit > $t/.ctl || break
    rmdir $t || break
  done
}
cw() {
  while [ ! -e $T/stop ]; do
    env echo checkpoint > .ctl || break
    echo ok >> $T/ack_ckpt
    sleep 0.1
  done
}
for w in $(seq 1 $KEY_WRITERS); do kw $w 2> $T/err_$R-kw$w & done
tw 2> $T/err_$R-tw & bw 2> $T/err_$R-bw & cw 2> $T/err_$R-cw &
wait
"#;

/// Checks the database against the side files after a restart; returns (acknowledged key
/// writes, acknowledged transactions) so far.
#[track_caller]
fn check_recovered(m: &Mount, round: u32) -> (usize, usize) {
    let values = m.values(".");
    let ctx = |what: String| format!("after crash {round}: {what}\n{}", m.log_tail());
    let mut expected_keys: BTreeSet<String> = BTreeSet::new();

    // Every acknowledged write is there, or a later attempted one.
    let mut acks = 0;
    for w in 1..=KEY_WRITERS {
        let attempts = scratch_lines(m, &format!("attempt_w{w}"));
        let acked = scratch_lines(m, &format!("ack_w{w}"));
        let (n, keys) =
            check_writer(&values, &attempts, &acked).unwrap_or_else(|e| panic!("{}", ctx(e)));
        acks += n;
        expected_keys.extend(keys);
    }

    // The transaction keys carry one transaction's id, all of them, and not an older one
    // than the last acknowledged.
    let attempts = scratch_lines(m, "attempt_txn");
    let acked = scratch_lines(m, "ack_txn");
    let txn_vals: Vec<Option<&str>> = (0..TXN_KEYS)
        .map(|j| values.get(&format!("t_{j}")).map(String::as_str))
        .collect();
    for j in 0..TXN_KEYS {
        expected_keys.insert(format!("t_{j}"));
    }
    assert!(
        txn_vals.iter().all(|v| *v == txn_vals[0]),
        "{}",
        ctx(format!(
            "a partial transaction is visible: t_* = {txn_vals:?}"
        ))
    );
    // Each transaction also deleted its predecessor's key n_ID and created its own: exactly the
    // key of the transaction the t_* keys name is there.
    let marker: Vec<&String> = values.keys().filter(|k| k.starts_with("n_")).collect();
    let want_marker: Vec<String> = txn_vals[0]
        .map(|id| format!("n_{id}"))
        .into_iter()
        .collect();
    assert!(
        marker
            .iter()
            .map(|k| k.as_str())
            .eq(want_marker.iter().map(String::as_str)),
        "{}",
        ctx(format!(
            "t_* = {:?} but the transaction keys n_* are {marker:?}",
            txn_vals[0]
        ))
    );
    expected_keys.extend(want_marker);
    match acked.last() {
        Some(last) => {
            let from = attempts
                .iter()
                .position(|a| a == last)
                .expect("an acked txn was attempted");
            assert!(
                txn_vals[0].is_some_and(|v| attempts[from..].iter().any(|a| a == v)),
                "{}",
                ctx(format!(
                    "t_* = {:?}; last acknowledged transaction {last}, attempted after it {:?}",
                    txn_vals[0],
                    &attempts[from + 1..]
                ))
            );
        }
        None => assert!(
            txn_vals[0].is_none_or(|v| attempts.iter().any(|a| a == v)),
            "{}",
            ctx(format!(
                "t_* = {:?} but no transaction was acknowledged",
                txn_vals[0]
            ))
        ),
    }

    // The bank's transfers are whole: the sum holds, at the root and in a snapshot.
    let mut sum = 0;
    for i in 0..BANK_ACCOUNTS {
        let k = format!("b{i}");
        let v = values
            .get(&k)
            .unwrap_or_else(|| panic!("{}", ctx(format!("account {k} is missing"))));
        sum += v
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("{}", ctx(format!("account {k} holds {v:?}"))));
        expected_keys.insert(k);
    }
    assert_eq!(sum, BANK_TOTAL, "{}", ctx("bank total".into()));
    let snap = m.ok("mkdir .snap/check && cat .snap/check/b* && rmdir .snap/check");
    let snap_sum: i64 = snap.lines().map(|l| l.parse::<i64>().unwrap_or(0)).sum();
    assert_eq!(
        snap_sum,
        BANK_TOTAL,
        "{}",
        ctx(format!("snapshot balances {snap:?}"))
    );

    // Nothing else appeared.
    let extra: Vec<&String> = values
        .keys()
        .filter(|k| !expected_keys.contains(*k))
        .collect();
    assert!(
        extra.is_empty(),
        "{}",
        ctx(format!("unexpected keys {extra:?}"))
    );
    (acks, acked.len())
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_write_and_no_transaction_half() {
    let mut m = Mount::new();
    let mut rng = Rng::from_env_or_time("crash");
    m.ok(&format!(
        "for i in $(seq 0 {}); do env echo {} > b$i || exit 1; done",
        BANK_ACCOUNTS - 1,
        BANK_TOTAL / i64::from(BANK_ACCOUNTS)
    ));
    let stop = m.scratch().join("stop");
    let mut errors: Vec<String> = Vec::new();
    for round in 1..=ROUNDS {
        let script = format!(
            "R={round}; KEYS={KEYS_PER_WRITER}; TXN_KEYS={TXN_KEYS}; KEY_WRITERS={KEY_WRITERS}\n{WRITERS}"
        );
        // Side files each writer appends to once an operation is acknowledged.
        let acked: Vec<String> = (1..=KEY_WRITERS)
            .map(|w| format!("ack_w{w}"))
            .chain(["ack_txn".to_owned(), "ack_ckpt".to_owned()])
            .collect();
        let before: Vec<usize> = acked.iter().map(|f| scratch_lines(&m, f).len()).collect();
        let writers = m.spawn_sh(&script);
        // Every writer has an acknowledged operation in this round before the crash comes.
        let started = wait_until(Duration::from_secs(30), || {
            acked
                .iter()
                .zip(&before)
                .all(|(f, &n)| scratch_lines(&m, f).len() > n)
        });
        assert!(
            started,
            "round {round}: not every writer got an operation acknowledged within 30 s\n{}",
            m.log_tail()
        );
        // Then the crash comes at a random moment of the load.
        let delay = rng.range(100, 1000);
        std::thread::sleep(Duration::from_millis(delay));
        m.kill9_daemon();
        std::fs::write(&stop, "").expect("touch stop");
        // The writers end on the dead mount (ENOTCONN) before it is detached, so none of them
        // can reach the directory underneath.
        let out = writers.finish(Duration::from_secs(30));
        m.detach_dead_mount();
        std::fs::remove_file(&stop).expect("rm stop");
        bpfdb_tests::assert_ok(&out, "the writers' script");
        let names = (1..=KEY_WRITERS).map(|w| format!("kw{w}")).chain([
            "tw".to_owned(),
            "bw".to_owned(),
            "cw".to_owned(),
        ]);
        for name in names {
            errors.extend(
                scratch_lines(&m, &format!("err_{round}-{name}"))
                    .into_iter()
                    .map(|l| format!("round {round} {name}: {l}")),
            );
        }
        m.start_again();
        let (acks, txns) = check_recovered(&m, round);
        eprintln!(
            "crash {round} after {delay} ms: {acks} key writes, {txns} transactions, {} checkpoints acked",
            scratch_lines(&m, "ack_ckpt").len()
        );
    }
    // Each round waited for an acknowledged operation of every writer before its crash.
    let (acks, txns) = check_recovered(&m, ROUNDS);
    let rounds = ROUNDS as usize;
    assert!(
        acks >= rounds * KEY_WRITERS as usize,
        "only {acks} acknowledged writes in {ROUNDS} rounds"
    );
    assert!(
        txns >= rounds,
        "only {txns} acknowledged transactions in {ROUNDS} rounds"
    );
    let checkpoints = scratch_lines(&m, "ack_ckpt").len();
    assert!(
        checkpoints >= rounds,
        "only {checkpoints} checkpoints in {ROUNDS} rounds"
    );
    // The writers only ever failed because the daemon was gone.
    let unexpected = not_from_a_dead_daemon(&errors);
    assert!(
        unexpected.is_empty(),
        "writers failed for other reasons than the crash: {unexpected:#?}"
    );
}

/// 20 one-record-each writes, then `kill -9`; returns the last segment.
fn write_then_crash(m: &mut Mount) -> std::path::PathBuf {
    m.ok("for i in $(seq 1 20); do env echo v$i > k$i || exit 1; done");
    m.ok("env echo final > last");
    m.kill9();
    let seg = m.last_wal_segment();
    let recs = wal::records(&seg);
    assert!(
        recs.len() >= 21,
        "{} holds {} records",
        seg.display(),
        recs.len()
    );
    let (off, len) = *recs.last().expect("records");
    assert_eq!(
        off + len,
        wal::file_len(&seg),
        "{} does not end at a record boundary",
        seg.display()
    );
    seg
}

/// After a torn tail was cut: the prefix is there, the daemon said it cut, and the log it
/// continues is sound (another crash and recovery keep new writes).
fn check_tail_recovery(m: &mut Mount) {
    let log = m.log();
    let says_cut = |line: &str| {
        line.to_lowercase()
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|w| ["cut", "torn", "truncat"].iter().any(|p| w.starts_with(p)))
    };
    assert!(
        log.lines().any(says_cut),
        "the daemon log does not say that it cut the log's tail:\n{log}"
    );
    let want: String = (1..=20).map(|i| format!("v{i}\n")).collect();
    assert_eq!(
        m.ok("for i in $(seq 1 20); do cat k$i || exit 1; done"),
        want
    );
    let last = m.sh("cat last");
    let last_value = String::from_utf8_lossy(&last.stdout);
    assert!(
        !last.status.success() || last_value.is_empty() || last_value == "final\n",
        "the key of the damaged record holds {last_value:?}"
    );
    m.ok("env echo after > after");
    m.kill9();
    m.start_again();
    assert_eq!(m.ok("cat k1 k20 after"), "v1\nv20\nafter\n");
}

#[test]
fn a_log_cut_in_its_last_record_is_cut_back_and_recovers() {
    let mut m = Mount::new();
    let seg = write_then_crash(&mut m);
    wal::truncate_by(&seg, 3);
    m.start_again();
    check_tail_recovery(&mut m);
}

#[test]
fn a_log_cut_inside_the_last_record_header_is_cut_back_and_recovers() {
    let mut m = Mount::new();
    let seg = write_then_crash(&mut m);
    let (off, _) = *wal::records(&seg).last().expect("records");
    // Leave 10 of the 16 header bytes of the last record.
    let len = wal::file_len(&seg);
    wal::truncate_by(&seg, len - (off + 10));
    m.start_again();
    check_tail_recovery(&mut m);
}

#[test]
fn a_flipped_byte_in_the_last_record_is_cut_off_and_recovers() {
    let mut m = Mount::new();
    let seg = write_then_crash(&mut m);
    let len = wal::file_len(&seg);
    wal::flip_byte(&seg, len - 1);
    m.start_again();
    check_tail_recovery(&mut m);
}

#[test]
fn corruption_inside_the_log_refuses_to_start_unless_allow_corrupt_log() {
    let mut m = Mount::new();
    m.ok("for i in $(seq 1 60); do env echo value-$i > k$i || exit 1; done");
    m.kill9();
    let seg = m.last_wal_segment();
    let recs = wal::records(&seg);
    assert!(
        recs.len() >= 60,
        "{} holds {} records",
        seg.display(),
        recs.len()
    );
    // A byte in the middle of the payload of the third record.
    let (off, len) = recs[2];
    wal::flip_byte(
        &seg,
        off + wal::RECORD_HEADER_BYTES + (len - wal::RECORD_HEADER_BYTES) / 2,
    );
    let damaged = std::fs::read(&seg).expect("read segment");

    let (status, log) = m.start_expect_failure(&[]);
    // (Not just "corrupt": the start-up line lists the setting allow_corrupt_log.)
    assert!(
        log.lines().any(|l| {
            let l = l.to_lowercase();
            l.contains("refus") || (l.contains("error") && l.contains("corrupt"))
        }),
        "exit {status}; the log does not say it refuses a corrupt log:\n{log}"
    );
    assert_eq!(
        std::fs::read(&seg).expect("read segment"),
        damaged,
        "the refusing daemon changed the log"
    );

    // With --allow-corrupt-log it starts, serves, and leaves a log that starts again without it.
    m.start_again_with(&["--allow-corrupt-log"]);
    m.ok("env echo fresh > fresh && cat fresh");
    m.kill9();
    m.start_again();
    assert_eq!(m.ok("cat fresh"), "fresh\n");
}

#[test]
fn a_torn_transaction_record_leaves_none_of_the_transaction() {
    let mut m = Mount::new();
    m.ok("for k in a b c; do env echo old > $k || exit 1; done");
    m.ok("mkdir .txn/t && for k in a b c d; do env echo new > .txn/t/$k || exit 1; done");
    m.ok("env echo commit > .txn/t/.ctl");
    assert_eq!(m.ok("cat a b c d"), "new\nnew\nnew\nnew\n");
    m.kill9();
    // The transaction's commit is the log's last record: tear it.
    let seg = m.last_wal_segment();
    wal::truncate_by(&seg, 3);
    m.start_again();
    assert_eq!(m.ok("ls && cat a b c"), "a\nb\nc\nold\nold\nold\n");
}
