//! The kernel's cache of root keys' attributes, and the one way the daemon
//! drops an entry of it (`Fs::root_changed` calls it before a commit's reply).

use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};
use log::warn;

use crate::core::fs::Invalidate;

/// The kernel's end of `Fs::root_changed`. It drops the inode's attributes
/// only (offset -1): that takes no page locks, so a FUSE worker can send
/// it before replying without waiting on a reader whose page is locked
/// while its READ sits in the queue. The pages go on the next use, when
/// the kernel refetches the attributes, sees a new mtime or size, and
/// (with FUSE_AUTO_INVAL_DATA) drops them itself.
#[derive(Clone, Default)]
pub struct KernelCache(Arc<OnceLock<Notifier>>);

impl KernelCache {
    /// Connects to the session; before that no request has been served,
    /// so nothing can be cached.
    pub fn connect(&self, notifier: Notifier) {
        let _ = self.0.set(notifier);
    }

    pub fn invalidate(&self) -> Invalidate {
        let cell = self.0.clone();
        Box::new(move |ino| {
            if let Some(n) = cell.get()
                && let Err(e) = n.inval_inode(INodeNo(ino), -1, 0)
            {
                warn!("invalidating the kernel's attributes of inode {ino}: {e}");
            }
        })
    }
}
