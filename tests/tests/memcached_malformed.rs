//! Malformed, truncated and oversized datagrams against the XDP fast path (memcached.bpf.c),
//! checked against a reference: two daemons with the same keys in one network namespace, one
//! with XDP on its `lo`, one with `--memcached-if none` (its socket answers everything). Both are
//! the same program but for XDP, so every datagram must get the same answer from both (or no
//! answer from both): whatever XDP answers itself must be exactly what the daemon would say, and
//! whatever it cannot answer it must pass up untouched. Datagrams built at the IP level (options,
//! fragments, a UDP length that disagrees with the packet) go to the XDP daemon alone.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use bpfdb_tests::memcache::{
    Client, HEADER_BYTES, REPLY_TIMEOUT, SILENCE, frame, free_udp_port, parse_values,
    xdp_counters_in_log,
};
use bpfdb_tests::netns::NetNs;
use bpfdb_tests::{Mount, Rng};

/// What a datagram got: its reply (values without their cas, which differs between two
/// databases), or no reply.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Values(Vec<(String, Vec<u8>, bool)>),
    Other(String),
    Silence,
}

fn answer(reply: Result<Vec<u8>, String>) -> Answer {
    match reply {
        Err(_) => Answer::Silence,
        Ok(r) => match parse_values(&r) {
            Ok(v) => Answer::Values(
                v.into_iter()
                    .map(|v| (v.key, v.data, v.cas.is_some()))
                    .collect(),
            ),
            Err(_) => Answer::Other(String::from_utf8_lossy(&r).into_owned()),
        },
    }
}

/// Whether the daemon answers a datagram at all (docs/SEMANTICS.md: sequence 0 of 1, and a
/// request after the header): how long to wait for its reply.
fn answered(datagram: &[u8]) -> bool {
    datagram.len() > HEADER_BYTES && datagram[2..6] == [0, 0, 0, 1]
}

struct Pair {
    xdp: Mount,
    reference: Mount,
    to_xdp: Client,
    to_reference: Client,
    cases: usize,
}

impl Pair {
    /// Sends `datagram` to both daemons and asserts that both answer it alike.
    #[track_caller]
    fn check(&mut self, datagram: &[u8]) {
        self.cases += 1;
        self.to_xdp.send_raw(datagram);
        self.to_reference.send_raw(datagram);
        let wait = if answered(datagram) {
            REPLY_TIMEOUT
        } else {
            SILENCE
        };
        let id = datagram
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let from_xdp = answer(self.to_xdp.reply(id, wait));
        let from_reference = answer(self.to_reference.reply(id, wait));
        assert_eq!(
            from_xdp,
            from_reference,
            "case {}: {:?}",
            self.cases,
            String::from_utf8_lossy(datagram)
        );
    }

    #[track_caller]
    fn check_body(&mut self, body: &[u8]) {
        let id = self.cases as u16;
        self.check(&frame(id, 0, 1, body));
    }
}

/// Sets the same keys in a mount: short, page-backed, larger than a frame, and m00..m19.
fn fill(m: &Mount) {
    m.ok(
        "echo hello > k && head -c 200 /dev/zero | tr '\\0' x > k2 && \
          head -c 2000 /dev/zero | tr '\\0' y > big && \
          for i in $(seq -w 0 19); do echo i$i > m$i || exit 1; done",
    );
}

