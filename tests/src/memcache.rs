//! A memcached UDP client for the tests: frames a request, collects the datagrams of its reply
//! (bounded in count and time) and puts them back in order by sequence number.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The frame header before every request and reply datagram.
pub const HEADER_BYTES: usize = 8;

/// How long [`Client::request`] waits for a whole reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Client::no_reply`] listens for a reply that must not come.
pub const SILENCE: Duration = Duration::from_millis(300);

/// Most datagrams a reply may have (the daemon's bound: a 1 MiB value takes 750).
pub const MAX_REPLY_DATAGRAMS: usize = 1024;

/// Receive buffer asked for, so that a reply of hundreds of datagrams sent at once is not
/// dropped by the kernel before it is read.
const RECV_BUFFER_BYTES: libc::c_int = 16 << 20;

/// A loopback UDP port no socket uses now (the kernel's pick, released again).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    s.local_addr().expect("local_addr").port()
}

/// A datagram: the frame header (request `id`, `seq`, `count`, reserved 0), then `body`.
pub fn frame(id: u16, seq: u16, count: u16, body: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(HEADER_BYTES + body.len());
    for v in [id, seq, count, 0] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d.extend_from_slice(body);
    d
}

fn field(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[2 * i], d[2 * i + 1]])
}

pub struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
    /// Datagrams of the last whole reply.
    last_datagrams: usize,
}

impl Client {
    /// A client of the server on 127.0.0.1:`port`, in the calling thread's network namespace.
    pub fn new(port: u16) -> Client {
        Client::bound(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    /// A client of the server at `server` (e.g. across a veth), on any local address.
    pub fn to(server: SocketAddr) -> Client {
        Client::bound(SocketAddr::from(([0, 0, 0, 0], 0)), server)
    }

    fn bound(local: SocketAddr, server: SocketAddr) -> Client {
        let socket = UdpSocket::bind(local).expect("bind a client socket");
        // SO_RCVBUFFORCE (root) passes net.core.rmem_max; SO_RCVBUF is the fallback.
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: a valid socket and a pointer to a c_int of the given size.
            let r = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&RECV_BUFFER_BYTES as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
        Client {
            socket,
            server,
            next_id: 1,
            last_datagrams: 0,
        }
    }

    /// How many datagrams the last whole reply came in.
    pub fn last_reply_datagrams(&self) -> usize {
        self.last_datagrams
    }

    /// The client socket's port, for datagrams built by hand that must come back to it.
    pub fn local_port(&self) -> u16 {
        self.socket.local_addr().expect("local_addr").port()
    }

    /// Sends `datagram` as it is.
    pub fn send_raw(&self, datagram: &[u8]) {
        self.socket
            .send_to(datagram, self.server)
            .expect("send a datagram");
    }

    /// Sends `body` as one request and returns its reply's bytes, or why none came whole.
    pub fn request(&mut self, body: &[u8]) -> Result<Vec<u8>, String> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.send_raw(&frame(id, 0, 1, body));
        self.reply(id, REPLY_TIMEOUT)
    }

    /// `request` that must succeed, as text.
    #[track_caller]
    pub fn ask(&mut self, body: &str) -> String {
        let reply = self
            .request(body.as_bytes())
            .unwrap_or_else(|e| panic!("{body:?}: {e}"));
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// The value of `key` from a `get`, or None if it is missing; panics on anything else.
    #[track_caller]
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let reply = self
            .request(format!("get {key}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        if reply == b"END\r\n" {
            return None;
        }
        let text = String::from_utf8_lossy(&reply);
        let eol = reply
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("get {key}: no line in {text:?}"));
        let line = String::from_utf8_lossy(&reply[..eol]).into_owned();
        let fields: Vec<&str> = line.split(' ').collect();
        assert!(
            fields.len() == 4 && fields[0] == "VALUE" && fields[1] == key && fields[2] == "0",
            "get {key}: unexpected line {line:?}"
        );
        let len: usize = fields[3].parse().expect("a length");
        let start = eol + 2;
        assert_eq!(
            reply.get(start + len..),
            Some(&b"\r\nEND\r\n"[..]),
            "get {key}: the reply does not end after {len} bytes of value"
        );
        Some(reply[start..start + len].to_vec())
    }

    /// Listens for [`SILENCE`] and returns what arrived meanwhile: nothing, if a request was
    /// dropped as it should be.
    pub fn no_reply(&self) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(SILENCE)).ok()?;
        let mut buf = vec![0u8; 65_536];
        self.socket
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    }

    /// The datagrams of request `id`'s reply (to a datagram sent with [`Client::send_raw`] or
    /// by other means), joined in sequence order. Datagrams of other requests (late replies of
    /// earlier ones) are skipped.
    pub fn reply(&mut self, id: u16, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        let mut parts: Vec<Option<Vec<u8>>> = Vec::new();
        let mut got = 0;
        let mut buf = vec![0u8; 65_536];
        for _ in 0..MAX_REPLY_DATAGRAMS * 4 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.socket
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let n = match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(_) => break,
            };
            let d = &buf[..n];
            if n < HEADER_BYTES {
                return Err(format!("a reply datagram of {n} bytes"));
            }
            if field(d, 0) != id {
                continue;
            }
            let (seq, count) = (field(d, 1) as usize, field(d, 2) as usize);
            if count == 0 || count > MAX_REPLY_DATAGRAMS || seq >= count {
                return Err(format!("reply datagram {seq} of {count}"));
            }
            if parts.is_empty() {
                parts = vec![None; count];
            }
            if parts.len() != count {
                return Err(format!("datagram counts {} and {count}", parts.len()));
            }
            if parts[seq].replace(d[HEADER_BYTES..].to_vec()).is_some() {
                return Err(format!("datagram {seq} twice"));
            }
            got += 1;
            if got == count {
                self.last_datagrams = count;
                return Ok(parts.into_iter().flatten().flatten().collect());
            }
        }
        Err(format!(
            "no whole reply to request {id} within {timeout:?}: {got} of {} datagrams",
            parts.len()
        ))
    }
}

