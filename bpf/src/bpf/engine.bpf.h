/* SPDX-License-Identifier: MIT */
/*
 * engine.bpf.h - the engine's own maps, settings and small helpers. The
 * shared structs live in bpfdb.h; the maps and the visibility rule the
 * engine shares with its kernel clients in bpfdb_kernel.h.
 *
 * Helpers that several stages call are global functions (__noinline, not
 * static): the verifier checks each once, by itself, instead of again at
 * every call on every path, which took the engine's load from 1.2 s to
 * 0.25 s. So each returns a scalar, checks its pointer arguments for NULL
 * and bounds its other arguments itself (docs/ARCHITECTURE.md).
 */
#ifndef ENGINE_BPF_H
#define ENGINE_BPF_H

#include "bpfdb_kernel.h"
#include <bpf/bpf_tracing.h>

/* The two counts of top_gate (below). */
#define DB_TOP_LISTER (1ULL << 0)
#define DB_TOP_WRITER (1ULL << 32)
#define DB_TOP_COUNT(word, unit) (((word) / (unit)) & 0xffffffffULL)

/* Times the lock-free reader retries when GC reclaims under it. */
#define DB_READ_RETRIES 4

/* ---- settings, fixed between open and load ---- */
const volatile __u32 max_value = DB_VALUE_LIMIT;
/* CAS attempts on a lock word other readers keep changing, at most
 * DB_LOCK_CAS_TRIES (tests lower it to make contention common). */
const volatile __u32 lock_cas_tries = DB_LOCK_CAS_TRIES;
/* Test hook (Options::read_pause_loops): a lock-free GET idles this many
 * iterations between its two first loads, so that tests can run writers
 * and GC inside that window. 0 in real use. */
const volatile __u32 read_pause_loops = 0;
/* Test hook (Options::alloc_pause_loops): the allocation of a value of
 * alloc_pause_len bytes idles this many iterations between reading its
 * class's free list and its CAS on it. 0 in real use. */
const volatile __u32 alloc_pause_loops = 0;
const volatile __u32 alloc_pause_len = 0;
/* Test hook (Options::top_commit_pause_loops): a one-op commit idles this
 * many iterations under the commit lock, between its check for listers of
 * the top-level keys and its log and stamp. 0 in real use. */
const volatile __u32 top_commit_pause_loops = 0;
/* Slot index of the first client slot (the user's slots come first). */
const volatile __u32 kernel_slot_base = 0;

/* ---- state in .bss, mmap'ed by user space; the clock that other
 * objects read is in the clock map (bpfdb_kernel.h) ---- */
struct db_stats stats;
__u64 commit_lock;   /* 0, or owner + 1 while a commit stamps its versions */
__u64 txn_gen;       /* source of transaction ids */
__u64 snapshots;     /* registered snapshots; GC scans the txn table only if > 0 */
/* The lock on the set of top-level keys (top.bpf.h): the count of listers
 * (transactions whose scan locked the set) and of writers (transactions
 * that staged an insert or a removal of a top-level key), DB_TOP_LISTER
 * and DB_TOP_WRITER each. */
__u64 top_gate;
/* Set by user space once recovery has replayed the log: replayed commits
 * are already in it and must not be emitted twice. */
__u32 wal_on;
__u64 record_gen;    /* source of fresh gc_seq values for new records */
__u64 small_next;    /* bump allocator: never-used granules start here */
__u64 page_next;     /* bump allocator: never-used pages start here */
/* Ids below these are backed by a segment (written by user space, after
 * it published the segment; only ever raised, up to the capacities). */
__u64 small_ready;
__u64 page_ready;

/* Free runs of each size class: a list threaded through the runs
 * themselves (the first 4 bytes of a free run hold the next run's granule
 * + 1), so it costs nothing while empty. The head is the top run's granule
 * + 1 in the low 32 bits and a count of changes in the high 32, which
 * makes a pop whose top was popped and pushed back meanwhile fail its CAS
 * (storage.bpf.h). */
__u64 small_free[DB_CLASSES];
/* Runs on each list, never more than there are: a pop claims one here
 * before it takes one, a push counts its run after (user space reads
 * these to promise only memory the engine can hand out, room.rs). */
__s64 small_free_runs[DB_CLASSES];

/* Free pages; push and pop are atomic. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__uint(max_entries, 1);
	__uint(key_size, 0);
	__uint(value_size, sizeof(__u32));
} page_free SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DB_MAX_TXNS);
	__type(key, __u32);
	__type(value, struct db_txn);
} txns SEC(".maps");

/* Write-ahead log stream; size set by user space (a power of two). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} wal SEC(".maps");

/* ---- helpers ---- */

static long idle_one(__u64 i, void *unused)
{
	return 0;
}

/* A test hook's pause: loops iterations of nothing (bpf_loop's cap is above
 * DB_READ_PAUSE_MAX). */
static __always_inline void test_pause(__u32 loops)
{
	if (loops)
		bpf_loop(loops & (DB_READ_PAUSE_MAX - 1), idle_one, NULL, 0);
}

static __always_inline void stat_add(__u64 *counter, __s64 delta)
{
	__sync_fetch_and_add(counter, delta);
}