#[test]
fn every_datagram_gets_the_answer_the_daemon_gives_without_xdp() {
    let ns = NetNs::new();
    let (xdp_port, ref_port) = ns.run(|| (free_udp_port(), free_udp_port()));
    let start = |port: u16, interface: &str| {
        let m = Mount::builder()
            .net_ns(ns.path())
            .arg("--memcached-udp")
            .arg(port.to_string())
            .arg("--memcached-if")
            .arg(interface)
            .start();
        m.wait_for_log("mount live"); // the XDP program is attached
        m
    };
    let xdp = start(xdp_port, "lo");
    let reference = start(ref_port, "none");
    fill(&xdp);
    fill(&reference);
    let (to_xdp, to_reference) = ns.run(|| (Client::new(xdp_port), Client::new(ref_port)));
    let mut p = Pair {
        xdp,
        reference,
        to_xdp,
        to_reference,
        cases: 0,
    };

    // Truncated requests: every prefix of two valid ones.
    for full in [&b"get k k2 big m00\r\n"[..], b"gets k2 k\r\n"] {
        for n in 0..=full.len() {
            p.check_body(&full[..n]);
        }
    }
    let keys = |n: usize| (0..n).map(|i| format!(" m{i:02}")).collect::<String>();
    let mut named: Vec<Vec<u8>> = vec![
        format!("get {}\r\n", "a".repeat(300)).into(),
        format!("get {}\r\n", "a".repeat(250)).into(),
        format!("get k{}\r\n", "k".repeat(250)).into(),
        format!("get{}\r\n", keys(15)).into(), // as many keys as XDP parses
        format!("get{}\r\n", keys(16)).into(),
        format!("get{}\r\n", keys(20)).into(),
        format!("gets{} missing\r\n", keys(14)).into(),
        format!("get {}\r\n", "k ".repeat(2000)).into(), // a 4 kB request, a 36 kB reply
        b"get k k k k k\r\n".to_vec(),
        b"get missing k\r\n".to_vec(),
        b"get k missing\r\n".to_vec(),
        b"get k big\r\n".to_vec(),
        b"get k\r\nget k2\r\n".to_vec(),
        b"get k\r\nbogus\r\n".to_vec(),
        b"get k\r\n\r\n".to_vec(),
        b"get k\r\n\0".to_vec(),
        b"get k\n".to_vec(),
        b"get k\r".to_vec(),
        b"get k \r\n".to_vec(),
        b"get  k\r\n".to_vec(),
        b" get k\r\n".to_vec(),
        b"get\tk\r\n".to_vec(),
        b"get\r\n".to_vec(),
        b"get \r\n".to_vec(),
        b"gets \r\n".to_vec(),
        b"GET k\r\n".to_vec(),
        b"gett k\r\n".to_vec(),
        b"get .stats\r\n".to_vec(),
        b"get a/b\r\n".to_vec(),
        b"get k\x7f\r\n".to_vec(),
        b"get k\x01\r\n".to_vec(),
        b"get k\0\r\n".to_vec(),
        b"get k2 \xff\r\n".to_vec(),
        b"version\r\n".to_vec(),
        b"delete nothere\r\n".to_vec(),
    ];
    // Around the 512 bytes XDP parses at most.
    for len in 505..=515 {
        named.push(format!("get k{}\r\n", " ".repeat(len - 7)).into());
    }
    for body in &named {
        p.check_body(body);
    }

    // Frames the daemon does not answer, and ones it does with odd reserved bytes.
    for (seq, count) in [(1, 2), (0, 2), (0, 0), (5, 1), (1, 1)] {
        p.check(&frame(900 + seq, seq, count, b"get k\r\n"));
    }
    let mut reserved = frame(901, 0, 1, b"get k\r\n");
    reserved[6..8].copy_from_slice(&[0xff, 0xff]);
    p.check(&reserved);
    for n in [0, 1, 7, 8] {
        p.check(&frame(902, 0, 1, b"")[..n]);
    }

    // Random bytes; random words of a get; random headers.
    let mut rng = Rng::from_env_or_time("malformed datagrams");
    let alphabet = b"getsk2bigm01 \r\n\t\0\xff./";
    for i in 0..400 {
        let len = rng.range(1, 80) as usize;
        let body: Vec<u8> = match i % 3 {
            0 => (0..rng.range(1, 600))
                .map(|_| rng.next_u64() as u8)
                .collect(),
            1 => (0..len)
                .map(|_| alphabet[rng.range(0, alphabet.len() as u64) as usize])
                .collect(),
            _ => {
                let mut b = b"get k k2 big m01\r\n".to_vec();
                let at = rng.range(0, b.len() as u64) as usize;
                b[at] = alphabet[rng.range(0, alphabet.len() as u64) as usize];
                b
            }
        };
        p.check_body(&body);
    }
    for _ in 0..12 {
        let mut d = frame(0, 0, 0, b"get k\r\n");
        for b in &mut d[..HEADER_BYTES] {
            *b = rng.next_u64() as u8;
        }
        p.check(&d);
    }
    eprintln!("{} datagrams answered alike", p.cases);

    ip_level_datagrams(&ns, &mut p, xdp_port);

    p.reference.umount_expect_clean_exit();
    p.xdp.umount_expect_clean_exit();
    let c = xdp_counters_in_log(&p.xdp.log(), "lo").expect("XDP counters in the exit log");
    eprintln!("XDP counters: {c:?}");
    assert!(c.hits > 0 && c.pass_other > 0 && c.pass_big > 0, "{c:?}");
}

