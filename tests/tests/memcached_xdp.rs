//! memcached over UDP with the XDP fast path attached (docs/SEMANTICS.md, "memcached over UDP";
//! docs/KERNEL-CLIENTS.md): real datagrams through the kernel, answered by `mc_xdp` on `lo` when
//! every key is a hit that fits one frame, and passed up to the daemon's socket otherwise. Every
//! answer must be the engine's newest commit, whichever side sent it; the daemon's exit log line
//! `memcached XDP on lo: XdpCounters { ... }` shows that XDP did answer.
//!
//! An interface takes one XDP program. The tests on the machine's own `lo` hold [`LO`]; the
//! others run their daemon in a network namespace of their own (`MountBuilder::net_ns`), with the
//! client socket made inside it.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bpfdb_tests::memcache::{
    Client, XdpCounters, free_udp_port, parse_values, xdp_counters_in_log,
};
use bpfdb_tests::netns::NetNs;
use bpfdb_tests::{Mount, Rng, assert_ok};

/// Held by every test of this file that attaches XDP to the test process's own `lo`.
static LO: Mutex<()> = Mutex::new(());

fn lock_lo() -> MutexGuard<'static, ()> {
    LO.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rounds of the coherence test: each a new value through the mount, read at once over UDP.
const ROUNDS: usize = 300;

/// Values up to this size always get their reply built by XDP on `lo`: generic XDP grows the
/// request's own buffer, which holds about 600 bytes of reply (docs/KERNEL-CLIENTS.md, Limits).
const LO_REPLY_ROOM: usize = 300;

/// A daemon serving memcached on a free port with XDP on `lo` of `ns` (the test's own
/// namespace if None), with `extra` arguments; and a client of it made in that namespace.
fn served(ns: Option<&NetNs>, extra: &[&str]) -> (Mount, Client) {
    let in_ns = |f: &dyn Fn() -> u16| ns.map_or_else(f, |ns| ns.run(f));
    let port = in_ns(&free_udp_port);
    let mut b = Mount::builder()
        .arg("--memcached-udp")
        .arg(port.to_string());
    if let Some(ns) = ns {
        b = b.net_ns(ns.path());
    }
    for a in extra {
        b = b.arg(a);
    }
    let m = b.start();
    m.wait_for_log("mount live"); // the XDP program is attached
    let client = match ns {
        Some(ns) => ns.run(|| Client::new(port)),
        None => Client::new(port),
    };
    (m, client)
}

/// Unmounts (the daemon must exit 0) and returns the XDP counters it logged at exit.
#[track_caller]
fn stop_and_count(m: &mut Mount) -> XdpCounters {
    m.umount_expect_clean_exit();
    let c = xdp_counters_in_log(&m.log(), "lo")
        .unwrap_or_else(|| panic!("no XDP counters in the exit log\n{}", m.log_tail()));
    eprintln!("XDP counters: {c:?}");
    c
}

/// `len` bytes of `[a-z0-9]`, different for each round.
fn text(round: usize, len: usize) -> String {
    let tag = format!("r{round}x");
    let fill =
        (0..len.saturating_sub(tag.len())).map(|i| (b'a' + ((i + round) % 26) as u8) as char);
    tag.chars().chain(fill).take(len).collect()
}

