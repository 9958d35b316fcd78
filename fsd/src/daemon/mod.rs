//! The daemon around the core: the FUSE adapter (`fuse`, with the kernel's
//! attribute cache it drops entries of, `kernel_cache`) and the pool it
//! runs waiting operations on (`waiters`), mounting, unmounting and signals
//! (`mount`), the command line (`cli`) and start-up: preparing, forking into
//! the background, serving (`start`); beside the mount, memcached's UDP
//! protocol (`memcached`: the socket and its threads).

pub mod cli;
pub mod fuse;
pub mod kernel_cache;
pub mod memcached;
pub mod mount;
pub mod start;
pub mod waiters;
