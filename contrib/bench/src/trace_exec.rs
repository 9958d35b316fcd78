//! The exec tracer's added cost per traced event (`--trace-exec`): execs of
//! a program timed without and with the tracer, and the tracer's own eBPF
//! run time per event (its program and the engine stages it tail-calls,
//! from the kernel's run-time stats). The difference between the two is
//! the uprobe mechanism (an int3 trap on the C library's execve: this
//! kernel has no kprobes) and the log writer's work.

use std::path::Path;
use std::process::Command;

use crate::memcached::cpu::{RunTimeStats, prog_stats, progs_named};
use crate::mount::{Mount, sibling_exe};
use crate::plot::Figure;
use crate::{RUNS, commands, die, median};

/// Execs per run: a few hundred keeps a run near a second.
const EXECS: u64 = 400;
/// The tracer's entry program, as the kernel names it.
const TRACE_PROG: &str = "on_execve";
/// The program exec'd: a copy of /bin/true under a name nothing else uses.
const PROGRAM: &str = "bpfdb-bench-true";
/// The target: added cost per traced event.
const TARGET_US: f64 = 2.0;

/// Median over RUNS runs of µs per exec of `program`.
fn exec_us(program: &Path) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..EXECS {
                match Command::new(program).status() {
                    Ok(s) if s.success() => {}
                    other => die("trace-exec: exec", format!("{other:?}")),
                }
            }
            t.elapsed().as_secs_f64() * 1e6 / EXECS as f64
        })
        .collect();
    median(runs)
}

pub fn run() -> Vec<Figure> {
    println!("## The exec tracer: added cost per traced exec\n");
    let dir = tempfile::tempdir().unwrap_or_else(|e| die("trace-exec: temp dir", e));
    let program = dir.path().join(PROGRAM);
    if let Err(e) = std::fs::copy("/bin/true", &program) {
        die("trace-exec: copy /bin/true", e);
    }
    let untraced = exec_us(&program);

    let exe = sibling_exe("bpfdb").unwrap_or_else(|e| die("trace-exec", e));
    let data = dir.path().join("data");
    let mount = Mount::daemon(&exe, &["-f", "--trace-exec"], Some(&data))
        .unwrap_or_else(|e| die("trace-exec: daemon", e));
    let ids = progs_named(TRACE_PROG).unwrap_or_else(|e| die("trace-exec", e));
    let [id] = ids[..] else {
        die(
            "trace-exec",
            format!("{} programs named {TRACE_PROG} (one expected)", ids.len()),
        );
    };
    let stats = RunTimeStats::enable().unwrap_or_else(|e| die("trace-exec", e));
    let before = prog_stats(id).unwrap_or_else(|e| die("trace-exec", e));
    let traced = exec_us(&program);
    let after = prog_stats(id).unwrap_or_else(|e| die("trace-exec", e));
    drop(stats);
    let runs = after.1.saturating_sub(before.1);
    let prog_ns = after.0.saturating_sub(before.0) as f64 / runs.max(1) as f64;

    let key = mount.path().join(format!("exec.{PROGRAM}"));
    let counted: u64 = std::fs::read_to_string(&key)
        .unwrap_or_else(|e| die("trace-exec: cat the count", e))
        .trim()
        .parse()
        .unwrap_or_else(|e| die("trace-exec: the count", e));
    let want = EXECS * RUNS as u64;
    if counted != want {
        die(
            "trace-exec",
            format!("{} holds {counted}, {want} execs ran", key.display()),
        );
    }
    let added = traced - untraced;
    println!("| | µs per exec (median of {RUNS} runs of {EXECS}) |");
    println!("| --- | ---: |");
    println!("| no tracer | {untraced:.1} |");
    println!("| `--trace-exec` | {traced:.1} |");
    println!("| added per traced exec | {added:.1} |");
    println!(
        "| of which the tracer's eBPF (its program and the engine stages, one transaction; {runs} runs) | {:.2} |",
        prog_ns / 1000.0
    );
    println!(
        "\nAdded cost per traced event: {added:.1} µs (target <= {TARGET_US} µs); the transaction \
         in the kernel {:.2} µs; the rest is the uprobe's trap and the log writer. \
         Every exec was counted: {counted}.\n",
        prog_ns / 1000.0
    );
    commands(
        "trace-exec",
        &[format!(
            "bpfdb -f --trace-exec DATA MNT; {EXECS} execs of a copy of /bin/true per run"
        )],
    );
    Vec::new()
}
