//! The kernel's caches of root keys (docs/SEMANTICS.md: Reading, Metadata, Transactions).
//!
//! Root keys' entries and attributes are cached by the kernel for an hour, and a read-only open
//! of a small root key (at most 4096 bytes, no write or commit pending on it: fsd/src/keyuse.rs)
//! reads through the page cache. What keeps that right is the daemon: every commit that changes a root key tells the kernel to
//! drop the key's cached attributes before the commit is acknowledged, and the kernel, seeing a
//! new mtime or size on its next use, drops the cached pages too. These tests check what a
//! shell sees: a read started after an acknowledged commit never returns what was there
//! before. Each test but the last (a sanity check across `kill -9`) has checks that only that
//! invalidation makes pass: a change the kernel cannot see for itself (a transaction commit,
//! which writes through another inode), or attributes the kernel re-cached while a writer was
//! open.
//!
//! `.stats` shows the cache at work: `key_reads` counts the READ requests the daemon served for
//! keys (a page-cache hit never reaches it), `cached_opens` and `direct_opens` the opens of keys
//! through the page cache and with direct I/O. `.stats` itself is neither.
//!
//! Writes whose exit status matters go through coreutils `echo` (`env echo`): dash's builtin
//! `echo` never reports an error of the `close` that commits a value.

use std::collections::BTreeSet;

use bpfdb_tests::{Mount, assert_ok, msg};

/// The largest value read through the page cache (one page).
const CACHE_MAX_VALUE: usize = 4096;

/// The cache counters of `.stats` at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CacheStats {
    key_reads: u64,
    cached_opens: u64,
    direct_opens: u64,
}

impl CacheStats {
    #[track_caller]
    fn of(m: &Mount) -> CacheStats {
        let s = m.stats();
        let get = |name: &str| {
            *s.get(name)
                .unwrap_or_else(|| panic!(".stats has no `{name}` line: {s:?}"))
        };
        CacheStats {
            key_reads: get("key_reads"),
            cached_opens: get("cached_opens"),
            direct_opens: get("direct_opens"),
        }
    }

    /// How much each counter grew since `before` (they only grow).
    #[track_caller]
    fn since(self, before: CacheStats) -> CacheStats {
        let d = |now: u64, then: u64, name: &str| {
            now.checked_sub(then)
                .unwrap_or_else(|| panic!("{name} went down from {then} to {now}"))
        };
        CacheStats {
            key_reads: d(self.key_reads, before.key_reads, "key_reads"),
            cached_opens: d(self.cached_opens, before.cached_opens, "cached_opens"),
            direct_opens: d(self.direct_opens, before.direct_opens, "direct_opens"),
        }
    }
}

/// Begins transaction `t`, runs `script` in it (`$X` is `.txn/t`), commits and forgets it.
#[track_caller]
fn in_txn(m: &Mount, script: &str) {
    m.ok(&format!(
        "mkdir .txn/t && X=.txn/t && {script} && env echo commit > .txn/t/.ctl && rmdir .txn/t"
    ));
}

