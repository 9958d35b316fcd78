//! The bpfdb filesystem daemon as a library: `fs` is the testable core
//! (plain Rust types, no FUSE), `fuse` the thin adapter the kernel talks
//! to, `mount` the mount, unmount and signal handling of the daemon, `txns`
//! the table of transactions and snapshots open through the mount.

pub mod caller;
pub mod fs;
pub mod fuse;
pub mod handles;
pub mod inodes;
pub mod keyuse;
pub mod mount;
pub mod stats;
pub mod txns;
pub mod waiters;
