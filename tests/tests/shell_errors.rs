//! A shell redirection never checks close(2), so every failure that can be
//! known by the time `open` returns fails the open: `sh -c 'echo v > key'`
//! exits non-zero with the message, and the key keeps its value.

use bpfdb_tests::Mount;

#[test]
fn echo_into_a_key_a_transaction_holds_fails_at_open() {
    let m = Mount::new();
    m.ok("echo 1 > alice && echo 2 > bob && echo 3 > carol");
    // t1 writes alice (exclusive), t2 reads bob (shared) and reads the
    // missing dave (its placeholder lock).
    m.ok("mkdir .txn/t1 .txn/t2 && echo 10 > .txn/t1/alice && cat .txn/t2/bob >/dev/null && ! cat .txn/t2/dave 2>/dev/null");
    for (key, redirect) in [("alice", ">"), ("alice", ">>"), ("bob", ">"), ("bob", ">>")] {
        let out = m.sh(&format!("echo 9 {redirect} {key}"));
        assert!(
            !out.status.success(),
            "echo 9 {redirect} {key} succeeded although a transaction holds {key}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Device or resource busy"),
            "echo 9 {redirect} {key}: {err}"
        );
    }
    // Creating the key t2 read as missing conflicts too (at the create).
    m.fails("echo 9 > dave", "Device or resource busy");
    // Nothing that failed left a trace; an unlocked key still takes writes.
    assert_eq!(m.ok("cat alice bob"), "1\n2\n");
    assert_eq!(m.ok("ls"), "alice\nbob\ncarol\n");
    m.ok("echo 30 > carol");
    assert_eq!(m.ok("cat carol"), "30\n");
    // Once the transactions end, the keys take writes again.
    m.ok("echo commit > .txn/t1/.ctl && echo commit > .txn/t2/.ctl");
    m.ok("echo 11 > alice && echo 22 >> bob && echo 44 > dave");
    assert_eq!(m.ok("cat alice bob dave"), "11\n2\n22\n44\n");
}