#[test]
fn repeated_reads_of_an_unchanged_key_are_served_by_the_kernel() {
    let m = Mount::new();
    m.ok("printf 'small value\\n' > k");
    assert_eq!(m.ok("cat k"), "small value\n");
    let before = CacheStats::of(&m);
    m.ok("i=0; while [ $i -lt 50 ]; do cat k > $T/out_$i || exit 1; i=$((i+1)); done");
    let d = CacheStats::of(&m).since(before);
    // Every one of the 50 got the whole value...
    assert_eq!(
        m.ok("cat $T/out_* | sort | uniq -c | sed 's/^ *//'"),
        "50 small value\n"
    );
    // ...through the page cache: 50 cached opens, and at most one READ reached the daemon.
    // That one is allowed because the `cat k` above may have been opened while the kernel's
    // RELEASE of the writer (`printf > k`), which it sends asynchronously after close, was
    // still queued: an open with a writer still counted gets direct I/O, fills no page, and
    // then the first of the 50 fills it.
    assert_eq!(
        (d.cached_opens, d.direct_opens),
        (50, 0),
        "50 cats of a {}-byte key: want 50 cached opens and no direct one ({d:?})",
        "small value\n".len()
    );
    assert!(
        d.key_reads <= 1,
        "50 cats of an unchanged cached key sent {} READs to the daemon, want at most 1 ({d:?})",
        d.key_reads
    );

    // A transaction commit changes the key behind the kernel's back (it writes another inode,
    // `.txn/t/k`): the page must go, and be filled again exactly once.
    in_txn(&m, "printf 'new value!\\n' > $X/k");
    let before = CacheStats::of(&m);
    assert_eq!(
        m.ok("for i in 1 2 3 4 5 6 7 8 9 10; do cat k || exit 1; done | uniq -c | sed 's/^ *//'"),
        "10 new value!\n",
        "reads after a transaction rewrote a cached key (same length, new content)"
    );
    let d = CacheStats::of(&m).since(before);
    assert_eq!(
        (d.cached_opens, d.key_reads),
        (10, 1),
        "10 cats after a commit: want 10 cached opens and one READ refilling the page ({d:?})"
    );

    // Exactly one page is cached; one byte more is read with direct I/O, every time.
    m.ok(&format!(
        "head -c {CACHE_MAX_VALUE} /dev/urandom > $T/page && cp $T/page page
         head -c {} /dev/urandom > $T/big && cp $T/big big
         cmp page $T/page && cmp big $T/big",
        CACHE_MAX_VALUE + 1
    ));
    let before = CacheStats::of(&m);
    m.ok("i=0; while [ $i -lt 10 ]; do cmp page $T/page || exit 1; i=$((i+1)); done");
    let d = CacheStats::of(&m).since(before);
    assert_eq!(
        (d.cached_opens, d.direct_opens),
        (10, 0),
        "10 reads of a {CACHE_MAX_VALUE}-byte key ({d:?})"
    );
    assert!(d.key_reads <= 1, "10 reads of a cached page: {d:?}");
    let before = CacheStats::of(&m);
    m.ok("i=0; while [ $i -lt 10 ]; do cat big | cmp - $T/big || exit 1; i=$((i+1)); done");
    let d = CacheStats::of(&m).since(before);
    assert_eq!(
        (d.cached_opens, d.direct_opens),
        (0, 10),
        "10 cats of a {}-byte key: all direct I/O ({d:?})",
        CACHE_MAX_VALUE + 1
    );
    assert!(
        d.key_reads >= 10,
        "10 cats of a direct-I/O key sent only {} READs: each must reach the daemon ({d:?})",
        d.key_reads
    );
}

/// Values of the write loops: some rounds the same length as the round before (a rewrite the
/// size cannot betray), others of a length that grows and shrinks; never a trailing newline, so
/// `cmp` sees every byte.
const VALUE_FN: &str = "val() {
   case $(($1 % 4)) in
     0|1) printf 's%07d' $1 ;;
     *) printf '%0*d' $(($1 % 50 + 1)) $1 ;;
   esac
 }
";

/// Background readers that keep the page cache of `k` hot until `$T/stop` exists; each
/// writes how many reads it made to `$T/bg_N`.
const BACKGROUND_READERS: &str = "bg() {
   n=0
   while [ ! -e $T/stop ]; do cat k > /dev/null 2>&1; n=$((n+1)); done
   echo $n > $T/bg_$1
 }
 bg 1 & bg 2 &
";

