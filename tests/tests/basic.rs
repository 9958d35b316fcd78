//! Reading and writing keys with everyday shell tools (docs/SEMANTICS.md: Namespace, Reading,
//! Writing).

use bpfdb_tests::{Mount, lines, msg, renameat2_sh};

#[test]
fn echo_then_cat_roundtrips_the_value() {
    let m = Mount::new();
    assert_eq!(m.ok("echo hello > greeting && cat greeting"), "hello\n");
    // Every byte value survives, NUL and 0xff included.
    assert_eq!(
        m.ok_bytes(r"printf 'a\000b\377\n' > bin && cat bin"),
        b"a\0b\xff\n"
    );
    assert_eq!(m.ok("stat -c %s greeting bin"), "6\n5\n");
}

#[test]
fn a_key_is_a_regular_file_in_a_flat_directory() {
    let m = Mount::new();
    m.ok("echo v > k");
    assert_eq!(m.ok("stat -c %F k"), "regular file\n");
    assert_eq!(m.ok("stat -c %F ."), "directory\n");
    assert_eq!(m.ok("ls"), "k\n");
}

#[test]
fn rewriting_a_key_replaces_its_whole_value() {
    let m = Mount::new();
    m.ok("echo 'a much longer first value' > k");
    assert_eq!(m.ok("echo short > k && cat k"), "short\n");
    assert_eq!(m.ok("stat -c %s k"), "6\n");
    assert_eq!(m.ok("printf '' > k && stat -c %s k && cat k"), "0\n");
}

#[test]
fn append_adds_to_the_end() {
    let m = Mount::new();
    assert_eq!(
        m.ok("echo one > k && echo two >> k && printf three >> k && cat k"),
        "one\ntwo\nthree"
    );
    // `>>` on a missing key creates it.
    assert_eq!(m.ok("echo fresh >> new && cat new"), "fresh\n");
    assert_eq!(m.ok("stat -c %s k new"), "13\n6\n");
}

