//! memcached's UDP protocol beside the mount (docs/SEMANTICS.md, "memcached over UDP"): a
//! daemon started with `--memcached-udp PORT --memcached-if none` (no XDP, so the socket answers
//! every request), driven by a UDP client while shells use the mount.

use std::process::Command;
use std::time::Duration;

use bpfdb_tests::memcache::{Client, frame, free_udp_port};
use bpfdb_tests::{Mount, Rng, assert_ok, daemon_bin, run_with_timeout};

/// Rounds of the coherence tests: each a new value through one side, read through the other.
const ROUNDS: u32 = 40;

/// A mount whose daemon serves memcached on a free loopback port, with `extra` arguments.
fn served(extra: &[&str]) -> (Mount, u16) {
    let port = free_udp_port();
    let mut b = Mount::builder()
        .arg("--memcached-udp")
        .arg(port.to_string())
        .arg("--memcached-if")
        .arg("none");
    for a in extra {
        b = b.arg(a);
    }
    (b.start(), port)
}

#[test]
fn set_get_gets_delete_and_version() {
    let (m, port) = served(&[]);
    let mut c = Client::new(port);
    assert_eq!(c.ask("get k\r\n"), "END\r\n");
    assert_eq!(c.ask("set k 0 0 5\r\nhello\r\n"), "STORED\r\n");
    assert_eq!(c.get("k").as_deref(), Some(&b"hello"[..]));
    let gets = c.ask("gets k\r\n");
    assert!(
        gets.starts_with("VALUE k 0 5 ") && gets.ends_with("\r\nhello\r\nEND\r\n"),
        "{gets:?}"
    );
    assert_eq!(c.ask("delete k\r\n"), "DELETED\r\n");
    assert_eq!(c.ask("delete k\r\n"), "NOT_FOUND\r\n");
    assert_eq!(c.get("k"), None);
    assert!(c.ask("version\r\n").starts_with("VERSION bpfdb-"));
    assert_eq!(m.ok("ls"), "");
    let stats = m.stats();
    assert_eq!(stats["slot_waits"], 0, "the memcached threads have slots");
    assert_eq!(stats["worker_waits"], 0);
}

#[test]
fn a_value_written_through_the_mount_is_what_get_returns() {
    let (m, port) = served(&[]);
    let mut c = Client::new(port);
    for i in 0..ROUNDS {
        let v = format!("mount-{i}-{}", "x".repeat(i as usize));
        m.ok(&format!("echo {v} > k && cat k > /dev/null"));
        assert_eq!(c.get("k"), Some(format!("{v}\n").into_bytes()), "round {i}");
    }
    m.ok("rm k");
    assert_eq!(c.get("k"), None, "removed through the mount");
}

/// The kernel caches a root key's attributes (an hour) and its pages: a UDP write must drop
/// them before STORED or DELETED, so that the next `cat` sees it.
#[test]
fn a_udp_write_is_seen_by_the_mount_at_once() {
    let (m, port) = served(&[]);
    let mut c = Client::new(port);
    for i in 0..ROUNDS {
        // Same length every round: only the invalidation tells the kernel the value changed.
        let v = format!("udp-{i:04}");
        assert_eq!(
            c.ask(&format!("set k 0 0 {}\r\n{v}\r\n", v.len())),
            "STORED\r\n"
        );
        assert_eq!(m.ok("cat k; echo; cat k"), format!("{v}\n{v}"), "round {i}");
    }
    assert_eq!(m.ok("stat -c %a k"), "644\n");
    assert_eq!(c.ask("delete k\r\n"), "DELETED\r\n");
    m.fails("cat k", bpfdb_tests::msg::ENOENT);
    assert_eq!(m.ok("ls"), "");
    // A key the mount made keeps its mode and owner when set over UDP.
    m.ok("echo v > own && chmod 600 own && chown 1234:5678 own && cat own >/dev/null");
    assert_eq!(c.ask("set own 0 0 1\r\nw\r\n"), "STORED\r\n");
    assert_eq!(
        m.ok("stat -c '%a %u %g %s' own; cat own"),
        "600 1234 5678 1\nw"
    );
}

