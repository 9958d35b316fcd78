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

/// Fills 2 MiB of value memory with 256 KiB values (`cp` checks close, so it reports the
/// one that does not fit); returns how many were stored.
fn fill_value_memory(m: &Mount) -> usize {
    m.ok("head -c 262144 /dev/urandom > $T/r");
    let out = m.sh("i=1
         while [ $i -le 20 ]; do cp $T/r v$i 2>/dev/null || break; i=$((i+1)); done
         echo $((i-1))");
    let stored: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("count");
    assert!(
        (4..20).contains(&stored),
        "stored {stored} values of 256 KiB in 2 MiB"
    );
    stored
}

#[test]
fn echo_into_full_value_memory_fails_at_write_and_leaves_no_trace() {
    let m = Mount::builder().value_mem("2M").start();
    m.ok("printf old > small");
    let stored = fill_value_memory(&m);
    // 300,000 bytes cannot fit in what is left (under 256 KiB): the write(2) fails, so
    // even a shell's redirection reports it. bash names the errno; dash says "I/O error".
    let big = "v=$(head -c 300000 /dev/zero | tr '\\0' a)";
    for (target, redirect) in [("small", ">"), ("small", ">>"), ("brand-new", ">")] {
        let script = format!("{big}; echo \"$v\" {redirect} {target}");
        let out = m
            .command(&format!("bash -c '{}'", script.replace('\'', "'\\''")))
            .output()
            .expect("bash");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(bpfdb_tests::msg::ENOSPC),
            "bash: echo {redirect} {target} into full value memory: {out:?}"
        );
        let out = m.sh(&script);
        assert!(
            !out.status.success(),
            "sh: echo {redirect} {target} into full value memory exited 0"
        );
        // Nothing that failed left a trace: the old value, no ghost key.
        assert_eq!(m.ok("cat small"), "old", "after echo {redirect} {target}");
        m.fails("ls brand-new", bpfdb_tests::msg::ENOENT);
    }
    assert!(
        m.log().contains("value memory"),
        "the daemon log does not say why:\n{}",
        m.log_tail()
    );
    // The stored values are intact and a value that fits is still taken.
    m.ok(&format!(
        "for i in $(seq 1 {stored}); do cmp v$i $T/r || exit 1; done"
    ));
    m.ok("echo fits > small");
    assert_eq!(m.ok("cat small"), "fits\n");
}

/// With the runs of values up to a page near their cap, and the free runs
/// of some sizes only (4000-byte values were stored, then removed, then
/// smaller values split those runs), every shell `printf > key` either
/// stores its value or fails at the write with ENOSPC: never exit 0 for a
/// value whose commit at close then fails.
#[test]
fn printf_into_value_memory_full_of_freed_runs_stores_or_fails_at_write() {
    // The small pool's cap: (1,100 keys + a quarter + 1,024) x 128 bytes
    // + 1 MiB, in whole 2 MiB segments: one, 512 runs of 4 KiB.
    let m = Mount::builder().max_keys(1100).value_mem("1M").start();
    m.ok("head -c 4000 /dev/zero | tr '\\0' b > $T/b");
    let out =
        m.sh("i=0; while [ $i -lt 1100 ] && cp $T/b b$i 2>/dev/null; do i=$((i+1)); done; echo $i");
    let big: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("count");
    assert!((400..=512).contains(&big), "{big} values of 4000 bytes");
    m.ok("rm b*");
    // Sizes in turn over 1,050 keys (more than the pool holds), each checked at once: BAD is a value
    // told stored that is not; ENOSPC counts refusals at the write.
    let script = r#"
        i=0; refused=0
        for round in $(seq 1 200); do for len in 100 4000 30 2000 600 4000 3000 3500 2500; do
            k=v$((i % 1050)); i=$((i+1))
            v=$(head -c $len /dev/zero | tr '\0' x)
            if printf '%s' "$v" > $k 2>$T/err; then
                [ "$(cat $k)" = "$v" ] || echo "BAD $k $len"
            else
                grep -q 'No space left' $T/err || echo "WEIRD $k $len: $(cat $T/err)"
                refused=$((refused+1))
            fi
        done; done
        echo "refused $refused of $i""#;
    // bash, whose printf names the errno (dash's says "I/O error").
    let out = m.ok(&format!(
        "cat > $T/fill.sh <<'EOF'\n{script}\nEOF\nbash $T/fill.sh"
    ));
    assert!(!out.contains("BAD") && !out.contains("WEIRD"), "{out}");
    assert!(!out.contains("refused 0 "), "never reached the cap: {out}");
}
