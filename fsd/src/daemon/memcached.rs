//! The memcached UDP server's socket and threads (`--memcached-udp PORT`):
//! each thread receives a datagram, runs it through `core::memcache`, and
//! sends the reply's datagrams back to the sender; a write's reply is sent
//! by whichever thread sees the write durable. The threads stop when the
//! `Server` drops (a stop flag, seen within `RECV_TIMEOUT`).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};

use bpfdb::{Db, MemcachedXdp, XdpCounters};

use crate::core::fs::Fs;
use crate::core::memcache::{self, proto};

/// Threads receiving on the socket. Each takes an engine slot while it
/// runs a command, so `cli::engine_slots` counts them. Two, so that a set
/// waiting for cached readers of its key (`keyuse`) does not hold up every
/// other request; no thread waits for the disk (replies wait in the log).
pub const THREADS: u32 = 2;

/// How long a thread waits for a datagram before it looks at the stop flag.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// How long a thread pauses after a receive error other than its timeout,
/// so that an error that repeats does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Longest interface name Linux takes (IFNAMSIZ less its NUL).
pub const MAX_IFNAME_BYTES: usize = 15;

/// Where the XDP fast path for GET hits attaches (`--memcached-if`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interface {
    /// `none`: no XDP; every request reaches the socket.
    None,
    Named(String),
}

impl Interface {
    /// `none`, or a name Linux takes for a network interface: 1 to 15
    /// bytes, not `.` or `..`, without '/', ':', NUL or white space.
    pub fn parse(s: &str) -> Result<Interface, String> {
        if s == "none" {
            return Ok(Interface::None);
        }
        let valid = !s.is_empty()
            && s.len() <= MAX_IFNAME_BYTES
            && s != "."
            && s != ".."
            && !s
                .chars()
                .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
        if !valid {
            return Err(format!(
                "'{s}' is not a network interface name (1 to {MAX_IFNAME_BYTES} bytes, without '/', ':' or spaces) or none"
            ));
        }
        Ok(Interface::Named(s.to_string()))
    }

    /// The address the socket binds: loopback unless the fast path serves
    /// another interface, whose clients come from the network.
    pub fn bind_ip(&self) -> Ipv4Addr {
        match self {
            Interface::Named(name) if name != "lo" => Ipv4Addr::UNSPECIFIED,
            _ => Ipv4Addr::LOCALHOST,
        }
    }
}

impl std::fmt::Display for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interface::None => f.write_str("none"),
            Interface::Named(name) => f.write_str(name),
        }
    }
}

