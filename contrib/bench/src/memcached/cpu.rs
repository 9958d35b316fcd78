//! CPU time three ways, since the generator and the server share the two
//! cores: the whole machine's busy time (/proc/stat), the server process's
//! own (utime+stime in /proc/PID/stat), and the run time the kernel counts
//! for a BPF program (run_time_ns, run_cnt: kept only while BPF stats are
//! enabled), which is where an XDP server's work shows: it runs in softirq
//! on whichever CPU sends, charged to no server process.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

/// `enum bpf_cmd` and `enum bpf_stats_type` in linux/bpf.h.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
/// Room for `union bpf_attr` up to the enable_stats member; the kernel
/// takes the rest as zero.
const BPF_ATTR_BYTES: usize = 8;

/// CPU counters at one moment, in ns.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    /// All CPUs' non-idle time: user, nice, system, irq, softirq, steal.
    pub machine_busy_ns: u64,
    pub server_ns: u64,
    pub prog_run_ns: u64,
    pub prog_runs: u64,
}

impl Sample {
    /// What was spent from `before` to `self`.
    pub fn since(&self, before: &Sample) -> Sample {
        Sample {
            machine_busy_ns: self.machine_busy_ns.saturating_sub(before.machine_busy_ns),
            server_ns: self.server_ns.saturating_sub(before.server_ns),
            prog_run_ns: self.prog_run_ns.saturating_sub(before.prog_run_ns),
            prog_runs: self.prog_runs.saturating_sub(before.prog_runs),
        }
    }
}

/// Counters now, for server process `pid` and, if given, BPF program
/// `prog_id`.
pub fn sample(pid: u32, prog_id: Option<u32>) -> Result<Sample, String> {
    let (prog_run_ns, prog_runs) = match prog_id {
        Some(id) => prog_stats(id)?,
        None => (0, 0),
    };
    Ok(Sample {
        machine_busy_ns: machine_busy_ns()?,
        server_ns: process_ns(pid)?,
        prog_run_ns,
        prog_runs,
    })
}

/// Busy CPUs (0 to the core count) over `time` with nothing of the
/// bench's running: others' work on the machine, which the machine figures
/// include too.
pub fn background_cores(time: std::time::Duration) -> Result<f64, String> {
    let before = machine_busy_ns()?;
    let t = std::time::Instant::now();
    std::thread::sleep(time);
    let busy = machine_busy_ns()?.saturating_sub(before);
    Ok(busy as f64 / t.elapsed().as_nanos() as f64)
}

fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / u64::try_from(hz).unwrap_or(100).max(1)
}

fn machine_busy_ns() -> Result<u64, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat.lines().next().unwrap_or_default();
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if !line.starts_with("cpu ") || ticks.len() < 8 {
        return Err(format!("/proc/stat begins {line:?}"));
    }
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().map(|&i| ticks[i]).sum();
    Ok(busy * tick_ns())
}

/// utime + stime of every thread of process `pid`, in ns.
fn process_ns(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The name (field 2) may hold spaces: fields are counted after its ')'.
    let after = stat.rsplit_once(')').map_or("", |p| p.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line; the list starts at field 3.
    match (f.get(11).map(|t| t.parse()), f.get(12).map(|t| t.parse())) {
        (Some(Ok(u)), Some(Ok(s))) => Ok((u64::saturating_add(u, s)) * tick_ns()),
        _ => Err(format!("{path}: no utime and stime in {stat:?}")),
    }
}

/// Keeps the kernel's BPF run-time stats on while held: the switch
/// `sysctl kernel.bpf_stats_enabled=1` flips, counted, so it does not
/// disturb a sysctl setting (and the sysctl does not show it). The kernel
/// turns it off when the fd closes, so a bench that dies or is killed
/// cannot leave the stats on, as a sysctl restored on drop would: `die()`
/// exits without running drops.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<Self, String> {
        let mut attr = [0u8; BPF_ATTR_BYTES];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: bpf(BPF_ENABLE_STATS) reads BPF_ATTR_BYTES from attr.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                BPF_ATTR_BYTES,
            )
        };
        let fd = i32::try_from(fd)
            .ok()
            .filter(|&fd| fd >= 0)
            .ok_or_else(|| format!("bpf(BPF_ENABLE_STATS): {}", std::io::Error::last_os_error()))?;
        // SAFETY: the kernel just gave us this fd, and nothing else owns it.
        Ok(RunTimeStats {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

fn bpftool(args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("bpftool (make deps installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpftool -j {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bpftool -j {}: {e}", args.join(" ")))
}

/// Ids of the XDP programs attached to network device `dev`.
pub fn xdp_progs(dev: &str) -> Result<Vec<u32>, String> {
    let net = bpftool(&["net", "show", "dev", dev])?;
    let entries = net
        .get(0)
        .and_then(|n| n.get("xdp"))
        .and_then(|x| x.as_array());
    let entries = entries.ok_or_else(|| format!("bpftool net show dev {dev}: {net}"))?;
    Ok(entries
        .iter()
        .filter_map(|e| e.get("id")?.as_u64())
        .filter_map(|id| u32::try_from(id).ok())
        .collect())
}

/// The name of BPF program `id`.
pub fn prog_name(id: u32) -> Result<String, String> {
    let p = bpftool(&["prog", "show", "id", &id.to_string()])?;
    Ok(p.get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string())
}

/// Ids of the loaded BPF programs named `name` (as the kernel keeps it:
/// the first 15 bytes).
pub fn progs_named(name: &str) -> Result<Vec<u32>, String> {
    let all = bpftool(&["prog", "show"])?;
    let list = all
        .as_array()
        .ok_or_else(|| format!("bpftool prog show: {all}"))?;
    Ok(list
        .iter()
        .filter(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))
        .filter_map(|p| p.get("id")?.as_u64())
        .filter_map(|id| u32::try_from(id).ok())
        .collect())
}

/// (run_time_ns, run_cnt) of program `id`; bpftool leaves them out while
/// they are 0.
pub fn prog_stats(id: u32) -> Result<(u64, u64), String> {
    let p = bpftool(&["prog", "show", "id", &id.to_string()])?;
    let field = |f: &str| p.get(f).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok((field("run_time_ns"), field("run_cnt")))
}
