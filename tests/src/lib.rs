//! Fixtures for the end-to-end tests.
//!
//! A [`Mount`] is one bpfdb daemon (`target/release/bpfdb`, or `$BPFDB_BIN`) running in the
//! foreground as a child process, with its data directory and mountpoint in a fresh tempdir.
//! Tests drive the mount only through real processes (`sh -c` and the shell tools it runs), so
//! what they check is what a person at a shell sees. Dropping a `Mount` unmounts it and fails
//! the test unless the daemon then exited 0 and the mount is gone.
//!
//! A `Mount` outlives its daemon: [`Mount::restart`], [`Mount::kill9`] and
//! [`Mount::start_again`] serve the same DATA_DIR with a new daemon, which is how the
//! durability and crash tests check what a restart recovers.
//!
//! Modules: `mount` and `builder` (the fixture), `scripts` (running scripts in it), `process` (daemon binary,
//! signals, timeouts), `wal` (damaging a log on purpose), `rng` (seeded randomness), `acks` (writers'
//! attempt and ack side files, checked after a crash), `memcache` (a memcached UDP client),
//! `netns` (network namespaces and veth pairs, for daemons with XDP programs).

use std::time::Duration;

pub mod acks;
mod builder;
pub mod memcache;
mod mount;
pub mod netns;
mod process;
mod rng;
mod scripts;
pub mod wal;

pub use builder::MountBuilder;
pub use mount::Mount;
pub use process::*;
pub use rng::Rng;
pub use scripts::Background;

/// How long a daemon may take to mount, and to exit after an unmount or a signal. Generous: a
/// start verifies and loads the engine's programs, which takes 2-4 s on an idle 2-core machine
/// and went past 10 s while other builds loaded it; it only exists so a hung daemon fails the
/// test instead of hanging it.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `sh -c` script may run before it is killed and the test fails. Generous: it
/// only exists so a hung daemon fails the test instead of hanging the whole run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of the daemon log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// The glibc `strerror` texts the shell tools print, one per errno of docs/SEMANTICS.md.
pub mod msg {
    pub const ENOENT: &str = "No such file or directory";
    pub const ENAMETOOLONG: &str = "File name too long";
    pub const EFBIG: &str = "File too large";
    pub const ENOSPC: &str = "No space left on device";
    pub const EPERM: &str = "Operation not permitted";
    pub const EACCES: &str = "Permission denied";
    pub const EEXIST: &str = "File exists";
    pub const EINVAL: &str = "Invalid argument";
    pub const EBUSY: &str = "Device or resource busy";
    pub const ECANCELED: &str = "Operation canceled";
    pub const EROFS: &str = "Read-only file system";
}

/// Names at the mount root that are never keys (docs/SEMANTICS.md, "Namespace").
pub const RESERVED: [&str; 4] = [".stats", ".txn", ".snap", ".ctl"];

/// The reserved entries a listing shows: all four (docs/SEMANTICS.md, "Namespace"), in
/// `LC_ALL=C ls -A` order.
pub const LISTED_RESERVED: [&str; 4] = [".ctl", ".snap", ".stats", ".txn"];

/// Key names 0..n as `PREFIXnnnnn` (zero padded so `ls` order is numeric order).
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

/// Lines of a listing, for exact comparisons.
pub fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}
