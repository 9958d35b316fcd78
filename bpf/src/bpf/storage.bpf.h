/* SPDX-License-Identifier: MIT */
/*
 * storage.bpf.h - value memory: a pool of granules cut into runs of size
 * classes, and a pool of pages, both grown in segments by user space
 * (bpfdb_kernel.h).
 *
 * A value of len bytes lives in
 *   len == 0               nothing (loc unused)
 *   len <= DB_SMALL_MAX    one run of its size class      (loc = first granule)
 *   len >  DB_SMALL_MAX    an index run listing its full pages and the run
 *                          of its tail (loc = the index run's granule)
 * The classes (bpfdb.h) step by at most a quarter from 64 bytes up, so a
 * 100-byte value takes 112 bytes, a 4097-byte value a page, an 8-byte run
 * and a 16-byte index, and no value of 25 bytes or more wastes a quarter
 * of what it takes. Runs come from their class's free list, else from the
 * bump counter below the ready count; pages from the page free stack, else
 * their bump counter. All of it is lock-free (CAS), so allocation never
 * takes a lock. When neither has room the op fails with ENOSPC and the
 * pool's detail, and user space adds a segment (up to the pool's cap) and
 * runs it again.
 */
#ifndef STORAGE_BPF_H
#define STORAGE_BPF_H

#include "engine.bpf.h"

/* CAS attempts to push a freed run on its class's list before it is left
 * off (still counted as used, never handed out again; stats.runs_lost
 * counts them): far more than two CPUs can contend for. */
#define DB_FREE_CAS_TRIES 32
/* Runs a split run's remainder is given back as at most: the largest class
 * that fits takes at least four fifths of what is left above 64 bytes, and
 * 64 bytes or less is one class: at most three runs, for every pair of
 * classes. */
#define DB_SPLIT_PIECES 8

/* e such that 2^e <= x < 2^(e+1), for 64 <= x < DB_SMALL_MAX. */
static __always_inline __u32 top_bit(__u32 x)
{
	if (x >> 11)
		return 11;
	if (x >> 10)
		return 10;
	if (x >> 9)
		return 9;
	if (x >> 8)
		return 8;
	return x >> 7 ? 7 : 6;
}

/* Size class of a run for len bytes (1..DB_SMALL_MAX): its index, and its
 * size in granules in *granules. 8..64 bytes in steps of 8, then four
 * classes per doubling: 80, 96, 112, 128, 160, ..., 3584, 4096. */
static __always_inline __u32 class_of(__u32 len, __u32 *granules)
{
	if (len <= 64) {
		__u32 g = (len + DB_GRANULE - 1) >> DB_GRANULE_SHIFT;

		*granules = g ? g : 1;
		return g ? g - 1 : 0;
	}
	__u32 e = top_bit(len - 1), shift = e - 2;
	__u32 q = (len + (1u << shift) - 1) >> shift; /* 5..8 quarters */

	*granules = (q << shift) >> DB_GRANULE_SHIFT;
	return 8 + (e - 6) * 4 + q - 5;
}

/* Granules of a run of class c: the inverse of class_of. */
static __always_inline __u32 class_granules(__u32 c)
{
	if (c < 8)
		return c + 1;
	__u32 e = 6 + (c - 8) / 4, q = 5 + (c - 8) % 4;

	return (q << (e - 2)) >> DB_GRANULE_SHIFT;
}

/* The largest class whose runs take at most r (>= 1) granules. */
static __always_inline __u32 class_floor(__u32 r)
{
	__u32 bytes = r << DB_GRANULE_SHIFT, k;

	if (bytes <= 64)
		return r - 1;
	if (bytes >= DB_SMALL_MAX)
		return DB_CLASSES - 1;
	__u32 e = top_bit(bytes), q = bytes >> (e - 2); /* 4..7 quarters of 2^e */

	return class_of(q >= 5 ? q << (e - 2) : 1u << e, &k);
}

/* The head of class c's free list, and its count of runs. The mask is for
 * the verifier (see index_entry). */
static __always_inline __u64 *free_head(__u32 c)
{
	barrier_var(c);
	return &small_free[c & (DB_CLASSES - 1)];
}

static __always_inline __s64 *free_runs(__u32 c)
{
	barrier_var(c);
	return &small_free_runs[c & (DB_CLASSES - 1)];
}

static __always_inline __u64 free_head_next(__u64 h, __u32 top)
{
	return (((h >> 32) + 1) << 32) | top;
}

