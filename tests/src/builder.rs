//! The options of a mount fixture, and its start.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::mount::Tmpfs;
use crate::*;

/// Options of a [`Mount`]; see [`Mount::builder`].
#[derive(Clone, Debug)]
pub struct MountBuilder {
    pub(crate) max_keys: Option<String>,
    pub(crate) max_value: Option<String>,
    pub(crate) value_mem: Option<String>,
    pub(crate) threads: Option<String>,
    pub(crate) extra: Vec<OsString>,
    pub(crate) foreground: bool,
    pub(crate) tmpfs_size: Option<String>,
    pub(crate) net_ns: Option<PathBuf>,
}

impl Default for MountBuilder {
    fn default() -> MountBuilder {
        MountBuilder {
            max_keys: Some("20000".into()),
            max_value: None,
            value_mem: Some("64M".into()),
            threads: Some("4".into()),
            extra: Vec::new(),
            foreground: true,
            tmpfs_size: None,
            net_ns: None,
        }
    }
}

impl MountBuilder {
    /// `--max-keys N` (default 20000).
    pub fn max_keys(mut self, n: u32) -> MountBuilder {
        self.max_keys = Some(n.to_string());
        self
    }

    /// `--max-value SIZE` (default: the daemon's, 1 MiB); SIZE may carry a K/M/G suffix.
    pub fn max_value(mut self, size: &str) -> MountBuilder {
        self.max_value = Some(size.into());
        self
    }

    /// `--value-mem SIZE` (default 64M).
    pub fn value_mem(mut self, size: &str) -> MountBuilder {
        self.value_mem = Some(size.into());
        self
    }

    /// `--threads N` (default 4).
    pub fn threads(mut self, n: u32) -> MountBuilder {
        self.threads = Some(n.to_string());
        self
    }

    /// Passes none of the size options above, so a test can give them its own way (`-o`).
    pub fn no_size_options(mut self) -> MountBuilder {
        self.max_keys = None;
        self.max_value = None;
        self.value_mem = None;
        self.threads = None;
        self
    }

    /// One more argument before DATA_DIR, e.g. `--allow-other` or `-o`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> MountBuilder {
        self.extra.push(arg.as_ref().to_owned());
        self
    }

    /// Starts the daemon without `-f`: the command must return once the mount is live, and
    /// the daemon lives on in the background (found later by its mountpoint argument).
    pub fn background(mut self) -> MountBuilder {
        self.foreground = false;
        self
    }

    /// Puts DATA_DIR on a tmpfs of its own with this size limit (`mount -t tmpfs -o size=SIZE`),
    /// mounted at [`Mount::tmpfs_dir`] with DATA_DIR its subdirectory `data`, so a test can fill
    /// the disk under the log and free space again with a file of its own beside DATA_DIR. The
    /// tmpfs is unmounted when the `Mount` is dropped, also when the test fails.
    pub fn tmpfs_data_dir(mut self, size: &str) -> MountBuilder {
        self.tmpfs_size = Some(size.into());
        self
    }

    /// Starts every daemon of this mount in the network namespace at `path` (e.g.
    /// `/run/netns/NAME`, see [`crate::netns::NetNs`]): only the network namespace, so the mount
    /// it makes is the test's to see. Its sockets and XDP programs are then that namespace's.
    pub fn net_ns(mut self, path: &Path) -> MountBuilder {
        self.net_ns = Some(path.to_owned());
        self
    }

    pub(crate) fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if self.foreground {
            args.push("-f".into());
        }
        let sizes = [
            ("--max-keys", &self.max_keys),
            ("--max-value", &self.max_value),
            ("--value-mem", &self.value_mem),
            ("--threads", &self.threads),
        ];
        for (flag, value) in sizes {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v.into());
            }
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the daemon and waits (at most [`DAEMON_TIMEOUT`]) until the mount is live.
    pub fn start(self) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("bpfdb-test-")
            .tempdir()
            .expect("create tempdir");
        // mountinfo shows canonical paths.
        let root = dir.path().canonicalize().expect("canonicalize tempdir");
        let mnt = root.join("mnt");
        let scratch = root.join("scratch");
        for d in [&mnt, &scratch] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let tmpfs = self
            .tmpfs_size
            .as_deref()
            .map(|size| Tmpfs::mount(&root.join("disk"), size));
        let data = match &tmpfs {
            Some(t) => t.path.join("data"),
            None => root.join("data"),
        };
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("mkdir {}: {e}", data.display()));
        let mut mount = Mount {
            tmpfs,
            dir: Some(dir),
            root,
            data,
            mnt,
            scratch,
            log: PathBuf::new(),
            runs: 0,
            args: Vec::new(),
            builder: self,
            child: None,
            finished: true,
        };
        if mount.builder.foreground {
            mount.launch(&[]);
        } else {
            let mut child = mount.spawn(&[]);
            mount.finished = false;
            let status = wait_timeout(&mut child, DAEMON_TIMEOUT);
            let Some(status) = status else {
                let _ = child.kill();
                let _ = child.wait();
                mount.finished = true;
                panic!(
                    "`bpfdb` without -f did not return within {} s\n{}",
                    DAEMON_TIMEOUT.as_secs(),
                    mount.log_tail()
                );
            };
            if !status.success() {
                mount.finished = true;
                panic!(
                    "`bpfdb` without -f exited with {status}\n{}",
                    mount.log_tail()
                );
            }
            // "returns once the mount is live": no waiting here.
            assert!(
                mount.is_mounted(),
                "`bpfdb` without -f returned 0 but {} is not a FUSE mount yet (fstype {:?})\n{}",
                mount.mnt.display(),
                mount_fstype(&mount.mnt),
                mount.log_tail()
            );
        }
        mount
    }
}