#[test]
fn no_stale_read_after_an_acknowledged_commit() {
    const N: usize = 300;
    let m = Mount::new();
    m.ok("printf start > k && cat k > /dev/null");
    let before = CacheStats::of(&m);
    // Each round writes a new value (one of four ways) and, once the write returned, reads
    // it back with a new `cat` and compares every byte. The readers in the background keep the
    // page cache and the attributes of `k` hot all the time. The kernel sees the autocommit
    // writes for itself (their open and write drop what it cached), but not a transaction's
    // commit: those rounds fail unless the daemon's invalidation drops the caches. The "held
    // writer" rounds stat the key while the writer is open, which caches the committed
    // attributes until the commit drops them.
    let out = m.ok(&format!(
        "{VALUE_FN}{BACKGROUND_READERS}{HOLD_WRITER}
         bad=0; i=1
         while [ $i -le {N} ]; do
           val $i > $T/want
           case $((i % 5)) in
             0|1) how=printf; val $i > k || echo \"round $i: write failed\" ;;
             2) how=dd; dd if=$T/want of=k 2>/dev/null || echo \"round $i: dd failed\" ;;
             3) how=transaction
                mkdir .txn/t && cat $T/want > .txn/t/k && env echo commit > .txn/t/.ctl \\
                  && rmdir .txn/t || echo \"round $i: transaction failed\" ;;
             4) how='held writer'
                hold_writer \"$(cat $T/want)\"
                stat k > /dev/null
                release_writer ;;
           esac
           cat k > $T/got 2>&1
           if ! cmp -s $T/want $T/got; then
             echo \"round $i ($how): wrote '$(cat $T/want)', then read '$(cat $T/got)'\" \
                  \"(stat: size $(stat -c %s k) mtime $(stat -c %.9Y k); read again: '$(cat k)')\"
             bad=$((bad+1))
             [ $bad -lt 10 ] || break
           fi
           i=$((i+1))
         done
         touch $T/stop
         wait
         echo \"background reads: $(cat $T/bg_1) $(cat $T/bg_2)\""
    ));
    let d = CacheStats::of(&m).since(before);
    let (report, bg) = out.rsplit_once("background reads: ").expect("summary line");
    assert!(
        report.is_empty(),
        "reads after an acknowledged write returned something else than it wrote:\n{report}\
         (cache counters over the loop: {d:?})"
    );
    let bg: u64 = bg
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    eprintln!("{N} rounds, {bg} background reads, {d:?}");
    // The loop did go through the page cache (else it would prove nothing about it).
    assert!(d.cached_opens > 0, "no cached open: {d:?}");
    assert_eq!(
        m.ok_bytes("cat k"),
        m.ok_bytes(&format!("{VALUE_FN}val {N}"))
    );

    // The other commits at the root: truncate, mv over the key, rm. Each is checked by a read
    // in a new process right after it returned, with the page cache of `k` hot.
    let out = m.ok(&format!(
        "{BACKGROUND_READERS}
         i=1
         while [ $i -le 40 ]; do
           printf 'value-%s-abcdefghij' $i > k
           n=$((i % 7 + 1))
           truncate -s $n k
           printf 'value-%s-abcdefghij' $i | head -c $n > $T/want
           cat k > $T/got 2>&1
           cmp -s $T/want $T/got || echo \"round $i: truncate -s $n: read '$(cat $T/got)'\"
           [ \"$(stat -c %s k)\" = $n ] || echo \"round $i: truncate -s $n: stat says $(stat -c %s k)\"
           printf 'moved-%s' $i > tmp && mv tmp k
           [ \"$(cat k 2>&1)\" = moved-$i ] || echo \"round $i: after mv: read '$(cat k 2>&1)'\"
           if [ $((i % 5)) -eq 0 ]; then
             rm k
             ! test -e k || echo \"round $i: k exists after rm\"
             cat k 2>/dev/null && echo \"round $i: cat k succeeded after rm\"
           fi
           i=$((i+1))
         done
         touch $T/stop
         wait"
    ));
    assert!(out.is_empty(), "stale reads after truncate/mv/rm:\n{out}");
}

#[test]
fn no_stale_read_after_a_transaction_commit() {
    let m = Mount::new();
    // A rewrite in a transaction: the root's inode of `k` is not the one written, so only the
    // commit's invalidation can tell the kernel.
    m.ok("printf old > k");
    let before = CacheStats::of(&m);
    assert_eq!(m.ok("cat k && cat k"), "oldold");
    let d = CacheStats::of(&m).since(before);
    assert!(
        d.cached_opens == 2 && d.key_reads <= 1,
        "precondition: k is read through the page cache ({d:?})"
    );
    in_txn(&m, "env echo new > $X/k");
    assert_eq!(
        m.ok("cat k"),
        "new\n",
        "a cached key after a transaction commit"
    );
    // The same with a same-length value (only the mtime changes).
    in_txn(&m, "env echo NEW > $X/k");
    assert_eq!(
        m.ok("cat k"),
        "NEW\n",
        "a same-length rewrite in a transaction"
    );
    // And with a value shorter than the cached one.
    in_txn(&m, "printf x > $X/k");
    assert_eq!(m.ok("cat k"), "x", "a shorter rewrite in a transaction");

    // A delete in a transaction: the kernel still holds `k`'s entry and attributes.
    m.ok("env echo cached > k");
    assert_eq!(m.ok("cat k && stat -c %s k && ls"), "cached\n7\nk\n");
    in_txn(&m, "rm $X/k");
    m.fails("cat k", msg::ENOENT);
    m.ok("! test -e k");
    m.fails("stat k", msg::ENOENT);
    assert_eq!(
        m.ok("ls"),
        "",
        "ls after a transaction deleted the only key"
    );
    // The name is free again: a write creates the key anew.
    m.ok("env echo again > k");
    assert_eq!(m.ok("cat k && ls"), "again\nk\n");
    assert_eq!(m.ok("stat -c %s k"), "6\n");

    // A rename in a transaction, both names cached before.
    m.ok("printf value-of-a > a && printf b > b");
    assert_eq!(m.ok("cat a b && stat -c %s a b"), "value-of-ab10\n1\n");
    in_txn(&m, "mv $X/a $X/b");
    m.fails("cat a", msg::ENOENT);
    m.ok("! test -e a");
    assert_eq!(
        m.ok("cat b"),
        "value-of-a",
        "b after `mv a b` in a transaction"
    );
    assert_eq!(m.ok("stat -c %s b"), "10\n");
    assert_eq!(m.ok("ls"), "b\nk\n");
    // And back, onto the name the kernel saw removed.
    in_txn(&m, "mv $X/b $X/a");
    m.fails("cat b", msg::ENOENT);
    assert_eq!(m.ok("cat a"), "value-of-a");
    assert_eq!(m.ok("ls"), "a\nk\n");

    // A transaction that created a key the root has looked up (and failed to find) before.
    m.fails("cat fresh", msg::ENOENT);
    in_txn(&m, "env echo born > $X/fresh");
    assert_eq!(m.ok("cat fresh"), "born\n");

    // Several keys in one commit, all cached before.
    m.ok("for i in 1 2 3 4 5 6 7 8; do echo before-$i > m$i; cat m$i > /dev/null; done");
    in_txn(
        &m,
        "for i in 1 2 3 4 5 6 7 8; do env echo after-$i > $X/m$i || exit 1; done",
    );
    assert_eq!(
        m.ok("cat m1 m2 m3 m4 m5 m6 m7 m8"),
        (1..=8).map(|i| format!("after-{i}\n")).collect::<String>()
    );
}

/// Shell functions: `hold_writer VALUE` starts a process that opens `k` for writing (O_TRUNC),
/// writes VALUE and keeps the file open, and returns once the write is done; `release_writer`
/// makes it close the file (the commit) and waits for it.
const HOLD_WRITER: &str = r#"hold_writer() {
   rm -f $T/written $T/go
   perl -e 'my $f;
            my $ok = eval {
              open($f, ">", "k") or die "open k: $!\n";
              syswrite($f, $ARGV[0]) == length($ARGV[0]) or die "write k: $!\n";
              1
            };
            open(my $s, ">", "$ENV{T}/written") or die "$!\n";
            print $s ($ok ? "" : "the writer failed: $@");
            close($s);
            exit 1 unless $ok;
            select(undef, undef, undef, 0.01) until -e "$ENV{T}/go";
            close($f) or die "close k: $!\n";' "$1" &
   writer=$!
   n=0
   while [ ! -e $T/written ]; do
     # Only so that a writer that died before writing fails the script instead of hanging it.
     n=$((n+1)); [ $n -lt 6000 ] || { echo "the writer never got to write" >&2; exit 1; }
     sleep 0.01
   done
   if [ -s $T/written ]; then cat $T/written >&2; exit 1; fi
 }
 release_writer() {
   touch $T/go
   wait $writer || { echo "the writer's close failed" >&2; exit 1; }
 }
