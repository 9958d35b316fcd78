//! Parallel shells on one mount, and two mounts at once (docs/SEMANTICS.md: Reading, Writing).

use std::collections::BTreeSet;

use bpfdb_tests::{Mount, lines};

const WRITERS: usize = 4;
const READERS: usize = 3;
const VALUES_PER_WRITER: usize = 5;
const ROUNDS: usize = 8;
/// Larger than one FUSE write (128 KiB), so a value reaches the daemon in pieces.
const VALUE_BYTES: usize = 300_000;

#[test]
fn readers_see_only_complete_values_while_writers_rewrite_a_shared_key() {
    let m = Mount::new();
    // Distinct values in the scratch dir: every line of val_W_V is "wW-vV".
    m.ok(&format!(
        "yes init | head -c {VALUE_BYTES} > $T/val_init
         for w in $(seq 1 {WRITERS}); do for v in $(seq 1 {VALUES_PER_WRITER}); do
           yes w$w-v$v | head -c {VALUE_BYTES} > $T/val_${{w}}_$v
         done; done
         cat $T/val_init > shared"
    ));
    let script = format!(
        "writer() {{
           w=$1; r=1
           while [ $r -le {ROUNDS} ]; do
             for v in $(seq 1 {VALUES_PER_WRITER}); do
               cat $T/val_${{w}}_$v > shared || echo \"writer $w failed\" >&2
               printf '%s' \"$w-$r-$v\" > own_${{w}}_${{r}}_$v
             done
             r=$((r+1))
           done
         }}
         reader() {{
           n=0
           while [ $n -lt 20 ] || [ ! -e $T/stop ]; do
             cat shared > $T/read_$1 || echo \"read failed\" > $T/read_$1
             # md5, size and head of what was read: the head names the value it came from.
             h=$(md5sum < $T/read_$1 | cut -c1-32)
             echo \"$h $(wc -c < $T/read_$1) $(head -c 12 $T/read_$1 | tr '\\n\\0' '|.')\" >> $T/reads_$1
             n=$((n+1))
           done
         }}
         pids=
         for w in $(seq 1 {WRITERS}); do writer $w & pids=\"$pids $!\"; done
         for r in $(seq 1 {READERS}); do reader $r & done
         wait $pids
         touch $T/stop
         wait"
    );
    m.ok_quiet(&script);

    let allowed: BTreeSet<String> = m
        .ok("md5sum $T/val_* | cut -d' ' -f1")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(allowed.len(), 1 + WRITERS * VALUES_PER_WRITER);
    let reads = m.ok("cat $T/reads_*");
    let reads = lines(&reads);
    assert!(
        reads.len() >= READERS * 20,
        "only {} reads recorded",
        reads.len()
    );
    let bad: Vec<&&str> = reads
        .iter()
        .filter(|r| !r.split(' ').next().is_some_and(|h| allowed.contains(h)))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} reads were not a complete written value of {VALUE_BYTES} bytes \
         (torn, mixed, empty or failed); md5, size, head of the first ones: {:#?}",
        bad.len(),
        reads.len(),
        &bad[..bad.len().min(8)]
    );
    // The shared key ended with a writer's value, not the initial one.
    let init = m.ok("md5sum < $T/val_init | cut -d' ' -f1");
    let last = m.ok("md5sum < shared | cut -d' ' -f1");
    assert_ne!(last, init);
    assert!(
        allowed.contains(last.trim()),
        "final value {last} was never written"
    );

    // Every writer's own keys hold exactly what it wrote.
    let listed = m.ok("for f in own_*; do printf '%s=%s\\n' \"$f\" \"$(cat $f)\"; done");
    let got: BTreeSet<&str> = listed.lines().collect();
    let want: BTreeSet<String> = (1..=WRITERS)
        .flat_map(|w| {
            (1..=ROUNDS).flat_map(move |r| {
                (1..=VALUES_PER_WRITER).map(move |v| format!("own_{w}_{r}_{v}={w}-{r}-{v}"))
            })
        })
        .collect();
    let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got, want);
    assert_eq!(
        m.stat_keys(),
        (1 + WRITERS * ROUNDS * VALUES_PER_WRITER) as u64
    );
}

#[test]
fn mv_replacing_a_key_never_leaves_it_missing() {
    let m = Mount::new();
    m.ok("printf v-init > target");
    let out = m.ok_quiet(
        "( i=0
           while [ $i -lt 300 ]; do
             printf v-$i > tmp$i && mv tmp$i target || echo \"mv $i failed\" >&2
             i=$((i+1))
           done
           touch $T/stop ) &
         reader() {
           n=0
           while [ $n -lt 50 ] || [ ! -e $T/stop ]; do
             v=$(cat target) || v=MISSING
             echo \"$v\"
             n=$((n+1))
           done > $T/reads$1
         }
         reader 1 & reader 2 &
         wait
         cat $T/reads1 $T/reads2
         ls",
    );
    let mut saw = lines(&out);
    assert_eq!(saw.pop(), Some("target"), "ls must show only target: {out}");
    let allowed: BTreeSet<String> = std::iter::once("v-init".to_owned())
        .chain((0..300).map(|i| format!("v-{i}")))
        .collect();
    let bad: Vec<&&str> = saw.iter().filter(|v| !allowed.contains(**v)).collect();
    assert!(saw.len() >= 100, "only {} reads", saw.len());
    assert!(
        bad.is_empty(),
        "{} of {} reads were not a value of target: {:?}",
        bad.len(),
        saw.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(m.ok("cat target"), "v-299");
    assert_eq!(m.stat_keys(), 1);
}

#[test]
fn parallel_appenders_to_their_own_keys() {
    let m = Mount::new();
    m.ok_quiet(
        "for w in 1 2 3 4 5 6; do
           ( i=0; while [ $i -lt 200 ]; do echo \"$w.$i\" >> log$w; i=$((i+1)); done ) &
         done
         wait",
    );
    for w in 1..=6 {
        let want: String = (0..200).map(|i| format!("{w}.{i}\n")).collect();
        assert_eq!(m.ok(&format!("cat log{w}")), want, "log{w}");
    }
    assert_eq!(m.stat_keys(), 6);
}

#[test]
fn two_mounts_at_once_are_independent() {
    let a = Mount::new();
    let b = Mount::new();
    assert_ne!(a.pid(), b.pid());
    a.ok("echo from-a > shared && echo only > a-key");
    b.ok("echo from-b > shared && for i in 1 2 3; do echo $i > b$i; done");
    assert_eq!(a.ok("cat shared && ls"), "from-a\na-key\nshared\n");
    assert_eq!(b.ok("cat shared && ls"), "from-b\nb1\nb2\nb3\nshared\n");
    assert_eq!(a.stat_keys(), 2);
    assert_eq!(b.stat_keys(), 4);
    // Writing in both at the same time.
    let other = b.path().to_str().expect("utf-8 path").to_owned();
    a.ok_quiet(&format!(
        "( i=0; while [ $i -lt 100 ]; do echo a$i > x$i; i=$((i+1)); done ) &
         ( cd '{other}' && i=0; while [ $i -lt 100 ]; do echo b$i > x$i; i=$((i+1)); done ) &
         wait"
    ));
    assert_eq!(a.ok("cat x7 x99"), "a7\na99\n");
    assert_eq!(b.ok("cat x7 x99"), "b7\nb99\n");
    a.ok("rm shared");
    assert_eq!(b.ok("cat shared"), "from-b\n");
    assert_eq!(a.stat_keys(), 101);
    assert_eq!(b.stat_keys(), 104);
    // Separate data directories.
    assert_ne!(a.data_dir(), b.data_dir());
}