/* A run from class c's free list (pause: the test hook's pause). */
static __always_inline int pop_run(__u32 c, __u32 *g, bool pause)
{
	__u64 *head = free_head(c);
	__s64 *runs = free_runs(c);

	/* Claim a run before taking one, so that the count never exceeds the
	 * list: then every claim finds a run. */
	if (READ_ONCE(*runs) <= 0)
		return -ENOENT;
	if (__sync_fetch_and_add(runs, -1) <= 0) {
		__sync_fetch_and_add(runs, 1);
		return -ENOENT;
	}
	for (int i = 0; i < DB_LOCK_CAS_TRIES; i++) {
		__u64 h = READ_ONCE(*head);
		__u32 top = (__u32)h;

		if (!top)
			break;
		__u32 *run = (__u32 *)db_small_at(top - 1);

		if (!run)
			break;
		/* If another CPU took this run meanwhile, the count in the head
		 * changed and the CAS fails, whatever it now holds. */
		__u32 next = READ_ONCE(*run);

		if (pause) {
			stat_add(&stats.alloc_pauses, 1);
			test_pause(alloc_pause_loops);
			pause = false;
		}
		if (__sync_val_compare_and_swap(head, h, free_head_next(h, next)) == h) {
			*g = top - 1;
			return 0;
		}
	}
	__sync_fetch_and_add(runs, 1);
	return -EAGAIN;
}

/* Puts the run at granule g on class c's list; false if it kept losing
 * the CAS and was left off (counted in stats.runs_lost). */
static __always_inline bool push_run(__u32 c, __u32 g)
{
	__u64 *head = free_head(c);
	__u32 *run = (__u32 *)db_small_at(g);

	if (!run)
		return false;
	for (int i = 0; i < DB_FREE_CAS_TRIES; i++) {
		__u64 h = READ_ONCE(*head);

		WRITE_ONCE(*run, (__u32)h);
		if (__sync_val_compare_and_swap(head, h, free_head_next(h, g + 1)) == h) {
			__sync_fetch_and_add(free_runs(c), 1);
			return true;
		}
	}
	stat_add(&stats.runs_lost, 1);
	return false;
}

/* Splitting a free run of a larger class when a class has none left. */
struct split_loop {
	__u32 c;    /* the class wanted */
	__u32 k;    /* its granules */
	__u32 g;    /* out: the run taken */
	__u32 left; /* out: granules of it after the first k */
	__s32 err;
};

static long split_one(__u64 i, struct split_loop *sl)
{
	__u32 c = sl->c + 1 + (__u32)i, g;

	if (c >= DB_CLASSES)
		return 1;
	if (pop_run(c, &g, false))
		return 0;
	sl->g = g;
	sl->left = class_granules(c) - sl->k;
	sl->err = 0;
	return 1;
}

/* Gives back the granules of a split run after the part taken, as runs of
 * the largest classes that fit. */
struct piece_loop {
	__u32 at;
	__u32 left;
};

static long give_back_one(__u64 i, struct piece_loop *pl)
{
	if (!pl->left)
		return 1;
	__u32 c = class_floor(pl->left), n = class_granules(c);

	if (n > pl->left)
		return 1;
	push_run(c, pl->at);
	pl->at += n;
	pl->left -= n;
	return 0;
}

/* The first k granules of a free run of a class above c, the rest given
 * back as smaller runs: so memory freed by large values serves smaller
 * ones once the pool is at its cap (never the other way: runs are not
 * merged). */
static __always_inline int take_from_larger(__u32 c, __u32 k, __u32 *g)
{
	struct split_loop sl = { .c = c, .k = k, .err = -ENOSPC };

	bpf_loop(DB_CLASSES, split_one, &sl, 0);
	if (sl.err)
		return sl.err;
	*g = sl.g;
	struct piece_loop pl = { .at = sl.g + k, .left = sl.left };

	bpf_loop(DB_SPLIT_PIECES, give_back_one, &pl, 0);
	return 0;
}

/* k never-used granules that do not cross a segment's end. The bump is a
 * CAS, not a fetch-add, so that a failed attempt does not move the counter
 * past granules a segment added later will back. The few granules skipped
 * at a segment's end stay unused. */
static __always_inline int bump_run(__u32 k, __u32 *g)
{
	for (int i = 0; i < DB_LOCK_CAS_TRIES; i++) {
		__u64 n = READ_ONCE(small_next), at = n;

		if ((n & (DB_SMALL_SEG - 1)) + k > DB_SMALL_SEG)
			at = (n | (DB_SMALL_SEG - 1)) + 1;
		if (at + k > READ_ONCE(small_ready))
			return -ENOSPC;
		if (__sync_val_compare_and_swap(&small_next, n, at + k) == n) {
			*g = (__u32)at;
			return 0;
		}
	}
	return -EAGAIN;
}

