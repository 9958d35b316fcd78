//! Directories: `mkdir`, `rmdir`, keys in subdirectories, `mv` of keys and of whole directories
//! (one commit, atomic for concurrent readers and snapshots), listings in byte order, the tools
//! that walk trees (`find`, `du`, `cp -r`/`-a`, `tar`, `rsync`, `rm -r`), directory metadata
//! across a restart and a `kill -9`, the limits (237-byte names and 8192 entries in a
//! subdirectory), directories in transactions and snapshots, and phantom protection of a
//! directory (the root included) a transaction listed or looked a name up in.
//!
//! Writes whose exit status matters go through coreutils `echo` (`env echo`): dash's builtin
//! `echo` never reports an error of the `close` that commits a value.

use std::ffi::OsStr;
use std::time::Duration;

use bpfdb_tests::{Mount, SCRIPT_TIMEOUT, assert_errno, assert_ok, lines, msg, renameat2_sh};

const ENOTEMPTY: &str = "Directory not empty";
const ENOTDIR: &str = "Not a directory";
const EISDIR: &str = "Is a directory";

/// `fill DIR`: DIR/aA/bB/kK for A < 10, B < 4, K < 5 (200 keys in 51 directories), each key
/// holding its own path below DIR.
const FILL_SH: &str = "fill() {
  for a in 0 1 2 3 4 5 6 7 8 9; do for b in 0 1 2 3; do
    mkdir -p $1/a$a/b$b || return 1
    for k in 0 1 2 3 4; do env echo a$a/b$b/k$k > $1/a$a/b$b/k$k || return 1; done
  done; done
}
";

/// Fills `dir` of the mount with [`FILL_SH`].
#[track_caller]
fn fill(m: &Mount, dir: &str) {
    m.ok(&format!("{FILL_SH}fill {dir}"));
}

/// Asserts that `dir` holds exactly the tree [`fill`] makes: every key's value is its path,
/// 200 keys and 51 directories (`dir` included).
#[track_caller]
fn check_filled(m: &Mount, dir: &str) {
    let out = m.ok(&format!(
        "cd {dir} && find . -type f | while read -r f; do
           [ \"$(cat \"$f\")\" = \"${{f#./}}\" ] || echo \"BAD $f: $(cat \"$f\")\"
         done
         find . -type f | wc -l; find . -type d | wc -l"
    ));
    assert_eq!(out, "200\n51\n", "the tree under {dir}");
}

/// `mk_src DIR` (in the scratch dir): a tree with files, an empty file, an empty directory,
/// a name with a space, a 100000-byte random value, and modes, owners and mtimes of its own on
/// every entry, for the copy tests.
const MK_SRC_SH: &str = "mk_src() {
  mkdir -p $1/a/b/c $1/e/f $1/empty &&
  echo one > $1/top && echo two > $1/a/b/two && : > $1/e/f/nothing &&
  echo 'with space' > \"$1/a/name with space\" &&
  head -c 100000 /dev/urandom > $1/a/b/c/rand &&
  chmod 600 $1/top && chmod 640 $1/a/b/two && chmod 700 $1/a/b && chmod 751 $1/e &&
  chmod 1777 $1/empty && chown 1000:1000 $1/a && chown 1234:5678 $1/a/b/two &&
  chown 0:42 $1/e || return 1
  i=0; find $1 -depth | while read -r p; do
    i=$((i+1)); touch -d @$((1000000000 + i * 1000)) \"$p\" || exit 1
  done
}
";

/// Every entry below `dir` (a path in the mount, or `$T/...`), the mount's reserved names left
/// out: one `TYPE MODE UID GID [MTIME] PATH` line each in byte order, then the md5sum of each
/// file.
#[track_caller]
fn tree(m: &Mount, dir: &str, mtimes: bool) -> String {
    let time = if mtimes { " %Y" } else { "" };
    let find = "find . -mindepth 1 \\( -path ./.txn -o -path ./.snap -o -path ./.stats \
                -o -path ./.ctl \\) -prune -o";
    m.ok(&format!(
        "cd {dir} && {find} -print0 | sort -z | xargs -0 -r stat -c '%F %a %u %g{time} %n' &&
         {find} -type f -print0 | sort -z | xargs -0 -r md5sum"
    ))
}

