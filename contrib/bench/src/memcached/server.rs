//! The three servers the section compares, each started by the bench on a
//! free UDP port of 127.0.0.1, preloaded as its users would load it, and
//! stopped on drop: bpfdb answering GET hits in XDP, bpfdb answering every
//! request in user space, and memcached. A system memcached is never
//! touched.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cpu;
use super::loadgen::{self, Load, Work};
use super::proto::DataSet;
use crate::mount::{Mount, sibling_exe};
use crate::{bench_dir, wait_exit};

/// The device the XDP server attaches to, and its program's name.
pub const XDP_DEV: &str = "lo";
pub const XDP_PROG: &str = "mc_xdp";
/// One memcached worker thread per core of the 2-core reference machine.
pub const MEMCACHED_THREADS: usize = 2;
/// Item memory: far more than the data sets need, so nothing is evicted.
const MEMCACHED_MEMORY_MB: usize = 1024;
/// bpfdb runs with `--sync none`: GETs never touch the log, and the
/// preload's 20,000 file writes would otherwise each wait for an fsync.
const BPFDB_ARGS: [&str; 3] = ["-f", "--sync", "none"];
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STARTUP_POLL: Duration = Duration::from_millis(20);
/// How long one readiness probe waits for its reply.
const PROBE_LIMIT: Duration = Duration::from_millis(200);
const PROBE: DataSet = DataSet {
    prefix: "prb",
    keys: 1,
    value_bytes: 1,
};
/// UDP sets may be dropped; the ones not STORED are sent again.
const PRELOAD_TRIES: usize = 5;
const PRELOAD_LOAD: Load = Load {
    threads: 1,
    window: 16,
};
const PRELOAD_LIMIT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memcached,
    BpfdbUser,
    BpfdbXdp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memcached => "memcached",
            Kind::BpfdbUser => "bpfdb user space",
            Kind::BpfdbXdp => "bpfdb XDP",
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddrV4,
    pub pid: u32,
    pub cmdline: String,
    /// The XDP program answering GET hits (BpfdbXdp only).
    pub xdp_prog: Option<u32>,
    process: Process,
}

/// Fields drop in order: the mount before its data directory.
enum Process {
    Memcached(Child, tempfile::TempDir),
    Bpfdb {
        mount: Mount,
        _data: tempfile::TempDir,
    },
}

/// A port the kernel found free on 127.0.0.1; free again once the probe
/// socket is dropped, a moment before the server binds it.
fn free_udp_port() -> Result<u16, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free UDP port: {e}"))
}

pub fn memcached_version() -> String {
    let out = Command::new("memcached").arg("-V").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "memcached (version unknown)".into())
}

impl Server {
    /// Starts a `kind` server and loads every key of `sets` into it.
    pub fn start(kind: Kind, sets: &[DataSet]) -> Result<Server, String> {
        // Every loopback packet passes an XDP program on lo: someone
        // else's there would be measured with any server, or refuse ours.
        let on = cpu::xdp_progs(XDP_DEV)?;
        if !on.is_empty() {
            return Err(format!(
                "{XDP_DEV} already has XDP program(s) {on:?} attached; the bench needs it free"
            ));
        }
        let port = free_udp_port()?;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut s = match kind {
            Kind::Memcached => Server::memcached(addr)?,
            Kind::BpfdbUser | Kind::BpfdbXdp => Server::bpfdb(kind, addr)?,
        };
        s.wait_ready()?;
        match &s.process {
            Process::Memcached(..) => sets.iter().try_for_each(|set| preload_udp(addr, set))?,
            Process::Bpfdb { mount, .. } => {
                sets.iter().try_for_each(|set| preload_files(mount, set))?
            }
        }
        if kind == Kind::BpfdbXdp {
            s.xdp_prog = Some(find_xdp_prog()?);
        }
        Ok(s)
    }

