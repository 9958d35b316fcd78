//! The generator against a real socket that never answers, as a server
//! that drops every request would be: it must give up in bounded time and
//! count every request lost.

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::loadgen::{self, Load, Work};
use super::proto::DataSet;

const SET: DataSet = DataSet {
    prefix: "tst",
    keys: 8,
    value_bytes: 10,
};
const LOAD: Load = Load {
    threads: 1,
    window: 4,
};
/// The generator's REPLY_TIMEOUT (200 ms) plus its poll and slack.
const BOUND: Duration = Duration::from_secs(2);

fn silent_peer() -> (UdpSocket, SocketAddrV4) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("binding a loopback socket");
    let addr = match s.local_addr().expect("its address") {
        std::net::SocketAddr::V4(a) => a,
        a => panic!("not IPv4: {a}"),
    };
    (s, addr)
}

#[test]
fn a_peer_that_never_answers_loses_every_request_and_never_hangs() {
    let (_peer, addr) = silent_peer();
    let script = SET.gets();
    let t = Instant::now();
    let o = loadgen::run(addr, &script, LOAD, Work::For(Duration::from_millis(500)))
        .expect("a silent peer is no error");
    assert!(t.elapsed() < BOUND, "took {:?}", t.elapsed());
    assert_eq!((o.correct, o.wrong), (0, 0));
    // The window's first requests time out after 200 ms and are resent.
    assert!(o.lost >= LOAD.window as u64, "lost {}", o.lost);
    assert_eq!(o.rate(), 0.0);
}

#[test]
fn keys_sent_once_and_unanswered_come_back_as_failed() {
    let (_peer, addr) = silent_peer();
    let script = SET.sets();
    let keys: Vec<u32> = (0..SET.keys as u32).collect();
    let t = Instant::now();
    let o = loadgen::run(addr, &script, LOAD, Work::Once(&keys, BOUND))
        .expect("a silent peer is no error");
    assert!(t.elapsed() < BOUND + BOUND, "took {:?}", t.elapsed());
    let mut failed = o.failed;
    failed.sort();
    assert_eq!((failed, o.lost), (keys, SET.keys as u64));
}

#[test]
fn nothing_listening_is_an_error_not_a_wait() {
    let (peer, addr) = silent_peer();
    drop(peer);
    let script = SET.gets();
    let t = Instant::now();
    let r = loadgen::run(addr, &script, LOAD, Work::For(Duration::from_millis(300)));
    assert!(r.is_err() && t.elapsed() < BOUND, "{:?}", r.map(|o| o.lost));
}
