//! The bpfdb filesystem daemon as a library.

pub mod handles;
pub mod inodes;
