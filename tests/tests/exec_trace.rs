//! The exec tracer of a daemon (`--trace-exec`, docs/KERNEL-CLIENTS.md): every `execve` of a
//! program counts one in the key `exec.<name>`, committed inside the call, before the program
//! runs. `cat` shows each count at once (the kernel never caches these keys), and the counts
//! survive a `kill -9` once a later write through the mount is durable (group commit in log
//! order), and a clean restart.

use std::path::{Path, PathBuf};
use std::process::Command;

use bpfdb_tests::Mount;

/// Execs of the traced program.
const EXECS: u64 = 30;

/// /bin/true under a name no other process execs (the tracer counts the basename of the path
/// given to execve). A symlink, not a copy: a copy's write fd leaks into any child another
/// test thread forks meanwhile, and exec then fails with ETXTBSY.
fn unique_program(dir: &Path) -> (PathBuf, String) {
    let name = format!("bpfdb-t{}-true", std::process::id());
    let path = dir.join(&name);
    std::os::unix::fs::symlink("/bin/true", &path).expect("link /bin/true");
    (path, name)
}

/// Runs the program once, directly (the C library's execve in the child).
fn exec(program: &Path) {
    let status = Command::new(program).status().expect("exec the program");
    assert!(status.success(), "{}: {status}", program.display());
}

/// The count `cat` shows.
#[track_caller]
fn count(m: &Mount, key: &str) -> u64 {
    let text = m.ok(&format!("cat {key}"));
    text.strip_suffix('\n')
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{key}: {text:?} is not a count and a newline"))
}

#[test]
fn exec_counts_show_at_once_and_survive_kill_9_and_a_restart() {
    let mut m = Mount::builder().arg("--trace-exec").start();
    let (program, name) = unique_program(m.scratch());
    let key = format!("exec.{name}");
    m.fails(&format!("cat {key}"), bpfdb_tests::msg::ENOENT);
    for i in 1..=EXECS {
        if i % 2 == 0 {
            exec(&program);
        } else {
            // Through a shell: sh execs it (dash runs a last simple command by exec).
            m.ok(&format!("\"$T/{name}\"; true"));
        }
        if i <= 3 || i % 10 == 0 {
            assert_eq!(count(&m, &key), i, "after exec {i}");
        }
    }
    assert_eq!(count(&m, &key), EXECS);
    assert_eq!(
        m.ok(&format!("stat -c %s {key}")),
        format!("{}\n", EXECS.to_string().len() + 1)
    );

    // A write through the mount is durable once it returns, and with it every commit logged
    // before it: the tracer's too.
    m.ok("echo x > marker");
    m.kill9();
    m.start_again();
    assert_eq!(count(&m, &key), EXECS, "after kill -9");

    m.umount_expect_clean_exit();
    m.start_again();
    assert_eq!(count(&m, &key), EXECS, "after a clean restart");
    for i in 1..=5 {
        exec(&program);
        assert_eq!(count(&m, &key), EXECS + i, "counting goes on");
    }
}
