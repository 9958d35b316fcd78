//! Open file and directory handles, numbered for the kernel.
//!
//! Each handle has its own lock so one slow commit does not stall the other
//! handles; the table lock is held only to find or insert a handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bpfdb::{Error, Result};

pub struct Handles<T> {
    table: Mutex<Table<T>>,
}

struct Table<T> {
    open: HashMap<u64, Arc<Mutex<T>>>,
    next_fh: u64,
    capacity: usize,
}

/// Locks a mutex, ignoring poison: handle state stays consistent because
/// every update is completed before anything that could panic.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Handles<T> {
    pub fn new(capacity: usize) -> Handles<T> {
        Handles {
            table: Mutex::new(Table {
                open: HashMap::new(),
                next_fh: 1,
                capacity,
            }),
        }
    }

    pub fn insert(&self, value: T) -> Result<u64> {
        let mut t = lock(&self.table);
        if t.open.len() >= t.capacity {
            return Err(Error::new(
                libc::ENFILE,
                format!("all {} file handles are open", t.capacity),
            ));
        }
        let fh = t.next_fh;
        t.next_fh += 1;
        t.open.insert(fh, Arc::new(Mutex::new(value)));
        Ok(fh)
    }

    pub fn get(&self, fh: u64) -> Result<Arc<Mutex<T>>> {
        lock(&self.table)
            .open
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::new(libc::EBADF, format!("no open handle {fh}")))
    }

    /// The first `Some` that `f` returns for an open handle. Handles are
    /// locked one at a time, after the table lock is released.
    pub fn find_map<R>(&self, mut f: impl FnMut(&T) -> Option<R>) -> Option<R> {
        let open: Vec<Arc<Mutex<T>>> = lock(&self.table).open.values().cloned().collect();
        open.iter().find_map(|h| f(&lock(h)))
    }

    /// Calls `f` on every open handle, locked one at a time, after the
    /// table lock is released.
    pub fn for_each(&self, mut f: impl FnMut(&mut T)) {
        let open: Vec<Arc<Mutex<T>>> = lock(&self.table).open.values().cloned().collect();
        open.iter().for_each(|h| f(&mut lock(h)));
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Mutex<T>>> {
        lock(&self.table).open.remove(&fh)
    }
}
