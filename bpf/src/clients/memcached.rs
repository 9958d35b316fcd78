//! The XDP half of the memcached UDP server: `mc_xdp` (memcached.bpf.c)
//! answers `get`/`gets` hits from the engine's maps and passes everything
//! else up to the daemon's UDP socket on the same port.

use std::ffi::CString;
use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};
use log::info;

use crate::clients::{kernel_api_maps, percpu_sums, reuse_engine_maps};
use crate::error::{Error, Result};
use crate::kernel::engine::{Engine, object_storage};

mod skel {
    #![allow(
        clippy::all,
        non_camel_case_types,
        non_snake_case,
        dead_code,
        unused_imports
    )]
    include!(concat!(env!("OUT_DIR"), "/memcached.skel.rs"));
}
use skel::{MemcachedSkel, MemcachedSkelBuilder};

/// Counters of enum mc_counter (memcached.bpf.c), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Gets answered in the kernel.
    pub hits: u64,
    /// Passed up: a key missing (or reclaimed before it was read).
    pub pass_miss: u64,
    /// Passed up: a value over one page, or a reply over one frame.
    pub pass_big: u64,
    /// Passed up: not a get, or not parsed in the kernel.
    pub pass_other: u64,
    /// Passed up: GC reclaimed a value while it was copied.
    pub pass_race: u64,
}

const COUNTERS: u32 = 5;

impl XdpCounters {
    /// The counters as `.stats` names them.
    pub fn named(&self) -> [(&'static str, u64); COUNTERS as usize] {
        [
            ("xdp_hits", self.hits),
            ("xdp_pass_miss", self.pass_miss),
            ("xdp_pass_big", self.pass_big),
            ("xdp_pass_other", self.pass_other),
            ("xdp_pass_race", self.pass_race),
        ]
    }
}
/// Room for a frame `run_on` hands back: one page, what the kernel's test
/// run gives an XDP frame at most.
const RUN_OUT_BYTES: usize = 4096;

/// The attached XDP program; detached on drop.
pub struct MemcachedXdp {
    _link: Link,
    skel: MemcachedSkel<'static>,
    _object: Box<MaybeUninit<OpenObject>>,
    pub ifname: String,
}

// SAFETY: the skeleton is only read (counters) after load.
unsafe impl Send for MemcachedXdp {}
unsafe impl Sync for MemcachedXdp {}

impl MemcachedXdp {
    /// Loads `mc_xdp` for UDP port `port` over the engine's maps and
    /// attaches it to `ifname` (native XDP where the driver has it, else
    /// generic, as on `lo`).
    pub(crate) fn attach(engine: &Engine, port: u16, ifname: &str) -> Result<MemcachedXdp> {
        let c_name = CString::new(ifname)
            .map_err(|_| Error::new(libc::EINVAL, "interface name with a NUL"))?;
        // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(Error::io(
                &format!("memcached XDP: interface {ifname}"),
                &std::io::Error::last_os_error(),
            ));
        }
        // An interface takes one XDP program: say so, rather than the
        // kernel's bare EBUSY at attach.
        let mut attached = 0u32;
        // SAFETY: ifindex is an interface's; the id is written to a u32.
        let rc =
            unsafe { libbpf_rs::libbpf_sys::bpf_xdp_query_id(ifindex as i32, 0, &mut attached) };
        if rc == 0 && attached != 0 {
            return Err(Error::new(
                libc::EBUSY,
                format!(
                    "{ifname} already has an XDP program (id {attached}; another bpfdb?): \
                     an interface takes one XDP program"
                ),
            ));
        }
        let (object, object_ref) = object_storage();
        let mut open = MemcachedSkelBuilder::default().open(object_ref)?;
        reuse_engine_maps(engine, &mut kernel_api_maps!(open.maps))?;
        open.maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| Error::new(libc::EIO, "memcached XDP object has no .rodata"))?
            .mc_port = port;
        let skel = open.load()?;
        let link = skel.progs.mc_xdp.attach_xdp(ifindex as i32)?;
        info!("memcached XDP: answering gets for UDP port {port} on {ifname}");
        Ok(MemcachedXdp {
            _link: link,
            skel,
            _object: object,
            ifname: ifname.to_string(),
        })
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN), without any
    /// interface: the verdict (XDP_PASS 2, XDP_TX 3, ...) and the frame as
    /// the program left it. For tests and diagnosis of the parser.
    pub fn run_on(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; RUN_OUT_BYTES];
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let output = self.skel.progs.mc_xdp.test_run(input)?;
        let verdict = output.return_value;
        let len = output.data.map_or(0, |d| d.len());
        out.truncate(len);
        Ok((verdict, out))
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters> {
        let [hits, pass_miss, pass_big, pass_other, pass_race] =
            percpu_sums::<{ COUNTERS as usize }>(&self.skel.maps.mc_stats)?;
        Ok(XdpCounters {
            hits,
            pass_miss,
            pass_big,
            pass_other,
            pass_race,
        })
    }
}