static __always_inline int alloc_run(__u32 len, __u32 *g, bool pause)
{
	__u32 k, c = class_of(len, &k);
	int err = pop_run(c, g, pause);

	if (err == -ENOENT)
		err = bump_run(k, g);
	if (err == -ENOSPC && !take_from_larger(c, k, g))
		err = 0;
	if (!err)
		stat_add(&stats.small_used, k);
	return err;
}

static __always_inline void free_run(__u32 len, __u32 g)
{
	__u32 k, c = class_of(len, &k);

	if (push_run(c, g))
		stat_add(&stats.small_used, -(__s64)k);
}

/* A recycled page, else the next never-used one below the ready count. */
static __always_inline int alloc_page(__u32 *id)
{
	if (bpf_map_pop_elem(&page_free, id) == 0)
		goto got;
	for (int i = 0; i < DB_LOCK_CAS_TRIES; i++) {
		__u64 n = READ_ONCE(page_next);

		if (n >= READ_ONCE(page_ready))
			return -ENOSPC;
		if (__sync_val_compare_and_swap(&page_next, n, n + 1) == n) {
			*id = (__u32)n;
			goto got;
		}
	}
	return -EAGAIN;
got:
	stat_add(&stats.pages_used, 1);
	return 0;
}

static __always_inline void free_page(__u32 id)
{
	bpf_map_push_elem(&page_free, &id, 0);
	stat_add(&stats.pages_used, -1);
}

/* The shape of a value over a page: full pages, then a tail (0: none). */
static __always_inline __u32 full_pages(__u32 len)
{
	return len / DB_PAGE_SIZE;
}

static __always_inline __u32 tail_of(__u32 len)
{
	return len % DB_PAGE_SIZE;
}

/* Bytes of the index run of a value over a page. */
static __always_inline __u32 index_bytes(__u32 len)
{
	return (full_pages(len) + (tail_of(len) ? 1 : 0)) * 4;
}

/* Loops over the pages of a large value run through bpf_loop, so the
 * verifier checks each body once instead of once per page. */
struct page_loop {
	__u32 index_id; /* granule of the index run */
	__u32 slot_idx; /* read/write: slot whose data area is copied */
	__u32 got;      /* alloc: pages allocated so far */
	__s32 err;
	bool to_slot;   /* copy: pool -> slot (a read), else slot -> pool */
};

/* Entry i (< DB_INDEX_IDS) of the index run at granule index_id. */
static __always_inline __u32 *index_entry(__u32 index_id, __u64 i)
{
	__u32 *ids = (__u32 *)db_small_at(index_id);

	if (!ids || i >= DB_INDEX_IDS)
		return NULL;
	/* The mask, a no-op here, bounds the offset for the verifier, which
	 * may not see the check above on the register it is given (the
	 * barrier keeps the compiler from dropping it). */
	barrier_var(i);
	return &ids[i & (DB_SMALL_MAX / 4 - 1)];
}

static long free_one_page(__u64 i, struct page_loop *pl)
{
	__u32 *id = index_entry(pl->index_id, i);

	if (!id)
		return 1;
	free_page(*id);
	return 0;
}

static long alloc_one_page(__u64 i, struct page_loop *pl)
{
	__u32 *id = index_entry(pl->index_id, i);

	if (!id) {
		pl->err = -EIO;
		return 1;
	}
	pl->err = alloc_page(id);
	if (pl->err)
		return 1;
	pl->got++;
	return 0;
}

static __always_inline struct db_page *data_page(struct page_loop *pl, __u64 i)
{
	__u32 *id = index_entry(pl->index_id, i);

	if (!id || i >= DB_VALUE_PAGES)
		return NULL;
	return db_page_at(*id);
}

/* Copies one full page between the pool and the slot's data area. */
static long copy_one_page(__u64 i, struct page_loop *pl)
{
	struct db_page *p = data_page(pl, i);
	struct db_slot *slot = bpf_map_lookup_elem(&slots, &pl->slot_idx);

	if (!p || !slot || i >= DB_VALUE_PAGES) {
		pl->err = -EIO;
		return 1;
	}
	void *data = slot->data + i * DB_PAGE_SIZE;
	if (pl->to_slot ? bpf_probe_read_kernel(data, DB_PAGE_SIZE, p)
			: bpf_probe_read_kernel(p, DB_PAGE_SIZE, data)) {
		pl->err = -EIO;
		return 1;
	}
	return 0;
}

