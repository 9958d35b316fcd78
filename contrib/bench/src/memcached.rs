//! memcached's UDP protocol, GETs only, against three servers in the same
//! run with the same generator: bpfdb answering GET hits in an XDP program
//! on `lo` (`--memcached-udp PORT`), bpfdb answering every request in its
//! user-space UDP server (`--memcached-if none`), and memcached itself.
//!
//! The servers run one at a time: every loopback packet passes the XDP
//! program, so with it attached the other two would pay for it too. On two
//! cores the generator and the server share the CPUs, so besides GETs/s the
//! section reports CPU time per GET: the machine's, the server process's,
//! and, for XDP, the program's own run time from the kernel's BPF stats.

pub(crate) mod cpu;
mod loadgen;
mod proto;
mod server;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::plot::{Axis, Figure, Panel, Series};
use crate::{commands, die, median};
use loadgen::{Load, Outcome, Work};
use proto::DataSet;
use server::{Kind, MEMCACHED_THREADS, Server, XDP_DEV, XDP_PROG};

const KEYS: usize = 10_000;
/// Small values, and values near the largest one UDP datagram carries.
const SETS: [DataSet; 2] = [
    DataSet {
        prefix: "key",
        keys: KEYS,
        value_bytes: 100,
    },
    DataSet {
        prefix: "big",
        keys: KEYS,
        value_bytes: 1000,
    },
];
/// Memcached first: its figures are printed (stderr) before a bpfdb
/// server that cannot start stops the section.
const TARGETS: [Kind; 3] = [Kind::Memcached, Kind::BpfdbUser, Kind::BpfdbXdp];
/// Saturated windows per server and data set; the median is reported.
const ROUNDS: usize = 3;
const SATURATED: &str = "saturated";

/// One way of loading a server: generator threads and the GETs each keeps
/// outstanding, for how long, how many times.
struct Phase {
    name: &'static str,
    load: Load,
    time: Duration,
    rounds: usize,
}

/// One GET at a time (the round trip with no queue), then saturation: two
/// generator threads (one per core), 64 GETs outstanding each.
const PHASES: [Phase; 2] = [
    Phase {
        name: "1 outstanding",
        load: Load {
            threads: 1,
            window: 1,
        },
        time: Duration::from_millis(1000),
        rounds: 1,
    },
    Phase {
        name: SATURATED,
        load: Load {
            threads: 2,
            window: 64,
        },
        time: Duration::from_millis(2000),
        rounds: ROUNDS,
    },
];
/// The quiet window before each server's runs that measures the machine's
/// background load.
const BACKGROUND_TIME: Duration = Duration::from_millis(500);
const TARGET_RATE_RATIO: f64 = 3.0;
const TARGET_CPU_RATIO: f64 = 0.2;
const PNG: &str = "bench-memcached.png";

/// One server in one phase over one data set.
struct Row {
    kind: Kind,
    phase: &'static str,
    gets_per_s: f64,
    machine_ns: f64,
    /// The server process's utime+stime.
    process_ns: f64,
    /// The XDP program's run time, and its runs, per GET.
    prog_ns: f64,
    prog_runs: f64,
    /// Every round's, merged.
    out: Outcome,
}

/// Runs `phase` over `set` against `s`: medians over its rounds.
fn measure(s: &Server, set: &DataSet, phase: &Phase) -> Result<Row, String> {
    let script = set.gets();
    let mut per_round: [Vec<f64>; 5] = Default::default();
    let mut out = Outcome::default();
    for _ in 0..phase.rounds {
        let before = cpu::sample(s.pid, s.xdp_prog)?;
        let o = loadgen::run(s.addr, &script, phase.load, Work::For(phase.time))?;
        let spent = cpu::sample(s.pid, s.xdp_prog)?.since(&before);
        let per = |n: u64| n as f64 / o.correct.max(1) as f64;
        let figures = [
            o.rate(),
            per(spent.machine_busy_ns),
            per(spent.server_ns),
            per(spent.prog_run_ns),
            per(spent.prog_runs),
        ];
        for (v, x) in per_round.iter_mut().zip(figures) {
            v.push(x);
        }
        out.merge(o);
    }
    let [gets_per_s, machine_ns, process_ns, prog_ns, prog_runs] = per_round.map(median);
    Ok(Row {
        kind: s.kind,
        phase: phase.name,
        gets_per_s,
        machine_ns,
        process_ns,
        prog_ns,
        prog_runs,
        out,
    })
}