// What `mkdir`, `mkdir -p`, keys in subdirectories, `.`/`..` and `rmdir` do, and that the same
// name in two directories is two keys.
#[test]
fn mkdir_nested_keys_and_rmdir() {
    let m = Mount::new();
    m.ok("umask 022 && mkdir d && mkdir -p a/b/c && echo v > a/b/c/key && echo top > a/top");
    m.ok("mkdir -m 750 m && mkdir -p a/b/c && mkdir -p a");
    assert_eq!(
        m.ok("stat -c '%n %F %a %u %g' d a a/b a/b/c a/b/c/key m"),
        "d directory 755 0 0\na directory 755 0 0\na/b directory 755 0 0\n\
         a/b/c directory 755 0 0\na/b/c/key regular file 644 0 0\nm directory 750 0 0\n"
    );
    assert_eq!(m.ok("cat a/b/c/key a/top"), "v\ntop\n");
    assert_eq!(
        m.ok("ls && ls a && ls -a a/b"),
        "a\nd\nm\nb\ntop\n.\n..\nc\n"
    );
    assert_eq!(
        m.ok("cd a/b/c && cat key && ls .. ../.."),
        "v\n..:\nc\n\n../..:\nb\ntop\n"
    );
    // One name in three directories: three keys.
    m.ok("echo 1 > k && echo 2 > d/k && echo 3 > a/b/k");
    assert_eq!(m.ok("cat k d/k a/b/k"), "1\n2\n3\n");
    m.ok("rm d/k");
    assert_eq!(m.ok("cat k a/b/k"), "1\n3\n");
    m.ok("rmdir d m");
    m.fails("rmdir a/b/c", ENOTEMPTY);
    m.fails("ls d", msg::ENOENT);
    m.ok("rm a/b/c/key && rmdir a/b/c && rm a/b/k && rmdir a/b");
    assert_eq!(m.ok("ls && ls a"), "a\nk\ntop\n");
    // The name is free again, for a key or a directory.
    m.ok("echo d > d && mkdir a/b");
    assert_eq!(m.ok("cat d && stat -c %F a/b"), "d\ndirectory\n");
}

// The errnos of directory operations, as the tools report them, and that no failure changes
// anything; a rename onto an empty directory replaces it (POSIX); hard links stay EPERM.
#[test]
fn directory_errors() {
    let m = Mount::new();
    m.ok("mkdir d full empty && echo x > full/x && echo v > f");
    let before = tree(&m, ".", false);
    m.fails("mkdir d", msg::EEXIST);
    m.fails("mkdir f", msg::EEXIST);
    m.fails("mkdir f/x", ENOTDIR);
    // (dash says "Directory nonexistent" for ENOENT and ENOTDIR alike; touch names the errno.)
    m.fails("touch f/x", ENOTDIR);
    m.fails("cat d", EISDIR);
    m.fails("env echo x > d", EISDIR);
    m.fails("rm d", EISDIR);
    m.fails("rmdir nonexistent", msg::ENOENT);
    m.fails("mkdir nonexistent/x", msg::ENOENT);
    m.fails("rmdir f", ENOTDIR);
    m.fails("rmdir full", ENOTEMPTY);
    // The kernel refuses a move into itself; mv reports it in words of its own.
    m.fails("mv d d/sub", "to a subdirectory of itself");
    let r = renameat2_sh();
    m.fails(&format!("{r}renameat2 d d/sub 0"), msg::EINVAL);
    m.fails(&format!("{r}renameat2 f d 0"), EISDIR);
    m.fails(&format!("{r}renameat2 d f 0"), ENOTDIR);
    m.fails(&format!("{r}renameat2 d full 0"), ENOTEMPTY);
    m.fails("mv -T d full", ENOTEMPTY);
    m.fails("ln f d/h", msg::EPERM);
    m.fails("ln full/x full/h", msg::EPERM);
    m.fails("ln full/x h", msg::EPERM);
    assert_eq!(tree(&m, ".", false), before, "a failure changed the tree");
    m.ok("echo k > d/k && mv -T d empty");
    assert_eq!(m.ok("ls && cat empty/k"), "empty\nf\nfull\nk\n");
}

/// A name of `len` bytes starting with `first`.
fn long_name(first: char, len: usize) -> String {
    format!("{first}{}", "n".repeat(len - 1))
}

// Names: up to 255 bytes at the root as before, up to 237 bytes in a subdirectory (at any
// depth); one byte more is ENAMETOOLONG and creates nothing.
#[test]
fn names_in_a_subdirectory_are_limited_to_237_bytes() {
    let m = Mount::new();
    let names: Vec<(String, String)> = [('F', 237), ('F', 238), ('D', 237), ('D', 238)]
        .iter()
        .chain(&[('F', 255), ('F', 256), ('D', 255)])
        .map(|&(c, n)| (format!("{c}{n}"), long_name(c, n)))
        .collect();
    let env: Vec<(&str, &OsStr)> = names
        .iter()
        .map(|(k, v)| (k.as_str(), OsStr::new(v)))
        .collect();
    let ok = |script: &str| assert_ok(&m.sh_env(script, &env), script);
    ok(
        "mkdir -p d/e && echo v > \"d/$F237\" && echo w > \"d/e/$F237\" && mkdir \"d/$D237\" &&
        echo r > \"$F255\" && mkdir \"$D255\" && echo x > \"$D255/$F237\"",
    );
    for script in [
        "env echo v > \"d/$F238\"",
        "touch \"d/e/$F238\"",
        "cat \"d/$F238\"",
        "mkdir \"d/$D238\"",
        "mkdir \"$D255/$D238\"",
        "mv \"d/$F237\" \"d/$F238\"",
        "mv \"$F255\" d/",
        "env echo v > \"$F256\"",
    ] {
        assert_errno(&m.sh_env(script, &env), msg::ENAMETOOLONG, script);
    }
    let listing = ok("ls d d/e \"$D255\" && cat \"$F255\" \"d/$F237\" \"d/e/$F237\"");
    let (f237, d237, f255, d255) = (&names[0].1, &names[2].1, &names[4].1, &names[6].1);
    assert_eq!(
        listing,
        format!("{d255}:\n{f237}\n\nd:\n{d237}\n{f237}\ne\n\nd/e:\n{f237}\nr\nv\nw\n"),
    );
    assert_eq!(m.ok("ls"), format!("{d255}\n{f255}\nd\n"));
}

