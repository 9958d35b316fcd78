//! The filesystem core: everything `fs::Fs` is made of, in plain Rust types
//! that the unit tests drive without FUSE. `fs` maps files and directories
//! to keys and transactions; `inodes` numbers them, `handles` keeps open
//! files, `keyuse` keeps the page cache and writers apart, `txns` holds the
//! transactions and snapshots open through the mount, `stats` renders
//! `.stats`, `caller` says who asks, `clock` tells the time. `memcache`
//! serves memcached's UDP protocol over the root keys, without the socket.

pub mod caller;
pub mod clock;
pub mod fs;
pub mod handles;
pub mod inodes;
pub mod keyuse;
pub mod memcache;
pub mod stats;
pub mod txns;
