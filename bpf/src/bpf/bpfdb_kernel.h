/* SPDX-License-Identifier: MIT */
/*
 * bpfdb_kernel.h - the kernel-side API: how other eBPF programs use bpfdb as
 * their store (docs/KERNEL-CLIENTS.md). The engine includes it too, for the
 * maps and the visibility rule it shares with its clients.
 *
 * Two ways in:
 *   1. Snapshot reads, from any program type (XDP and tc included): the
 *      caller hashes the name (db_key_hash), then reads the version visible
 *      at one timestamp (db_snapshot_ts) without a lock, through a view it
 *      validates after copying (db_view_open / db_view_valid). Several keys
 *      read at one timestamp are one consistent snapshot.
 *   2. Requests through the engine, from kprobe-type programs (uprobe, usdt,
 *      kprobe): the caller claims a request slot (db_kslot_claim), fills it
 *      and tail-calls the engine's dispatcher (db_kcall); the engine runs the
 *      op through the same stages, locks, log and GC as the daemon's
 *      requests, then tail-calls the caller's continuation program
 *      (conts[req.cont]) with the result in the slot's resp.
 *      Continuation-passing style, as in BPF-DB.
 *
 * Every map below is the engine's: a client object's loader reuses the
 * engine's map fds (bpf_map__reuse_fd, or the daemon's pinned maps) before
 * it loads, so these definitions only give the verifier the types.
 */
#ifndef BPFDB_KERNEL_H
#define BPFDB_KERNEL_H

#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
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
#define EROFS 30
#define ENAMETOOLONG 36
#define ENOSYS 38
#define ECANCELED 125

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

/* ---- the engine's maps that clients share (sizes set by the loader) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_slot);
} slots SEC(".maps");

/* Records and long names are allocated as keys come and freed as they go:
 * max_entries is a cap (--max-keys), not an allocation. A record lives in
 * one of two hash maps, by the DB_HKEY_TOP bit of its map key: records_top
 * holds the top-level keys (no '/' in the name), records_below the others,
 * so that a walk of the top level (the daemon's root) visits only its own
 * keys. They are the inner maps of `records`, so that the verifier knows
 * one map type whichever a lookup reads (two maps named apart would be two
 * verifier states after every lookup: RENAME then passes its limit).
 * db_records_of and db_find_record pick the map. */
struct db_records_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct db_hkey);
	__type(value, struct db_record);
};

struct db_records_map records_top SEC(".maps");
struct db_records_map records_below SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, DB_RECORDS_MAPS);
	__type(key, __u32);
	__array(values, struct db_records_map);
} records SEC(".maps") = {
	.values = {
		[DB_RECORDS_BELOW] = &records_below,
		[DB_RECORDS_TOP] = &records_top,
	},
};

/* The map that holds (or would hold) the record under map key hkey; NULL
 * only if the loader left `records` unfilled. */
static __always_inline void *db_records_of(const struct db_hkey *hkey)
{
	__u32 i = hkey->hi >> DB_HKEY_TOP_SHIFT;

	return bpf_map_lookup_elem(&records, &i);
}

/* The record under map key hkey, or NULL. */
static __always_inline struct db_record *db_find_record(const struct db_hkey *hkey)
{
	void *map = db_records_of(hkey);

	return map ? bpf_map_lookup_elem(map, hkey) : NULL;
}

/* The whole name of every record whose name is longer than DB_NAME_INLINE,
 * under the record's map key. Inserted before its record, deleted after
 * the record's gc_seq moved and before the record leaves the map: whoever
 * finds a live record finds its name. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct db_hkey);
	__type(value, struct db_key);
} long_names SEC(".maps");

/* The value pools: arrays of segments that user space creates as the data
 * grows (bpfdb.h). Small-pool storage is addressed by granule: granule g
 * is byte (g % DB_SMALL_SEG) * DB_GRANULE of the one element of segment
 * g / DB_SMALL_SEG; page n is entry n % DB_PAGE_SEG of page segment
 * n / DB_PAGE_SEG. A segment not yet created is a NULL lookup, which no
 * engine path reaches (storage is handed out only below the ready count)
 * and a lock-free reader treats as a race. */
