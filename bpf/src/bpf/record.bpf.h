/* SPDX-License-Identifier: MIT */
/*
 * record.bpf.h - records, their lock words, garbage collection and the
 * transaction table (the commit lock is in commit.bpf.h).
 *
 * Lock word of a record (no bpf_spin_lock in uprobe programs, so atomics):
 *   0                    free
 *   DB_LOCK_S | n        n shared holders (n may briefly be 0)
 *   DB_LOCK_X | owner    one exclusive holder
 *   DB_LOCK_DEAD         leaving the map
 * Every acquisition is no-wait: a taken lock fails at once with EBUSY.
 */
#ifndef RECORD_BPF_H
#define RECORD_BPF_H

#include "engine.bpf.h"
#include "storage.bpf.h"

static __always_inline bool key_valid(struct db_key *key)
{
	return key->name[0] != 0 && key->name[DB_KEY_SIZE - 1] == 0;
}

static __always_inline __u32 busy_detail(__u64 lock)
{
	if (lock == DB_LOCK_DEAD || ((lock & DB_LOCK_X) && (lock & DB_OWNER_AUTOCOMMIT)))
		return DB_D_LOCKED_AUTOCOMMIT;
	return DB_D_LOCKED_TXN;
}

/* Whether the lock word is held by a transaction: exclusively by one, or
 * shared (only transactions take shared locks). */
static __always_inline bool txn_holds(__u64 lock)
{
	if (lock == DB_LOCK_DEAD)
		return false;
	if (lock & DB_LOCK_X)
		return !(lock & DB_OWNER_AUTOCOMMIT);
	return (lock & DB_LOCK_S) && (lock & 0xffffffffULL) != 0;
}

/* Exclusive lock on a record nobody else holds. S with no holders counts
 * as free. Returns the old lock word on failure, 0 on success. */
static __always_inline __u64 try_lock_x(struct db_record *rec, __u64 mine)
{
	__u64 old = __sync_val_compare_and_swap(&rec->lock, DB_LOCK_FREE, mine);

	if (old == DB_LOCK_S)
		old = __sync_val_compare_and_swap(&rec->lock, DB_LOCK_S, mine);
	return old == DB_LOCK_FREE || old == DB_LOCK_S ? 0 : old;
}

/* Puts a long name in long_names before its record goes in. An entry
 * already there is the name of a record being created or removed under
 * the same hash: the same name (fine), or another (a collision). */
static __always_inline bool add_long_name(struct db_slot *slot, struct db_hkey *hkey,
					  struct db_key *key)
{
	long err = bpf_map_update_elem(&long_names, hkey, key, BPF_NOEXIST);

	if (err == 0)
		return true;
	if (err == -EEXIST) {
		struct db_key *had = bpf_map_lookup_elem(&long_names, hkey);

		if (!had) {
			fail(slot, -EBUSY, DB_D_RACE);
			return false;
		}
		__u64 *a = (__u64 *)had->name;
		__u64 *b = (__u64 *)key->name;
		for (int i = 0; i < DB_KEY_SIZE / 8; i++) {
			if (a[i] != b[i]) {
				fail(slot, -ENOSPC, DB_D_COLLISION);
				return false;
			}
		}
		return true;
	}
	if (err == -ENOMEM)
		fail(slot, -EBUSY, DB_D_RACE);
	else
		fail(slot, -ENOSPC, DB_D_NO_KEYS);
	return false;
}

/* Inserts an empty record for the request's key (key2 when second), born
 * with the lock word `born`: X for a writer, or one shared holder for a
 * reader locking a key's absence. Returns NULL after writing the error
 * into the slot; a record inserted meanwhile by someone else is a
 * transient EBUSY (the op is retried and then finds it). */
