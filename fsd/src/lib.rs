//! The bpfdb filesystem daemon as a library: `fs` is the testable core
//! (plain Rust types, no FUSE).

pub mod fs;
pub mod handles;
pub mod inodes;
pub mod stats;