struct db_small_seg {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, DB_SMALL_SEG_BYTES);
};

struct db_page_seg {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DB_PAGE_SEG);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct db_page)); /* a size: BTF may hold only a forward */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct db_small_seg);
} small_pool SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct db_page_seg);
} page_pool SEC(".maps");

/* Sizes, the hash seed and the kernel slot numbering; written by user
 * space at every start. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_layout);
} layout SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_clock);
} clock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, DB_STAGE__COUNT);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} stages SEC(".maps");

/* Continuations of kernel callers: each client puts its programs here at
 * indexes it owns and names them in req.cont. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, DB_MAX_CONTS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} conts SEC(".maps");

/* ---- value storage ---- */

/* The run that starts at granule g, or NULL. The verifier knows it as a
 * pointer into a segment with at least DB_SMALL_MAX bytes after it. */
static __always_inline __u8 *db_small_at(__u32 g)
{
	__u32 seg = g >> DB_SMALL_SEG_SHIFT, zero = 0;
	void *inner = bpf_map_lookup_elem(&small_pool, &seg);
	__u8 *base = inner ? bpf_map_lookup_elem(inner, &zero) : NULL;

	return base ? base + ((__u64)(g & (DB_SMALL_SEG - 1)) << DB_GRANULE_SHIFT) : NULL;
}

static __always_inline struct db_page *db_page_at(__u32 id)
{
	__u32 seg = id >> DB_PAGE_SEG_SHIFT, at = id & (DB_PAGE_SEG - 1);
	void *inner = bpf_map_lookup_elem(&page_pool, &seg);

	return inner ? bpf_map_lookup_elem(inner, &at) : NULL;
}

/* ---- the clock ---- */

static __always_inline struct db_clock *db_clock(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&clock, &zero);
}

/* Newest fully applied commit: a reader at this timestamp sees whole
 * commits only. 0 (nothing visible) if the map were missing. */
static __always_inline __u64 db_snapshot_ts(void)
{
	struct db_clock *c = db_clock();

	return c ? READ_ONCE(c->last_ts) : 0;
}

static __always_inline __u64 db_shared_free_seq(void)
{
	struct db_clock *c = db_clock();

	return c ? READ_ONCE(c->shared_free_seq) : 0;
}

static __always_inline struct db_layout *db_layout(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&layout, &zero);
}

/* ---- the key hash: SipHash-1-3-128 keyed by the database's seed ----
 * The same function as key_hash in bpf/src/types.rs (the siphasher crate);
 * the XDP tests check both agree on names of every length. */

#define DB_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define DB_SIPROUND(v0, v1, v2, v3)                                                    \
	do {                                                                           \
		v0 += v1; v1 = DB_ROTL(v1, 13); v1 ^= v0; v0 = DB_ROTL(v0, 32);        \
		v2 += v3; v3 = DB_ROTL(v3, 16); v3 ^= v2;                              \
		v0 += v3; v3 = DB_ROTL(v3, 21); v3 ^= v0;                              \
		v2 += v1; v1 = DB_ROTL(v1, 17); v1 ^= v2; v2 = DB_ROTL(v2, 32);        \
	} while (0)

/* Whether eight bytes of a name hold a '/': they do iff the word XOR
 * "////////" holds a zero byte (a zero byte of the word gives 0x2f). */