/// The running server; dropping it stops its threads and waits for them,
/// so that they no longer hold the filesystem (or engine slots).
pub struct Server {
    /// First, so that it detaches before the threads stop: requests then
    /// reach the socket, or nothing, never a half-stopped server.
    xdp: Option<Arc<MemcachedXdp>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Binds the socket for `port` at the address `interface` calls for. Done
/// before the engine loads and the mount goes live, so that a port in use
/// fails the start before anything is mounted.
pub fn bind(port: u16, interface: &Interface) -> Result<UdpSocket, String> {
    let addr = SocketAddr::from((interface.bind_ip(), port));
    let socket = UdpSocket::bind(addr).map_err(|e| format!("memcached UDP on {addr}: {e}"))?;
    socket
        .set_read_timeout(Some(RECV_TIMEOUT))
        .map_err(|e| format!("memcached UDP on {addr}: setting a receive timeout: {e}"))?;
    Ok(socket)
}

/// The XDP fast path for `port` on `interface` (None for `none`): GET hits
/// answered in the kernel from `db` (bpfdb's memcached.bpf.c), the rest
/// passed to the socket. Attached before the mount goes live, so that an
/// interface that already has an XDP program (another daemon's) fails the
/// start before anything is mounted.
pub fn attach_xdp(
    db: &Db,
    port: u16,
    interface: &Interface,
) -> Result<Option<Arc<MemcachedXdp>>, String> {
    let Interface::Named(name) = interface else {
        return Ok(None);
    };
    let xdp = db.memcached_xdp(port, name).map_err(|e| {
        format!("memcached XDP on {name}: {e}; --memcached-if none serves without XDP")
    })?;
    Ok(Some(Arc::new(xdp)))
}

/// Serves memcached's UDP protocol on `socket` (from `bind`) over `fs`'s
/// root keys, beside the XDP fast path `xdp` (from `attach_xdp`).
pub fn start(
    socket: UdpSocket,
    xdp: Option<Arc<MemcachedXdp>>,
    fs: Arc<Fs>,
) -> Result<Server, String> {
    let addr = socket
        .local_addr()
        .map_err(|e| format!("memcached UDP: the socket's address: {e}"))?;
    let socket = Arc::new(socket);
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(x) = &xdp {
        let weak = Arc::downgrade(x);
        fs.add_client_counters(Box::new(move || {
            let counters = weak.upgrade().and_then(|x| x.counters().ok());
            counters.map(|c| c.named().to_vec()).unwrap_or_default()
        }));
    }
    let mut server = Server {
        xdp,
        stop: stop.clone(),
        threads: Vec::new(),
    };
    for i in 0..THREADS {
        let (socket, stop, fs) = (socket.clone(), stop.clone(), fs.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{}-{i}", memcache::THREAD_PREFIX))
            .spawn(move || receive(&socket, &stop, &fs))
            .map_err(|e| format!("memcached UDP: starting a thread: {e}"))?;
        server.threads.push(thread);
    }
    let fast_path = match &server.xdp {
        None => "no XDP: every request is served here".to_string(),
        Some(x) => format!("GET hits answered by XDP on {}", x.ifname),
    };
    info!("memcached UDP on {addr}: {THREADS} threads; {fast_path}");
    Ok(server)
}

/// One thread's loop: a datagram at a time until the stop flag is set.
fn receive(socket: &Arc<UdpSocket>, stop: &AtomicBool, fs: &Fs) {
    let mut buf = vec![0u8; proto::MAX_DATAGRAM_BYTES];
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                // E.g. an ICMP error of an earlier send; the socket goes on.
                debug!("memcached UDP: receive: {e}");
                std::thread::sleep(ERROR_PAUSE);
                continue;
            }
        };
        let socket = socket.clone();
        memcache::serve(fs, &buf[..len], move |datagrams| {
            send(&socket, peer, &datagrams)
        });
    }
}

fn send(socket: &UdpSocket, peer: SocketAddr, datagrams: &[Vec<u8>]) {
    for d in datagrams {
        if let Err(e) = socket.send_to(d, peer) {
            warn!("memcached UDP: reply to {peer}: {e}");
            return;
        }
    }
}

impl Server {
    /// The XDP program's counters, if it runs.
    pub fn xdp_counters(&self) -> Option<XdpCounters> {
        self.xdp.as_ref().and_then(|x| x.counters().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let (Some(x), Some(c)) = (&self.xdp, self.xdp_counters()) {
            info!("memcached XDP on {}: {c:?}", x.ifname);
        }
        self.xdp = None;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_and_the_address_they_bind() {
        assert_eq!(Interface::parse("none"), Ok(Interface::None));
        for ok in ["lo", "eth0", "enp0s31f6", "veth-a.1", "fifteen-bytes-x"] {
            assert_eq!(Interface::parse(ok), Ok(Interface::Named(ok.into())));
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-bytes-xx",
            "a/b",
            "eth0:1",
            "a b",
            "a\tb",
            "a\0",
        ] {
            let e = Interface::parse(bad).expect_err(bad);
            assert!(e.contains("not a network interface name"), "{bad:?}: {e}");
        }
        assert_eq!(Interface::None.bind_ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(Interface::Named("lo".into()).bind_ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            Interface::Named("eth0".into()).bind_ip(),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn a_taken_port_is_an_error_naming_the_address() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = bind(port, &Interface::None).expect_err("the port is taken");
        assert!(
            e.starts_with(&format!("memcached UDP on 127.0.0.1:{port}: ")),
            "{e}"
        );
    }
}
