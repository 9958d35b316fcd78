//! A redis-server of the bench's own (127.0.0.1, a free port, its own
//! directory, no snapshots), and redis-benchmark runs against it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::KEYS;
use crate::engine::VALUE_BYTES;
use crate::{RUNS, bench_dir, median, wait_exit};

/// How long each redis-benchmark test should last; its request count is
/// sized from a probe run at the same concurrency.
pub const TEST_TIME: Duration = Duration::from_millis(1500);
const PROBE_REQUESTS: u64 = 2_000;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STARTUP_POLL: Duration = Duration::from_millis(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// A redis-server of the bench's own, stopped on drop.
pub struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    pub cmdline: String,
}

impl Server {
    /// Starts redis-server on 127.0.0.1 with no snapshots, then `extra`.
    pub fn start(extra: &[&str]) -> Result<Server, String> {
        let dir = tempfile::tempdir_in(bench_dir()).map_err(|e| format!("tempdir: {e}"))?;
        // The kernel picks a free port; it is free again once the listener
        // is dropped, a moment before redis-server binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port()
            .to_string();
        let (dir_s, log) = (
            dir.path().display().to_string(),
            dir.path().join("redis.log").display().to_string(),
        );
        let mut args = [
            ("--bind", "127.0.0.1"),
            ("--port", &port),
            ("--dir", &dir_s),
            ("--logfile", &log),
            ("--save", ""),
            ("--daemonize", "no"),
        ]
        .iter()
        .flat_map(|&(k, v)| [k, v])
        .collect::<Vec<&str>>();
        args.extend(extra);
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting redis-server (make deps installs it): {e}"))?;
        let quoted: Vec<&str> = args
            .iter()
            .map(|&a| if a.is_empty() { "''" } else { a })
            .collect();
        let mut s = Server {
            child,
            port: port.parse().map_err(|e| format!("port: {e}"))?,
            dir,
            cmdline: format!("redis-server {}", quoted.join(" ")),
        };
        s.wait_ready()?;
        Ok(s)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let t = Instant::now();
        while t.elapsed() < STARTUP_TIMEOUT {
            if self.command("PING").is_ok_and(|r| r == "+PONG") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.path().join("redis.log"));
                return Err(format!(
                    "redis-server exited ({status}): {}",
                    log.unwrap_or_default().trim()
                ));
            }
            std::thread::sleep(STARTUP_POLL);
        }
        Err(format!(
            "redis-server not answering after {STARTUP_TIMEOUT:?}"
        ))
    }

    /// Sends one inline command; returns the first line of the reply.
    pub fn command(&self, cmd: &str) -> std::io::Result<String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    /// Sends one inline command and returns its whole reply (a bulk
    /// string's text, or the status line), waiting up to `timeout`.
    pub fn command_text(&self, cmd: &str, timeout: Duration) -> std::io::Result<String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        c.set_read_timeout(Some(timeout))?;
        c.write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let Some(len) = line.strip_prefix('$') else {
            return Ok(line.trim_end().to_string());
        };
        let len: usize = len.trim_end().parse().unwrap_or(0);
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut r, &mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    pub fn benchmark_args(
        &self,
        tests: &str,
        clients: usize,
        requests: u64,
        pipeline: usize,
    ) -> Vec<String> {
        let port = self.port;
        format!(
            "-h 127.0.0.1 -p {port} -t {tests} -c {clients} -n {requests} -P {pipeline} \
             -d {VALUE_BYTES} -r {KEYS} --csv"
        )
        .split_whitespace()
        .map(String::from)
        .collect()
    }

    /// Runs redis-benchmark; requests/s of each test it ran, by name.
    pub fn benchmark(&self, args: &[String]) -> Result<Vec<(String, f64)>, String> {
        let out = Command::new("redis-benchmark")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-benchmark (make deps installs it): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-benchmark {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // --csv: a header, then "TEST","RPS",... per test.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').map(|f| f.trim_matches('"')).collect();
                let rps = f.get(1).and_then(|r| r.parse().ok());
                rps.map(|r| (f[0].to_string(), r))
                    .ok_or_else(|| format!("redis-benchmark printed {l:?}"))
            })
            .collect()
    }

    /// Median requests/s of each of `tests` over RUNS runs at `clients`,
    /// no pipelining; and the command line of one run.
    pub fn measure(
        &self,
        tests: &str,
        clients: usize,
    ) -> Result<(Vec<(String, f64)>, String), String> {
        let probe = self.benchmark(&self.benchmark_args(tests, clients, PROBE_REQUESTS, 1))?;
        let slowest = probe.iter().map(|t| t.1).fold(f64::MAX, f64::min);
        let requests = ((slowest * TEST_TIME.as_secs_f64()) as u64).max(PROBE_REQUESTS);
        let args = self.benchmark_args(tests, clients, requests, 1);
        let runs = (0..RUNS)
            .map(|_| self.benchmark(&args))
            .collect::<Result<Vec<_>, _>>()?;
        let medians = probe
            .iter()
            .map(|(test, _)| {
                let rates = runs
                    .iter()
                    .filter_map(|r| r.iter().find(|t| t.0 == *test).map(|t| t.1))
                    .collect();
                (test.clone(), median(rates))
            })
            .collect();
        Ok((medians, format!("redis-benchmark {}", args.join(" "))))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if !wait_exit(&mut self.child, STOP_TIMEOUT) {
            eprintln!(
                "bench: redis-server on port {} did not exit; killing it",
                self.port
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