static __always_inline bool db_word_has_slash(__u64 w)
{
	__u64 x = w ^ 0x2f2f2f2f2f2f2f2fULL;

	return (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
}

/* Whether a name of len bytes is a top-level key: no '/' in it. Eight
 * bytes at a time; bytes past len are masked to zero. */
static __always_inline bool db_key_is_top(const struct db_key *key, __u32 len)
{
	const __u64 *words = (const __u64 *)key->name;

	for (__u32 i = 0; i < DB_KEY_SIZE / 8; i++) {
		if (i * 8 >= len)
			break;
		__u64 w = words[i];
		if (len - i * 8 < 8)
			w &= (1ULL << ((len - i * 8) * 8)) - 1;
		if (db_word_has_slash(w))
			return false;
	}
	return true;
}

/* Hash of the first len bytes of key (len <= DB_KEY_MAX; bytes past len
 * are ignored) into *out. Little-endian words, as on every target bpfdb
 * builds for. A global function, so the verifier checks it once, not once
 * per way its caller got there (its loop exits at any of 32 words). */
__attribute__((noinline)) int db_key_hash(const struct db_key *key, __u32 len, __u64 seed,
					   struct db_hkey *out)
{
	__u64 k0 = seed, k1 = seed ^ DB_HASH_K1_XOR;
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f83ULL; /* 0x...6d ^ 0xee: the 128-bit variant */
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
	const __u64 *w = (const __u64 *)key->name;
	__u32 n = (len & 0xff) / 8;

	if (!key || !out)
		return -EINVAL;
	for (int i = 0; i < DB_KEY_SIZE / 8; i++) {
		if (i >= n)
			break;
		__u64 m = w[i];
		v3 ^= m;
		DB_SIPROUND(v0, v1, v2, v3);
		v0 ^= m;
	}
	__u32 rest = len & 7;
	__u64 tail = rest ? w[n & (DB_KEY_SIZE / 8 - 1)] & ((1ULL << (rest * 8)) - 1) : 0;
	__u64 b = ((__u64)(len & 0xff) << 56) | tail;

	v3 ^= b;
	DB_SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xee;
	DB_SIPROUND(v0, v1, v2, v3);
	DB_SIPROUND(v0, v1, v2, v3);
	DB_SIPROUND(v0, v1, v2, v3);
	out->lo = v0 ^ v1 ^ v2 ^ v3;
	v1 ^= 0xdd;
	DB_SIPROUND(v0, v1, v2, v3);
	DB_SIPROUND(v0, v1, v2, v3);
	DB_SIPROUND(v0, v1, v2, v3);
	out->hi = (v0 ^ v1 ^ v2 ^ v3) & ~DB_HKEY_TOP;
	if (db_key_is_top(key, len))
		out->hi |= DB_HKEY_TOP;
	return 0;
}

/* ---- visibility: the one rule, shared by the engine and its readers ---- */

#define V(i) ((i) & (DB_MAX_VERSIONS - 1)) /* bounded version index */

static __always_inline bool ts_committed(__u64 ts)
{
	return ts != 0 && !(ts & DB_TS_PENDING);
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

/* Exact name check: zero-padded names compared a word at a time, only as
 * far as the name goes (usually one cache line); a long name's bytes past
 * the inline ones from long_names. false also when the long name is gone
 * (its record is leaving: the caller's gc_seq check tells). */
static __always_inline bool name_matches(struct db_record *rec, const struct db_hkey *hkey,
					 const struct db_key *key, __u32 key_len)
{
	if (READ_ONCE(rec->key_len) != key_len)
		return false;
	__u64 *a = (__u64 *)rec->name;
	const __u64 *b = (const __u64 *)key->name;

	for (int i = 0; i < DB_NAME_INLINE / 8; i++) {
		if (i * 8 >= key_len)
			return true;
		if (a[i] != b[i])
			return false;
	}
	if (key_len <= DB_NAME_INLINE)
		return true;
	struct db_key *whole = bpf_map_lookup_elem(&long_names, hkey);

	if (!whole)
		return false;
	a = (__u64 *)whole->name;
	for (int i = DB_NAME_INLINE / 8; i < DB_KEY_SIZE / 8; i++) {
		if (i * 8 >= key_len)
			break;
		if (a[i] != b[i])
			return false;
	}
	return true;
}

/* ---- 1. snapshot reads, from any program type ----
 *
 *   __u64 at = db_snapshot_ts();
 *   struct db_view v;
 *   for each key:  db_view_open(&v, &key, len, &hkey, at) -> 0: v.meta and
 *                  the value at v.value (len <= DB_SMALL_MAX)
 *                  copy v.meta.len bytes out (bpf_probe_read_kernel)
 *                  db_view_valid(&v)  -> false: reclaimed meanwhile, read again
 * Keys read at one `at` are one snapshot: a commit is seen whole or not at
 * all. Without a lock GC may reclaim a version while it is copied, which
 * db_view_valid detects (the record's gc_seq, and the clock's count of
 * frees of shared storage). GC may also have reclaimed the version visible
 * at `at` before the view was opened, if the key was overwritten or deleted
 * since: then the key reads as missing. A miss is therefore only a hint;
 * a reader that must be exact about absence asks the engine (the XDP
 * server passes misses up to the daemon). A hit is always exact. */

struct db_view {
	struct db_record *rec;
	__u64 seq;        /* rec->gc_seq when opened */
	__u64 shared_seq; /* clock->shared_free_seq when opened */
	const __u8 *value; /* the value's bytes, when 0 < len <= DB_SMALL_MAX */
	struct db_meta meta;
	__u64 ts;         /* commit timestamp of the version read */
};

/* 0 with the view filled; -ENOENT: no such key at `at` (a hint, see
 * above); -E2BIG: a value over one page (read it through the daemon);
 * -EAGAIN: reclaimed under the reader, read again. hkey is
 * what db_key_hash gave for key. */
static __always_inline int db_view_open(struct db_view *v, const struct db_key *key, __u32 key_len,
					const struct db_hkey *hkey, __u64 at)
{
	struct db_record *rec = db_find_record(hkey);

	v->value = NULL;
	if (!rec)
		return -ENOENT;
	v->rec = rec;
	v->seq = READ_ONCE(rec->gc_seq);
	v->shared_seq = db_shared_free_seq();
	if (!name_matches(rec, hkey, key, key_len))
		return READ_ONCE(rec->gc_seq) == v->seq ? -ENOENT : -EAGAIN;
	int i = visible_version(rec, at);
	if (i < 0)
		return -ENOENT;
	v->meta = rec->meta[V(i)];
	v->ts = rec->begin_ts[V(i)];
	__u32 loc = rec->loc[V(i)];
	__u32 len = v->meta.len;

	if (len > DB_SMALL_MAX)
		return -E2BIG;
	if (len > 0) {
		v->value = db_small_at(loc);
		return v->value ? 0 : -EAGAIN;
	}
	return 0;
}

/* After copying: whether what was read is still the version it was (no GC
 * reclaimed it or its storage meanwhile). */
static __always_inline bool db_view_valid(const struct db_view *v)
{
	return READ_ONCE(v->rec->gc_seq) == v->seq && db_shared_free_seq() == v->shared_seq;
}

/* ---- 2. requests through the engine, from kprobe-type programs ----
 *
 * Any BPF_PROG_TYPE_KPROBE program attached with the bpf cookie
 * DB_CLIENT_COOKIE (uprobe, usdt; kprobe and ksyscall where the kernel has
 * kprobes) running in a task's context can call the engine:
 *
 *   struct db_slot *slot = db_kslot_claim();   first program of the chain
 *   ... fill slot->req (db_kreq_key, meta, value in slot->data) ...
 *   db_kcall(ctx, slot, DB_OP_SET, MY_CONT);    does not return
 *   -> the engine's stages -> conts[MY_CONT]: db_kslot() has the result in
 *      slot->resp; call again, or db_kslot_release() when done.
 *
 * Such programs can be preempted, so a slot belongs to a task, not a CPU:
 * claimed with a CAS on its owner word and found again by the task's
 * pid_tgid in every stage and continuation. A task holds at most one. The
 * slot's transaction entry is its own too, so a client transaction begins
 * and ends within one chain of tail calls (at most 33, the engine's
 * stages included). */

/* Owner (pid_tgid + 1) of each client slot, 0 when free. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DB_CLIENT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} client_owner SEC(".maps");

/* The client slot (0..DB_CLIENT_SLOTS-1) of each task holding one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DB_CLIENT_SLOTS);
	__type(key, __u64);
	__type(value, __u32);
} client_slots SEC(".maps");

/* The client slot number of the current task, or -1. */
static __always_inline int db_kslot_index(void)
{
	__u64 tid = bpf_get_current_pid_tgid();
	__u32 *n = bpf_map_lookup_elem(&client_slots, &tid);

	return n && *n < DB_CLIENT_SLOTS ? (int)*n : -1;
}

static __always_inline struct db_slot *db_kslot_at(int n)
{
	struct db_layout *l = db_layout();

	if (n < 0 || n >= DB_CLIENT_SLOTS || !l || l->magic != DB_LAYOUT_MAGIC)
		return NULL;
	__u32 idx = l->kernel_slot_base + n;
	return bpf_map_lookup_elem(&slots, &idx);
}

/* The current task's slot, claimed earlier in its chain, or NULL. */
static __always_inline struct db_slot *db_kslot(void)
{
	return db_kslot_at(db_kslot_index());
}

struct db_claim {
	__u64 owner;
	int found;
};

static long db_claim_one(__u64 i, struct db_claim *c)
{
	__u32 n = i;
	__u64 *w = bpf_map_lookup_elem(&client_owner, &n);

	if (w && __sync_val_compare_and_swap(w, 0, c->owner) == 0) {
		c->found = n;
		return 1;
	}
	return 0;
}

/* Claims a slot for the current task (its own again if it holds one);
 * NULL when every slot is taken (the caller retries later: nothing waits). */
static __always_inline struct db_slot *db_kslot_claim(void)
{
	__u64 tid = bpf_get_current_pid_tgid();
	int held = db_kslot_index();

	if (held >= 0)
		return db_kslot_at(held);
	struct db_claim c = { .owner = tid + 1, .found = -1 };
	bpf_loop(DB_CLIENT_SLOTS, db_claim_one, &c, 0);
	if (c.found < 0)
		return NULL;
	__u32 n = c.found;
	if (bpf_map_update_elem(&client_slots, &tid, &n, BPF_ANY)) {
		__u64 *w = bpf_map_lookup_elem(&client_owner, &n);
		if (w)
			__sync_lock_test_and_set(w, 0);
		return NULL;
	}
	return db_kslot_at(c.found);
}

/* Gives the current task's slot back (its transaction must be over). */
static __always_inline void db_kslot_release(void)
{
	__u64 tid = bpf_get_current_pid_tgid();
	int n = db_kslot_index();

	if (n < 0)
		return;
	__u32 idx = n;
	__u64 *w = bpf_map_lookup_elem(&client_owner, &idx);
	bpf_map_delete_elem(&client_slots, &tid);
	if (w)
		__sync_lock_test_and_set(w, 0);
}

/* Sets the request's key from a name in the caller's memory (stack or map
 * value; len bytes, 1..DB_KEY_MAX, no '/' or NUL: the caller's to check).
 * The name is zero padded, as the engine compares it. */
static __always_inline int db_kreq_key(struct db_slot *slot, const char *name, __u32 len)
{
	struct db_layout *l = db_layout();

	if (!l || len == 0 || len > DB_KEY_MAX)
		return -EINVAL;
	__builtin_memset(&slot->req.key, 0, sizeof(slot->req.key));
	if (bpf_probe_read_kernel(slot->req.key.name, len & 0xff, name))
		return -EINVAL;
	slot->req.key_len = len;
	return db_key_hash(&slot->req.key, len, l->hash_seed, &slot->req.hkey);
}

/* Starts an op already written into the slot (flags, key, meta, value in
 * data, txn). Does not return when the engine takes it: the continuation
 * conts[cont] runs next. Returns -ENOSYS if the engine is not loaded. */
static __always_inline int db_kcall(void *ctx, struct db_slot *slot, __u32 op, __u32 cont)
{
	slot->req.op = op;
	slot->req.cont = cont;
	bpf_tail_call(ctx, &stages, DB_STAGE_DISPATCH);
	return -ENOSYS;
}

/* The transaction entry (req.txn) of the current task's slot: set it in
 * req.txn before BEGIN and keep it, with resp.txn_id in req.txn_id, for the
 * transaction's ops; 0 (autocommit) otherwise. */
static __always_inline __u32 db_ktxn(void)
{
	int n = db_kslot_index();

	return n < 0 ? 0 : DB_USER_TXNS + n + 1;
}

#endif /* BPFDB_KERNEL_H */
