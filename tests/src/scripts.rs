//! Scripts run in a mount (`sh -c` with `$M`, `$T`, `$D`), the assertions on what they
//! print, and scripts left running in the background.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::{Command, Output};
use std::time::Duration;

use crate::*;

impl Mount {
    /// A `sh -c SCRIPT` command with the mountpoint as working directory and `$M` (mountpoint),
    /// `$T` (scratch dir outside the mount) and `$D` (data dir) set; `LC_ALL=C` so tool
    /// messages and `ls` order are predictable.
    pub fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(&self.mnt)
            .env("M", &self.mnt)
            .env("T", &self.scratch)
            .env("D", &self.data)
            .env("LC_ALL", "C")
            .env_remove("POSIXLY_CORRECT");
        cmd
    }

    /// Starts `sh -c SCRIPT` (see [`Mount::command`]) in the background; see [`Background`].
    pub fn spawn_sh(&self, script: &str) -> Background {
        Background::spawn(self.command(script), script)
    }

    /// Every key of directory `dir` of the mount (`.` for the root, `.txn/NAME`, `.snap/NAME`)
    /// with its value, read with `cat` and stripped of trailing newlines; for one-line values.
    #[track_caller]
    pub fn values(&self, dir: &str) -> BTreeMap<String, String> {
        let text = self.ok(&format!(
            "cd '{dir}' || exit 1
             for f in *; do
               [ -e \"$f\" ] || continue
               v=$(cat \"$f\") || exit 1
               printf '%s %s\\n' \"$f\" \"$v\"
             done"
        ));
        text.lines()
            .map(|l| match l.split_once(' ') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => panic!("bad line {l:?} reading {dir}"),
            })
            .collect()
    }

    /// Runs `sh -c SCRIPT` (see [`Mount::command`]).
    pub fn sh(&self, script: &str) -> Output {
        run_with_timeout(&mut self.command(script), SCRIPT_TIMEOUT, script)
    }

    /// Runs `sh -c SCRIPT` with extra environment variables (names may hold any byte but NUL).
    pub fn sh_env(&self, script: &str, env: &[(&str, &OsStr)]) -> Output {
        let mut cmd = self.command(script);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_timeout(&mut cmd, SCRIPT_TIMEOUT, script)
    }

    /// Runs a script that must succeed; returns its stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        assert_ok(&self.sh(script), script)
    }

    /// Runs a script that must succeed without writing to stderr; returns its stdout.
    #[track_caller]
    pub fn ok_quiet(&self, script: &str) -> String {
        let out = self.sh(script);
        let stdout = assert_ok(&out, script);
        assert!(
            out.stderr.is_empty(),
            "expected no stderr from:\n{script}\n{}",
            describe(&out)
        );
        stdout
    }

    /// Runs a script that must succeed; returns its stdout as bytes.
    #[track_caller]
    pub fn ok_bytes(&self, script: &str) -> Vec<u8> {
        let out = self.sh(script);
        assert_ok(&out, script);
        out.stdout
    }

    /// Runs a script that must fail with the errno text `message`; returns its output.
    #[track_caller]
    pub fn fails(&self, script: &str, message: &str) -> Output {
        let out = self.sh(script);
        assert_errno(&out, message, script);
        out
    }

    /// `cat .stats`, checked to be `name value` lines with integer values, as a map.
    #[track_caller]
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let text = self.ok("cat .stats");
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert!(
                fields.len() == 2 && !fields[0].is_empty(),
                ".stats line {line:?} is not `name value`; whole file:\n{text}"
            );
            let value = fields[1].parse::<u64>().unwrap_or_else(|_| {
                panic!(".stats line {line:?}: value is not a counter; whole file:\n{text}")
            });
            assert!(
                map.insert(fields[0].to_owned(), value).is_none(),
                ".stats names {} twice:\n{text}",
                fields[0]
            );
        }
        map
    }

    /// `cat .txn/NAME/.ctl`, trimmed: `active`, `committed at TS` or `aborted: REASON`.
    #[track_caller]
    pub fn txn_state(&self, name: &str) -> String {
        self.ok(&format!("cat .txn/{name}/.ctl")).trim().to_owned()
    }

    /// Asserts that `.txn/NAME/.ctl` says `aborted: REASON` and returns REASON.
    #[track_caller]
    pub fn assert_aborted(&self, name: &str) -> String {
        let state = self.txn_state(name);
        match state.strip_prefix("aborted: ") {
            Some(reason) if !reason.trim().is_empty() => reason.to_owned(),
            _ => panic!(".txn/{name}/.ctl says {state:?}, want \"aborted: REASON\""),
        }
    }

    /// Asserts that `.txn/NAME/.ctl` says `committed at TS` and returns TS.
    #[track_caller]
    pub fn assert_committed(&self, name: &str) -> u64 {
        let state = self.txn_state(name);
        state
            .strip_prefix("committed at ")
            .and_then(|ts| ts.trim().parse().ok())
            .unwrap_or_else(|| panic!(".txn/{name}/.ctl says {state:?}, want \"committed at TS\""))
    }

    /// A named counter of `.stats`, which must be there.
    #[track_caller]
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        *stats
            .get(name)
            .unwrap_or_else(|| panic!(".stats has no `{name}` line: {stats:?}"))
    }

    /// The `keys` counter of `.stats`.
    #[track_caller]
    pub fn stat_keys(&self) -> u64 {
        let stats = self.stats();
        *stats
            .get("keys")
            .unwrap_or_else(|| panic!(".stats has no `keys` line: {stats:?}"))
    }
}

/// A script running in the background in its own process group, its output captured. Dropping
/// it unfinished kills the whole group, so a failing test leaves no shell loops behind.
pub struct Background {
    /// None once finished.
    piped: Option<Piped>,
    what: String,
}

impl Background {
    fn spawn(mut cmd: Command, what: &str) -> Background {
        Background {
            piped: Some(Piped::spawn(&mut cmd, what)),
            what: what.to_owned(),
        }
    }

    /// Waits up to `timeout` for the script to end and returns its output; kills it and fails
    /// the test if it is still running then.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) -> Output {
        let mut piped = self.piped.take().expect("not finished yet");
        let Some(status) = wait_timeout(&mut piped.child, timeout) else {
            piped.kill_group();
            let _ = piped.child.wait();
            panic!(
                "background script still running after {} s; killed it:\n{}",
                timeout.as_secs(),
                self.what
            );
        };
        // The scripts `wait` for their own background jobs, so the pipes close with them.
        piped.output(status)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut piped) = self.piped.take() {
            piped.kill_group();
            let _ = piped.child.wait();
        }
    }
}