/// IPv4 + UDP from 127.0.0.1:`src` to 127.0.0.1:`dst` around `payload`, with IP `options`
/// (a multiple of 4 bytes), the fragment field `frag`, and a UDP length of the payload's plus
/// `udp_len_delta`. The kernel fills in the IP checksum and total length; the UDP checksum is
/// 0 (none).
fn ip_udp(
    src: u16,
    dst: u16,
    payload: &[u8],
    options: &[u8],
    frag: u16,
    udp_len_delta: i32,
) -> Vec<u8> {
    let mut p = vec![0x40 | (5 + options.len() / 4) as u8, 0, 0, 0, 0x42, 0x42];
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
    p.extend_from_slice(options);
    let udp_len = (8 + payload.len() as i32 + udp_len_delta) as u16;
    for v in [src, dst, udp_len, 0] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p.extend_from_slice(payload);
    p
}

fn send_ip(raw: &OwnedFd, packet: &[u8]) {
    // SAFETY: a zeroed sockaddr_in is valid; we set its family and address.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    // SAFETY: a valid socket, buffer and address of the given sizes.
    let n = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        n,
        packet.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// Datagrams XDP must pass up (IP options, fragments) or trim (bytes past the UDP length),
/// built at the IP level; each must get the reply a plain `get k` gets, or none if the kernel
/// drops it.
fn ip_level_datagrams(ns: &NetNs, p: &mut Pair, port: u16) {
    // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
    let raw = ns.run(|| unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    });
    let src = p.to_xdp.local_port();
    let plain = answer(p.to_xdp.request(b"get k\r\n"));
    assert_eq!(
        plain,
        Answer::Values(vec![("k".into(), b"hello\n".to_vec(), false)])
    );
    let wait = Duration::from_secs(5);
    let mut expect = |id: u16, packets: &[Vec<u8>], want: &Answer, what: &str| {
        for packet in packets {
            send_ip(&raw, packet);
        }
        let w = if *want == Answer::Silence {
            SILENCE
        } else {
            wait
        };
        assert_eq!(&answer(p.to_xdp.reply(id, w)), want, "{what}");
    };
    let d = frame(1001, 0, 1, b"get k\r\n");
    expect(
        1001,
        &[ip_udp(src, port, &d, &[1, 1, 1, 0], 0, 0)],
        &plain,
        "IP options",
    );
    let d = frame(1002, 0, 1, b"get k\r\n");
    let mut trailing = ip_udp(src, port, &d, &[], 0, 0);
    trailing.extend_from_slice(b"JUNKJUNKJUNK");
    expect(1002, &[trailing], &plain, "bytes past the UDP length");
    let d = frame(1003, 0, 1, b"get k\r\n");
    expect(
        1003,
        &[ip_udp(src, port, &d, &[], 0, 20)],
        &Answer::Silence,
        "UDP length past the packet",
    );
    // Two fragments: the UDP header and 16 bytes (a multiple of 8), then the rest.
    let d = frame(1004, 0, 1, b"get k            \r\n");
    let whole = ip_udp(src, port, &d, &[], 0, 0);
    let first = [&whole[..20], &whole[20..20 + 24]].concat();
    let mut first = first;
    first[6..8].copy_from_slice(&0x2000u16.to_be_bytes()); // more fragments, offset 0
    let mut second = whole[..20].to_vec();
    second[6..8].copy_from_slice(&3u16.to_be_bytes()); // offset 24 bytes
    second.extend_from_slice(&whole[20 + 24..]);
    expect(1004, &[first, second], &plain, "a fragmented datagram");
}
