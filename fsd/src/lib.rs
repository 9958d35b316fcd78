//! The bpfdb filesystem daemon as a library: `core` is the testable
//! filesystem (plain Rust types, no FUSE), `daemon` the thin FUSE adapter
//! the kernel talks to and the process around it (mount, signals, command
//! line, start-up). `daemon` imports `core`, never the other way.

pub mod core;
pub mod daemon;