// The raw readdir order of a subdirectory (`ls -f`, `ls -a -U`) is `.`, `..`, then the names in
// byte order, also when the listing takes several requests.
#[test]
fn readdir_lists_dot_dotdot_then_names_in_byte_order() {
    let m = Mount::new();
    let mut names = vec![
        "B", "a", "a b", "-x", "10", "9", ".hidden", "\u{e9}", "z", "A", "sub",
    ];
    m.ok(
        "mkdir d && mkdir d/A d/sub && for n in B a 'a b' -x 10 9 .hidden \u{e9} z; do
            : > \"d/$n\" || exit 1; done",
    );
    names.sort(); // str order is byte order
    let want = format!(".\n..\n{}\n", names.join("\n"));
    assert_eq!(m.ok("ls -f d"), want);
    assert_eq!(m.ok("ls -a -U d"), want);
    // 1000 names, unpadded so that byte order is not numeric order.
    m.ok("mkdir big && seq -f 'big/n%g' 1 1000 | xargs touch && mkdir big/n500x");
    let mut big: Vec<String> = (1..=1000).map(|i| format!("n{i}")).collect();
    big.push("n500x".into());
    big.sort();
    let listed = m.ok("ls -f big");
    let got = lines(&listed);
    assert_eq!(got[..2], [".", ".."]);
    assert_eq!(got[2..], big.iter().map(String::as_str).collect::<Vec<_>>());
}

// `mv` moves a key between directories (value and mode kept, one commit) and a whole directory
// in one commit whatever it holds: 200 keys in 51 directories, across parents and to the root.
#[test]
fn mv_moves_keys_and_whole_directories_in_one_commit() {
    let m = Mount::new();
    m.ok("mkdir a b && echo A > a/k && chmod 600 a/k && echo B > b/k2");
    let c = m.stat("commits");
    m.ok("mv a/k b/");
    assert_eq!(m.stat("commits"), c + 1, "mv of a key between directories");
    assert_eq!(
        m.ok("cat b/k && stat -c %a b/k && ls a && ls b"),
        "A\n600\nk\nk2\n"
    );
    m.fails("cat a/k", msg::ENOENT);
    m.ok("echo X > a/x && mv a/x b/k2 && mv b/k top && mv top a/k");
    assert_eq!(
        m.ok("ls && ls a b && cat a/k b/k2"),
        "a\nb\na:\nk\n\nb:\nk2\nA\nX\n"
    );
    fill(&m, "b/big");
    for (from, to) in [("b/big", "a/big"), ("a/big", "a/big2"), ("a/big2", "big")] {
        let c = m.stat("commits");
        m.ok(&format!("mv {from} {to}"));
        assert_eq!(m.stat("commits"), c + 1, "commits of mv {from} {to}");
        m.fails(&format!("ls {from}"), msg::ENOENT);
        check_filled(&m, to);
    }
    assert_eq!(m.ok("ls && ls a b"), "a\nb\nbig\na:\nk\n\nb:\nk2\n");
}