/// Rows of every server for every data set (`rows[set]` holds each
/// server's unloaded row, then its saturated one), and the machine's
/// background load before each server's runs, in busy cores.
type Results = (Vec<Vec<Row>>, Vec<(Kind, f64)>);

fn measure_all(cmds: &mut Vec<String>) -> Result<Results, String> {
    let mut rows: Vec<Vec<Row>> = SETS.iter().map(|_| Vec::new()).collect();
    let mut background = Vec::new();
    for kind in TARGETS {
        let s = Server::start(kind, &SETS)?;
        cmds.push(s.cmdline.clone());
        let quiet = cpu::background_cores(BACKGROUND_TIME)?;
        eprintln!(
            "bench: memcached: {}: background {quiet:.2} busy cores",
            kind.name()
        );
        background.push((kind, quiet));
        // Only while XDP serves: the stats cost every BPF program run, and
        // bpfdb's user-space server runs the engine's.
        let _stats = s
            .xdp_prog
            .map(|_| cpu::RunTimeStats::enable())
            .transpose()?;
        for (i, set) in SETS.iter().enumerate() {
            for phase in &PHASES {
                let row = measure(&s, set, phase)?;
                eprintln!("bench: memcached: {} B: {}", set.value_bytes, cells(&row));
                rows[i].push(row);
            }
        }
    }
    Ok((rows, background))
}

fn us(ns: f64) -> String {
    format!("{:.2}", ns / 1e3)
}

impl Row {
    /// What the server spends per GET: its process, plus (XDP) its
    /// program, which runs in softirq charged to no process.
    fn server_ns(&self) -> f64 {
        self.process_ns + self.prog_ns
    }
}

fn cells(r: &Row) -> String {
    let h = &r.out.latency;
    let xdp = r.kind == Kind::BpfdbXdp;
    format!(
        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.kind.name(),
        r.phase,
        r.gets_per_s,
        us(h.quantile(0.5) as f64),
        us(h.quantile(0.99) as f64),
        us(h.quantile(0.999) as f64),
        us(r.machine_ns),
        us(r.process_ns),
        if xdp {
            format!("{:.0}", r.prog_ns)
        } else {
            "".into()
        },
        if xdp {
            format!("{:.2}", r.prog_runs)
        } else {
            "".into()
        },
        us(r.server_ns()),
        r.out.wrong,
        r.out.lost
    )
}

fn saturated(rows: &[Row], kind: Kind) -> Option<&Row> {
    rows.iter().find(|r| r.kind == kind && r.phase == SATURATED)
}

