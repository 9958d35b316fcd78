/* SPDX-License-Identifier: MIT */
/*
 * top.bpf.h - the lock on the set of top-level keys, against phantoms.
 *
 * A top-level key is one whose name holds no '/' (the daemon keeps its
 * directories below keys that do, and locks each directory's record for
 * its listings instead). A read-write transaction's scan may lock the set
 * of top-level keys (SCAN with DB_F_LOCK_TOP): until the transaction ends,
 * nobody else inserts or removes one. Those who do are the other side of
 * the same lock: any number of listers, or any number of writers, never
 * both (intention locks, in effect), and no-wait like every lock here.
 * New values of existing keys change no name and take nothing.
 *
 * top_gate (engine.bpf.h) counts the transactions on each side, each
 * joining once by CAS while the other side is empty (its own share aside)
 * and leaving at RELEASE. A one-op insert or removal does not join: it
 * checks, under the commit lock, that no lister holds the set, and a
 * lister joins under the commit lock too. So a one-op commit either comes
 * wholly before a scan's lock (the scan finds it committed) or finds the
 * lister and fails, undone (commit_log_one) - for a compare, not two
 * atomic read-modify-writes on every root create and delete.
 */
#ifndef TOP_BPF_H
#define TOP_BPF_H

#include "engine.bpf.h"
#include "commit.bpf.h"

_Static_assert(DB_MAX_TXNS < (1ULL << 32), "a count of transactions fits");

/* What a transaction holds of the gate (db_txn.top). */
#define DB_TOP_LISTING (1u << 0)
#define DB_TOP_WRITING (1u << 1)

/* Adds unit to the gate unless the other side is held by another
 * transaction than the caller's (own_listers, own_writers: what it holds
 * already). 0, or the detail of the refusal. */
static __always_inline __u32 top_enter(__u64 unit, __u64 own_listers, __u64 own_writers)
{
	for (int i = 0; i < DB_LOCK_CAS_TRIES && i < lock_cas_tries; i++) {
		__u64 old = READ_ONCE(top_gate);
		bool other = unit == DB_TOP_LISTER
				     ? DB_TOP_COUNT(old, DB_TOP_WRITER) > own_writers
				     : DB_TOP_COUNT(old, DB_TOP_LISTER) > own_listers;

		if (other)
			return DB_D_TOP_LOCKED;
		if (__sync_val_compare_and_swap(&top_gate, old, old + unit) == old)
			return 0;
	}
	return DB_D_RACE; /* others kept changing the word: retry */
}

/* The transaction at table index idx takes `side` (DB_TOP_LISTING or
 * DB_TOP_WRITING) until RELEASE; a side it holds already is kept. A lister
 * joins under the commit lock (see above); a commit holding it is a
 * transient DB_D_COMMIT_BUSY. 0, or the detail of the refusal. A global
 * function: its CAS loops are verified once, not on every path of the
 * three stages that call it. */
__noinline int top_join_txn(__u32 idx, __u32 side)
{
	struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);

	if (!t)
		return DB_D_BAD_REQUEST;
	__u32 held = t->top;
	__u64 own_listers = !!(held & DB_TOP_LISTING), own_writers = !!(held & DB_TOP_WRITING);
	__u32 d;

	if (held & side)
		return 0;
	if (side == DB_TOP_LISTING) {
		if (!commit_begin(idx))
			return DB_D_COMMIT_BUSY;
		d = top_enter(DB_TOP_LISTER, own_listers, own_writers);
		commit_cancel();
	} else {
		d = top_enter(DB_TOP_WRITER, own_listers, own_writers);
	}
	if (!d)
		t->top = held | side;
	return d;
}

/* RELEASE: t gives back what it holds. */
static __always_inline void top_leave_txn(struct db_txn *t)
{
	if (t->top & DB_TOP_LISTING)
		__sync_fetch_and_sub(&top_gate, DB_TOP_LISTER);
	if (t->top & DB_TOP_WRITING)
		__sync_fetch_and_sub(&top_gate, DB_TOP_WRITER);
	t->top = 0;
}

#endif /* TOP_BPF_H */