static __always_inline struct db_record *create_record(struct db_slot *slot, bool second,
							__u64 born)
{
	struct db_hkey *hkey = second ? &slot->req.hkey2 : &slot->req.hkey;
	struct db_key *key = second ? &slot->req.key2 : &slot->req.key;
	/* Built in the slot: a record does not fit on the 512-byte stack. */
	struct db_record *init = &slot->scratch;

	__builtin_memset(init, 0, sizeof(*init));
	__u64 gen = __sync_fetch_and_add(&record_gen, 1) << 32;

	init->lock = born;
	init->gc_seq = gen;
	init->key_len = second ? slot->req.key2_len : slot->req.key_len;
	if (bpf_probe_read_kernel(init->name, sizeof(init->name), key->name)) {
		fail(slot, -EIO, DB_D_NONE);
		return NULL;
	}
	/* The map key names the map (DB_HKEY_TOP): a key that misnamed it
	 * would be missed by the walks of the top level and by its lock. */
	if ((hkey->hi >> DB_HKEY_TOP_SHIFT) != (__u64)name_is_top(slot, second)) {
		fail(slot, -EINVAL, DB_D_BAD_REQUEST);
		return NULL;
	}
	/* Two maps of max_keys each: the cap is on both together (concurrent
	 * creators may pass it by at most one record each). */
	struct db_layout *layout = db_layout();
	void *map = db_records_of(hkey);
	if (!layout || !map) {
		fail(slot, -EIO, DB_D_NONE);
		return NULL;
	}
	if (READ_ONCE(stats.records) >= layout->max_keys) {
		fail(slot, -ENOSPC, DB_D_NO_KEYS);
		return NULL;
	}
	if (init->key_len > DB_NAME_INLINE && !add_long_name(slot, hkey, key))
		return NULL;
	long err = bpf_map_update_elem(map, hkey, init, BPF_NOEXIST);
	if (err == -EEXIST) {
		fail(slot, -EBUSY, DB_D_LOCKED_AUTOCOMMIT);
		return NULL;
	}
	if (err == -ENOMEM) {
		/* The map's allocator had no element ready (it refills from
		 * irq_work): not a full table. */
		fail(slot, -EBUSY, DB_D_RACE);
		return NULL;
	}
	if (err) {
		/* A long name left behind would only hold memory: drop it
		 * unless a record under the hash appeared meanwhile. */
		if (init->key_len > DB_NAME_INLINE && !bpf_map_lookup_elem(map, hkey))
			bpf_map_delete_elem(&long_names, hkey);
		fail(slot, -ENOSPC, DB_D_NO_KEYS);
		return NULL;
	}
	/* Ours while its gc_seq is the fresh one (other readers may already
	 * share a born-shared lock, so the lock word cannot tell). */
	struct db_record *rec = bpf_map_lookup_elem(map, hkey);
	if (!rec || READ_ONCE(rec->gc_seq) != gen) {
		fail(slot, -EBUSY, DB_D_RACE);
		return NULL;
	}
	stat_add(&stats.records, 1);
	return rec;
}

/* Finds the record of the request's key (key2 when second) and takes its
 * exclusive lock for owner, creating an empty record (born locked) when
 * create is set. Returns NULL after writing the error into the slot. */
static __always_inline struct db_record *lock_record(struct db_slot *slot, bool second,
						      __u32 owner, bool create)
{
	struct db_hkey *hkey = second ? &slot->req.hkey2 : &slot->req.hkey;
	struct db_key *key = second ? &slot->req.key2 : &slot->req.key;
	__u32 key_len = second ? slot->req.key2_len : slot->req.key_len;
	__u64 mine = DB_LOCK_X | owner;
	struct db_record *rec = db_find_record(hkey);

	if (!rec) {
		if (!create) {
			fail(slot, -ENOENT, DB_D_NONE);
			return NULL;
		}
		return create_record(slot, second, mine);
	}
	__u64 old = try_lock_x(rec, mine);
	if (old) {
		fail(slot, -EBUSY, busy_detail(old));
		return NULL;
	}
	if (!name_matches(rec, hkey, key, key_len)) {
		/* Still in the map under our hash: another name has it. Gone:
		 * the element was reused between lookup and lock; retry. */
		bool collision = db_find_record(hkey) == rec;

		WRITE_ONCE(rec->lock, DB_LOCK_FREE);
		if (collision)
			fail(slot, -ENOSPC, DB_D_COLLISION);
		else
			fail(slot, -EBUSY, DB_D_RACE);
		return NULL;
	}
	return rec;
}