#[test]
fn a_multi_key_get_sees_each_transaction_whole() {
    let (m, port) = served(&[]);
    let mut c = Client::new(port);
    m.ok("echo 0 > a && echo 0 > b && echo other > c");
    assert_eq!(
        c.ask("get a missing b c\r\n"),
        "VALUE a 0 2\r\n0\n\r\nVALUE b 0 2\r\n0\n\r\nVALUE c 0 6\r\nother\n\r\nEND\r\n"
    );
    let writer = m.spawn_sh(
        "i=0; while [ $i -lt 150 ]; do i=$((i+1)); t=.txn/t$i;
           mkdir $t && echo $i > $t/a && echo $i > $t/b && echo commit > $t/.ctl && rmdir $t || exit 1
         done; touch $T/done",
    );
    let (mut gets, mut changes, mut last) = (0, 0, String::new());
    let done = m.scratch().join("done");
    while !done.exists() && gets < 100_000 {
        gets += 1;
        let reply = c.ask("get a b\r\n");
        let values: Vec<&str> = reply.split("\r\n").skip(1).step_by(2).take(2).collect();
        assert_eq!(values.len(), 2, "{reply:?}");
        assert_eq!(values[0], values[1], "half a transaction seen: {reply:?}");
        if values[0] != last {
            changes += 1;
            last = values[0].to_string();
        }
    }
    assert_ok(
        &writer.finish(Duration::from_secs(60)),
        "transaction writer",
    );
    assert!(changes > 3, "{changes} values seen in {gets} gets");
}

#[test]
fn a_100k_value_comes_in_many_datagrams() {
    let (m, port) = served(&[]);
    let mut c = Client::new(port);
    m.ok("head -c 102400 /dev/urandom > $T/big && cp $T/big big");
    let want = std::fs::read(m.scratch().join("big")).expect("read the value back");
    assert_eq!(c.get("big"), Some(want));
    // The largest value, 1 MiB: 750 datagrams.
    m.ok("head -c 1048576 /dev/urandom > $T/max && cp $T/max max");
    let want = std::fs::read(m.scratch().join("max")).expect("read the value back");
    assert_eq!(c.get("max"), Some(want));
}

#[test]
fn malformed_requests_are_refused_or_dropped_and_the_server_goes_on() {
    let (_m, port) = served(&[]);
    let mut c = Client::new(port);
    // No whole request in the datagram: no reply at all.
    c.send_raw(b"\x00\x01\x00");
    assert_eq!(c.no_reply(), None, "a 3-byte datagram");
    c.send_raw(&frame(9, 1, 2, b"get k\r\n"));
    assert_eq!(c.no_reply(), None, "datagram 1 of 2");
    assert_eq!(c.ask("bogus\r\n"), "ERROR\r\n");
    assert!(
        c.ask("set k 0 0 10\r\nabc")
            .starts_with("CLIENT_ERROR bad data chunk")
    );
    assert!(
        c.ask("set k 0 0 3\r\nabc")
            .starts_with("CLIENT_ERROR bad data chunk")
    );
    assert!(
        c.ask("set k 7 0 1\r\nx\r\n")
            .starts_with("CLIENT_ERROR flags must be 0")
    );
    assert!(
        c.ask("set k 0 60 1\r\nx\r\n")
            .starts_with("CLIENT_ERROR exptime must be 0")
    );
    assert!(c.ask("get k").starts_with("CLIENT_ERROR"), "no line end");
    let long = "k".repeat(251);
    assert!(
        c.ask(&format!("get {long}\r\n"))
            .starts_with("CLIENT_ERROR key of 251")
    );
    assert!(
        c.ask("get .stats\r\n")
            .starts_with("CLIENT_ERROR keys beginning with '.'")
    );
    assert!(c.ask("set a/b 0 0 1\r\nx\r\n").starts_with("CLIENT_ERROR"));
    // Random bytes after a valid header, and a datagram as large as UDP carries.
    let mut rng = Rng::from_env_or_time("memcached junk");
    for _ in 0..200 {
        let len = rng.range(1, 300) as usize;
        let body: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        match c.request(&body) {
            Ok(r) => assert!(
                r.is_empty() || r.starts_with(b"ERROR") || r.starts_with(b"CLIENT_ERROR"),
                "{body:?} -> {:?}",
                String::from_utf8_lossy(&r)
            ),
            Err(e) => panic!("{body:?}: {e}"),
        }
    }
    let huge = format!("set k 0 0 65000\r\n{}\r\n", "v".repeat(65_000));
    assert!(
        c.ask(&huge[..65_000])
            .starts_with("CLIENT_ERROR bad data chunk")
    );
    assert_eq!(c.ask("get k\r\n"), "END\r\n", "nothing refused was stored");
    assert_eq!(c.ask("set k 0 0 2\r\nok\r\n"), "STORED\r\n");
    assert_eq!(c.get("k").as_deref(), Some(&b"ok"[..]));
}