#[test]
fn a_write_through_the_mount_is_what_the_next_get_returns() {
    let _lo = lock_lo();
    // No --memcached-if: the default, XDP on this namespace's lo.
    let (mut m, mut c) = served(None, &[]);
    let (mut wrong, mut last_cas) = (Vec::new(), 0u64);
    for i in 0..ROUNDS {
        // Across 128 bytes (the log's small fragment) up to a page.
        let v = text(i, 1 + (i * 37) % LO_REPLY_ROOM);
        let want = match i % 3 {
            0 => {
                m.ok(&format!("echo {v} > k"));
                format!("{v}\n")
            }
            1 => {
                m.ok(&format!("printf %s {v} > k"));
                v
            }
            _ => {
                std::fs::write(m.path().join("k"), &v).expect("write k");
                v
            }
        };
        let got = c.get("k");
        if got.as_deref() != Some(want.as_bytes()) {
            wrong.push((i, got.map(|g| String::from_utf8_lossy(&g).into_owned())));
        }
        if i % 10 == 0 {
            let reply = c.ask("gets k\r\n");
            let values = parse_values(reply.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            let cas = values[0].cas.expect("gets has a cas");
            assert!(cas > last_cas, "round {i}: cas {cas} after {last_cas}");
            last_cas = cas;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} gets did not return the value just written, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    m.ok("rm k");
    assert_eq!(c.get("k"), None, "removed through the mount");
    let counters = stop_and_count(&mut m);
    assert!(
        counters.hits as usize >= ROUNDS * 9 / 10,
        "XDP answered {} of {ROUNDS} gets: {counters:?}",
        counters.hits
    );
}

#[test]
fn a_multi_key_get_never_shows_half_a_transaction() {
    let ns = NetNs::new();
    let (mut m, mut c) = served(Some(&ns), &[]);
    m.ok("echo 0 > k1 && echo 0 > k2 && echo other > k3");
    let writer = m.spawn_sh(
        "i=0; while [ $i -lt 150 ]; do i=$((i+1)); t=.txn/t$i;
           mkdir $t && echo $i > $t/k1 && echo $i > $t/k2 && echo commit > $t/.ctl && rmdir $t || exit 1
         done; touch $T/done",
    );
    let (mut gets, mut changes, mut last) = (0, 0, Vec::new());
    let done = m.scratch().join("done");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done.exists() && gets < 2_000_000 && Instant::now() < deadline {
        gets += 1;
        let reply = c.request(b"get k1 k3 k2\r\n").expect("a reply");
        let v = parse_values(&reply).unwrap_or_else(|e| panic!("get {gets}: {e}"));
        let keys: Vec<&str> = v.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k3", "k2"], "get {gets}");
        assert_eq!(v[1].data, b"other\n");
        assert_eq!(
            v[0].data,
            v[2].data,
            "get {gets}: half a transaction: {:?}",
            String::from_utf8_lossy(&reply)
        );
        if v[0].data != last {
            changes += 1;
            last = v[0].data.clone();
        }
    }
    assert_ok(
        &writer.finish(Duration::from_secs(60)),
        "transaction writer",
    );
    assert!(changes > 3, "{changes} values seen in {gets} gets");
    assert_eq!(m.ok("cat k1 k2"), "150\n150\n");
    let counters = stop_and_count(&mut m);
    assert!(counters.hits > 0, "XDP answered none of {gets} gets");
}

/// Value lengths of the churn test: short ones (the content follows from the length), up to one
/// small chunk, page-backed ones XDP answers on lo, larger ones passed up, one whole page.
const CHURN_LENGTHS: [(usize, usize); 5] =
    [(1, 12), (12, 129), (129, 600), (600, 1301), (4096, 4097)];

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// A value of `len` bytes that carries its own check: below 12 bytes its content is a function
/// of its length; from 12 on, 8 hex digits of the FNV-1a hash of the random letters after them.
fn checked_value(rng: &mut Rng, len: usize) -> Vec<u8> {
    if len < 12 {
        return (0..len)
            .map(|i| b'a' + ((i * 7 + len) % 26) as u8)
            .collect();
    }
    let body: Vec<u8> = (8..len).map(|_| b'a' + rng.range(0, 26) as u8).collect();
    let mut v = format!("{:08x}", fnv1a(&body)).into_bytes();
    v.extend_from_slice(&body);
    v
}

fn verifies(v: &[u8]) -> bool {
    match v.len() {
        // `open(O_CREAT)` of a removed key commits the empty value at once (SEMANTICS, Writing).
        0 => true,
        len if len < 12 => v
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + ((i * 7 + len) % 26) as u8),
        _ => v[..8] == *format!("{:08x}", fnv1a(&v[8..])).as_bytes(),
    }
}

#[test]
fn values_rewritten_and_removed_under_readers_are_never_torn() {
    const WRITERS: usize = 2;
    const KEYS_PER_WRITER: usize = 3;
    const OPS: usize = 2000;
    let ns = NetNs::new();
    // --sync none: commits as fast as the engine takes them, so GC reclaims versions while XDP
    // and the socket copy them.
    let (mut m, mut c) = served(Some(&ns), &["--sync", "none"]);
    let seed = Rng::seed_from_env_or_time("churn");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let dir = m.path().to_owned();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed + w as u64);
                for _ in 0..OPS {
                    let key = dir.join(format!(
                        "c{}",
                        w * KEYS_PER_WRITER + rng.range(0, 3) as usize
                    ));
                    if rng.range(0, 10) == 0 {
                        match std::fs::remove_file(&key) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("rm: {e}"),
                            _ => {}
                        }
                        continue;
                    }
                    let (lo, hi) = CHURN_LENGTHS[rng.range(0, 5) as usize];
                    let len = rng.range(lo as u64, hi as u64) as usize;
                    std::fs::write(&key, checked_value(&mut rng, len)).expect("write a value");
                }
            })
        })
        .collect();
    let keys: Vec<String> = (0..WRITERS * KEYS_PER_WRITER)
        .map(|k| format!("c{k}"))
        .collect();
    let all = format!("get {}\r\n", keys.join(" "));
    let mut rng = Rng::new(seed ^ 0xfeed);
    let (mut requests, mut values, mut misses, mut empty) = (0usize, 0usize, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(180);
    while writers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
        requests += 1;
        let (body, asked) = match rng.range(0, 3) {
            0 => (all.clone(), keys.len()),
            n => (
                format!(
                    "get{} {}\r\n",
                    if n == 1 { "" } else { "s" },
                    keys[rng.range(0, 6) as usize]
                ),
                1,
            ),
        };
        let reply = c.request(body.as_bytes()).expect("a reply");
        let got = parse_values(&reply).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        misses += asked - got.len();
        for v in &got {
            assert!(keys.contains(&v.key), "{body:?}: key {}", v.key);
            assert!(
                verifies(&v.data),
                "{body:?}: a torn or wrong value of {} ({} bytes): {:?}",
                v.key,
                v.data.len(),
                String::from_utf8_lossy(&v.data)
            );
            values += 1;
            empty += v.data.is_empty() as usize;
        }
    }
    for w in writers {
        w.join().expect("a writer panicked");
    }
    eprintln!("{requests} requests: {values} values verified ({empty} empty), {misses} misses");
    assert!(
        values >= 500 && misses > 0,
        "too little seen: {values} values, {misses} misses"
    );
    let counters = stop_and_count(&mut m);
    assert!(
        counters.hits > 0 && counters.pass_big > 0 && counters.pass_miss > 0,
        "both sides should have answered: {counters:?}"
    );
}