static __always_inline bool record_empty(struct db_record *rec)
{
	for (int i = 0; i < DB_MAX_VERSIONS; i++)
		if (rec->begin_ts[i] != 0)
			return false;
	return true;
}

/* Takes a DEAD record out of the map: bump gc_seq first, so lock-free
 * readers holding it see it change. */
static __always_inline void remove_record(struct db_record *rec, struct db_hkey *hkey)
{
	__sync_fetch_and_add(&rec->gc_seq, 1);
	if (rec->key_len > DB_NAME_INLINE)
		bpf_map_delete_elem(&long_names, hkey);
	void *map = db_records_of(hkey);
	if (map)
		bpf_map_delete_elem(map, hkey);
	stat_add(&stats.records, -1);
}

/* Releases an exclusive lock; a record left with no versions leaves the map. */
static __always_inline void unlock_record(struct db_record *rec, struct db_hkey *hkey)
{
	if (record_empty(rec)) {
		/* DEAD first: stale lockers fail their CAS; readers see gc_seq move. */
		WRITE_ONCE(rec->lock, DB_LOCK_DEAD);
		remove_record(rec, hkey);
		return;
	}
	WRITE_ONCE(rec->lock, DB_LOCK_FREE);
}

/* What lock_shared returns when other readers kept changing the lock word:
 * no holder refused us, so the caller retries the op (DB_D_RACE); it must
 * not count as a conflict with a transaction, which would abort the reader.
 * S with no holders is never a word that refuses a reader. */
#define DB_LOCK_CONTENDED DB_LOCK_S

/* Adds a shared holder. 0, the lock word that refused it, or
 * DB_LOCK_CONTENDED after lock_cas_tries lost races with other readers. */
static __always_inline __u64 lock_shared(struct db_record *rec)
{
	for (int i = 0; i < DB_LOCK_CAS_TRIES && i < lock_cas_tries; i++) {
		__u64 old = READ_ONCE(rec->lock);

		if (old == DB_LOCK_DEAD || (old & DB_LOCK_X))
			return old;
		__u64 new = (old == DB_LOCK_FREE ? DB_LOCK_S : old) + 1;
		if (__sync_val_compare_and_swap(&rec->lock, old, new) == old)
			return 0;
	}
	return DB_LOCK_CONTENDED; /* retried by the caller rather than spun on here */
}

/* Drops a shared holder; the last one out removes an empty record (a
 * placeholder that locked a key's absence). */
static __always_inline void unlock_shared(struct db_record *rec, struct db_hkey *hkey)
{
	/* Versions cannot appear while we hold S, so a record with one now
	 * needs no removal: just leave. */
	bool placeholder = record_empty(rec);

	if (__sync_fetch_and_add(&rec->lock, -1) - 1 != DB_LOCK_S || !placeholder)
		return;
	/* DEAD, not a transaction's X, while we look: a reader arriving now
	 * retries (busy_detail) instead of taking it for a conflict and
	 * aborting. A writer may have come and gone since our decrement
	 * (S again by another reader's visit), hence the second look. */
	if (__sync_val_compare_and_swap(&rec->lock, DB_LOCK_S, DB_LOCK_DEAD) != DB_LOCK_S)
		return;
	if (!record_empty(rec)) {
		WRITE_ONCE(rec->lock, DB_LOCK_FREE);
		return;
	}
	remove_record(rec, hkey);
}

