//! Replies that wait for the log without holding a thread.
//!
//! A commit is acknowledged only once it is durable, but the thread that
//! made it need not wait for that: the reply is left to the log
//! (`Db::when_durable`), which sends it from whichever thread sees the
//! fsync. So no FUSE worker sits blocked on the disk, reads go on being
//! served while commits wait, and any number of writers share one fsync.

use bpfdb::Result;

use super::Fs;

impl Fs {
    /// Runs `op`, which may commit, and calls `reply` with its result once
    /// what it committed is durable (at once if it committed nothing). An
    /// error is replied at once: a commit `op` made on the way (undoing a
    /// create) acknowledges nothing to anyone.
    pub fn durably<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Fs) -> Result<T>,
        reply: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        match self.db.defer_durability(|| op(self)) {
            (Ok(v), Some(ts)) => self.db.when_durable(ts, move |d| reply(d.map(|()| v))),
            (r, _) => reply(r),
        }
    }
}