    fn memcached(addr: SocketAddrV4) -> Result<Server, String> {
        let dir = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
        let log = std::fs::File::create(dir.path().join("memcached.log"))
            .map_err(|e| format!("memcached log: {e}"))?;
        let args = format!(
            "-U {} -p 0 -l 127.0.0.1 -t {MEMCACHED_THREADS} -m {MEMCACHED_MEMORY_MB} -u nobody",
            addr.port()
        );
        let child = Command::new("memcached")
            .args(args.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting memcached (make deps installs it): {e}"))?;
        Ok(Server {
            kind: Kind::Memcached,
            addr,
            pid: child.id(),
            cmdline: format!("memcached {args}"),
            xdp_prog: None,
            process: Process::Memcached(child, dir),
        })
    }

    fn bpfdb(kind: Kind, addr: SocketAddrV4) -> Result<Server, String> {
        let port = addr.port().to_string();
        let mut args = BPFDB_ARGS.to_vec();
        args.extend(["--memcached-udp", &port]);
        if kind == Kind::BpfdbUser {
            args.extend(["--memcached-if", "none"]);
        }
        let cmdline = format!("bpfdb {} DATA MNT", args.join(" "));
        let data = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
        let mount = Mount::daemon(&sibling_exe("bpfdb")?, &args, Some(data.path()))
            .map_err(|e| format!("{cmdline}: {e}"))?;
        Ok(Server {
            kind,
            addr,
            pid: mount.daemon_pid().ok_or("bpfdb daemon has no pid")?,
            cmdline,
            xdp_prog: None,
            process: Process::Bpfdb { mount, _data: data },
        })
    }

    /// Why the server process is gone, if it is.
    fn exited(&mut self) -> Option<String> {
        match &mut self.process {
            Process::Bpfdb { mount, .. } => mount.daemon_exited(),
            Process::Memcached(c, dir) => {
                let status = c.try_wait().ok().flatten()?;
                let log = std::fs::read_to_string(dir.path().join("memcached.log"));
                Some(format!(
                    "memcached exited ({status}): {}",
                    log.unwrap_or_default().trim()
                ))
            }
        }
    }

    /// Waits, bounded, until a `get` is answered at all (a miss will do).
    fn wait_ready(&mut self) -> Result<(), String> {
        let probe = PROBE.gets();
        let t = Instant::now();
        let mut last = String::new();
        while t.elapsed() < STARTUP_TIMEOUT {
            if let Some(why) = self.exited() {
                return Err(format!("{}: {why}", self.cmdline));
            }
            let one = Load {
                threads: 1,
                window: 1,
            };
            match loadgen::run(self.addr, &probe, one, Work::Once(&[0], PROBE_LIMIT)) {
                Ok(o) if o.correct + o.wrong > 0 => return Ok(()),
                Ok(_) => last = "no reply".into(),
                Err(e) => last = e,
            }
            // A refused probe returns at once: no busy loop while it starts.
            std::thread::sleep(STARTUP_POLL);
        }
        Err(format!(
            "{}: no UDP reply on {} after {STARTUP_TIMEOUT:?} ({last})",
            self.cmdline, self.addr
        ))
    }
}

/// memcached: `set` over UDP (its TCP port is off), again for the sets
/// that got no STORED.
fn preload_udp(addr: SocketAddrV4, set: &DataSet) -> Result<(), String> {
    let script = set.sets();
    let mut keys: Vec<u32> = (0..set.keys as u32).collect();
    for _ in 0..PRELOAD_TRIES {
        if keys.is_empty() {
            return Ok(());
        }
        let o = loadgen::run(
            addr,
            &script,
            PRELOAD_LOAD,
            Work::Once(&keys, PRELOAD_LIMIT),
        )?;
        if let Some(s) = o.samples.first() {
            return Err(format!("memcached preload: {s}"));
        }
        keys = o.failed;
    }
    match keys.len() {
        0 => Ok(()),
        n => Err(format!(
            "memcached preload: {n} sets not STORED after {PRELOAD_TRIES} tries"
        )),
    }
}

/// bpfdb: each key a file written through the mount, as users do.
fn preload_files(mount: &Mount, set: &DataSet) -> Result<(), String> {
    let dir = mount.path();
    (0..set.keys).try_for_each(|k| {
        let path = dir.join(set.key(k));
        std::fs::write(&path, set.value(k)).map_err(|e| format!("{}: {e}", path.display()))
    })
}

/// The XDP program bpfdb attached to XDP_DEV; an error unless it is there
/// and named XDP_PROG.
fn find_xdp_prog() -> Result<u32, String> {
    let ids = cpu::xdp_progs(XDP_DEV)?;
    let named = ids
        .iter()
        .map(|&id| Ok((id, cpu::prog_name(id)?)))
        .collect::<Result<Vec<_>, String>>()?;
    named
        .iter()
        .find(|(_, name)| name == XDP_PROG)
        .map(|&(id, _)| id)
        .ok_or_else(|| {
            format!("no XDP program named {XDP_PROG} on {XDP_DEV} (attached: {named:?})")
        })
}

impl Drop for Server {
    fn drop(&mut self) {
        // The mount unmounts itself; memcached is ours to stop.
        if let Process::Memcached(child, _) = &mut self.process {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if !wait_exit(child, STOP_TIMEOUT) {
                eprintln!("bench: memcached on {} did not exit; killing it", self.addr);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
