//! Operations that may wait for a key's cached readers run on the waiter
//! pool, never on a FUSE worker (the readers need the workers for their
//! READ and RELEASE). `.stats` counts waits that ran anywhere else as
//! `worker_waits`; it must stay 0.

use bpfdb_tests::Mount;

/// dash's `>>` opens the key, dups the descriptor and closes the original
/// (a FLUSH that commits nothing), then writes: the write found the writer
/// no longer counted and counted it again, waiting for the cached reader on
/// the FUSE worker serving the WRITE.
#[test]
fn dash_append_beside_a_cached_reader_waits_on_the_pool() {
    let m = Mount::new();
    m.ok("echo a > k");
    m.ok_quiet(
        "( exec 3< k; touch $T/open; while [ ! -e $T/stop ]; do :; done ) &
         while [ ! -e $T/open ]; do :; done
         dash -c 'echo b >> k'
         touch $T/stop
         wait",
    );
    assert_eq!(m.ok("cat k"), "a\nb\n");
    let stats = m.stats();
    assert!(
        stats["cached_opens"] >= 1,
        "the reader was not cached: {stats:?}"
    );
    assert_eq!(
        stats["worker_waits"], 0,
        "a wait for cached readers held a FUSE worker"
    );
}
