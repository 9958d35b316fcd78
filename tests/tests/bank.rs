//! Bank stress: concurrent shell processes move money between accounts, each transfer one
//! transaction in its own `.txn/NAME` directory, retried after any failure; snapshot readers
//! check meanwhile that the total never changes; at the end the balances must be exactly what
//! the acknowledged transfers add up to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bpfdb_tests::{Mount, Rng, msg};

const ACCOUNTS: u64 = 8;
const START_BALANCE: i64 = 100;
const WORKERS: usize = 4;
const READERS: usize = 2;
/// How long the workers run; each shell loop checks `$T/stop` between transfers.
const RUN_SECS: u32 = 8;
/// Transfers planned per worker: more than RUN_SECS allows, so the time bounds the run.
const PLAN: usize = 2000;

/// One worker: for each planned `FROM TO AMOUNT`, begin `.txn/wW-N`, read both balances, write
/// both (moving at most the balance of FROM), commit; append `FROM TO MOVED` to `$T/done_W`
/// only after the commit's write returned 0. On any failure: `rmdir` and retry with a new
/// transaction. stderr (expected: EBUSY, ECANCELED) goes to `$T/err_W`; anything the test
/// must fail on goes to `$T/bad_W`.
const WORKER: &str = r#"
worker() {
  w=$1; n=0; retries=0
  while read from to amt; do
    while :; do
      [ -e $T/stop ] && break 2
      n=$((n+1)); t=.txn/w$w-$n
      if ! mkdir $t; then echo "mkdir $t failed" >> $T/bad_$w; break 2; fi
      if a=$(cat $t/acct$from) && b=$(cat $t/acct$to); then
        move=$amt; [ "$move" -gt "$a" ] && move=$a
        if env echo $((a - move)) > $t/acct$from && env echo $((b + move)) > $t/acct$to \
           && env echo commit > $t/.ctl; then
          echo "$from $to $move" >> $T/done_$w
          rmdir $t || echo "rmdir $t after commit failed" >> $T/bad_$w
          break
        fi
      fi
      rmdir $t || echo "rmdir $t after failure failed" >> $T/bad_$w
      retries=$((retries+1))
    done
  done < $T/plan_$w
  echo $retries > $T/retries_$w
}
reader() {
  r=$1; n=0
  while [ $n -lt 5 ] || [ ! -e $T/stop ]; do
    n=$((n+1)); s=.snap/r$r-$n
    if ! mkdir $s; then echo "mkdir $s failed" >> $T/bad_r$r; break; fi
    if v=$(cat $s/acct0 $s/acct1 $s/acct2 $s/acct3 $s/acct4 $s/acct5 $s/acct6 $s/acct7); then
      echo $v >> $T/sums_$r
    else
      echo "reading $s failed" >> $T/bad_r$r
    fi
    rmdir $s || echo "rmdir $s failed" >> $T/bad_r$r
  done
}
"#;

fn lines_of(m: &Mount, pattern: &str) -> Vec<String> {
    m.ok(&format!("cat {pattern} 2>/dev/null || true"))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn concurrent_transfers_keep_the_total_and_match_the_acknowledged_log() {
    let m = Mount::new();
    let mut rng = Rng::from_env_or_time("bank");
    m.ok(&format!(
        "for i in $(seq 0 {}); do echo {START_BALANCE} > acct$i; done",
        ACCOUNTS - 1
    ));
    for w in 1..=WORKERS {
        let mut plan = String::new();
        for _ in 0..PLAN {
            let from = rng.range(0, ACCOUNTS);
            let to = (from + rng.range(1, ACCOUNTS)) % ACCOUNTS;
            let amt = rng.range(1, 40);
            writeln!(plan, "{from} {to} {amt}").expect("write to String");
        }
        std::fs::write(m.scratch().join(format!("plan_{w}")), plan).expect("write plan");
    }

    let started = Instant::now();
    let script = format!(
        "{WORKER}
         ( sleep {RUN_SECS}; touch $T/stop ) &
         for w in $(seq 1 {WORKERS}); do worker $w 2> $T/err_$w & done
         for r in $(seq 1 {READERS}); do reader $r 2> $T/err_r$r & done
         wait"
    );
    let out = m.sh(&script);
    let elapsed = started.elapsed();
    bpfdb_tests::assert_ok(&out, &script);
    assert!(
        elapsed < Duration::from_secs(40),
        "the bank run took {elapsed:?}"
    );

    // Nothing unexpected happened in the loops.
    let bad = lines_of(&m, "$T/bad_*");
    assert!(bad.is_empty(), "worker/reader failures: {bad:#?}");
    let errors = lines_of(&m, "$T/err_*");
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|l| !l.contains(msg::EBUSY) && !l.contains(msg::ECANCELED))
        .collect();
    assert!(
        unexpected.is_empty(),
        "errors other than EBUSY/ECANCELED ({} of {} lines): {:#?}",
        unexpected.len(),
        errors.len(),
        &unexpected[..unexpected.len().min(10)]
    );

    // Every snapshot saw all eight accounts summing to the starting total.
    let sums = lines_of(&m, "$T/sums_*");
    assert!(
        sums.len() >= READERS * 5,
        "only {} snapshot reads",
        sums.len()
    );
    let total = START_BALANCE * ACCOUNTS as i64;
    for line in &sums {
        let vals: Vec<i64> = line
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(i64::MIN))
            .collect();
        assert!(
            vals.len() == ACCOUNTS as usize
                && vals.iter().all(|&v| v >= 0)
                && vals.iter().sum::<i64>() == total,
            "a snapshot saw balances {line:?}, want {ACCOUNTS} balances >= 0 summing to {total}"
        );
    }

    // The final balances are the replay of the acknowledged transfers.
    let done = lines_of(&m, "$T/done_*");
    assert!(
        done.len() >= 20,
        "only {} transfers committed in {RUN_SECS} s",
        done.len()
    );
    let mut want: BTreeMap<String, i64> = (0..ACCOUNTS)
        .map(|i| (format!("acct{i}"), START_BALANCE))
        .collect();
    for line in &done {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "bad transfer line {line:?}");
        let amount: i64 = f[2].parse().expect("amount");
        *want.get_mut(&format!("acct{}", f[0])).expect("from") -= amount;
        *want.get_mut(&format!("acct{}", f[1])).expect("to") += amount;
    }
    let got: BTreeMap<String, i64> = m
        .values(".")
        .into_iter()
        .map(|(k, v)| {
            let n = v
                .parse()
                .unwrap_or_else(|_| panic!("{k} holds {v:?}, not a balance"));
            (k, n)
        })
        .collect();
    let retries: u64 = lines_of(&m, "$T/retries_*")
        .iter()
        .map(|l| l.parse::<u64>().unwrap_or(0))
        .sum();
    assert_eq!(
        got,
        want,
        "final balances differ from the replay of {} acknowledged transfers ({retries} retries)",
        done.len()
    );
    assert_eq!(got.values().sum::<i64>(), total);

    // Every transaction and snapshot is gone, and the counters saw the commits.
    assert_eq!(m.ok("ls .txn .snap"), ".snap:\n\n.txn:\n");
    assert_eq!(m.stat("txn_active"), 0);
    let commits = m.stat("txn_commits");
    assert!(
        commits >= done.len() as u64,
        "txn_commits {commits} < {} acknowledged transfers",
        done.len()
    );
    eprintln!(
        "bank: {} transfers, {retries} retries, {} snapshot reads in {elapsed:?}",
        done.len(),
        sums.len()
    );
}
