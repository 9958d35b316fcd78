//! Network namespaces for the tests: an interface takes one XDP program, so a test that attaches
//! one runs its daemon in a namespace of its own ([`crate::MountBuilder::net_ns`]) instead of
//! sharing the machine's `lo`. A [`NetNs`] is made with `ip netns add` and deleted on drop; a
//! [`Veth`] joins two of them. The test thread enters one only for the length of a closure
//! ([`NetNs::run`]): sockets belong to the namespace they were created in, so a client socket
//! made inside one keeps talking there after the thread has left.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::*;

/// Prefix of every namespace the tests make (`ip netns list` shows what a killed run left).
pub const NETNS_PREFIX: &str = "bpfdb-t";

/// Namespaces and veth pairs made by this process so far, for unique names.
static MADE: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, which must succeed.
#[track_caller]
fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let what = format!("ip {}", args.join(" "));
    assert_ok(&run_with_timeout(&mut cmd, DAEMON_TIMEOUT, &what), &what);
}

/// Deletes the namespaces that earlier test processes, now dead, left behind (a test killed by
/// SIGKILL runs no Drop). Names are `bpfdb-t<pid>-<n>`; only dead pids' are touched.
fn delete_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let pid = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace `bpfdb-t<pid>-<n>` with `lo` up, deleted on drop (also when the test
/// panics). A daemon started in it ([`crate::MountBuilder::net_ns`]) must be stopped first; the
/// kernel frees the namespace once nothing holds it any more.
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl Default for NetNs {
    fn default() -> NetNs {
        NetNs::new()
    }
}

impl NetNs {
    #[track_caller]
    pub fn new() -> NetNs {
        delete_orphans();
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for [`crate::MountBuilder::net_ns`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n NAME ARGS`, which must succeed.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on this thread inside the namespace, then moves the thread back to the
    /// namespace it was in (also if `f` panics). Sockets `f` creates stay in this namespace.
    #[track_caller]
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Moves the thread back on drop.
        struct Home(File);
        impl Drop for Home {
            fn drop(&mut self) {
                // SAFETY: setns(2) on a namespace fd we hold; it changes only this thread.
                if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    // Going on in the wrong namespace would make every later check a lie.
                    eprintln!(
                        "setns back to the test's network namespace: {}",
                        std::io::Error::last_os_error()
                    );
                    std::process::abort();
                }
            }
        }
        // thread-self: the test harness runs tests on threads of one process, and a namespace
        // is per thread; /proc/self would name the main thread's.
        let home = Home(File::open("/proc/thread-self/ns/net").expect("open our netns"));
        let target =
            File::open(&self.path).unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()));
        // SAFETY: setns(2) on a namespace fd we hold; it changes only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns({}): {}",
            self.path.display(),
            std::io::Error::last_os_error()
        );
        let r = f();
        drop(home);
        r
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether `ip netns list` shows a namespace of this name.
pub fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Two namespaces joined by a veth pair: `server_if` in `server` with `server_ip`, `client_if`
/// in `client` with `client_ip`, in 10.200.X.0/24. The namespaces keep the pairs of tests apart,
/// so X only has to differ within this process. The client side carries an XDP program that
/// passes everything ([`XdpPass`]): see there why. Dropping it removes the pair and both
/// namespaces.
pub struct Veth {
    pub server_if: String,
    pub client_if: String,
    pub server_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    // Drop deletes the pair first, then the fields go in this order.
    _pass: XdpPass,
    pub server: NetNs,
    pub client: NetNs,
}

impl Default for Veth {
    fn default() -> Veth {
        Veth::new()
    }
}

impl Veth {
    #[track_caller]
    pub fn new() -> Veth {
        let server = NetNs::new();
        let client = NetNs::new();
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let x = (n % 250 + 1) as u8;
        let server_if = format!("bts{n}");
        let client_if = format!("btc{n}");
        let (server_ip, client_ip) = (Ipv4Addr::new(10, 200, x, 1), Ipv4Addr::new(10, 200, x, 2));
        ip(&[
            "link",
            "add",
            &server_if,
            "netns",
            server.name(),
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            client.name(),
        ]);
        for (ns, ifname, addr) in [
            (&server, &server_if, server_ip),
            (&client, &client_if, client_ip),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        let pass = client.run(|| XdpPass::attach(&client_if));
        Veth {
            server_if,
            client_if,
            server_ip,
            client_ip,
            _pass: pass,
            server,
            client,
        }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", self.server.name(), "link", "del", &self.server_if])
            .status();
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// The head of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills what we leave out).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}
const _: () = assert!(size_of::<ProgLoadAttr>() == 72);

/// The head of `union bpf_attr` for BPF_LINK_CREATE.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}
const _: () = assert!(size_of::<LinkCreateAttr>() == 16);

/// `r0 = XDP_PASS; exit`, as two `struct bpf_insn`.
const PASS_PROGRAM: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]),
    u64::from_le_bytes([0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
];

/// An XDP program that passes every frame, attached (native mode) to a veth end in the calling
/// thread's namespace, detached on drop. Why: a frame XDP_TX'd on a veth goes into its peer's
/// ring, but the kernel schedules the peer's NAPI to read that ring only when the peer has an
/// XDP program of its own (`veth_xdp_flush`); without one the reply sits there unread (GRO on
/// the peer gives it NAPI, yet the flush still does not wake it).
struct XdpPass {
    _link: OwnedFd,
}

impl XdpPass {
    #[track_caller]
    fn attach(ifname: &str) -> XdpPass {
        let c_name = std::ffi::CString::new(ifname).expect("interface name");
        // SAFETY: a NUL-terminated name that if_nametoindex only reads.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {ifname} here");
        let license = c"GPL";
        let load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: PASS_PROGRAM.len() as u32,
            insns: PASS_PROGRAM.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: *b"bpfdb_t_pass\0\0\0\0",
            prog_ifindex: 0,
            expected_attach_type: BPF_XDP,
        };
        let prog = bpf(BPF_PROG_LOAD, &load, "load an XDP_PASS program");
        let create = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: 0, // driver mode where the driver has it, as veth does
        };
        let link = bpf(BPF_LINK_CREATE, &create, "attach XDP_PASS");
        XdpPass { _link: link }
    }
}

/// bpf(2) with `attr`, returning the fd it makes.
#[track_caller]
fn bpf<T>(cmd: libc::c_long, attr: &T, what: &str) -> OwnedFd {
    // SAFETY: `attr` is a repr(C) head of union bpf_attr of the given size, whose pointers
    // (instructions, license) outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    assert!(fd >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd the kernel just gave us, owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}
