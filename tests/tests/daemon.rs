//! The daemon's command line and lifecycle (docs/SEMANTICS.md: Daemon), and the trigger's
//! 5-byte NOP in the built binary.

use std::process::Command;
use std::time::Duration;

use bpfdb_tests::{Mount, assert_ok, daemon_bin, msg, pids_with_arg, run_with_timeout};

#[test]
fn sigterm_unmounts_and_exits_0() {
    let mut m = Mount::new();
    assert_eq!(m.ok("echo v > k && cat k"), "v\n");
    m.signal_expect_clean_exit(libc::SIGTERM);
}

#[test]
fn sigint_unmounts_and_exits_0() {
    let mut m = Mount::new();
    assert_eq!(m.ok("echo v > k && cat k"), "v\n");
    m.signal_expect_clean_exit(libc::SIGINT);
}

#[test]
fn sigterm_right_after_mounting_exits_0() {
    let mut m = Mount::new();
    m.signal_expect_clean_exit(libc::SIGTERM);
}

#[test]
fn umount_makes_the_daemon_exit_0() {
    let mut m = Mount::new();
    assert_eq!(m.ok("echo v > k && cat k"), "v\n");
    m.umount_expect_clean_exit();
}

#[test]
fn without_f_the_command_returns_once_the_mount_is_live() {
    // start() checks that `bpfdb` returned 0 and that the mount was live at that moment.
    let mut m = Mount::builder().background().start();
    let pids = pids_with_arg(m.path());
    assert_eq!(pids.len(), 1, "want one background daemon, found {pids:?}");
    assert_eq!(m.ok("echo bg > k && cat k && ls"), "bg\nk\n");
    // umount ends the background daemon too.
    m.umount_expect_clean_exit();
    assert_eq!(pids_with_arg(m.path()), Vec::<u32>::new());
}

#[test]
fn sizes_can_be_given_as_o_options() {
    let m = Mount::builder()
        .no_size_options()
        .arg("-o")
        .arg("max_keys=8,max_value=4K,value_mem=2M,threads=2")
        .start();
    assert_eq!(
        m.ok("for i in 1 2 3 4 5 6 7 8; do printf x > k$i; done; ls | wc -l"),
        "8\n"
    );
    m.fails("printf x > k9", msg::ENOSPC);
    m.ok("head -c 4096 /dev/zero > k1");
    m.fails("head -c 4097 /dev/zero > k2", msg::EFBIG);
}

#[test]
fn size_options_take_suffixes() {
    let m = Mount::builder()
        .max_keys(8)
        .max_value("2K")
        .value_mem("4M")
        .threads(2)
        .start();
    m.ok("head -c 2048 /dev/zero > k");
    m.fails("head -c 2049 /dev/zero > k", msg::EFBIG);
}

#[test]
fn one_thread_serves_parallel_shells() {
    let m = Mount::builder().threads(1).start();
    m.ok_quiet(
        "for w in 1 2 3 4; do
           ( i=0; while [ $i -lt 50 ]; do echo $w-$i > k$w; cat k$w > /dev/null; i=$((i+1)); done ) &
         done
         wait",
    );
    assert_eq!(m.ok("cat k1 k2 k3 k4"), "1-49\n2-49\n3-49\n4-49\n");
}

#[test]
fn trigger_starts_with_a_5_byte_nop() {
    let bin = daemon_bin();
    let mut cmd = Command::new("objdump");
    cmd.arg("-d").arg("--disassemble=bpfdb_trigger").arg(&bin);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120), "objdump");
    let text = assert_ok(&out, "objdump -d --disassemble=bpfdb_trigger");
    let mut it = text
        .lines()
        .skip_while(|l| !l.ends_with("<bpfdb_trigger>:"));
    assert!(
        it.next().is_some(),
        "objdump found no symbol bpfdb_trigger in {}:\n{text}",
        bin.display()
    );
    let first = it
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("bpfdb_trigger has no instructions:\n{text}"));
    // "  4a2b10:\t0f 1f 44 00 00       \tnopl   0x0(%rax,%rax,1)"
    let fields: Vec<&str> = first.split('\t').collect();
    assert!(fields.len() >= 3, "unexpected objdump line {first:?}");
    assert_eq!(
        fields[1].trim(),
        "0f 1f 44 00 00",
        "first instruction: {first:?}"
    );
    assert!(fields[2].starts_with("nop"), "first instruction: {first:?}");
}

/// Once in the background, the daemon leaves the terminal (or pipe) that started it: `bpfdb D M
/// 2>&1 | cat` returns at once, having said where the log goes, and the daemon's lines go to
/// that file (`DATA_DIR/bpfdb.log` unless `--log-file` names another).
#[test]
fn a_background_daemon_logs_to_its_file_and_leaves_the_callers_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let bin = daemon_bin();
    let out = run_with_timeout(
        Command::new("sh").arg("-c").arg(format!(
            "timeout 60 sh -c '{} --max-keys 1000 --value-mem 8M {} {} 2>&1 | cat'; echo \"rc=$?\"",
            bin.display(),
            data.display(),
            mnt.display()
        )),
        Duration::from_secs(90),
        "background start through a pipe",
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let mounted = bpfdb_tests::is_fuse_mount(&mnt);
    if !said.ends_with("rc=0\n") || !mounted {
        bpfdb_tests::umount_and_wait(&mnt);
        panic!("`bpfdb D M 2>&1 | cat` did not return once mounted (mounted: {mounted}):\n{said}");
    }
    let log = data.join("bpfdb.log");
    assert!(
        said.contains(&format!("logging to {}", log.display())),
        "the start did not say where the log goes:\n{said}"
    );
    bpfdb_tests::assert_echo_cat(&mnt, "write through the background mount");
    assert!(
        bpfdb_tests::umount_and_wait(&mnt),
        "the daemon did not exit after umount"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(
        text.contains("daemon running as pid") && text.contains("checkpoint"),
        "the daemon's own lines are not in {}:\n{text}",
        log.display()
    );
    // Lines before the fork are the starting command's; after the line naming the log, the
    // daemon wrote nothing more to its caller.
    let after: Vec<&str> = said
        .lines()
        .skip_while(|l| !l.contains("logging to"))
        .skip(1)
        .filter(|l| !l.starts_with("rc="))
        .collect();
    assert!(
        after.is_empty() && !said.contains("daemon running as pid"),
        "the daemon went on writing to its caller after it detached:\n{said}"
    );
}
