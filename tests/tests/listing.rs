//! Listing the root and the reserved entries, and `.stats` (docs/SEMANTICS.md: Namespace,
//! Daemon "Listing").

use bpfdb_tests::{LISTED_RESERVED, Mount, lines};

#[test]
fn an_empty_mount_lists_only_the_reserved_entries() {
    let m = Mount::new();
    assert_eq!(m.ok("ls"), "");
    assert_eq!(m.ok("ls -A"), ".ctl\n.snap\n.stats\n.txn\n");
    assert_eq!(m.ok("ls -a"), ".\n..\n.ctl\n.snap\n.stats\n.txn\n");
    assert_eq!(m.ok("ls -A .txn .snap"), ".snap:\n\n.txn:\n");
    // (Its stat size is not part of the contract: "regular empty file" is fine too.)
    assert_eq!(
        m.ok("[ -f .stats ] && [ -f .ctl ] && [ -d .txn ] && [ -d .snap ] && cat .stats | grep -c '^keys 0$'"),
        "1\n"
    );
    assert_eq!(m.stat_keys(), 0);
}

#[test]
fn dot_keys_are_keys_hidden_by_plain_ls() {
    let m = Mount::new();
    m.ok("echo h > .hidden && echo v > visible");
    assert_eq!(m.ok("ls"), "visible\n");
    assert_eq!(
        m.ok("ls -A"),
        ".ctl\n.hidden\n.snap\n.stats\n.txn\nvisible\n"
    );
    assert_eq!(m.ok("cat .hidden"), "h\n");
    assert_eq!(m.stat_keys(), 2);
}

#[test]
fn ten_thousand_keys_are_all_listed() {
    const N: usize = 10_000;
    let m = Mount::new();
    m.ok(&format!(
        "i=0; while [ $i -lt {N} ]; do : > k$i; i=$((i+1)); done"
    ));
    assert_eq!(m.ok("ls | wc -l"), format!("{N}\n"));
    assert_eq!(
        m.ok("ls -A | wc -l"),
        format!("{}\n", N + LISTED_RESERVED.len())
    );
    let mut want: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    want.sort();
    let listed = m.ok("ls");
    assert_eq!(lines(&listed), want);
    let listed_all = m.ok("ls -A");
    let mut want_all: Vec<String> = LISTED_RESERVED.iter().map(|s| s.to_string()).collect();
    want_all.extend(want.iter().cloned());
    want_all.sort();
    assert_eq!(lines(&listed_all), want_all);
    assert_eq!(m.stat_keys(), N as u64);
    assert_eq!(
        m.ok("ls -1 -U | sort | uniq -d"),
        "",
        "duplicates in a listing"
    );
    // Values and metadata of a few of them.
    m.ok("echo first > k0 && echo last > k9999");
    assert_eq!(
        m.ok("cat k0 k5000 k9999 && stat -c %s k5000"),
        "first\nlast\n0\n"
    );
    // All gone with one rm.
    m.ok("rm k*");
    assert_eq!(m.ok("ls"), "");
    assert_eq!(m.ok("ls -A"), ".ctl\n.snap\n.stats\n.txn\n");
    assert_eq!(m.stat_keys(), 0);
}

#[test]
fn stats_counts_keys_through_every_kind_of_change() {
    let m = Mount::new();
    let stats = m.stats();
    assert!(stats.contains_key("keys"), "{stats:?}");
    m.ok("for i in $(seq 1 37); do echo $i > k$i; done");
    assert_eq!(m.stat_keys(), 37);
    // Rewrites, appends, truncates and metadata changes add no keys.
    m.ok("echo x > k1 && echo y >> k2 && truncate -s 0 k3 && touch k4 && chmod 600 k5");
    assert_eq!(m.stat_keys(), 37);
    m.ok("rm k1 k2 k3 k4 k5");
    assert_eq!(m.stat_keys(), 32);
    // mv to a new name keeps the count; mv onto an existing key removes one.
    m.ok("mv k6 new6");
    assert_eq!(m.stat_keys(), 32);
    m.ok("mv k7 k8");
    assert_eq!(m.stat_keys(), 31);
    // Failed operations change nothing.
    let _ = m.sh("cat missing; mkdir missing/d; rm missing");
    assert_eq!(m.stat_keys(), 31);
    assert_eq!(m.ok("ls | wc -l"), "31\n");
}

#[test]
fn a_listing_during_changes_still_shows_every_unchanged_key() {
    let m = Mount::new();
    m.ok("i=0; while [ $i -lt 500 ]; do : > s$i; i=$((i+1)); done");
    // Other keys come and go while `ls` walks the table; the 500 stable ones must each appear
    // exactly once in every listing.
    let out = m.ok(
        "( i=0; while [ ! -e $T/stop ]; do : > c$i; rm c$i; i=$((i+1)); done ) &
         for n in 1 2 3 4 5 6 7 8 9 10; do ls > $T/ls$n; done
         touch $T/stop; wait
         for n in 1 2 3 4 5 6 7 8 9 10; do
           echo \"$(grep -c '^s' $T/ls$n) $(grep '^s' $T/ls$n | sort -u | wc -l)\"
         done",
    );
    assert_eq!(lines(&out), vec!["500 500"; 10]);
    assert_eq!(m.ok("ls"), {
        let mut v: Vec<String> = (0..500).map(|i| format!("s{i}\n")).collect();
        v.sort();
        v.concat()
    });
}
