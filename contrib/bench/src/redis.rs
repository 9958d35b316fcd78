//! Redis on the same machine: its GET and SET round trips over loopback
//! against the engine's in-process ops, and its durable SETs (appendonly,
//! appendfsync always) against bpfdb's sync=commit. The bench starts its
//! own redis-server on a free port in its own directory; a system Redis is
//! never touched.

pub mod server;

use std::process::Command;

use crate::durability::{WRITERS, commit_rates, durable_figure};
use crate::engine::{self, VALUE_BYTES};
use crate::plot::{Axis, Figure, Panel, Series};
use crate::{RUNS, bench_dir, commands, die};
use server::{Server, TEST_TIME};

/// Keys in both stores; redis-benchmark draws from this many (`-r`).
pub const KEYS: usize = 100_000;
const CLIENTS: [usize; 2] = [1, 16];
/// Random SETs drawn this many times the key count leave about e^-10 of
/// the keys unset, so GETs find values as they do in the engine.
const PRELOAD_DRAWS: usize = 10;
const PRELOAD_CLIENTS: usize = 4;
const PRELOAD_PIPELINE: usize = 64;

fn rps(results: &[(String, f64)], test: &str) -> Result<f64, String> {
    results
        .iter()
        .find(|t| t.0 == test)
        .map(|t| t.1)
        .ok_or_else(|| format!("redis-benchmark reported no {test}"))
}