/* Finds the record of the request's key and adds a shared holder, or
 * inserts a placeholder born with our shared lock when the key is missing:
 * a transaction locks a key's absence too, so a concurrent insert
 * conflicts (born X, a reader arriving meanwhile would take it for a
 * transaction's write and abort). Returns NULL after writing the error into
 * the slot; lost races with other readers are a transient DB_D_RACE. */
static __always_inline struct db_record *lock_record_shared(struct db_slot *slot)
{
	struct db_record *rec = db_find_record(&slot->req.hkey);

	if (!rec)
		return create_record(slot, false, DB_LOCK_S | 1);
	__u64 old = lock_shared(rec);
	if (old == DB_LOCK_CONTENDED) {
		fail(slot, -EBUSY, DB_D_RACE); /* other readers: retry */
		return NULL;
	}
	if (old) {
		fail(slot, -EBUSY, busy_detail(old));
		return NULL;
	}
	if (!name_matches(rec, &slot->req.hkey, &slot->req.key, slot->req.key_len)) {
		unlock_shared(rec, &slot->req.hkey);
		fail(slot, -EBUSY, DB_D_RACE); /* element reused: retry */
		return NULL;
	}
	return rec;
}

/* ---- garbage collection ---- */

struct snap_search {
	__u64 begin;
	__u64 end;
	bool found;
};

static long snapshot_between(__u64 i, struct snap_search *ss)
{
	__u32 idx = i;
	struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);

	if (t) {
		__u64 s = READ_ONCE(t->snap_ts);
		if (s && ss->begin <= s && s < ss->end) {
			ss->found = true;
			return 1;
		}
	}
	return 0;
}

/* Whether a registered snapshot reads at a timestamp in [begin, end). */
__noinline bool seen_by_snapshot(__u64 begin, __u64 end)
{
	struct snap_search ss = { .begin = begin, .end = end };

	bpf_loop(DB_MAX_TXNS, snapshot_between, &ss, 0);
	return ss.found;
}

/* Cooperative GC: reclaims the versions of a locked record that ended at or
 * before last_ts and that no registered snapshot sees, with their storage.
 * Precise per version, so a long snapshot pins only the versions it reads.
 * A snapshot registering concurrently ends up at or after the last_ts read
 * here (see stage_begin), so it cannot see what is reclaimed. Lock-free
 * readers of the newest version are protected by gc_seq instead. */
__noinline int gc_record(struct db_record *rec)
{
	if (!rec)
		return 0;
	__u64 horizon = db_snapshot_ts();
	bool snaps = READ_ONCE(snapshots) != 0;

	for (int i = 0; i < DB_MAX_VERSIONS; i++) {
		__u64 begin = rec->begin_ts[i];
		__u64 end = rec->end_ts[i];
		bool owns = !(rec->vflags[i] & DB_VF_NOFREE);
		/* A version owning storage waits for every snapshot that can see
		 * the storage, through older versions that shared it too. */
		__u64 from = owns ? rec->born_ts[i] : begin;

		if (!ts_committed(begin) || !ts_committed(end) || end > horizon)
			continue;
		if (snaps && seen_by_snapshot(from, end))
			continue;
		/* Unpublish, then bump gc_seq, then free: a reader that saw the
		 * version before the bump sees the bump after its copy. */
		WRITE_ONCE(rec->begin_ts[i], 0);
		__sync_fetch_and_add(&rec->gc_seq, 1);
		if (owns) {
			if (from < begin)
				shared_free_bump();
			free_storage(rec->loc[i], rec->meta[i].len);
		}
		stat_add(&stats.versions_reclaimed, 1);
	}
	return 0;
}

static __always_inline int free_version_index(struct db_record *rec)
{
	for (int i = 0; i < DB_MAX_VERSIONS; i++)
		if (rec->begin_ts[i] == 0)
			return i;
	return -1;
}

/* ---- transaction table ---- */

