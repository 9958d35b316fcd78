//! The daemon around the core: the FUSE adapter (`fuse`) and the pool it
//! runs waiting operations on (`waiters`), mounting, unmounting and signals
//! (`mount`), the command line (`cli`) and start-up: preparing, forking into
//! the background, serving (`start`).

pub mod cli;
pub mod fuse;
pub mod mount;
pub mod start;
pub mod waiters;
