//! Who makes a request: the credentials and thread FUSE sends with it, and
//! what the daemon looks up about that process in /proc when POSIX asks for
//! more (its thread group, its supplementary groups).

use std::fs;

/// The process behind one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Thread id of the caller (FUSE sends the thread's, not the process's).
    pub pid: u32,
}

impl Caller {
    /// Root bypasses the permission checks the kernel makes for us and
    /// keeps set-user-ID bits on write (CAP_FOWNER, CAP_FSETID).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The caller's process: threads of one process share their files, so
    /// a writer's own view is per process. Falls back to the thread id
    /// when /proc does not know it (the thread has exited).
    pub fn process(&self) -> u32 {
        status_field(self.pid, "Tgid:")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.pid)
    }

    /// Whether `gid` is the caller's group or one of its supplementary
    /// groups (what chmod checks before it keeps set-group-ID).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid
            || status_field(self.pid, "Groups:").is_some_and(|groups| {
                groups
                    .split_whitespace()
                    .any(|g| g.parse::<u32>() == Ok(gid))
            })
    }
}

/// The value of one line of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_and_groups_of_this_test_are_found() {
        let me = Caller {
            uid: 0,
            gid: u32::MAX,
            pid: std::process::id(),
        };
        assert_eq!(me.process(), std::process::id());
        let mut groups = [0 as libc::gid_t; 64];
        // SAFETY: the buffer holds 64 entries, as the size passed says.
        let n = unsafe { libc::getgroups(64, groups.as_mut_ptr()) };
        assert!(n >= 0, "getgroups");
        for &g in &groups[..n as usize] {
            assert!(me.in_group(g), "supplementary group {g}");
        }
        assert!(!me.in_group(u32::MAX - 1));
        let gone = Caller { pid: 0, ..me };
        assert_eq!(gone.process(), 0);
    }
}