static __always_inline __u32 txn_index(struct db_slot *slot)
{
	return slot->req.txn - 1;
}

/* The request's transaction if it is active, else NULL with the error set. */
static __always_inline struct db_txn *active_txn(struct db_slot *slot)
{
	__u32 idx = txn_index(slot);
	struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);

	if (!t || t->id != slot->req.txn_id) {
		fail(slot, -EINVAL, DB_D_BAD_REQUEST);
		return NULL;
	}
	if (t->state != DB_TXN_ACTIVE) {
		fail(slot, -ECANCELED, DB_D_TXN_INACTIVE);
		return NULL;
	}
	return t;
}

struct lock_search {
	__u32 txn;
	__s32 found;
	struct db_hkey hkey;
};

static long match_lock(__u64 i, struct lock_search *ls)
{
	struct db_txn *t = bpf_map_lookup_elem(&txns, &ls->txn);

	if (!t || i >= DB_TXN_MAX_LOCKS)
		return 1;
	struct db_txn_lock *l = &t->locks[i];
	if (l->hkey.lo == ls->hkey.lo && l->hkey.hi == ls->hkey.hi) {
		ls->found = i;
		return 1;
	}
	return 0;
}

/* Index of hkey in the txn's lock set, or -1. */
__noinline int find_lock(__u32 txn, struct db_hkey *hkey)
{
	struct db_txn *t = bpf_map_lookup_elem(&txns, &txn);
	struct lock_search ls = { .txn = txn, .found = -1 };

	if (!t || !hkey)
		return -1;
	ls.hkey = *hkey;
	bpf_loop(t->n_locks, match_lock, &ls, 0);
	return ls.found;
}

#define L(i) ((i) & (DB_TXN_MAX_LOCKS - 1)) /* bounded lock-set index */

/* The one way a key enters a transaction's lock set: locks the request's
 * key for txn t (table index idx) in mode DB_LM_S or DB_LM_X and returns
 * its record, with the key's lock-set index in *li. A key already in the
 * set keeps its entry: a shared lock is upgraded for DB_LM_X, as the only
 * reader. A new key takes the lock (a missing key gets a record: a
 * placeholder for a reader, an empty record for a writer) and a fresh
 * entry, if the set has room. NULL with the error set. */
static __always_inline struct db_record *txn_lock(struct db_slot *slot, struct db_txn *t, __u32 idx,
						  __u32 mode, int *li)
{
	struct db_record *rec;
	int found = find_lock(idx, &slot->req.hkey);

	if (found >= 0) {
		struct db_txn_lock *l = &t->locks[L(found)];

		rec = db_find_record(&slot->req.hkey);
		if (!rec) {
			fail(slot, -EIO, DB_D_NONE);
			return NULL;
		}
		if (mode == DB_LM_X && l->mode == DB_LM_S) {
			/* Upgrade only as the sole reader. */
			if (__sync_val_compare_and_swap(&rec->lock, DB_LOCK_S | 1, DB_LOCK_X | idx) !=
			    (DB_LOCK_S | 1)) {
				fail(slot, -EBUSY, DB_D_LOCKED_TXN);
				return NULL;
			}
			l->mode = DB_LM_X;
		}
		*li = found;
		return rec;
	}
	if (t->n_locks >= DB_TXN_MAX_LOCKS) {
		fail(slot, -ENOSPC, DB_D_TXN_TOO_BIG);
		return NULL;
	}
	rec = mode == DB_LM_X ? lock_record(slot, false, idx, true) : lock_record_shared(slot);
	if (!rec)
		return NULL;
	__u32 n = t->n_locks;
	struct db_txn_lock *l = &t->locks[L(n)];

	l->hkey = slot->req.hkey;
	l->mode = mode;
	l->staged = -1;
	l->deleted = 0;
	l->shared = 0;
	t->n_locks = n + 1;
	*li = n;
	return rec;
}

#endif /* RECORD_BPF_H */