/* GC is about to free storage an older version of another record may name:
 * lock-free readers of that record see the bump and read again. */
static __always_inline void shared_free_bump(void)
{
	struct db_clock *c = db_clock();

	if (c)
		__sync_fetch_and_add(&c->shared_free_seq, 1);
}

/* Whether the op came from an eBPF client (bpfdb_kernel.h) rather than the
 * trigger: tail calls keep the running program's attach cookie, and a
 * client is attached with DB_CLIENT_COOKIE, the trigger's uprobe with the
 * engine instance. */
static __always_inline bool from_client(struct pt_regs *ctx)
{
	return bpf_get_attach_cookie(ctx) == DB_CLIENT_COOKIE;
}

/* The request's slot: the one the trigger's second argument names, or the
 * client task's (claimed in its first program; ~0 when it holds none).
 * A global function: the verifier checks its two ways once, instead of
 * walking the rest of every stage once for each (which doubled the time
 * the engine took to load). */
__attribute__((noinline)) __u32 slot_index(struct pt_regs *ctx)
{
	if (!ctx)
		return ~0u;
	if (from_client(ctx)) {
		int n = db_kslot_index();

		return n < 0 ? ~0u : kernel_slot_base + n;
	}
	return (__u32)PT_REGS_PARM2(ctx);
}

static __always_inline struct db_slot *slot_of(struct pt_regs *ctx)
{
	__u32 idx = slot_index(ctx);

	return bpf_map_lookup_elem(&slots, &idx);
}

static __always_inline __u32 autocommit_owner(struct pt_regs *ctx)
{
	return DB_OWNER_AUTOCOMMIT | slot_index(ctx);
}

/* A stage program. The op goes on by tail calls, which never return: when
 * the body returns, the op is done, successful or not, and a client
 * continues in its continuation program with the result in its slot. */
#define DB_STAGE_PROG(name)                                                     \
	static __always_inline int name##_body(struct pt_regs *ctx);            \
	SEC("uprobe")                                                           \
	int name(struct pt_regs *ctx)                                           \
	{                                                                       \
		name##_body(ctx);                                               \
		return op_done(ctx);                                            \
	}                                                                       \
	static __always_inline int name##_body(struct pt_regs *ctx)

static __always_inline int op_done(struct pt_regs *ctx)
{
	if (!from_client(ctx))
		return 0;
	struct db_slot *slot = slot_of(ctx);
	if (slot)
		bpf_tail_call(ctx, &conts, slot->req.cont);
	return 0;
}

static __always_inline int fail(struct db_slot *slot, int err, __u32 detail)
{
	slot->resp.err = err;
	slot->resp.detail = detail;
	if (err == -EBUSY)
		stat_add(&stats.conflicts, 1);
	else if (err != -ENOENT && err != -EEXIST)
		stat_add(&stats.errors, 1);
	return 0;
}

/* Index of the newest committed version, or -1. The key exists for a
 * latest-committed reader when that version's end is not committed. */
static __always_inline int latest_version(struct db_record *rec)
{
	__u64 best_ts = 0;
	int best = -1;

	for (int i = 0; i < DB_MAX_VERSIONS; i++) {
		__u64 b = READ_ONCE(rec->begin_ts[i]);

		if (ts_committed(b) && b > best_ts) {
			best_ts = b;
			best = i;
		}
	}
	return best;
}

static __always_inline bool version_live(struct db_record *rec, int i)
{
	if (i < 0)
		return false;
	return !ts_committed(READ_ONCE(rec->end_ts[i & (DB_MAX_VERSIONS - 1)]));
}

/* Log fragments of a value over 128 bytes: one per page of it (wal.bpf.h). */
static __always_inline __u32 pages_of(__u32 len)
{
	return (len + DB_PAGE_SIZE - 1) / DB_PAGE_SIZE;
}

/* Whether the request's name (key2 when second) holds no '/': the check
 * of a new record's DB_HKEY_TOP bit. Eight bytes at a time
 * (db_word_has_slash), and unlike db_key_is_top with no mask by key_len:
 * keys are zero padded (every writer of a request pads them, and the
 * names compare so), and a name holds no NUL, so the first zero word is
 * past the name. A branch on key_len made the verifier follow each length
 * range apart, about 25,000 instructions more in every calling stage. */
__noinline int name_is_top(struct db_slot *slot, int second)
{
	if (!slot)
		return 0;
	__u64 *words = (__u64 *)(second ? slot->req.key2.name : slot->req.key.name);

	for (__u32 i = 0; i < DB_KEY_SIZE / 8; i++) {
		__u64 w = words[i];
		if (!w)
			break;
		if (db_word_has_slash(w))
			return 0;
	}
	return 1;
}

/* Whether the request's key (key2 when second) is a top-level key, by its
 * map key's DB_HKEY_TOP bit. Callers hold its record, found or created
 * under that map key with a matching name, and create_record checked the
 * bit against the name (name_is_top), so the bit is the name's. */
static __always_inline bool key_is_top(struct db_slot *slot, int second)
{
	struct db_hkey *hkey = second ? &slot->req.hkey2 : &slot->req.hkey;

	return hkey->hi >> DB_HKEY_TOP_SHIFT;
}

#endif /* ENGINE_BPF_H */