/* Frees the storage of a value. */
__noinline int free_storage(__u32 loc, __u32 len)
{
	if (len == 0)
		return 0;
	if (len <= DB_SMALL_MAX) {
		free_run(len, loc);
		return 0;
	}
	struct page_loop pl = { .index_id = loc };
	__u32 full = full_pages(len), tail = tail_of(len);

	bpf_loop(full, free_one_page, &pl, 0);
	if (tail) {
		__u32 *t = index_entry(loc, full);

		if (t)
			free_run(tail, *t);
	}
	free_run(index_bytes(len), loc);
	return 0;
}

/* Allocates storage for a value of len bytes into *loc. On failure nothing
 * stays allocated and the error is -ENOSPC with *detail saying which pool,
 * or -EAGAIN (DB_D_RACE) when allocators kept racing on a CAS. */
__noinline int alloc_storage(__u32 len, __u32 *loc, __u32 *detail)
{
	int err;

	if (!loc || !detail)
		return -EINVAL;
	*detail = DB_D_NONE;
	if (len == 0) {
		*loc = 0;
		return 0;
	}
	if (len > DB_VALUE_LIMIT)
		return -EFBIG;
	err = alloc_run(len <= DB_SMALL_MAX ? len : index_bytes(len), loc,
			alloc_pause_loops && len == alloc_pause_len);
	if (err || len <= DB_SMALL_MAX) {
		*detail = err == -EAGAIN ? DB_D_RACE : DB_D_NO_SMALL;
		return err;
	}

	struct page_loop pl = { .index_id = *loc };
	__u32 full = full_pages(len), tail = tail_of(len);

	bpf_loop(full, alloc_one_page, &pl, 0);
	err = pl.got == full ? 0 : pl.err ? pl.err : -ENOSPC;
	*detail = err == -EAGAIN ? DB_D_RACE : DB_D_NO_PAGES;
	if (!err && tail) {
		__u32 *t = index_entry(pl.index_id, full);

		err = t ? alloc_run(tail, t, false) : -EIO;
		*detail = err == -EAGAIN ? DB_D_RACE : DB_D_NO_SMALL;
	}
	if (!err)
		return 0;
	bpf_loop(pl.got, free_one_page, &pl, 0);
	free_run(index_bytes(len), pl.index_id);
	return err;
}

/* Copies n (<= DB_SMALL_MAX) bytes between the run at granule g and the
 * slot's data area at offset off (< DB_VALUE_LIMIT, with n bytes after it). */
static __always_inline int copy_run(struct db_slot *slot, __u32 off, __u32 g, __u32 n,
				    bool to_slot)
{
	__u8 *run = db_small_at(g);

	if (!run || n > DB_SMALL_MAX || off > DB_VALUE_LIMIT - DB_SMALL_MAX)
		return -EIO;
	void *data = slot->data + off;
	return to_slot ? bpf_probe_read_kernel(data, n, run) : bpf_probe_read_kernel(run, n, data);
}

/* Copies a value between its storage at loc and the data area of slot
 * slot_idx: into the slot (a read) or out of it (a write into storage that
 * alloc_storage returned). */
__noinline int copy_storage(__u32 slot_idx, __u32 loc, __u32 len, bool to_slot)
{
	struct db_slot *slot = bpf_map_lookup_elem(&slots, &slot_idx);

	if (!slot)
		return -EIO;
	if (len == 0)
		return 0;
	if (len <= DB_SMALL_MAX)
		return copy_run(slot, 0, loc, len, to_slot);
	struct page_loop pl = { .index_id = loc, .slot_idx = slot_idx, .to_slot = to_slot };
	__u32 full = full_pages(len), tail = tail_of(len);

	bpf_loop(full, copy_one_page, &pl, 0);
	if (pl.err || !tail)
		return pl.err;
	/* A tail means fewer than DB_VALUE_PAGES full pages before it. */
	__u32 *t = index_entry(loc, full);

	return t ? copy_run(slot, (full & (DB_VALUE_PAGES - 1)) * DB_PAGE_SIZE, *t, tail, to_slot)
		 : -EIO;
}

static __always_inline int read_storage(__u32 slot_idx, __u32 loc, __u32 len)
{
	return copy_storage(slot_idx, loc, len, true);
}

static __always_inline int write_storage(__u32 slot_idx, __u32 loc, __u32 len)
{
	return copy_storage(slot_idx, loc, len, false);
}

#endif /* STORAGE_BPF_H */
