//! Acknowledgements that nobody blocks for: a commit's caller leaves a
//! callback (`Log::when_durable`) instead of a thread waiting on the log,
//! and whoever sees the commit settle (durable, or failed for good) runs
//! it. The FUSE daemon replies to a FLUSH this way, so a commit waiting for
//! its fsync holds no FUSE worker and any number of writers share one fsync.
//!
//! This module is the bookkeeping only (which callbacks are settled, and
//! how); `writer` decides when to look. The rules are the ones a blocking
//! `Log::wait_durable` applies, so both kinds of waiter see the same
//! outcome for the same commit.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Called once with the commit's outcome.
pub type Ack = Box<dyn FnOnce(Result<()>) + Send>;

/// Callbacks held at once. Each stands for a request the kernel has in
/// flight, so this is far above what a machine sends; past it a committer
/// waits for durability itself (`Log::when_durable`), which bounds the
/// list without failing anyone.
pub const MAX_PENDING_ACKS: usize = 1 << 16;

struct Pending {
    ts: u64,
    since: Instant,
    ack: Ack,
}

/// What the log says now, as the settling rules need it.
pub(crate) struct View<'a> {
    pub durable_ts: u64,
    /// Broken for good: every wait fails with this.
    pub broken: Option<&'a Error>,
    /// The first kind of work failing now, if any.
    pub failing: Option<&'a Error>,
    /// How long a commit waits for a failing log before it is told.
    pub stall: Duration,
    /// Longest any wait lasts, failing or not.
    pub wait_limit: Duration,
    /// The log is gone: nothing more becomes durable.
    pub stopped: bool,
}

#[derive(Default)]
pub(crate) struct Acks {
    pending: Vec<Pending>,
}

impl Acks {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn push(&mut self, ts: u64, ack: Ack) {
        self.pending.push(Pending {
            ts,
            since: Instant::now(),
            ack,
        });
    }

    /// Takes out every callback whose commit is settled, with its outcome;
    /// the caller runs them after letting go of the log's lock.
    pub fn settle(&mut self, v: &View, now: Instant) -> Vec<(Ack, Result<()>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            match outcome(&self.pending[i], v, now) {
                Some(r) => out.push((self.pending.swap_remove(i).ack, r)),
                None => i += 1,
            }
        }
        out
    }
}

/// The outcome of one commit's wait, if it is settled: the same rules as
/// a blocking wait (`Log::wait_durable`).
fn outcome(p: &Pending, v: &View, now: Instant) -> Option<Result<()>> {
    let ts = p.ts;
    if let Some(e) = v.broken {
        return Some(Err(e.clone()));
    }
    if v.durable_ts >= ts {
        return Some(Ok(()));
    }
    let waited = now.saturating_duration_since(p.since);
    if waited >= v.stall
        && let Some(e) = v.failing
    {
        return Some(Err(Error::new(
            e.errno,
            format!("commit {ts} not durable: {}", e.msg),
        )));
    }
    if waited >= v.wait_limit {
        return Some(Err(Error::new(
            libc::ETIMEDOUT,
            format!(
                "commit {ts} not durable after {:.1} s: the log writer made no progress \
                 (a write or fsync that does not return?)",
                waited.as_secs_f64()
            ),
        )));
    }
    if v.stopped {
        return Some(Err(Error::new(
            libc::EIO,
            format!("commit {ts} not durable: the log stopped before it was written"),
        )));
    }
    None
}

/// Runs settled callbacks, outside every lock.
pub(crate) fn run(settled: Vec<(Ack, Result<()>)>) {
    for (ack, r) in settled {
        ack(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(u64, Result<()>)>>>;

    fn recorder(seen: &Seen, ts: u64) -> Ack {
        let seen = seen.clone();
        Box::new(move |r| seen.lock().unwrap().push((ts, r)))
    }

    fn view(durable_ts: u64) -> View<'static> {
        View {
            durable_ts,
            broken: None,
            failing: None,
            stall: Duration::from_secs(2),
            wait_limit: Duration::from_secs(30),
            stopped: false,
        }
    }

    fn errnos(seen: &Seen) -> Vec<(u64, i32)> {
        let mut v: Vec<(u64, i32)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(ts, r)| (*ts, r.as_ref().map_or_else(|e| e.errno, |()| 0)))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_durable_commits_are_acknowledged_and_each_once() {
        let seen = Seen::default();
        let mut acks = Acks::default();
        for ts in [3, 1, 2, 5] {
            acks.push(ts, recorder(&seen, ts));
        }
        let now = Instant::now();
        run(acks.settle(&view(2), now));
        assert_eq!(errnos(&seen), vec![(1, 0), (2, 0)]);
        run(acks.settle(&view(2), now));
        assert_eq!(acks.len(), 2, "3 and 5 still wait");
        run(acks.settle(&view(5), now));
        assert_eq!(errnos(&seen), vec![(1, 0), (2, 0), (3, 0), (5, 0)]);
        assert!(acks.is_empty());
    }

    #[test]
    fn a_failing_log_is_told_after_the_stall_and_a_silent_one_at_the_limit() {
        let seen = Seen::default();
        let mut acks = Acks::default();
        acks.push(7, recorder(&seen, 7));
        let start = Instant::now();
        let disk_full = Error::new(libc::ENOSPC, "write: no space");
        let failing = View {
            failing: Some(&disk_full),
            ..view(0)
        };
        run(acks.settle(&failing, start + Duration::from_secs(1)));
        assert!(errnos(&seen).is_empty(), "a slow disk is waited for");
        run(acks.settle(&failing, start + Duration::from_secs(3)));
        assert_eq!(errnos(&seen), vec![(7, libc::ENOSPC)]);

        acks.push(8, recorder(&seen, 8));
        let start = Instant::now();
        run(acks.settle(&view(0), start + Duration::from_secs(29)));
        assert_eq!(acks.len(), 1, "no error: still waiting");
        run(acks.settle(&view(0), start + Duration::from_secs(31)));
        assert_eq!(errnos(&seen), vec![(7, libc::ENOSPC), (8, libc::ETIMEDOUT)]);
    }

    #[test]
    fn a_broken_or_stopped_log_fails_every_waiter() {
        let seen = Seen::default();
        let mut acks = Acks::default();
        acks.push(1, recorder(&seen, 1));
        let broken = Error::new(libc::EIO, "log broken");
        run(acks.settle(
            &View {
                broken: Some(&broken),
                ..view(5)
            },
            Instant::now(),
        ));
        acks.push(9, recorder(&seen, 9));
        run(acks.settle(
            &View {
                stopped: true,
                ..view(5)
            },
            Instant::now(),
        ));
        assert_eq!(errnos(&seen), vec![(1, libc::EIO), (9, libc::EIO)]);
    }
}