"#;

#[test]
fn stat_shows_every_commit_at_once() {
    let m = Mount::new();
    m.ok("printf abc > k");
    assert_eq!(m.ok("stat -c %s k"), "3\n");
    // An autocommit rewrite.
    m.ok("printf abcdefgh > k");
    assert_eq!(m.ok("stat -c %s k && cat k"), "8\nabcdefgh");

    // A writer open while someone stats the key: the stat caches the committed attributes
    // (the old size and mtime) while the new value sits in the writer's buffer; the close that
    // commits must drop them. The writer is one perl process, so that nothing closes a copy of
    // its descriptor before it means to: every close(2) of one is a flush, which commits (a
    // shell's `printf >&3` does, when it restores its stdout).
    assert_eq!(
        m.ok(&format!(
            "{HOLD_WRITER}hold_writer 'a much longer value'
             stat -c %s k
             cat k
             release_writer
             stat -c %s k
             cat k"
        )),
        "8\nabcdefgh19\na much longer value",
        "stat and cat while a writer is open (the committed value), and after its close"
    );
    // The same with a same-length value: only the mtime tells.
    m.ok("touch -d @1200000000 k");
    assert_eq!(
        m.ok(&format!(
            "{HOLD_WRITER}hold_writer 'A MUCH LONGER VALUE'
             stat -c '%s %Y' k
             release_writer
             stat -c %s k
             [ $(stat -c %Y k) -gt 1200000000 ] || echo \"stale mtime: $(stat -c %Y k)\"
             cat k"
        )),
        "19 1200000000\n19\nA MUCH LONGER VALUE",
    );

    // Metadata-only commits.
    m.ok("stat k > /dev/null");
    m.ok("touch -d @1000000000 k");
    assert_eq!(m.ok("stat -c %Y k"), "1000000000\n");
    m.ok("chmod 600 k");
    assert_eq!(m.ok("stat -c '%a %Y %s' k"), "600 1000000000 19\n");
    m.ok("chmod 640 k");
    assert_eq!(m.ok("stat -c %a k"), "640\n");

    // Changes by transactions, which the kernel cannot see for itself.
    in_txn(&m, "printf 12345 > $X/k");
    assert_eq!(m.ok("stat -c '%s %a' k && cat k"), "5 640\n12345");
    m.ok("touch -d @1000000000 k && stat k > /dev/null");
    in_txn(&m, "touch -d @1100000000 $X/k");
    assert_eq!(m.ok("stat -c '%s %Y' k"), "5 1100000000\n");
    in_txn(&m, "truncate -s 2 $X/k");
    assert_eq!(m.ok("stat -c %s k && cat k"), "2\n12");
    in_txn(&m, "printf '%0100d' 7 > $X/k");
    assert_eq!(m.ok("stat -c %s k"), "100\n");
    assert_eq!(m.ok("wc -c < k"), "100\n");
    // `ls -l` goes through the same attributes.
    in_txn(&m, "printf 1234567 > $X/k");
    assert_eq!(m.ok("ls -l k | awk '{print $5}'"), "7\n");
}

