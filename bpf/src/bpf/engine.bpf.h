/* SPDX-License-Identifier: MIT */
/*
 * engine.bpf.h - maps, settings and small helpers of the engine.
 * Kernel side only; the shared structs live in bpfdb.h.
 */
#ifndef ENGINE_BPF_H
#define ENGINE_BPF_H

#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "bpfdb.h"

/* errno values (uapi asm-generic/errno-base.h and errno.h); no libc here */
#define ENOENT 2
#define EIO 5
#define E2BIG 7
#define EAGAIN 11
#define ENOMEM 12
#define EBUSY 16
#define EEXIST 17
#define EINVAL 22
#define EFBIG 27
#define ENOSPC 28
#define ENAMETOOLONG 36
#define ENOSYS 38
#define EROFS 30
#define ECANCELED 125

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

/* Times the lock-free reader retries when GC reclaims under it. */
#define DB_READ_RETRIES 4

/* ---- settings, fixed between open and load ---- */
const volatile __u32 max_value = DB_VALUE_LIMIT;
const volatile __u64 small_capacity = 0;
const volatile __u64 page_capacity = 0;
/* CAS attempts on a lock word other readers keep changing, at most
 * DB_LOCK_CAS_TRIES (tests lower it to make contention common). */
const volatile __u32 lock_cas_tries = DB_LOCK_CAS_TRIES;


/* ---- state in .bss, mmap'ed by user space ---- */
struct db_stats stats;
/* Newest fully applied commit. Advanced only by the holder of commit_lock
 * after it stamped every version of its commit, so a reader at last_ts never
 * sees half a commit. */
__u64 last_ts;
__u64 commit_lock;   /* 0, or owner + 1 while a commit stamps its versions */
__u64 txn_gen;       /* source of transaction ids */
__u64 snapshots;     /* registered snapshots; GC scans the txn table only if > 0 */
/* Bumped when GC frees storage that an older version of another record may
 * still name (after a rename): lock-free readers re-check it like gc_seq. */
__u64 shared_free_seq;
/* Set by user space once recovery has replayed the log: replayed commits
 * are already in it and must not be emitted twice. */
__u32 wal_on;
__u64 record_gen;    /* source of fresh gc_seq values for new records */
__u64 small_next;    /* bump allocator: never-used small chunks start here */
__u64 page_next;     /* bump allocator: never-used pages start here */

/* ---- maps; max_entries are set by user space before load ---- */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_slot);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct db_hkey);
	__type(value, struct db_record);
} records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_small_chunk);
} small_pool SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_page);
} page_pool SEC(".maps");

/* Free lists of recycled ids; push and pop are atomic. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__uint(max_entries, 1);
	__uint(key_size, 0);
	__uint(value_size, sizeof(__u32));
} small_free SEC(".maps");

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

/* Written by user space when it pins the maps; never read by programs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_layout);
} layout SEC(".maps");

/* Write-ahead log stream; size set by user space (a power of two). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} wal SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, DB_STAGE__COUNT);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} stages SEC(".maps");

/* ---- helpers ---- */

static __always_inline void stat_add(__u64 *counter, __s64 delta)
{
	__sync_fetch_and_add(counter, delta);
}

/* The slot named by the trigger's second argument. The context is the same
 * pt_regs in every tail-called stage, so each stage finds its slot again. */
static __always_inline struct db_slot *slot_of(struct pt_regs *ctx)
{
	__u32 idx = (__u32)PT_REGS_PARM2(ctx);

	return bpf_map_lookup_elem(&slots, &idx);
}

static __always_inline __u32 autocommit_owner(struct pt_regs *ctx)
{
	return DB_OWNER_AUTOCOMMIT | (__u32)PT_REGS_PARM2(ctx);
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

static __always_inline bool ts_committed(__u64 ts)
{
	return ts != 0 && !(ts & DB_TS_PENDING);
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

/* Index of the version a reader at timestamp snap sees, or -1. Version
 * intervals of a key are disjoint, so at most one matches. */
static __always_inline int visible_version(struct db_record *rec, __u64 snap)
{
	for (int i = 0; i < DB_MAX_VERSIONS; i++) {
		__u64 b = READ_ONCE(rec->begin_ts[i]);
		__u64 e = READ_ONCE(rec->end_ts[i]);

		if (!ts_committed(b) || b > snap)
			continue;
		if (ts_committed(e) && e <= snap)
			continue;
		return i;
	}
	return -1;
}

#define V(i) ((i) & (DB_MAX_VERSIONS - 1)) /* bounded version index */

/* Exact name check: zero-padded names compared a word at a time, only as
 * far as the name goes (usually one cache line). */
static __always_inline bool name_matches(struct db_record *rec, struct db_key *key, __u32 key_len)
{
	if (READ_ONCE(rec->key_len) != key_len)
		return false;
	__u64 *a = (__u64 *)rec->name;
	__u64 *b = (__u64 *)key->name;

	for (int i = 0; i < DB_KEY_SIZE / 8; i++) {
		if (i * 8 >= key_len)
			break;
		if (a[i] != b[i])
			return false;
	}
	return true;
}

/* Storage class of a value: none, one small chunk, one page, or an index
 * page listing data pages. */
static __always_inline __u32 pages_of(__u32 len)
{
	return (len + DB_PAGE_SIZE - 1) / DB_PAGE_SIZE;
}

#endif /* ENGINE_BPF_H */