fn version() -> String {
    let out = Command::new("redis-server").arg("--version").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    text.ok()
        .and_then(|t| {
            t.split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(String::from))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// (clients, GET ops/s, SET ops/s) for each of CLIENTS.
type Rates = Vec<(usize, f64, f64)>;

fn measure_memory(cmds: &mut Vec<String>) -> Result<Rates, String> {
    let server = Server::start(&[])?;
    cmds.push(server.cmdline.clone());
    let preload = server.benchmark_args(
        "set",
        PRELOAD_CLIENTS,
        (KEYS * PRELOAD_DRAWS) as u64,
        PRELOAD_PIPELINE,
    );
    server.benchmark(&preload)?;
    cmds.push(format!("redis-benchmark {}", preload.join(" ")));
    let keys = server
        .command("DBSIZE")
        .map_err(|e| format!("DBSIZE: {e}"))?;
    if keys.trim_start_matches(':').parse::<usize>().unwrap_or(0) < KEYS * 99 / 100 {
        return Err(format!(
            "preloaded Redis holds {keys} keys, not about {KEYS}"
        ));
    }
    CLIENTS
        .iter()
        .map(|&c| {
            let (r, cmd) = server.measure("get,set", c)?;
            cmds.push(cmd);
            Ok((c, rps(&r, "GET")?, rps(&r, "SET")?))
        })
        .collect()
}

/// (writers, SETs/s) with appendfsync always, for each of WRITERS.
fn measure_durable(cmds: &mut Vec<String>) -> Result<Vec<(usize, f64)>, String> {
    let server = Server::start(&["--appendonly", "yes", "--appendfsync", "always"])?;
    cmds.push(server.cmdline.clone());
    WRITERS
        .iter()
        .map(|&w| {
            let (r, cmd) = server.measure("set", w)?;
            cmds.push(cmd);
            Ok((w, rps(&r, "SET")?))
        })
        .collect()
}

/// Median SETs/s of Redis with appendfsync always at `clients` clients,
/// on a server of its own (for the through-the-mount comparison).
pub fn durable_set_rate(clients: usize, cmds: &mut Vec<String>) -> Result<f64, String> {
    let server = Server::start(&["--appendonly", "yes", "--appendfsync", "always"])?;
    let (r, cmd) = server.measure("set", clients)?;
    // One server line is enough: the others differ only by port and dir.
    if !cmds.iter().any(|c| c.starts_with("redis-server")) {
        cmds.push(server.cmdline.clone());
    }
    cmds.push(cmd);
    rps(&r, "SET")
}

pub fn run() -> Vec<Figure> {
    let costs = engine::measure(KEYS, &engine::options(KEYS));
    let mut cmds = Vec::new();
    let redis = measure_memory(&mut cmds).unwrap_or_else(|e| die("redis", e));
    let durable = measure_durable(&mut cmds).unwrap_or_else(|e| die("redis", e));
    let bpfdb = commit_rates();
    println!(
        "## Redis {}: {VALUE_BYTES}-byte GET and SET over {KEYS} keys, no pipelining (median of {RUNS} runs of ~{} ms per test)\n",
        version(),
        TEST_TIME.as_millis()
    );
    println!(
        "The engine figures are the engine API in this process, one thread (as in the engine \
         section); Redis is redis-benchmark over loopback TCP, so its 1-client ns/op is a full \
         request round trip.\n"
    );
    println!("| system | clients | GET ops/s | SET ops/s | GET ns/op | SET ns/op |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| bpfdb engine API (in process) | 1 | {:.0} | {:.0} | {:.0} | {:.0} |",
        1e9 / costs.get_ns,
        1e9 / costs.set_ns,
        costs.get_ns,
        costs.set_ns
    );
    for &(c, g, s) in &redis {
        // With more clients, 1e9/(ops/s) is no longer the time of a request.
        let ns = |ops: f64| {
            if c == 1 {
                format!("{:.0}", 1e9 / ops)
            } else {
                String::new()
            }
        };
        println!(
            "| Redis (loopback) | {c} | {g:.0} | {s:.0} | {} | {} |",
            ns(g),
            ns(s)
        );
    }
    let (_, g1, s1) = redis[0];
    println!(
        "\nengine GET is {:.1}x faster than a Redis GET round trip with 1 client (target >= 20x); SET {:.1}x.\n",
        1e9 / g1 / costs.get_ns,
        1e9 / s1 / costs.set_ns
    );
    println!(
        "## Durable SETs: bpfdb sync=commit against Redis appendonly, appendfsync always, data on {} \
         (bpfdb: median of {RUNS} windows of {} ms; Redis: median of {RUNS} runs of ~{} ms)\n",
        bench_dir().display(),
        crate::durability::WINDOW.as_millis(),
        TEST_TIME.as_millis()
    );
    println!("| writers (clients) | bpfdb commits/s | Redis SETs/s | ratio bpfdb / Redis |");
    println!("| ---: | ---: | ---: | ---: |");
    for (&(w, b), &(_, r)) in bpfdb.iter().zip(&durable) {
        println!("| {w} | {b:.0} | {r:.0} | {:.2} |", b / r);
    }
    println!("\nTarget: at 16 writers bpfdb >= Redis with appendfsync always (ratio >= 1.00).\n");
    commands("redis", &cmds);
    vec![
        latency_figure(&costs, &redis),
        durable_figure(vec![Series {
            name: "Redis appendfsync always".into(),
            points: durable.iter().map(|&(w, r)| (w as f64, r)).collect(),
        }]),
    ]
}

fn latency_figure(costs: &engine::Costs, redis: &Rates) -> Figure {
    let ops = || Axis::Categories(vec!["GET".into(), "SET".into()]);
    let bars = |name: String, get: f64, set: f64| Series {
        name,
        points: vec![(0.0, get), (1.0, set)],
    };
    let (_, g1, s1) = redis[0];
    let mut throughput = vec![bars(
        "bpfdb engine, 1 thread".into(),
        1e9 / costs.get_ns,
        1e9 / costs.set_ns,
    )];
    throughput.extend(redis.iter().map(|&(c, g, s)| {
        bars(
            format!("Redis, {c} client{}", if c == 1 { "" } else { "s" }),
            g,
            s,
        )
    }));
    Figure {
        file: "bench-redis.png",
        caption: format!(
            "bpfdb engine API against Redis over loopback, 100-byte values, {KEYS} keys (median of {RUNS} runs)"
        ),
        panels: vec![
            Panel {
                title: "Time per op, 1 client".into(),
                x: ops(),
                y_label: "ns/op (log)".into(),
                series: vec![
                    bars("bpfdb engine API".into(), costs.get_ns, costs.set_ns),
                    bars("Redis round trip".into(), 1e9 / g1, 1e9 / s1),
                ],
            },
            Panel {
                title: "Throughput".into(),
                x: ops(),
                y_label: "ops/s (log)".into(),
                series: throughput,
            },
        ],
    }
}
