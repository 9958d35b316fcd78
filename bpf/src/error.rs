//! One error type for the whole stack: an errno for the kernel and the shell,
//! and a message for the log.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub errno: i32,
    pub msg: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, msg: impl Into<String>) -> Error {
        Error {
            errno,
            msg: msg.into(),
        }
    }

    /// For failures of setup calls (load, attach, mmap): keeps their errno.
    pub fn io(context: &str, e: &std::io::Error) -> Error {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("{context}: {e}"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "{} ({name})", self.msg)
    }
}

impl std::error::Error for Error {}

impl From<libbpf_rs::Error> for Error {
    fn from(e: libbpf_rs::Error) -> Error {
        let errno = match e.kind() {
            libbpf_rs::ErrorKind::PermissionDenied => libc::EPERM,
            libbpf_rs::ErrorKind::NotFound => libc::ENOENT,
            libbpf_rs::ErrorKind::InvalidInput => libc::EINVAL,
            libbpf_rs::ErrorKind::OutOfMemory => libc::ENOMEM,
            _ => libc::EIO,
        };
        Error::new(errno, format!("libbpf: {e:#}"))
    }
}
