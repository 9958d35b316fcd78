//! memcached over a veth pair, the way a client on another machine reaches it: the daemon runs
//! in one network namespace with `--memcached-if <its veth end>` (native XDP; the socket binds
//! 0.0.0.0), the client in another, and datagrams cross the pair. Hits are answered by XDP in the
//! veth driver, the rest by the daemon's socket; everything is removed at the end.

use std::net::SocketAddr;

use bpfdb_tests::Mount;
use bpfdb_tests::memcache::{Client, free_udp_port, xdp_counters_in_log};
use bpfdb_tests::netns::{Veth, netns_exists};

/// Gets of each kind sent.
const GETS: usize = 50;

#[test]
fn across_a_veth_pair_xdp_answers_hits_and_the_socket_the_rest() {
    let veth = Veth::new();
    let port = veth.server.run(free_udp_port);
    let mut m = Mount::builder()
        .net_ns(veth.server.path())
        .arg("--memcached-udp")
        .arg(port.to_string())
        .arg("--memcached-if")
        .arg(&veth.server_if)
        .start();
    m.wait_for_log("mount live");
    assert!(
        m.log()
            .contains(&format!("memcached UDP on 0.0.0.0:{port}")),
        "{}",
        m.log_tail()
    );
    m.ok("echo hello > k && head -c 3000 /dev/urandom > $T/big && cp $T/big big");
    let server = SocketAddr::from((veth.server_ip, port));
    let mut c = veth.client.run(|| Client::to(server));

    let hello = "VALUE k 0 6\r\nhello\n\r\nEND\r\n";
    // A veth frame sent by a local socket reaches XDP in a buffer the size of the frame (the
    // driver copies it to make XDP's headroom): the reply grows at the front (counted below).
    for i in 0..GETS {
        assert_eq!(c.ask("get k\r\n"), hello, "get {i}");
    }
    assert_eq!(c.get("nope"), None, "a miss, answered by the socket");
    assert_eq!(c.ask("set fromudp 0 0 5\r\nworld\r\n"), "STORED\r\n");
    assert_eq!(m.ok("cat fromudp"), "world");
    m.ok("echo changed > k");
    assert_eq!(c.ask("get k\r\n"), "VALUE k 0 8\r\nchanged\n\r\nEND\r\n");
    // Larger than a frame: passed up, and the socket's reply comes in 3 datagrams.
    let want = std::fs::read(m.scratch().join("big")).expect("read the value back");
    assert_eq!(c.get("big"), Some(want));
    assert_eq!(c.last_reply_datagrams(), 3);

    m.umount_expect_clean_exit();
    let counters = xdp_counters_in_log(&m.log(), &veth.server_if)
        .unwrap_or_else(|| panic!("no XDP counters in the exit log\n{}", m.log_tail()));
    eprintln!("XDP counters: {counters:?}");
    assert!(
        counters.hits as usize > GETS,
        "native XDP answered {} of {} gets: {counters:?}",
        counters.hits,
        GETS + 1
    );
    assert!(
        counters.pass_miss >= 1 && counters.pass_big >= 1,
        "{counters:?}"
    );

    let names = [veth.server.name().to_owned(), veth.client.name().to_owned()];
    drop(c);
    drop(veth);
    for name in names {
        assert!(!netns_exists(&name), "namespace {name} is still there");
    }
}