// `find`, `du`, `cp -r` (in, out and within the mount) and `rm -r` walk a tree as on any
// filesystem.
#[test]
fn find_du_cp_r_and_rm_r_walk_a_tree() {
    let m = Mount::new();
    fill(&m, "w");
    assert_eq!(
        m.ok(
            "find w | wc -l && find w -type d | wc -l && find w -name k3 | wc -l &&
              find w -path 'w/a7/*' -type f | wc -l && find w -type f -size 9c | wc -l"
        ),
        "251\n51\n40\n20\n200\n"
    );
    // du lists every entry, and each key with its size (9 bytes: "aA/bB/kK\n").
    assert_eq!(
        m.ok_quiet(
            "du -ab w | wc -l && du -ab w | while read -r s p; do
                      [ -f \"$p\" ] && echo $s; done | sort | uniq -c && du -s w >/dev/null"
        ),
        "251\n    200 9\n"
    );
    m.ok("cp -r w w2 && diff -r w w2 && cp -r w $T/out && diff -r w $T/out");
    m.ok("cp -r $T/out w3 && diff -r $T/out w3");
    check_filled(&m, "w2");
    check_filled(&m, "w3");
    m.ok("rm -r w w2 && rm -r w3/a0 && rm -r w3");
    assert_eq!(m.ok("ls -A"), ".ctl\n.snap\n.stats\n.txn\n");
}

// `cp -a` keeps modes, owners and mtimes of every file and directory, into the mount and within
// it.
#[test]
fn cp_a_keeps_modes_owners_and_mtimes() {
    let m = Mount::new();
    m.ok(&format!("{MK_SRC_SH}mk_src $T/src"));
    let want = tree(&m, "$T/src", true);
    m.ok("cp -a $T/src ca && cp -a ca ca2");
    assert_eq!(tree(&m, "ca", true), want);
    assert_eq!(tree(&m, "ca2", true), want);
    m.ok("diff -r $T/src ca");
}

// `tar -x` of a tree into the mount and `tar -c` of it back give the same tree, metadata included.
#[test]
fn tar_roundtrips_a_tree_through_the_mount() {
    let m = Mount::new();
    m.ok(&format!(
        "{MK_SRC_SH}mk_src $T/src && tar -C $T -cf $T/in.tar src"
    ));
    let want = tree(&m, "$T/src", true);
    m.ok("tar -xf $T/in.tar");
    assert_eq!(tree(&m, "src", true), want);
    m.ok("tar -cf $T/out.tar src && mkdir $T/back && tar -C $T/back -xf $T/out.tar");
    m.ok("diff -r $T/src $T/back/src && diff -r $T/src src");
    assert_eq!(tree(&m, "$T/back/src", true), want);
}

// `rsync -a` copies a tree in, then updates it (temporary file renamed over a key in a
// subdirectory, `--delete`), metadata included.
#[test]
fn rsync_a_copies_a_tree_in_and_updates_it() {
    let m = Mount::new();
    m.ok(&format!("{MK_SRC_SH}mk_src $T/src"));
    m.ok("rsync -a $T/src/ r/ && diff -r $T/src r");
    assert_eq!(tree(&m, "r", true), tree(&m, "$T/src", true));
    m.ok(
        "echo changed > $T/src/a/b/two && touch -d @1500000000 $T/src/a/b/two &&
          rm $T/src/top && mkdir $T/src/new && echo n > $T/src/new/k",
    );
    m.ok("rsync -a --delete $T/src/ r/ && diff -r $T/src r");
    assert_eq!(tree(&m, "r", true), tree(&m, "$T/src", true));
    assert_eq!(m.ok("cat r/a/b/two r/new/k"), "changed\nn\n");
}

// Directory modes, owners and mtimes set with chmod, chown and touch stay, across a clean
// restart (checkpoint) and a kill -9 (log replay).
#[test]
fn directory_metadata_survives_restart_and_kill9() {
    let mut m = Mount::new();
    m.ok("mkdir -p d/e && echo v > d/e/k");
    m.ok("chmod 700 d && chown 1000:1000 d && touch -d @1000000000 d");
    m.ok("chmod 751 d/e && chown 2000:3000 d/e && touch -d @1100000000 d/e");
    let meta = "stat -c '%n %a %u %g %Y' d d/e";
    let want = "d 700 1000 1000 1000000000\nd/e 751 2000 3000 1100000000\n";
    assert_eq!(m.ok(meta), want);
    m.restart();
    assert_eq!(m.ok(meta), want);
    // Set after the restart's checkpoint: only the log holds these.
    m.ok("chmod 705 d && chown 1001:1002 d && touch -d @1200000000 d");
    m.ok("mkdir g && chmod 711 g && chown 7:8 g && touch -d @1300000000 g");
    let meta = "stat -c '%n %a %u %g %Y' d d/e g && cat d/e/k";
    let want = "d 705 1001 1002 1200000000\nd/e 751 2000 3000 1100000000\n\
                g 711 7 8 1300000000\nv\n";
    assert_eq!(m.ok(meta), want);
    m.kill9();
    m.start_again();
    assert_eq!(m.ok(meta), want);
}

// A subdirectory holds 8192 entries (keys and directories alike): one more create, mkdir or
// mv into it gives ENOSPC; other directories are not affected; a freed entry can be reused.
#[test]
fn a_subdirectory_holds_at_most_8192_entries() {
    let m = Mount::new();
    m.ok("mkdir d e && mkdir d/sub && seq -f 'd/k%04g' 1 8191 | xargs touch");
    assert_eq!(m.ok("ls -A d | wc -l"), "8192\n");
    m.fails("touch d/over", msg::ENOSPC);
    m.fails("env echo x > d/over", msg::ENOSPC);
    m.fails("mkdir d/over", msg::ENOSPC);
    m.ok("echo r > rootkey");
    m.fails("mv rootkey d/", msg::ENOSPC);
    assert_eq!(m.ok("ls -A d | wc -l && cat rootkey"), "8192\nr\n");
    // A rename inside the full directory needs no new entry.
    m.ok("mv d/k0002 d/renamed && echo s > e/k && mkdir e/f && echo r2 > rootkey2");
    m.ok("rm d/k0001 && touch d/over");
    m.fails("touch d/over2", msg::ENOSPC);
    m.ok("rmdir d/sub && mkdir d/sub2");
    assert_eq!(m.ok("ls -A d | wc -l"), "8192\n");
}

// In a transaction, mkdir, writes in subdirectories and mv of a directory are staged: invisible
// elsewhere, then all visible at once in one commit; abort and rmdir without commit leave
// nothing.
#[test]
fn a_transaction_stages_directories_until_commit() {
    let m = Mount::new();
    m.ok("mkdir .txn/t && mkdir .txn/t/d && mkdir -p .txn/t/d/sub/deep");
    m.ok("env echo v > .txn/t/d/k && env echo w > .txn/t/d/sub/deep/k2");
    m.ok("mv .txn/t/d .txn/t/e");
    let want = "e\ne/k\ne/sub\ne/sub/deep\ne/sub/deep/k2\n";
    assert_eq!(m.ok("cd .txn/t && find e | sort"), want);
    assert_eq!(m.ok("cat .txn/t/e/k .txn/t/e/sub/deep/k2"), "v\nw\n");
    m.fails("ls .txn/t/d", msg::ENOENT);
    assert_eq!(m.ok("ls"), "");
    m.fails("ls e", msg::ENOENT);
    m.ok("mkdir .snap/before");
    let c = m.stat("commits");
    m.ok("env echo commit > .txn/t/.ctl");
    assert_eq!(m.stat("commits"), c + 1, "commits of the commit");
    assert_eq!(
        m.ok("find e | sort && cat e/k e/sub/deep/k2"),
        format!("{want}v\nw\n")
    );
    assert_eq!(m.ok("ls && ls .snap/before"), "e\n");
    // Aborted, or forgotten by rmdir: nothing of it is anywhere.
    m.ok("mkdir .txn/u && mkdir .txn/u/x && env echo 1 > .txn/u/x/k && env echo 2 > .txn/u/e/k");
    m.ok("mv .txn/u/e .txn/u/e2 && env echo abort > .txn/u/.ctl");
    m.ok("mkdir .txn/w && mkdir -p .txn/w/y/z && env echo 1 > .txn/w/y/z/k && rmdir .txn/w");
    assert_eq!(
        m.ok("find e | sort && cat e/k && ls"),
        format!("{want}v\ne\n")
    );
    m.ok("rmdir .txn/t .txn/u .snap/before");
}

// A snapshot shows the tree of its moment (not a directory created, a key changed or a move
// made later) and refuses every change with EROFS.
#[test]
fn a_snapshot_shows_the_tree_of_its_moment_and_is_read_only() {
    let m = Mount::new();
    m.ok("mkdir -p a/b && echo 1 > a/b/k && echo r > a/r && mkdir .snap/s");
    m.ok("mkdir c && echo 2 > a/b/k && echo n > a/new && mv a/r c/r && mkdir a/b/late && mv a/b b");
    let then = "./a\n./a/b\n./a/b/k\n./a/r\n";
    assert_eq!(m.ok("cd .snap/s && find . | sort"), format!(".\n{then}"));
    assert_eq!(m.ok("cat .snap/s/a/b/k .snap/s/a/r"), "1\nr\n");
    m.fails("ls .snap/s/c", msg::ENOENT);
    m.fails("cat .snap/s/a/new", msg::ENOENT);
    assert_eq!(
        m.ok("find a b c | sort"),
        "a\na/new\nb\nb/k\nb/late\nc\nc/r\n"
    );
    for script in [
        "mkdir .snap/s/x",
        "mkdir .snap/s/a/x",
        "env echo x > .snap/s/a/b/k",
        "touch .snap/s/a/b/new",
        "mv .snap/s/a/b .snap/s/a/b2",
        "chmod 700 .snap/s/a",
    ] {
        m.fails(script, msg::EROFS);
    }
    assert_eq!(m.ok("cd .snap/s && find . -mindepth 1 | sort"), then);
    m.ok("rmdir .snap/s");
}

// Phantoms: once transaction T listed subdirectory d, no one can create an entry in d until T
// ends, so "T saw d empty" stays true up to T's commit.
#[test]
fn phantom_a_listed_subdirectory_gets_no_new_entry_until_the_lister_ends() {
    let m = Mount::new();
    m.ok("mkdir d && echo o > other && mkdir .txn/t");
    assert_eq!(m.ok("ls .txn/t/d"), "");
    m.fails("env echo 1 > d/new", msg::EBUSY);
    m.fails("mkdir d/sub", msg::EBUSY);
    m.fails("mv other d/new", msg::EBUSY);
    m.ok("mkdir .txn/t2");
    m.fails("env echo 1 > .txn/t2/d/new", msg::EBUSY);
    m.assert_aborted("t2");
    assert_eq!(m.ok("ls d && ls .txn/t/d && cat other"), "o\n");
    m.ok("env echo empty > .txn/t/verdict && env echo commit > .txn/t/.ctl");
    m.assert_committed("t");
    m.ok("env echo 1 > d/new");
    assert_eq!(m.ok("cat verdict && ls d"), "empty\nnew\n");
    m.ok("rmdir .txn/t .txn/t2");
}

// Phantoms at the root: once transaction T listed the top of the mount, no one else adds or
// removes a name there until T ends; a new value of a listed file, or a name in a subdirectory,
// changes none of the names T saw and goes through.
#[test]
fn phantom_the_listed_root_gets_no_new_or_removed_name_until_the_lister_ends() {
    let m = Mount::new();
    m.ok("echo o > old && mkdir d && mkdir .txn/t");
    assert_eq!(m.ok("ls .txn/t"), "d\nold\n");
    m.fails("env echo 1 > new", msg::EBUSY);
    m.fails("rm old", msg::EBUSY);
    m.fails("mv old old2", msg::EBUSY);
    m.fails("mv d/../old d/old", msg::EBUSY);
    m.fails("mkdir new", msg::EBUSY);
    m.fails("ln -s old link", msg::EBUSY);
    m.fails("mkfifo fifo", msg::EBUSY);
    m.ok("env echo 2 > old && env echo 1 > d/below");
    m.ok("mkdir .txn/t2");
    m.fails("env echo 1 > .txn/t2/new", msg::EBUSY);
    m.assert_aborted("t2");
    // T's own names: it is the only lister, so it may add them. `count` is created before the
    // pipeline, so T lists 3 names (`wc`'s redirection and `ls` start together, in either
    // order).
    m.ok("env echo 0 > .txn/t/count && ls .txn/t | wc -l > .txn/t/count");
    m.ok("env echo commit > .txn/t/.ctl");
    m.assert_committed("t");
    m.ok("env echo 1 > new && mv old old2 && ln -s old2 link && rmdir .txn/t .txn/t2");
    assert_eq!(m.ok("cat count && ls"), "3\ncount\nd\nlink\nnew\nold2\n");
}

// Phantoms: once transaction T read that d/x is missing, d/x cannot be created until T ends.
#[test]
fn phantom_a_name_read_as_missing_in_a_subdirectory_cannot_be_created() {
    let m = Mount::new();
    m.ok("mkdir d && mkdir .txn/t");
    m.fails("cat .txn/t/d/x", msg::ENOENT);
    m.fails("env echo 1 > d/x", msg::EBUSY);
    m.fails("mkdir d/x", msg::EBUSY);
    m.fails("cat .txn/t/d/x", msg::ENOENT);
    assert_eq!(m.ok("ls d"), "");
    m.ok("env echo abort > .txn/t/.ctl");
    m.ok("env echo 1 > d/x");
    assert_eq!(m.ok("cat d/x"), "1\n");
    m.ok("rmdir .txn/t");
}

// `mv` of a directory of 200 keys is atomic: readers listing and walking the tree (live and in
// a snapshot of their own each round) never see it partly moved, nor under both names or none,
// while it moves back and forth 100 times; a snapshot taken between two moves keeps the whole
// tree under the name of its moment.
#[test]
fn directory_rename_is_atomic_for_concurrent_readers_and_snapshots() {
    let m = Mount::new();
    fill(&m, "p/src");
    m.ok("mkfifo $T/started");
    // One line per round: ROUND NAMES FIND_STATUS SRC DST OTHER_ERRORS SNAP_STATUS SRC DST
    // FIND_ERRORS (the live find's error lines, joined by `|`).
    let reader = m.spawn_sh(
        "count() { echo $(grep -c \"^$2/src/\" $1) $(grep -c \"^$2/dst/\" $1); }
         r=0
         while [ $r -lt 3000 ] && { [ $r -eq 0 ] || [ ! -e $T/moved ]; }; do
           r=$((r+1))
           names=$(ls p | paste -sd, -)
           find p -type f > $T/live 2> $T/live.err; st=$?
           mkdir .snap/r || exit 1
           find .snap/r/p -type f > $T/snap 2>&1; sst=$?
           rmdir .snap/r || exit 1
           other=$(grep -vc 'No such file or directory' $T/live.err)
           echo $r ${names:-none} $st $(count $T/live p) $other $sst $(count $T/snap .snap/r/p) $(paste -sd'|' $T/live.err)
           if [ $r -eq 1 ]; then echo go > $T/started; fi
         done",
    );
    let moves = m.ok("read go < $T/started
         trap 'touch $T/moved' EXIT
         i=0
         while [ $i -lt 50 ]; do
           i=$((i+1))
           mv p/src p/dst || exit 1
           if [ $((i % 5)) -eq 0 ]; then mkdir .snap/m || exit 1; fi
           mv p/dst p/src || exit 1
           if [ $((i % 5)) -eq 0 ]; then
             echo $i $(ls .snap/m/p) $(find .snap/m/p/dst -type f | wc -l) $(ls p)
             rmdir .snap/m || exit 1
           fi
         done");
    let want: Vec<String> = (1..=10).map(|i| format!("{} dst 200 src", i * 5)).collect();
    assert_eq!(lines(&moves), want, "snapshots taken between moves");
    let out = reader.finish(SCRIPT_TIMEOUT + Duration::from_secs(60));
    let out = assert_ok(&out, "the reader");
    let whole = |s: &str, d: &str| (s, d) == ("200", "0") || (s, d) == ("0", "200");
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.splitn(10, ' ').collect();
            let [_, names, st, s, d, other, sst, ss, sd, ..] = f[..] else {
                return true;
            };
            // find may fail with ENOENT when a name it read in p is gone by the time it opens
            // or stats it again; what it saw must still be the whole tree under one name, or
            // nothing.
            let nothing = st != "0" && (s, d) == ("0", "0");
            let live = matches!(names, "src" | "dst") && other == "0" && (whole(s, d) || nothing);
            !(live && sst == "0" && whole(ss, sd))
        })
        .collect();
    assert!(!out.is_empty(), "the reader read nothing");
    assert!(
        bad.is_empty(),
        "rounds that saw a partial move:\n{}",
        bad.join("\n")
    );
    check_filled(&m, "p/src");
}