const WRITERS: usize = 4;
const READERS: usize = 3;
const VALUES_PER_WRITER: usize = 5;
const ROUNDS: usize = 15;

/// Length of value `v` of writer `w` (both from 1): all different, all at most one page.
fn small_value_len(w: usize, v: usize) -> usize {
    37 + 199 * ((w - 1) * VALUES_PER_WRITER + v)
}

/// Describes bytes that are no single value of `values`: which value each stretch of them
/// comes from, at the same offset (a mix of two values reads as the head of one and the tail
/// of another), or that it comes from none.
fn describe_read(read: &[u8], values: &[(String, Vec<u8>)]) -> String {
    if read.is_empty() {
        return "0 bytes (an empty value; none was written)".to_owned();
    }
    let mut parts = Vec::new();
    let mut at = 0;
    while at < read.len() {
        // The value that matches the longest stretch from `at` on, at the same offset.
        let best = values
            .iter()
            .map(|(name, v)| {
                let n = v
                    .get(at..)
                    .unwrap_or_default()
                    .iter()
                    .zip(&read[at..])
                    .take_while(|(a, b)| a == b)
                    .count();
                (n, name, v.len())
            })
            .max_by_key(|(n, ..)| *n)
            .expect("some values");
        match best {
            (0, ..) => {
                parts.push(format!("byte {at} is from no value"));
                break;
            }
            (n, name, len) => {
                parts.push(format!("{at}..{} from {name} ({len} bytes)", at + n));
                at += n;
            }
        }
    }
    format!("{} bytes: {}", read.len(), parts.join(", "))
}

