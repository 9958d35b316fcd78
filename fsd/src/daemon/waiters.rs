//! A few threads that run the FUSE operations that may wait, so that the
//! FUSE workers never do.
//!
//! A writer's open or a commit waits for the key's cached readers to close
//! (`keyuse`). Those readers need a FUSE worker for their READ and RELEASE;
//! if every worker sat waiting, none would come, every wait would run out,
//! and the writer would go ahead under a reader still reading. Operations
//! that may wait are handed here instead, with their reply, and the worker
//! goes back to serving requests.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Threads in the pool: operations that wait at once. More queue up; each
/// waits at most `keyuse::QUIET_TIMEOUT`.
pub const WAITERS: usize = 4;

/// Names of the pool's threads begin with this (keyuse checks it).
pub use crate::core::keyuse::WAITER_THREAD_PREFIX as THREAD_PREFIX;

type Job<T> = Box<dyn FnOnce(&T) + Send>;

pub struct Waiters<T: Send + Sync + 'static> {
    shared: Arc<T>,
    tx: Option<Sender<Job<T>>>,
    threads: Vec<JoinHandle<()>>,
}

impl<T: Send + Sync + 'static> Waiters<T> {
    pub fn new(shared: Arc<T>) -> std::io::Result<Waiters<T>> {
        let (tx, rx) = mpsc::channel::<Job<T>>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..WAITERS)
            .map(|i| {
                let (rx, shared) = (rx.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("{THREAD_PREFIX}-{i}"))
                    .spawn(move || {
                        // The lock is held only to take the next job.
                        while let Ok(job) = rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            job(&shared);
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Waiters {
            shared,
            tx: Some(tx),
            threads,
        })
    }

    /// Runs `job` on a pool thread (here, if the pool is gone).
    pub fn run(&self, job: impl FnOnce(&T) + Send + 'static) {
        let job: Job<T> = Box::new(job);
        if let Some(Err(mpsc::SendError(job))) = self.tx.as_ref().map(|tx| tx.send(job)) {
            job(&self.shared);
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Waiters<T> {
    /// Runs what is queued, then stops the threads: once this returns the
    /// pool holds no reference to the shared state.
    fn drop(&mut self) {
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn jobs_run_off_the_caller_and_drop_waits_for_them() {
        let count = Arc::new(AtomicUsize::new(0));
        let pool = Waiters::new(count.clone()).unwrap();
        let caller = std::thread::current().id();
        for _ in 0..10 {
            pool.run(move |c: &AtomicUsize| {
                assert_ne!(std::thread::current().id(), caller);
                std::thread::sleep(std::time::Duration::from_millis(1));
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
        drop(pool);
        assert_eq!(
            count.load(Ordering::SeqCst),
            10,
            "queued jobs ran before drop returned"
        );
        assert_eq!(
            Arc::strong_count(&count),
            1,
            "the pool let go of the shared state"
        );
    }
}
