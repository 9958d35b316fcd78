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
 *
 * A transaction takes its side once and keeps it until RELEASE: as a
 * lister for its scan, as a writer for an insert or a removal it stages.
 * A one-op write takes the writer side only around its commit (log and
 * stamp), which is where its change becomes visible: a scan that locked
 * first makes it fail and undo; a scan that locks after finds it
 * committed. New values of existing keys change no name and take nothing.
 *
 * The gate word, top_gate (engine.bpf.h), holds three counts:
 *   listers          transactions whose scan locked the set
 *   txn writers      transactions that staged an insert or a removal
 *   one-op writers   one-op writes committing an insert or a removal now
 */
#ifndef TOP_BPF_H
#define TOP_BPF_H

#include "engine.bpf.h"

#define DB_TOP_BITS 21 /* bits per count; each is bounded below (static asserts) */
#define DB_TOP_LISTER (1ULL << 0)
#define DB_TOP_TXN_WRITER (1ULL << DB_TOP_BITS)
#define DB_TOP_OP_WRITER (1ULL << (2 * DB_TOP_BITS))
#define DB_TOP_COUNT(word, unit) (((word) / (unit)) & ((1ULL << DB_TOP_BITS) - 1))

_Static_assert(DB_MAX_TXNS < (1 << DB_TOP_BITS), "a count of transactions fits");
_Static_assert(DB_MAX_SLOTS + DB_CLIENT_SLOTS < (1 << DB_TOP_BITS), "a count of one-op writes fits");

/* What a transaction holds of the gate (db_txn.top). */
#define DB_TOP_LISTING (1u << 0)
#define DB_TOP_WRITING (1u << 1)

/* Whether the request's key (key2 when second) is a top-level key: no '/'
 * in its key_len bytes. Eight bytes at a time: a word holds a '/' iff the
 * word XOR "////////" holds a zero byte. */
__noinline int key_is_top(struct db_slot *slot, int second)
{
	if (!slot)
		return 0;
	struct db_key *key = second ? &slot->req.key2 : &slot->req.key;
	__u32 len = second ? slot->req.key2_len : slot->req.key_len;
	__u64 *words = (__u64 *)key->name;

	for (__u32 i = 0; i < DB_KEY_SIZE / 8; i++) {
		if (i * 8 >= len)
			break;
		__u64 w = words[i];
		if (len - i * 8 < 8) /* the last word: bytes past len are not the key's */
			w &= (1ULL << ((len - i * 8) * 8)) - 1;
		__u64 x = w ^ 0x2f2f2f2f2f2f2f2fULL;
		if ((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL) {
			/* A zero byte in x; a masked byte is 0x2f there, never zero. */
			return 0;
		}
	}
	return 1;
}

/* Adds unit to the gate unless the other side is held by someone other
 * than the caller's transaction (own_listers, own_txn_writers: what it
 * holds already). 0, or the detail of the refusal: a lister refused by
 * one-op writers only retries (they finish within their op). */
static __always_inline __u32 top_enter(__u64 unit, __u64 own_listers, __u64 own_txn_writers)
{
	for (int i = 0; i < DB_LOCK_CAS_TRIES && i < lock_cas_tries; i++) {
		__u64 old = READ_ONCE(top_gate);

		if (unit == DB_TOP_LISTER) {
			if (DB_TOP_COUNT(old, DB_TOP_TXN_WRITER) > own_txn_writers)
				return DB_D_TOP_LOCKED;
			if (DB_TOP_COUNT(old, DB_TOP_OP_WRITER))
				return DB_D_LOCKED_AUTOCOMMIT;
		} else if (DB_TOP_COUNT(old, DB_TOP_LISTER) > own_listers) {
			return DB_D_TOP_LOCKED;
		}
		if (__sync_val_compare_and_swap(&top_gate, old, old + unit) == old)
			return 0;
	}
	return DB_D_RACE; /* other writers kept changing the word: retry */
}

/* t takes `side` (DB_TOP_LISTING or DB_TOP_WRITING) until RELEASE; a side
 * it holds already is kept. 0, or the detail of the refusal. */
static __always_inline __u32 top_join_txn(struct db_txn *t, __u32 side)
{
	__u32 held = t->top;

	if (held & side)
		return 0;
	__u32 d = top_enter(side == DB_TOP_LISTING ? DB_TOP_LISTER : DB_TOP_TXN_WRITER,
			    !!(held & DB_TOP_LISTING), !!(held & DB_TOP_WRITING));
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
		__sync_fetch_and_sub(&top_gate, DB_TOP_TXN_WRITER);
	t->top = 0;
}

/* A one-op write's insert or removal of a top-level key, around its
 * commit: enter (0 or the refusal's detail), then leave once stamped or
 * undone. */
static __always_inline __u32 top_enter_op(void)
{
	return top_enter(DB_TOP_OP_WRITER, 0, 0);
}

static __always_inline void top_leave_op(void)
{
	__sync_fetch_and_sub(&top_gate, DB_TOP_OP_WRITER);
}

#endif /* TOP_BPF_H */