pub fn run() -> Vec<Figure> {
    let mut cmds = Vec::new();
    let (rows, background) = measure_all(&mut cmds).unwrap_or_else(|e| die("memcached", e));
    let [one, sat] = &PHASES;
    println!(
        "## memcached UDP GET: bpfdb XDP, bpfdb user space and {}, {KEYS} keys (saturated: \
         median of {} windows of {} ms; 1 outstanding: one window of {} ms)\n",
        server::memcached_version(),
        sat.rounds,
        sat.time.as_millis(),
        one.time.as_millis()
    );
    println!(
        "One generator for all three servers, each alone on the machine in turn on a free UDP \
         port of 127.0.0.1: {} threads with a UDP socket each, {} GETs outstanding per thread \
         when saturated ({} thread, {} GET when not), sendmmsg/recvmmsg in batches, keys in a \
         fixed shuffled order. Only replies equal byte for byte to `VALUE key 0 len`, the \
         value, `END` count as served; a GET with no reply in {} ms is lost. Latency is from \
         the send call to the receive call, so under load it includes the queue. bpfdb \
         (`--sync none`) is loaded by writing each key as a file through its mount; memcached \
         by UDP `set`. memcached runs {MEMCACHED_THREADS} worker threads, one per core. CPU \
         per GET: machine is all CPUs' non-idle time (/proc/stat, generator included); server \
         process is its utime+stime (/proc/PID/stat); XDP is the run time of `{XDP_PROG}` on \
         `{XDP_DEV}` from BPF stats (on only while it serves, which adds two clock reads to \
         each run), spent in softirq and charged to no server process; its runs/GET counts \
         requests and replies, both pass it. Server CPU is process plus XDP.\n",
        sat.load.threads,
        sat.load.window,
        one.load.threads,
        one.load.window,
        loadgen::REPLY_TIMEOUT.as_millis()
    );
    for (set, rows) in SETS.iter().zip(&rows) {
        println!("### {}-byte values\n", set.value_bytes);
        println!(
            "| server | load | GETs/s | p50 µs | p99 µs | p99.9 µs | machine CPU µs/GET | server \
             process CPU µs/GET | XDP ns/GET | XDP runs/GET | server CPU µs/GET | wrong | lost |"
        );
        println!(
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in rows {
            println!("{}", cells(r));
        }
        println!();
        let (xdp, user, mc) = (
            saturated(rows, Kind::BpfdbXdp),
            saturated(rows, Kind::BpfdbUser),
            saturated(rows, Kind::Memcached),
        );
        if let (Some(x), Some(u), Some(m)) = (xdp, user, mc) {
            println!(
                "Saturated: XDP / memcached GETs/s {:.2} (target >= \
                 {TARGET_RATE_RATIO:.0}); server CPU per GET, XDP / memcached {:.2} (target <= \
                 {TARGET_CPU_RATIO:.2}), user space / memcached {:.2}.\n",
                x.gets_per_s / m.gets_per_s,
                x.server_ns() / m.server_ns(),
                u.server_ns() / m.server_ns()
            );
        }
        for r in rows
            .iter()
            .filter(|r| r.out.wrong > 0 || r.out.unmatched > 0)
        {
            println!(
                "**{} ({}) answered wrongly**: {} wrong replies, {} matching no request; e.g. {}\n",
                r.kind.name(),
                r.phase,
                r.out.wrong,
                r.out.unmatched,
                r.out.samples.join("; ")
            );
        }
    }
    let quiet: Vec<String> = background
        .iter()
        .map(|(k, cores)| format!("{} {cores:.2}", k.name()))
        .collect();
    println!(
        "Background: busy cores over {} ms with the server idle, before its runs (others' work \
         on the machine, which the machine column includes): {}.\n",
        BACKGROUND_TIME.as_millis(),
        quiet.join(", ")
    );
    commands("memcached", &cmds);
    vec![figure(&rows)]
}

/// Saturated GETs/s and server CPU per GET of each server, by value size.
fn figure(rows: &[Vec<Row>]) -> Figure {
    let sizes = || {
        Axis::Categories(
            SETS.iter()
                .map(|s| format!("{} B", s.value_bytes))
                .collect(),
        )
    };
    let series = |f: fn(&Row) -> f64| {
        TARGETS
            .iter()
            .map(|&k| Series {
                name: k.name().into(),
                points: rows
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| Some((i as f64, f(saturated(r, k)?))))
                    .collect(),
            })
            .collect()
    };
    Figure {
        file: PNG,
        caption: format!(
            "memcached UDP GET, saturated, {KEYS} keys (median of {} windows of {} ms)",
            PHASES[1].rounds,
            PHASES[1].time.as_millis()
        ),
        panels: vec![
            Panel {
                title: "GETs/s".into(),
                x: sizes(),
                y_label: "GETs/s (log)".into(),
                series: series(|r| r.gets_per_s),
            },
            Panel {
                title: "Server CPU per GET".into(),
                x: sizes(),
                y_label: "ns/GET (log)".into(),
                series: series(Row::server_ns),
            },
        ],
    }
}