#[test]
fn cp_of_a_1mib_random_file_roundtrips() {
    let m = Mount::new();
    m.ok("dd if=/dev/urandom of=$T/rand bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("cp $T/rand blob && cp blob $T/back");
    m.ok("cmp $T/rand $T/back && cmp $T/rand blob && cmp blob $T/back");
    assert_eq!(m.ok("stat -c %s blob"), "1048576\n");
    // cat and dd with small blocks read the same bytes as cp.
    m.ok("cat blob | cmp - $T/rand");
    m.ok("dd if=blob bs=4096 2>/dev/null | cmp - $T/rand");
    // Overwriting with a different 1 MiB value replaces all of it.
    m.ok("dd if=/dev/urandom of=$T/rand2 bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("cat $T/rand2 > blob && cmp blob $T/rand2");
}

#[test]
fn dd_writes_at_an_offset_and_zero_fills_the_gap() {
    let m = Mount::new();
    m.ok("printf abc > k");
    m.ok("printf XY | dd of=k bs=1 seek=10 conv=notrunc 2>/dev/null");
    assert_eq!(m.ok_bytes("cat k"), b"abc\0\0\0\0\0\0\0XY");
    assert_eq!(m.ok("stat -c %s k"), "12\n");
    // A write inside the value edits it in place; the size stays.
    m.ok("printf Q | dd of=k bs=1 seek=1 conv=notrunc 2>/dev/null");
    assert_eq!(m.ok_bytes("cat k"), b"aQc\0\0\0\0\0\0\0XY");
    assert_eq!(m.ok("stat -c %s k"), "12\n");
    // dd at an offset into a missing key creates it with a zero-filled head.
    m.ok("printf Z | dd of=fresh bs=1 seek=5 2>/dev/null");
    assert_eq!(m.ok_bytes("cat fresh"), b"\0\0\0\0\0Z");
}

#[test]
fn dd_offset_write_into_a_large_value() {
    let m = Mount::new();
    m.ok("dd if=/dev/urandom of=$T/v bs=64k count=8 iflag=fullblock 2>/dev/null && cp $T/v k");
    // Patch 4 KiB at 300000 in both copies; they must stay identical.
    m.ok("dd if=/dev/zero of=$T/v bs=1 seek=300000 count=4096 conv=notrunc 2>/dev/null");
    m.ok("dd if=/dev/zero of=k bs=1 seek=300000 count=4096 conv=notrunc 2>/dev/null");
    m.ok("cmp k $T/v");
    assert_eq!(m.ok("stat -c %s k"), "524288\n");
}

#[test]
fn truncate_grows_with_zeros_and_shrinks() {
    let m = Mount::new();
    m.ok("printf hello > k");
    m.ok("truncate -s 8 k");
    assert_eq!(m.ok_bytes("cat k"), b"hello\0\0\0");
    assert_eq!(m.ok("stat -c %s k"), "8\n");
    m.ok("truncate -s 2 k");
    assert_eq!(m.ok_bytes("cat k"), b"he");
    m.ok("truncate -s 0 k");
    assert_eq!(m.ok("stat -c %s k && cat k && ls"), "0\nk\n");
    // truncate(2) by path, with no handle open, commits at once.
    m.ok("printf hello > p && perl -e 'truncate(\"p\", 2) or die \"truncate: $!\\n\"'");
    assert_eq!(m.ok_bytes("cat p && stat -c %s p"), b"he2\n");
    m.ok("perl -e 'truncate(\"p\", 4) or die \"truncate: $!\\n\"'");
    assert_eq!(m.ok_bytes("cat p"), b"he\0\0");
    // truncate creates a missing key.
    m.ok("truncate -s 4 t");
    assert_eq!(m.ok_bytes("cat t"), b"\0\0\0\0");
    // Growing to exactly max_value (1 MiB by default) is allowed.
    m.ok("truncate -s 1M big");
    assert_eq!(m.ok("stat -c %s big"), "1048576\n");
    m.ok("head -c 1048576 /dev/zero | cmp - big");
}

#[test]
fn touch_creates_an_empty_key() {
    let m = Mount::new();
    m.ok("touch k");
    assert_eq!(m.ok("stat -c '%s %F' k"), "0 regular empty file\n");
    assert_eq!(m.ok("cat k"), "");
    assert_eq!(m.ok("ls"), "k\n");
    // touch on an existing key leaves the value alone.
    m.ok("echo v > k && touch k");
    assert_eq!(m.ok("cat k"), "v\n");
}

#[test]
fn rm_deletes_at_once() {
    let m = Mount::new();
    m.ok("echo v > k && echo w > keep");
    m.ok("rm k");
    m.fails("cat k", msg::ENOENT);
    assert_eq!(m.ok("ls"), "keep\n");
    assert_eq!(m.ok("[ ! -e k ] && echo gone"), "gone\n");
    // The name is free again.
    assert_eq!(m.ok("echo again > k && cat k"), "again\n");
}

#[test]
fn mv_renames_and_replaces_the_target() {
    let m = Mount::new();
    m.ok("echo A > a && echo B > b");
    m.ok("mv a b");
    assert_eq!(m.ok("cat b"), "A\n");
    m.fails("cat a", msg::ENOENT);
    assert_eq!(m.ok("ls"), "b\n");
    // To a fresh name.
    m.ok("mv b c");
    assert_eq!(m.ok("ls && cat c"), "c\nA\n");
    m.fails("cat b", msg::ENOENT);
    // Replacing a larger value with an empty one.
    m.ok("head -c 200000 /dev/zero > big && touch empty && mv empty big");
    assert_eq!(m.ok("stat -c %s big && ls"), "0\nbig\nc\n");
}

#[test]
fn mv_onto_itself_is_a_no_op() {
    let m = Mount::new();
    m.ok("echo A > a && echo B > b");
    // coreutils stops at its own same-file check; the key must be untouched either way.
    let _ = m.sh("mv a a");
    assert_eq!(m.ok("cat a"), "A\n");
    // rename(2) of a key onto itself reaches the daemon: success, nothing changes.
    m.ok(&format!("{}renameat2 a a 0", renameat2_sh()));
    assert_eq!(m.ok("cat a b && ls"), "A\nB\na\nb\n");
}

#[test]
fn open_reader_keeps_the_value_it_opened_when_the_key_is_rewritten() {
    let m = Mount::new();
    // Over one page (4096 bytes) a key is read with direct I/O from the
    // snapshot its handle took at open.
    m.ok("head -c 5000 /dev/zero | tr '\\0' o > $T/old; head -c 5000 /dev/zero | tr '\\0' n > $T/new");
    assert_eq!(
        m.ok("cat $T/old > k; exec 3< k; cat $T/new > k; cmp - $T/old <&3 && cmp k $T/new && echo same"),
        "same\n"
    );
}

#[test]
fn open_reader_of_a_small_key_reads_what_is_committed_when_it_reads() {
    let m = Mount::new();
    // A key of one page or less is read through the kernel's page cache,
    // which all readers share: a read returns the value committed at the
    // time of the read, whole (docs/SEMANTICS.md, "Reading").
    assert_eq!(
        m.ok("printf old > k; exec 3< k; printf newer > k; cat <&3; echo; cat k"),
        "newer\nnewer"
    );
}

#[test]
fn open_reader_keeps_the_value_it_opened_when_the_key_is_removed() {
    let m = Mount::new();
    assert_eq!(m.ok("printf v > k; exec 3< k; rm k; cat <&3"), "v");
}

#[test]
fn open_reader_keeps_the_value_it_opened_when_mv_replaces_the_key() {
    let m = Mount::new();
    assert_eq!(
        m.ok("printf B > b; printf A > a; exec 3< b; mv a b; cat <&3; echo; cat b"),
        "B\nA"
    );
}

#[test]
fn open_reader_of_a_1mib_value_reads_it_whole_across_a_rewrite() {
    let m = Mount::new();
    // Read 4 KiB, replace the value, read the rest: all of it is the old value.
    m.ok("dd if=/dev/urandom of=$T/old bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("dd if=/dev/urandom of=$T/new bs=1M count=1 iflag=fullblock 2>/dev/null");
    m.ok("cp $T/old big");
    m.ok(
        "exec 3< big; dd bs=4096 count=1 <&3 > $T/read 2>/dev/null; \
         cp $T/new big; cat <&3 >> $T/read; exec 3<&-",
    );
    m.ok("cmp $T/read $T/old && cmp big $T/new");
}

/// Shell functions for ordering a reader against a writer that holds a key open, by markers
/// instead of sleeps: `await_go` returns once `$T/go` exists (a writer's producer calls it before
/// it sends the data that must come after the reader's look); `await_fd_at PID NAME OFFSET`
/// returns once process PID has `$M/NAME` open at OFFSET (read from /proc: its descriptor is
/// there only after the open returned, and its offset moves only when a write or seek returned).
/// Both give up after 30 s with a message, so a broken writer fails the script.
const ORDER_SH: &str = r#"await_go() {
   n=0
   until [ -e $T/go ]; do
     n=$((n+1)); [ $n -le 3000 ] || { echo "no $T/go within 30 s" >&2; return 1; }
     sleep 0.01
   done
 }
 fd_offset() {
   for f in /proc/$1/fd/*; do
     if [ "$(readlink "$f")" = "$M/$2" ]; then
       sed -n 's/^pos:[[:space:]]*//p' /proc/$1/fdinfo/${f##*/}
       return
     fi
   done
 }
 await_fd_at() {
   n=0
   until [ "$(fd_offset $1 $2)" = "$3" ]; do
     n=$((n+1))
     [ $n -le 3000 ] || { echo "pid $1 never had $2 open at offset $3" >&2; exit 1; }
     sleep 0.01
   done
 }
"#;

/// Runs `setup`, then `writer` in the background, reads k once the writer (a pipeline ending in
/// `dd of=k`) holds k open at offset `at`, lets it go on (`$T/go`), and reads k again after it
/// closed; returns ["during:..", "after:.."]. dd holds the only write handle while it waits for
/// its pipe; the producer before it holds none.
fn read_during_and_after(m: &Mount, setup: &str, writer: &str, at: u64) -> Vec<String> {
    let out = m.ok(&format!(
        "{ORDER_SH}
         {setup}
         {writer} &
         await_fd_at $! k {at}
         printf 'during:%s\\n' \"$(cat k)\"
         touch $T/go
         wait $! || echo 'the writer failed'
         printf 'after:%s\\n' \"$(cat k)\""
    ));
    out.lines().map(str::to_owned).collect()
}

#[test]
fn o_trunc_empties_only_the_writers_buffer_until_close() {
    let m = Mount::new();
    // Readers still see "old", never "", until dd closes.
    let got = read_during_and_after(
        &m,
        "printf old > k",
        "{ await_go && printf new; } | dd of=k 2>/dev/null",
        0,
    );
    assert_eq!(got, ["during:old", "after:new"]);
}

#[test]
fn writes_are_invisible_to_readers_until_close() {
    let m = Mount::new();
    // The read comes after dd wrote NEW (its offset is 3), before ER. (bs= makes dd write each
    // block as it reads it; without it dd gathered NEWER and wrote it once, at the end.)
    let got = read_during_and_after(
        &m,
        "printf old > k",
        "{ printf NEW; await_go && printf ER; } | dd of=k bs=512 conv=notrunc 2>/dev/null",
        3,
    );
    assert_eq!(got, ["during:old", "after:NEWER"]);
}

#[test]
fn ftruncate_on_an_open_writer_edits_only_its_buffer() {
    let m = Mount::new();
    // dd seek=2 without conv=notrunc ftruncates its own handle to 2 bytes, then seeks there
    // (offset 2): the read comes after the ftruncate.
    let got = read_during_and_after(
        &m,
        "printf hello > k",
        "{ await_go && printf XY; } | dd of=k bs=1 seek=2 2>/dev/null",
        2,
    );
    assert_eq!(got, ["during:hello", "after:heXY"]);
}

#[test]
fn open_with_o_creat_commits_an_empty_key_at_once() {
    let m = Mount::new();
    let out = m.ok(&format!(
        "{ORDER_SH}
         {{ await_go && printf late; }} | dd of=fresh 2>/dev/null &
         await_fd_at $! fresh 0
         ls
         stat -c %s fresh
         printf 'during:[%s]\\n' \"$(cat fresh)\"
         touch $T/go
         wait $! || echo 'the writer failed'
         printf 'after:[%s]\\n' \"$(cat fresh)\""
    ));
    assert_eq!(lines(&out), ["fresh", "0", "during:[]", "after:[late]"]);
}

#[test]
fn fsync_commits_the_buffer_before_close() {
    let m = Mount::new();
    // perl is the one tool here that can fsync a handle and keep it open afterwards. It writes
    // the rest only once the reader has read ($T/read), so the read falls between the fsync
    // and the close.
    let out = m.ok(r#"printf old > k
         perl -MIO::Handle -e '
             open(my $f, "+<", "k") or die "open: $!";
             syswrite($f, "NEW") == 3 or die "write: $!";
             $f->sync or die "fsync: $!";
             open(my $s, ">", "$ENV{T}/synced") or die; close($s);
             for (1..3000) { last if -e "$ENV{T}/read"; select(undef, undef, undef, 0.01) }
             -e "$ENV{T}/read" or die "no reader within 30 s";
             syswrite($f, "X") == 1 or die "write: $!";
             close($f) or die "close: $!";' &
         n=0
         until [ -e $T/synced ]; do
           n=$((n+1)); [ $n -le 3000 ] || { echo 'no fsync within 30 s' >&2; exit 1; }
           sleep 0.01
         done
         printf 'synced:%s\n' "$(cat k)"
         touch $T/read
         wait $! || echo "perl failed"
         printf 'closed:%s\n' "$(cat k)""#);
    assert_eq!(lines(&out), ["synced:NEW", "closed:NEWX"]);
}

#[test]
fn keys_may_be_named_with_any_bytes_but_slash_and_nul() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let m = Mount::new();
    for name in [
        "a b",
        "-dash",
        "ключ",
        "x.y.z",
        "...",
        ".hidden",
        "tab\there",
    ] {
        let n = OsStr::new(name);
        let out = m.sh_env(
            "printf 'v:%s' \"$N\" > \"$N\" && cat -- \"$N\" && echo && ls -A && rm -- \"$N\"",
            &[("N", n)],
        );
        let stdout = bpfdb_tests::assert_ok(&out, name);
        assert!(
            stdout.starts_with(&format!("v:{name}")),
            "value of {name:?}: {stdout:?}"
        );
        assert!(
            stdout.lines().any(|l| l == name),
            "`ls -A` does not list {name:?}: {stdout:?}"
        );
    }
    // One name with every allowed byte: 1..=255 without '/' (254 bytes).
    let all: Vec<u8> = (1..=255u8).filter(|&b| b != b'/').collect();
    let n = OsStr::from_bytes(&all);
    let out = m.sh_env(
        "printf v > \"$N\" && cat -- \"$N\" && [ -f \"$N\" ] && ls -A",
        &[("N", n)],
    );
    bpfdb_tests::assert_ok(&out, "every-byte name");
    assert!(out.stdout.starts_with(b"v"), "{:?}", out.stdout);
    assert!(
        out.stdout.windows(all.len()).any(|w| w == all.as_slice()),
        "`ls -A` does not list the every-byte name"
    );
    assert_eq!(m.stat_keys(), 1);
}