// Every acknowledged directory operation (mkdir, keys in subdirectories, mv of keys and of
// directories, rmdir, rm -r, a transaction, metadata), before and after a checkpoint, is there
// after a kill -9 and a restart, and the recovered tree takes changes.
#[test]
fn acknowledged_directory_operations_survive_kill9() {
    let mut m = Mount::new();
    m.ok("set -e; umask 022
          mkdir -p a/b/c x/y
          env echo k1 > a/b/c/k1; env echo k2 > a/b/k2
          head -c 50000 /dev/urandom > $T/blob; cp $T/blob x/y/blob
          mkdir -p old/dir; env echo o > old/dir/k; mv old/dir x/moved-early
          env echo checkpoint > .ctl
          mkdir -p m/n; env echo mv > m/n/key
          mv a/b x/y/        # a directory, with its subtree, to another parent
          mv x/y/b/k2 m/k2   # a key between directories
          mv m/n m/n2        # a directory renamed in place
          mkdir gone; rmdir gone; rmdir old
          mkdir -p del/sub; env echo d > del/sub/f; rm -r del
          mkdir .txn/t; mkdir .txn/t/tx; env echo t > .txn/t/tx/k
          env echo commit > .txn/t/.ctl; rmdir .txn/t
          for i in $(seq 1 30); do mkdir -p w/d$i; env echo $i > w/d$i/k; done
          rmdir w/d7 2>/dev/null && exit 1; rm w/d7/k; rmdir w/d7
          chmod 700 x; chown 5:6 x/y; touch -d @1000000000 m");
    let before = tree(&m, ".", false);
    assert!(before.contains("directory 755 0 0 ./x/y/b/c\n"), "{before}");
    let meta = "stat -c '%n %a %u %g' x x/y && stat -c %Y m";
    let want = "x 700 0 0\nx/y 755 5 6\n1000000000\n";
    assert_eq!(m.ok(meta), want);
    m.kill9();
    m.start_again();
    assert_eq!(tree(&m, ".", false), before, "the tree after kill -9");
    assert_eq!(m.ok(meta), want);
    m.ok("cmp x/y/blob $T/blob");
    m.fails("rmdir m", ENOTEMPTY);
    m.ok("mkdir x/y/b/c/new && echo n > x/y/b/c/new/k && mv x/y/b m/b && rm -r w");
    assert_eq!(m.ok("ls && ls m/b/c/new"), "a\nm\ntx\nx\nk\n");
}

/// Workers making trees, moving one directory to and fro, and making and removing directories,
/// killed with `kill -9` in mid-flight: after the restart every acknowledged tree is there, the
/// moved directory is whole in one of its two places (the last acknowledged, or the one a move
/// the kill cut off had committed), and the engine holds no key the tree does not account for
/// (`.stats` keys = files + 2 per directory + the id counter and the root's list).
const CHURN_SH: &str = r#"
mk() { i=0; while [ ! -e $T/stop ]; do i=$((i+1))
  mkdir -p t$i/b && env echo $i > t$i/b/k || break
  echo $i >> $T/ack_mk; done; }
mv_() { while [ ! -e $T/stop ]; do
  echo q >> $T/try_mv; mv p/x q/x || break; echo q >> $T/ack_mv
  echo p >> $T/try_mv; mv q/x p/x || break; echo p >> $T/ack_mv; done; }
rmd() { i=0; while [ ! -e $T/stop ]; do i=$((i+1))
  mkdir -p r/s$i/u && env echo x > r/s$i/u/f && rm -r r/s$i || break; done; }
mk 2> $T/err_mk & mv_ 2> $T/err_mv & rmd 2> $T/err_rmd &
wait
"#;

#[test]
fn a_kill_9_amid_directory_operations_leaves_every_acknowledged_change_and_no_stray_key() {
    let mut m = Mount::new();
    m.ok("mkdir -p p/x/y q r && env echo deep > p/x/y/k && env echo top > p/x/t");
    let workers = m.spawn_sh(CHURN_SH);
    // Enough has happened: 40 trees made and 20 moves acknowledged.
    assert!(
        bpfdb_tests::wait_until(SCRIPT_TIMEOUT, || {
            let n = |f: &str| {
                std::fs::read_to_string(m.scratch().join(f)).map_or(0, |s| s.lines().count())
            };
            n("ack_mk") >= 40 && n("ack_mv") >= 20
        }),
        "the workers did not get going:\n{}",
        m.log_tail()
    );
    m.kill9();
    std::fs::write(m.scratch().join("stop"), b"").unwrap();
    let _ = workers.finish(SCRIPT_TIMEOUT);
    m.start_again();
    // Every acknowledged tree.
    let acked = m.ok("cat $T/ack_mk");
    for i in lines(&acked) {
        assert_eq!(
            m.ok(&format!("cat t{i}/b/k")),
            format!("{i}\n"),
            "tree t{i}"
        );
    }
    // The moved directory: whole, in one place: where the last acknowledged move put it, or
    // where a move begun after it (cut off by the kill, perhaps committed) did.
    let acked = m.ok("tail -n 1 $T/ack_mv");
    let tried = m.ok("tail -n 1 $T/try_mv");
    let place = m.ok("for d in p q; do if [ -d $d/x ]; then echo $d; fi; done");
    assert_eq!(lines(&place).len(), 1, "x is in {place:?}");
    assert!(
        place == acked || place == tried,
        "last acknowledged {acked:?}, last tried {tried:?}, found {place:?}"
    );
    let x = lines(&place)[0];
    assert_eq!(m.ok(&format!("cat {x}/x/y/k {x}/x/t")), "deep\ntop\n");
    // No stray key: every key is a file, a directory's entry or record, or one of the two.
    let counts = m.ok(
        "find . -mindepth 1 \\( -path ./.txn -o -path ./.snap -o -path ./.stats -o -path ./.ctl \\) \
         -prune -o -type d -print | wc -l; \
         find . -mindepth 1 \\( -path ./.txn -o -path ./.snap -o -path ./.stats -o -path ./.ctl \\) \
         -prune -o ! -type d -print | wc -l",
    );
    let n: Vec<u64> = lines(&counts)
        .iter()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(
        m.stat_keys(),
        n[1] + 2 * n[0] + 2,
        "dirs {}, files {}",
        n[0],
        n[1]
    );
    // And the recovered tree goes on.
    assert_eq!(m.ok("mkdir p/new && mv r p/new/ && ls p/new"), "r\n");
}

/// Creates in one directory from the root and from transactions at once. The kernel runs the
/// creates of one directory inode one at a time, but a transaction's view of the directory is
/// another inode, so the root's changes and the transactions' take each other's lock on the
/// directory's record: a root change that loses retries (and succeeds, the transactions being
/// short); a transaction that loses is aborted, and the shell runs it again. Nothing is lost.
#[test]
fn creates_in_one_directory_from_the_root_and_from_transactions_all_land() {
    let m = Mount::new();
    m.ok("mkdir d");
    let out = m.ok(
        "for w in 1 2; do
           ( for i in $(seq 1 150); do env echo $w > d/w$w-$i || echo FAIL $w $i; done ) &
         done
         ( for k in $(seq 1 40); do
             for try in 1 2 3 4 5 6 7 8 9 10; do
               mkdir .txn/t$k-$try || exit 1
               if env echo t > .txn/t$k-$try/d/t$k && env echo commit > .txn/t$k-$try/.ctl; then
                 rmdir .txn/t$k-$try; break
               fi
               rmdir .txn/t$k-$try
             done
           done ) &
         wait
         ls d | wc -l; ls d | grep -c '^t'
         for w in 1 2; do
           ( for i in $(seq 1 150); do if [ $((i % 3)) -eq 0 ]; then rm d/w$w-$i || echo FAIL rm $w $i; fi; done ) &
         done; wait
         ls d | wc -l; ls -f d | head -3 | tr '\\n' ' '",
    );
    assert_eq!(out, "340\n40\n240\n. .. t1 ");
    assert_eq!(m.stat_keys(), 240 + 2 + 2);
    assert_eq!(m.ok("cat d/w2-149 d/t40"), "2\nt\n");
    // The race was run and lost: changes conflicted (and were retried or run again).
    let conflicts = m.stats()["txn_aborts_conflict"];
    eprintln!("conflicts: {conflicts}");
    assert!(
        conflicts > 0,
        "no change ever lost a lock: the test raced nothing"
    );
}
