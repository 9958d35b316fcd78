//! The memcached XDP program over a real engine, no daemon: its parser on
//! crafted frames (BPF_PROG_TEST_RUN), and its answers to real datagrams on
//! loopback. A datagram it passes up lands in a plain socket bound to the
//! port, so every test sees which side answered.

use std::net::UdpSocket;
use std::time::Duration;

use bpfdb::{Db, MemcachedXdp, NewMeta, Options, SetFlags};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// Value bytes a reply on lo can always grow into: generic XDP works in
/// the request's own socket buffer, whose tailroom is what the kernel's
/// small-head cache left (measured: replies of about 600 bytes fit).
const LO_REPLY_ROOM: usize = 300;
/// Replies and passed-up requests arrive within this, or never.
const WAIT: Duration = Duration::from_secs(2);

fn db() -> Db {
    let opts = Options {
        max_keys: 4096,
        value_mem_bytes: 16 << 20,
        slots: 4,
        hash_seed: 0x5eed_1234_abcd_0042,
        ..Options::default()
    };
    Db::open(&opts).unwrap_or_else(|e| panic!("open engine: {e}"))
}

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        ..NewMeta::default()
    }
}

fn value(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i as u8).wrapping_mul(7).wrapping_add(seed) % 26))
        .collect()
}