#[test]
fn a_second_daemon_cannot_take_lo_and_the_first_keeps_serving() {
    let _lo = lock_lo();
    let (mut first, mut c) = served(None, &[]);
    first.ok("echo one > k");
    assert_eq!(c.get("k").as_deref(), Some(&b"one\n"[..]));
    let mut second = Mount::new();
    second.umount_expect_clean_exit();
    let port = free_udp_port().to_string();
    let (status, log) = second.start_expect_failure(&["--memcached-udp", &port]);
    assert!(
        status.code().is_some_and(|c| c != 0),
        "want a non-zero exit code, got {status}"
    );
    assert!(
        log.contains("memcached XDP on lo") && log.contains("one XDP program"),
        "the refusal names neither XDP nor the interface:\n{log}"
    );
    assert!(!second.is_mounted(), "the refused daemon left its mount");
    assert!(
        !log.contains("mounting "),
        "the interface is checked before anything is mounted:\n{log}"
    );
    std::net::UdpSocket::bind(("127.0.0.1", port.parse::<u16>().unwrap()))
        .expect("the refused daemon's port is free again");
    // The first daemon's program is still attached and answering.
    for _ in 0..50 {
        assert_eq!(c.get("k").as_deref(), Some(&b"one\n"[..]));
    }
    second.start_again();
    second.ok("echo two > k && cat k");
    let counters = stop_and_count(&mut first);
    assert!(counters.hits >= 51, "{counters:?}");
}