#[test]
fn engine_errors_are_server_errors() {
    let (m, port) = served(&["--max-value", "1K"]);
    let mut c = Client::new(port);
    let v = "x".repeat(1025);
    let reply = c.ask(&format!("set k 0 0 1025\r\n{v}\r\n"));
    assert!(
        reply.starts_with("SERVER_ERROR") && reply.contains("max_value"),
        "{reply:?}"
    );
    // A key a transaction holds is busy.
    m.ok("mkdir .txn/t && echo t > .txn/t/held");
    let reply = c.ask("set held 0 0 1\r\nx\r\n");
    assert!(
        reply.starts_with("SERVER_ERROR") && reply.contains("busy"),
        "{reply:?}"
    );
    assert!(m.log().contains("memcached: set \"held\""), "not logged");
}

/// STORED means durable: a `kill -9` right after it loses nothing.
#[test]
fn a_stored_value_survives_kill_9() {
    let (mut m, port) = served(&[]);
    for round in 0..3 {
        let mut c = Client::new(port);
        for i in 0..20 {
            let v = format!("r{round}-{i}");
            let set = format!("set k{i} 0 0 {}\r\n{v}\r\n", v.len());
            assert_eq!(c.ask(&set), "STORED\r\n");
        }
        assert_eq!(c.ask("delete k19\r\n"), "DELETED\r\n");
        m.kill9();
        m.start_again();
        let mut c = Client::new(port);
        for i in 0..19 {
            let v = format!("r{round}-{i}");
            assert_eq!(m.ok(&format!("cat k{i}")), v, "round {round}");
            assert_eq!(c.get(&format!("k{i}")), Some(v.into_bytes()));
        }
        assert_eq!(
            c.get("k19"),
            None,
            "round {round}: the delete was acknowledged"
        );
    }
}

#[test]
fn sigterm_stops_the_server_and_frees_the_port() {
    let (mut m, port) = served(&[]);
    let mut c = Client::new(port);
    assert_eq!(c.ask("set k 0 0 1\r\nv\r\n"), "STORED\r\n");
    m.signal_expect_clean_exit(libc::SIGTERM);
    std::net::UdpSocket::bind(("127.0.0.1", port)).expect("the port is free again");
    m.start_again();
    assert_eq!(m.ok("cat k"), "v");
}

#[test]
fn the_options_also_work_as_o_options_and_are_in_the_help() {
    let port = free_udp_port();
    let m = Mount::builder()
        .arg("-o")
        .arg(format!("memcached_udp={port},memcached_if=lo"))
        .start();
    let mut c = Client::new(port);
    assert_eq!(c.ask("set k 0 0 1\r\nv\r\n"), "STORED\r\n");
    assert_eq!(m.ok("cat k"), "v");
    let mut help = Command::new(daemon_bin());
    help.arg("--help");
    let text = assert_ok(
        &run_with_timeout(&mut help, Duration::from_secs(30), "bpfdb --help"),
        "bpfdb --help",
    );
    assert!(
        text.contains("--memcached-udp <PORT>") && text.contains("--memcached-if <IFNAME>"),
        "{text}"
    );
}

#[test]
fn bad_values_fail_with_a_clear_message() {
    let mut m = Mount::new();
    m.umount_expect_clean_exit();
    let cases: [(&[&str], &str); 8] = [
        (&["--memcached-udp", "0"], "'0' is not a UDP port"),
        (&["--memcached-udp", "65536"], "'65536' is not a UDP port"),
        (&["--memcached-udp", "x"], "'x' is not a UDP port"),
        (
            &["-o", "memcached_udp=-1"],
            "memcached_udp: '-1' is not a UDP port",
        ),
        (&["-o", "memcached_udp"], "-o memcached_udp needs a value"),
        (
            &["--memcached-if", "sixteen-bytes-xx"],
            "'sixteen-bytes-xx' is not a network interface name",
        ),
        (
            &["-o", "memcached_if=a/b"],
            "memcached_if: 'a/b' is not a network",
        ),
        (
            &["--memcached-udp", "9", "-o", "threads=57"],
            "threads 57: must be 1 to 56 with memcached_udp",
        ),
    ];
    for (args, words) in cases {
        let (status, log) = m.start_expect_failure(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {status}\n{log}");
        assert!(log.contains(words), "{args:?}: no {words:?} in\n{log}");
    }
    // A port another socket holds: the daemon says so and does not stay mounted.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (status, log) = m.start_expect_failure(&["--memcached-udp", &port]);
    assert_eq!(status.code(), Some(1), "{status}\n{log}");
    assert!(
        log.contains(&format!("memcached UDP on 127.0.0.1:{port}")),
        "{log}"
    );
    m.start_again();
}