/// An Ethernet + IPv4 + UDP frame to `port` carrying a memcached frame
/// header (id, seq 0 of 1) and `payload`.
fn frame(port: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (20 + 8 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + 8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The memcached payload of a reply frame the program turned around.
fn reply_payload(out: &[u8]) -> &[u8] {
    &out[14 + 20 + 8 + 8..]
}

fn expected(keys: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut r = Vec::new();
    for (k, v) in keys {
        r.extend_from_slice(b"VALUE ");
        r.extend_from_slice(k);
        r.extend_from_slice(format!(" 0 {}\r\n", v.len()).as_bytes());
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"END\r\n");
    r
}

/// Moves the test's thread into a network namespace of its own with `lo`
/// up: an interface takes one XDP program, and tests run side by side.
fn private_net() {
    // SAFETY: unshare only changes this thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(up.success(), "ip link set lo up");
}

fn xdp(db: &Db, port: u16) -> MemcachedXdp {
    // The verifier's log reaches the test output through `log` on failure.
    let _ = env_logger::builder().is_test(true).try_init();
    private_net();
    db.memcached_xdp(port, "lo")
        .unwrap_or_else(|e| panic!("attach XDP: {e}"))
}

#[test]
fn hashes_agree_for_names_of_every_length() {
    let db = db();
    let x = xdp(&db, 41001);
    let mut s = db.session();
    for len in 1..=250usize {
        let name: Vec<u8> = (0..len).map(|i| b'A' + (i * 13 % 26) as u8).collect();
        let v = value(len % 300, len as u8);
        s.set(&name, &v, meta(), SetFlags::default()).unwrap();
        let mut req = b"get ".to_vec();
        req.extend_from_slice(&name);
        req.extend_from_slice(b"\r\n");
        let (verdict, out) = x.run_on(&frame(41001, len as u16, &req)).unwrap();
        assert_eq!(verdict, XDP_TX, "name of {len} bytes not answered in XDP");
        assert_eq!(
            reply_payload(&out),
            expected(&[(&name, &v)]),
            "name of {len} bytes"
        );
    }
}

#[test]
fn parser_answers_only_what_it_is_sure_of() {
    let db = db();
    let x = xdp(&db, 41002);
    let mut s = db.session();
    s.set(b"k1", b"one", meta(), SetFlags::default()).unwrap();
    s.set(b"k2", &value(1000, 1), meta(), SetFlags::default())
        .unwrap();
    s.set(b"big", &value(5000, 2), meta(), SetFlags::default())
        .unwrap();
    s.set(b"empty", b"", meta(), SetFlags::default()).unwrap();

    let (v, out) = x.run_on(&frame(41002, 7, b"get k1 k2 empty\r\n")).unwrap();
    assert_eq!(v, XDP_TX);
    let v2 = value(1000, 1);
    assert_eq!(
        reply_payload(&out),
        expected(&[(b"k1", b"one"), (b"k2", &v2), (b"empty", b"")])
    );
    // The reply keeps the request id and is addressed back.
    assert_eq!(&out[42..44], &7u16.to_be_bytes());
    assert_eq!(
        &out[34..36],
        &41002u16.to_be_bytes(),
        "source port is the server's"
    );

    let passed: &[&[u8]] = &[
        b"get missing\r\n",       // a miss goes up
        b"get k1 missing\r\n",    // one miss sends the whole request up
        b"get big\r\n",           // over one page
        b"get k2 k2\r\n",         // reply over one frame
        b"set k1 0 0 1\r\nx\r\n", // not a get
        b"get k1\n",              // no \r\n
        b"get k1",                // truncated
        b"get\r\n",               // no key
        b"get  \r\n",             // no key
        b"gets\r\n",
        b"GET k1\r\n",
        b"get .stats\r\n", // bpfdb's control namespace
        b"get a/b\r\n",    // not a file name
        b"get k1\x01\r\n", // a control byte
    ];
    for p in passed {
        let (v, _) = x.run_on(&frame(41002, 1, p)).unwrap();
        assert_eq!(v, XDP_PASS, "{:?} must go up", String::from_utf8_lossy(p));
    }
    let long_key = vec![b'x'; 251];
    let mut req = b"get ".to_vec();
    req.extend_from_slice(&long_key);
    req.extend_from_slice(b"\r\n");
    assert_eq!(x.run_on(&frame(41002, 1, &req)).unwrap().0, XDP_PASS);
    let many: String = format!("get{}\r\n", " k1".repeat(16));
    assert_eq!(
        x.run_on(&frame(41002, 1, many.as_bytes())).unwrap().0,
        XDP_PASS
    );

    // Frames that are not ours, or not whole, are never answered (the
    // kernel's test run refuses frames shorter than an Ethernet header).
    let good = frame(41002, 1, b"get k1\r\n");
    for cut in [14, 20, 30, 34, 41, 42, 45, 49, 50, 52] {
        let (v, _) = x.run_on(&good[..cut.min(good.len())]).unwrap();
        assert!(v == XDP_PASS || v == XDP_DROP, "cut at {cut}: {v}");
    }
    let mut other_port = good.clone();
    other_port[36..38].copy_from_slice(&41003u16.to_be_bytes());
    assert_eq!(x.run_on(&other_port).unwrap().0, XDP_PASS);
    let mut second_datagram = good.clone();
    second_datagram[45] = 1; // sequence 1
    assert_eq!(x.run_on(&second_datagram).unwrap().0, XDP_PASS);
    let mut udp_len_lies = good.clone();
    udp_len_lies[38..40].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(x.run_on(&udp_len_lies).unwrap().0, XDP_PASS);
    // Ethernet padding past the UDP length is not part of the request.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0u8; 20]);
    let (v, out) = x.run_on(&padded).unwrap();
    assert_eq!(v, XDP_TX);
    assert_eq!(reply_payload(&out), expected(&[(b"k1", b"one")]));

    // gets adds the cas unique: the value's commit timestamp.
    let ts = s.get(b"k1", &mut Vec::new()).unwrap().ts;
    let (v, out) = x.run_on(&frame(41002, 9, b"gets k1\r\n")).unwrap();
    assert_eq!(v, XDP_TX);
    assert_eq!(
        reply_payload(&out),
        format!("VALUE k1 0 3 {ts}\r\none\r\nEND\r\n").as_bytes()
    );
    let c = x.counters().unwrap();
    assert_eq!(
        (c.hits, c.pass_miss, c.pass_big, c.pass_race),
        (3, 2, 2, 0),
        "{c:?}"
    );
}

#[test]
fn loopback_datagrams_are_answered_in_the_kernel_and_the_rest_passed_up() {
    const PORT: u16 = 41004;
    let db = db();
    let x = xdp(&db, PORT);
    let mut s = db.session();
    s.set(b"hello", b"world", meta(), SetFlags::default())
        .unwrap();
    let server = UdpSocket::bind(("127.0.0.1", PORT)).unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 2048];
    for round in 0..200u16 {
        let v = value(1 + (round as usize * 7) % LO_REPLY_ROOM, round as u8);
        s.set(b"hello", &v, meta(), SetFlags::default()).unwrap();
        let mut req = round.to_be_bytes().to_vec();
        req.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
        req.extend_from_slice(b"get hello\r\n");
        client.send_to(&req, ("127.0.0.1", PORT)).unwrap();
        let n = client
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("round {round}: no reply from XDP: {e}"));
        assert_eq!(&buf[..2], &round.to_be_bytes());
        assert_eq!(
            &buf[8..n],
            expected(&[(b"hello", &v)]),
            "round {round}: stale or torn"
        );
    }
    // A reply that does not fit the request's buffer on lo goes up whole.
    let big = value(1300, 9);
    s.set(b"hello", &big, meta(), SetFlags::default()).unwrap();
    client
        .send_to(
            b"\x00\x02\x00\x00\x00\x01\x00\x00get hello\r\n",
            ("127.0.0.1", PORT),
        )
        .unwrap();
    if let Ok(n) = client.recv(&mut buf) {
        assert_eq!(&buf[8..n], expected(&[(b"hello", &big)]));
    } else {
        let (n, _) = server.recv_from(&mut buf).expect("answered or passed up");
        assert_eq!(&buf[8..n], b"get hello\r\n");
    }
    // A miss reaches the socket, untouched.
    client
        .send_to(
            b"\x00\x01\x00\x00\x00\x01\x00\x00get nope\r\n",
            ("127.0.0.1", PORT),
        )
        .unwrap();
    let (n, _) = server.recv_from(&mut buf).expect("the miss was passed up");
    assert_eq!(&buf[8..n], b"get nope\r\n");
    assert!(x.counters().unwrap().hits >= 200);
}
