/* SPDX-License-Identifier: MIT */
/*
 * storage.bpf.h - value memory: two pools, grown in segments by user space
 * (bpfdb_kernel.h), with free lists.
 *
 * A value of len bytes lives in
 *   len == 0                      nothing (loc unused)
 *   len <= DB_SMALL_CHUNK         one small chunk          (loc = chunk id)
 *   len <= DB_PAGE_SIZE           one page                 (loc = page id)
 *   len >  DB_PAGE_SIZE           an index page of ids     (loc = index page id)
 *                                 + pages_of(len) data pages
 * so a 100-byte value costs 128 bytes, not a page, and a 1 MiB value costs
 * 257 pages. Ids come from the free stack, else from a bump counter below
 * the ready count; both are atomic, so allocation never takes a lock. When
 * neither has an id the op fails with ENOSPC and the pool's detail, and
 * user space adds a segment (up to the pool's cap) and runs it again.
 */
#ifndef STORAGE_BPF_H
#define STORAGE_BPF_H

#include "engine.bpf.h"

struct db_index {
	__u32 ids[DB_PAGE_IDS];
};

/* A recycled id, else the next never-used one below the ready count. The
 * bump is a CAS, not a fetch-add, so that a failed attempt does not move
 * the counter past ids a segment added later will back. */
static __always_inline int alloc_id(void *free_stack, __u64 *next, __u64 *ready, __u32 *id)
{
	if (bpf_map_pop_elem(free_stack, id) == 0)
		return 0;
	for (int i = 0; i < DB_LOCK_CAS_TRIES; i++) {
		__u64 n = READ_ONCE(*next);

		if (n >= READ_ONCE(*ready))
			return -ENOSPC;
		if (__sync_val_compare_and_swap(next, n, n + 1) == n) {
			*id = (__u32)n;
			return 0;
		}
	}
	return -EAGAIN;
}

static __always_inline int alloc_small(__u32 *id)
{
	int err = alloc_id(&small_free, &small_next, &small_ready, id);

	if (!err)
		stat_add(&stats.small_used, 1);
	return err;
}

static __always_inline int alloc_page(__u32 *id)
{
	int err = alloc_id(&page_free, &page_next, &page_ready, id);

	if (!err)
		stat_add(&stats.pages_used, 1);
	return err;
}

static __always_inline void free_small(__u32 id)
{
	bpf_map_push_elem(&small_free, &id, 0);
	stat_add(&stats.small_used, -1);
}

static __always_inline void free_page(__u32 id)
{
	bpf_map_push_elem(&page_free, &id, 0);
	stat_add(&stats.pages_used, -1);
}

/* Loops over the data pages of a large value run through bpf_loop, so the
 * verifier checks each body once instead of once per page. */
struct page_loop {
	__u32 index_id; /* index page listing the data pages */
	__u32 slot_idx; /* read/write: slot whose data area is copied */
	__u32 got;      /* alloc: pages allocated so far */
	__s32 err;
	bool to_slot;   /* copy: pool -> slot (a read), else slot -> pool */
};

static __always_inline struct db_index *index_page(__u32 id)
{
	return (struct db_index *)db_page_at(id);
}

static long free_one_page(__u64 i, struct page_loop *pl)
{
	struct db_index *index = index_page(pl->index_id);

	if (!index || i >= DB_PAGE_IDS)
		return 1;
	free_page(index->ids[i]);
	return 0;
}

static long alloc_one_page(__u64 i, struct page_loop *pl)
{
	struct db_index *index = index_page(pl->index_id);

	if (!index || i >= DB_PAGE_IDS) {
		pl->err = -EIO;
		return 1;
	}
	pl->err = alloc_page(&index->ids[i]);
	if (pl->err)
		return 1;
	pl->got++;
	return 0;
}

static __always_inline struct db_page *data_page(struct page_loop *pl, __u64 i)
{
	struct db_index *index = index_page(pl->index_id);

	if (!index || i >= DB_VALUE_PAGES)
		return NULL;
	return db_page_at(index->ids[i]);
}

/* Copies one data page between the pool and the slot's data area. */
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
	if (len <= DB_SMALL_CHUNK) {
		free_small(loc);
		return 0;
	}
	if (len > DB_PAGE_SIZE) {
		struct page_loop pl = { .index_id = loc };

		bpf_loop(pages_of(len), free_one_page, &pl, 0);
	}
	free_page(loc);
	return 0;
}

/* Allocates storage for a value of len bytes into *loc. On failure nothing
 * stays allocated and the error is -ENOSPC with *detail saying which pool,
 * or -EAGAIN (DB_D_RACE) when allocators kept racing on the bump counter. */
__noinline int alloc_storage(__u32 len, __u32 *loc, __u32 *detail)
{
	int err;

	if (!loc || !detail)
		return -EINVAL;
	if (len == 0) {
		*loc = 0;
		return 0;
	}
	if (len <= DB_SMALL_CHUNK) {
		err = alloc_small(loc);
		*detail = err == -EAGAIN ? DB_D_RACE : DB_D_NO_SMALL;
		return err;
	}
	err = alloc_page(loc);
	if (err || len <= DB_PAGE_SIZE) {
		*detail = err == -EAGAIN ? DB_D_RACE : DB_D_NO_PAGES;
		return err;
	}

	struct page_loop pl = { .index_id = *loc };
	__u32 n = pages_of(len);

	bpf_loop(n, alloc_one_page, &pl, 0);
	if (pl.got == n)
		return 0;
	bpf_loop(pl.got, free_one_page, &pl, 0);
	free_page(pl.index_id);
	*detail = pl.err == -EAGAIN ? DB_D_RACE : DB_D_NO_PAGES;
	return pl.err ? pl.err : -ENOSPC;
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
	if (len <= DB_SMALL_CHUNK) {
		struct db_small_chunk *c = db_small_at(loc);

		if (!c)
			return -EIO;
		return to_slot ? bpf_probe_read_kernel(slot->data, DB_SMALL_CHUNK, c)
			       : bpf_probe_read_kernel(c, DB_SMALL_CHUNK, slot->data);
	}
	if (len <= DB_PAGE_SIZE) {
		struct db_page *p = db_page_at(loc);

		if (!p)
			return -EIO;
		return to_slot ? bpf_probe_read_kernel(slot->data, DB_PAGE_SIZE, p)
			       : bpf_probe_read_kernel(p, DB_PAGE_SIZE, slot->data);
	}
	struct page_loop pl = { .index_id = loc, .slot_idx = slot_idx, .to_slot = to_slot };

	bpf_loop(pages_of(len), copy_one_page, &pl, 0);
	return pl.err;
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