/// One `VALUE` of a `get` or `gets` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub key: String,
    pub data: Vec<u8>,
    /// The cas unique, for `gets`.
    pub cas: Option<u64>,
}

/// The values of a whole `get`/`gets` reply: `VALUE <key> 0 <bytes>[ <cas>]\r\n<data>\r\n`
/// blocks, then `END\r\n` and nothing after; or why the reply is not that.
pub fn parse_values(reply: &[u8]) -> Result<Vec<Value>, String> {
    let text = || String::from_utf8_lossy(reply).into_owned();
    let mut values = Vec::new();
    let mut rest = reply;
    loop {
        if rest == b"END\r\n" {
            return Ok(values);
        }
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| format!("no END line in {:?}", text()))?;
        let line = String::from_utf8_lossy(&rest[..eol]).into_owned();
        let fields: Vec<&str> = line.split(' ').collect();
        if !(fields.len() == 4 || fields.len() == 5) || fields[0] != "VALUE" || fields[2] != "0" {
            return Err(format!("bad line {line:?} in {:?}", text()));
        }
        let len: usize = fields[3]
            .parse()
            .map_err(|_| format!("bad length in {line:?}"))?;
        let cas = match fields.get(4) {
            Some(c) => Some(c.parse().map_err(|_| format!("bad cas in {line:?}"))?),
            None => None,
        };
        let data = &rest[eol + 2..];
        if data.len() < len + 2 || &data[len..len + 2] != b"\r\n" {
            return Err(format!(
                "the value of {line:?} is not {len} bytes and CRLF in {:?}",
                text()
            ));
        }
        values.push(Value {
            key: fields[1].to_string(),
            data: data[..len].to_vec(),
            cas,
        });
        rest = &data[len + 2..];
    }
}

/// The XDP program's counters, as the daemon logs them when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    pub hits: u64,
    pub pass_miss: u64,
    pub pass_big: u64,
    pub pass_other: u64,
    pub pass_race: u64,
}

/// The counters in the last `memcached XDP on IFNAME: XdpCounters { hits: N, ... }` line of a
/// daemon log (written at shutdown), or None if there is none.
pub fn xdp_counters_in_log(log: &str, ifname: &str) -> Option<XdpCounters> {
    let tag = format!("memcached XDP on {ifname}: XdpCounters {{");
    let line = log.lines().rev().find(|l| l.contains(&tag))?;
    let fields = &line[line.find(&tag)? + tag.len()..];
    let mut c = XdpCounters::default();
    for part in fields.trim_end_matches(['}', ' ']).split(',') {
        let (name, value) = part.split_once(':')?;
        let value: u64 = value.trim().parse().ok()?;
        match name.trim() {
            "hits" => c.hits = value,
            "pass_miss" => c.pass_miss = value,
            "pass_big" => c.pass_big = value,
            "pass_other" => c.pass_other = value,
            "pass_race" => c.pass_race = value,
            _ => return None,
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_counters_parse() {
        let r = b"VALUE a 0 2\r\nx\n\r\nVALUE b 0 0 77\r\n\r\nEND\r\n";
        let v = parse_values(r).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].key.as_str(), &v[0].data[..], v[0].cas),
            ("a", &b"x\n"[..], None)
        );
        assert_eq!(
            (v[1].key.as_str(), v[1].data.len(), v[1].cas),
            ("b", 0, Some(77))
        );
        assert_eq!(parse_values(b"END\r\n").unwrap(), vec![]);
        for bad in [
            &b"VALUE a 0 3\r\nx\r\nEND\r\n"[..],
            b"END\r\nx",
            b"ERROR\r\n",
            b"",
        ] {
            assert!(parse_values(bad).is_err(), "{bad:?}");
        }
        let log = "x\n[..] memcached XDP on lo: XdpCounters { hits: 3, pass_miss: 1, pass_big: 0, \
                   pass_other: 7, pass_race: 0 }\ny";
        let c = xdp_counters_in_log(log, "lo").unwrap();
        assert_eq!((c.hits, c.pass_miss, c.pass_other), (3, 1, 7));
        assert_eq!(xdp_counters_in_log(log, "eth0"), None);
    }
}