#[test]
fn readers_see_whole_small_values_while_writers_rewrite() {
    // Like concurrency.rs `readers_see_only_complete_values_while_writers_rewrite_a_shared_key`,
    // with values small enough for the page cache (each writer's of different lengths and
    // contents, so that a short, empty, stale-sized or mixed read shows): readers that opened
    // through the page cache read while writers open the key (O_TRUNC), write and commit it.
    // Every read must be one whole value some writer wrote.
    assert!(small_value_len(WRITERS, VALUES_PER_WRITER) <= CACHE_MAX_VALUE);
    let m = Mount::new();
    let mut setup = String::from("yes init | head -c 4000 > $T/val_init\n");
    for w in 1..=WRITERS {
        for v in 1..=VALUES_PER_WRITER {
            setup.push_str(&format!(
                "yes w{w}-v{v} | head -c {} > $T/val_{w}_{v}\n",
                small_value_len(w, v)
            ));
        }
    }
    setup.push_str(&format!(
        "yes last1 | head -c {CACHE_MAX_VALUE} > $T/val_last1
         yes last2 | head -c 1000 > $T/val_last2
         cat $T/val_init > shared && cat shared > /dev/null"
    ));
    m.ok(&setup);
    let before = CacheStats::of(&m);
    // A writer that never paused would keep the key open for writing nearly all the time, and
    // readers opening then get direct I/O; the pauses let readers open through the page cache
    // between writes, so that the next writes race with them. (They only make the race
    // likelier: nothing here waits for anything by time.)
    let script = format!(
        "writer() {{
           w=$1; r=1
           while [ $r -le {ROUNDS} ]; do
             for v in $(seq 1 {VALUES_PER_WRITER}); do
               cat $T/val_${{w}}_$v > shared || echo \"writer $w failed\" >&2
               sleep 0.01
             done
             r=$((r+1))
           done
         }}
         reader() {{
           n=0
           while [ $n -lt 20 ] || [ ! -e $T/stop ]; do
             cat shared > $T/read_$1_$n || echo \"reader $1: cat failed\" >&2
             n=$((n+1))
           done
         }}
         pids=
         for w in $(seq 1 {WRITERS}); do writer $w & pids=\"$pids $!\"; done
         for r in $(seq 1 {READERS}); do reader $r & done
         wait $pids
         touch $T/stop
         wait
         # Then, with the page cache of the key filled: a last value from a transaction,
         # which only the commit's invalidation brings to the kernel's attention, and one
         # from a writer.
         cat shared > /dev/null
         cat shared > /dev/null
         mkdir .txn/last && cat $T/val_last1 > .txn/last/shared \\
           && env echo commit > .txn/last/.ctl && rmdir .txn/last
         cat shared | cmp - $T/val_last1 >&2
         cat $T/val_last2 > shared
         cat shared | cmp - $T/val_last2 >&2
         true"
    );
    let out = m.sh(&script);
    let d = CacheStats::of(&m).since(before);

    let scratch = m.scratch();
    let read_file = |name: &str| {
        std::fs::read(scratch.join(name))
            .unwrap_or_else(|e| panic!("read {}: {e}", scratch.join(name).display()))
    };
    let mut values: Vec<(String, Vec<u8>)> = vec![("val_init".to_owned(), read_file("val_init"))];
    for w in 1..=WRITERS {
        for v in 1..=VALUES_PER_WRITER {
            let name = format!("val_{w}_{v}");
            let bytes = read_file(&name);
            assert_eq!(bytes.len(), small_value_len(w, v), "{name}");
            values.push((name, bytes));
        }
    }
    let allowed: BTreeSet<&[u8]> = values.iter().map(|(_, v)| v.as_slice()).collect();
    let mut reads: Vec<String> = std::fs::read_dir(scratch)
        .expect("read scratch dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .filter(|n| n.starts_with("read_"))
        .collect();
    reads.sort();
    eprintln!("{} reads, cache counters {d:?}", reads.len());
    assert!(
        reads.len() >= READERS * 20,
        "only {} reads recorded",
        reads.len()
    );
    let bad: Vec<String> = reads
        .iter()
        .filter_map(|name| {
            let read = read_file(name);
            (!allowed.contains(read.as_slice()))
                .then(|| format!("{name}: {}", describe_read(&read, &values)))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} reads were not a whole value a writer wrote (empty, short, stale-sized or a mix \
         of two); the first ones: {:#?}\ncache counters over the run: {d:?}\n\
         the script's stderr: {:?}",
        bad.len(),
        reads.len(),
        &bad[..bad.len().min(12)],
        String::from_utf8_lossy(&out.stderr),
    );
    assert_ok(&out, "the writers' and readers' script");
    assert!(
        out.stderr.is_empty(),
        "the script reported:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Some reads did go through the page cache, or the test proved nothing about it.
    assert!(d.cached_opens > 0, "no cached open: {d:?}");
    m.ok("cmp shared $T/val_last2");
}

#[test]
fn a_restart_after_kill_9_reads_the_committed_values() {
    // Cheap sanity: the kernel's caches belong to the mount, which goes with the daemon.
    let mut m = Mount::new();
    m.ok("printf one > k && cat k > /dev/null && printf two > k");
    assert_eq!(m.ok("cat k && stat -c %s k"), "two3\n");
    in_txn(&m, "printf three > $X/t");
    assert_eq!(m.ok("cat t"), "three");
    m.kill9();
    m.start_again();
    assert_eq!(m.ok("cat k && stat -c %s k"), "two3\n");
    assert_eq!(m.ok("cat t && stat -c %s t"), "three5\n");
    m.ok("printf four > k");
    assert_eq!(m.ok("cat k && ls"), "fourk\nt\n");
}
