//! The tracing application (exec_trace.bpf.c): counts execve calls per
//! program name in the keys `exec.<name>`, one engine transaction per
//! event, through the engine's stages and continuations. The event is a
//! uprobe on the C library's `execve`, in every process: this kernel has
//! no kprobes (see the C file).

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, UprobeOpts};
use log::{info, warn};

use crate::clients::{kernel_api_maps, percpu_sums, reuse_engine_maps};
use crate::error::{Error, Result};
use crate::kernel::abi;
use crate::kernel::engine::{Engine, object_storage};

mod skel {
    #![allow(
        clippy::all,
        non_camel_case_types,
        non_snake_case,
        dead_code,
        unused_imports
    )]
    include!(concat!(env!("OUT_DIR"), "/exec_trace.skel.rs"));
}
use skel::{ExecTraceSkel, ExecTraceSkelBuilder};

/// The tracer's keys are `exec.<program name>` (TRACE_PREFIX in the C).
pub const EXEC_TRACE_PREFIX: &[u8] = b"exec.";

/// Where the tracer's continuations go in the engine's `conts` prog array:
/// indexes CONT_BASE..CONT_BASE + 4 (docs/KERNEL-CLIENTS.md lists who owns
/// which).
pub const CONT_BASE: u32 = 0;
/// Continuations of enum TRACE_CONT_* (exec_trace.bpf.c), in order.
const CONTS: u32 = 4;
const _: () = assert!(CONT_BASE + CONTS <= abi::MAX_CONTS);
/// Counters of enum trace_counter.
const COUNTERS: u32 = 4;

/// Counters of the tracer, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCounters {
    /// execve calls seen (the daemon's own are not).
    pub events: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that failed (conflict, full log): their counts wait
    /// for the next event of the same name.
    pub deferred: u64,
    /// Counts dropped because the map of waiting counts was full.
    pub lost: u64,
}

impl TraceCounters {
    /// The counters as `.stats` names them.
    pub fn named(&self) -> [(&'static str, u64); COUNTERS as usize] {
        [
            ("trace_events", self.events),
            ("trace_commits", self.commits),
            ("trace_deferred", self.deferred),
            ("trace_lost", self.lost),
        ]
    }
}

/// The attached tracer; detached, and its continuations removed, on drop.
pub struct ExecTracer {
    link: Option<Link>,
    skel: ExecTraceSkel<'static>,
    _object: Box<MaybeUninit<OpenObject>>,
}

// SAFETY: the skeleton is only read (counters, conts) after load.
unsafe impl Send for ExecTracer {}
unsafe impl Sync for ExecTracer {}

/// The C library function every dynamically linked exec goes through.
const EXEC_SYMBOL: &str = "execve";

/// The C library this process runs with: the system's, which other
/// programs load too.
fn c_library() -> Result<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| Error::io("reading /proc/self/maps", &e))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            std::path::Path::new(p)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("libc.so"))
        })
        .map(std::path::PathBuf::from)
        .ok_or_else(|| {
            Error::new(
                libc::ENOENT,
                "exec tracer: no C library mapped in this process",
            )
        })
}

/// Wall clock minus boot clock now: eBPF has the boot clock only.
fn realtime_offset_ns() -> Result<u64> {
    let now = |clock| {
        nix::time::clock_gettime(clock)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .map_err(|e| Error::new(e as i32, format!("clock_gettime: {e}")))
    };
    let wall = now(nix::time::ClockId::CLOCK_REALTIME)?;
    let boot = now(nix::time::ClockId::CLOCK_BOOTTIME)?;
    Ok(u64::try_from(wall - boot).unwrap_or(0))
}

impl ExecTracer {
    /// Attaches to `engine`; `defer_pause_loops` is the test hook of
    /// `Options::trace_defer_pause_loops`.
    pub(crate) fn attach(engine: &Engine, defer_pause_loops: u32) -> Result<ExecTracer> {
        let (object, object_ref) = object_storage();
        let mut open = ExecTraceSkelBuilder::default().open(object_ref)?;
        reuse_engine_maps(engine, &mut kernel_api_maps!(open.maps))?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| Error::new(libc::EIO, "exec tracer has no .rodata"))?;
        rodata.cont_base = CONT_BASE;
        rodata.realtime_offset_ns = realtime_offset_ns()?;
        rodata.own_tgid = std::process::id();
        rodata.defer_pause_loops = defer_pause_loops.min(abi::READ_PAUSE_MAX - 1);
        let skel = open.load()?;
        let conts = [
            &skel.progs.begun,
            &skel.progs.got,
            &skel.progs.set,
            &skel.progs.done,
        ];
        debug_assert_eq!(conts.len() as u32, CONTS);
        for (i, prog) in conts.into_iter().enumerate() {
            use std::os::fd::{AsFd, AsRawFd};
            let fd = prog.as_fd().as_raw_fd();
            skel.maps.conts.update(
                &(CONT_BASE + i as u32).to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
            )?;
        }
        let mut tracer = ExecTracer {
            link: None,
            skel,
            _object: object,
        };
        let libc_path = c_library()?;
        tracer.link = Some(tracer.skel.progs.on_execve.attach_uprobe_with_opts(
            -1,
            &libc_path,
            0,
            UprobeOpts {
                cookie: abi::CLIENT_COOKIE,
                func_name: Some(EXEC_SYMBOL.to_string()),
                ..Default::default()
            },
        )?);
        info!(
            "exec tracer: counting {}:{EXEC_SYMBOL} calls in the keys exec.<name>",
            libc_path.display()
        );
        Ok(tracer)
    }

    /// The tracer's counters, summed over CPUs.
    pub fn counters(&self) -> Result<TraceCounters> {
        let [events, commits, deferred, lost] =
            percpu_sums::<{ COUNTERS as usize }>(&self.skel.maps.trace_stats)?;
        Ok(TraceCounters {
            events,
            commits,
            deferred,
            lost,
        })
    }
}

impl Drop for ExecTracer {
    fn drop(&mut self) {
        // No new events first, then the continuations go.
        self.link = None;
        for i in 0..CONTS {
            if let Err(e) = self.skel.maps.conts.delete(&(CONT_BASE + i).to_ne_bytes()) {
                warn!("exec tracer: removing continuation {i}: {e}");
            }
        }
    }
}
