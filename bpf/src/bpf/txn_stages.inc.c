/* SPDX-License-Identifier: MIT */
/*
 * txn_stages.inc.c - transaction stages: BEGIN, COMMIT, ABORT and RELEASE.
 *
 * Programs, not declarations: included once, at the end of engine.bpf.c,
 * so that they share its object (one skeleton, one prog array of stages).
 *
 * Strict two-phase locking: every lock a transaction takes stays in its lock
 * set until RELEASE, which runs after its commit was stamped (or its staged
 * writes undone). Lock sets are walked with bpf_loop, so a transaction of
 * DB_TXN_MAX_LOCKS keys verifies like one of a single key.
 */
#ifndef TXN_STAGES_INC_C
#define TXN_STAGES_INC_C

#include "record.bpf.h"
#include "wal.bpf.h"
#include "commit.bpf.h"
#include "top.bpf.h"

struct txn_walk {
	__u32 txn;
	__s32 err;
	__u64 ts;
	__u64 bytes; /* log bytes the commit needs */
};

static __always_inline struct db_txn_lock *walk_lock(struct txn_walk *w, __u64 i,
						      struct db_record **rec)
{
	struct db_txn *t = bpf_map_lookup_elem(&txns, &w->txn);

	if (!t || i >= DB_TXN_MAX_LOCKS)
		return NULL;
	struct db_txn_lock *l = &t->locks[i];
	*rec = db_find_record(&l->hkey);
	return *rec ? l : NULL;
}

/* Adds the log bytes of one staged write or delete. */
static long size_one(__u64 i, struct txn_walk *w)
{
	struct db_record *rec = NULL;
	struct db_txn_lock *l = walk_lock(w, i, &rec);

	if (!l || !rec || l->mode != DB_LM_X)
		return 0;
	if (l->staged >= 0)
		w->bytes += wal_put_bytes(rec->meta[V(l->staged)].len);
	else if (l->deleted)
		w->bytes += WAL_FRAG_BYTES;
	return 0;
}

/* Emits one staged write or delete into the log. */
static long log_one(__u64 i, struct txn_walk *w)
{
	struct db_record *rec = NULL;
	struct db_txn_lock *l = walk_lock(w, i, &rec);
	int err = 0;

	if (!l || !rec || l->mode != DB_LM_X)
		return 0;
	if (l->staged >= 0)
		err = wal_put(w->ts, rec, &l->hkey, l->staged);
	else if (l->deleted && version_live(rec, latest_version(rec)))
		err = wal_frag(DB_WAL_DEL, w->ts, NULL, rec, &l->hkey);
	if (err) {
		w->err = err;
		return 1;
	}
	return 0;
}

/* Stamps one staged write or delete with the commit timestamp. */
static long stamp_one(__u64 i, struct txn_walk *w)
{
	struct db_record *rec = NULL;
	struct db_txn_lock *l = walk_lock(w, i, &rec);

	if (!l || !rec || l->mode != DB_LM_X)
		return 0;
	/* A delete of a key that is gone stamps nothing (commit_stamp). */
	if (l->staged >= 0 || l->deleted)
		commit_stamp(rec, l->staged, latest_version(rec), l->shared, w->ts);
	return 0;
}

/* Frees one staged value of an aborting transaction. */
static long undo_one(__u64 i, struct txn_walk *w)
{
	struct db_record *rec = NULL;
	struct db_txn_lock *l = walk_lock(w, i, &rec);

	if (!l || !rec || l->mode != DB_LM_X || l->staged < 0)
		return 0;
	__s32 s = l->staged;
	if (!l->shared)
		free_storage(rec->loc[V(s)], rec->meta[V(s)].len);
	rec->begin_ts[V(s)] = 0;
	l->staged = -1;
	return 0;
}

/* Releases one lock; records the commit ended versions of get collected. */
static long release_one(__u64 i, struct txn_walk *w)
{
	struct db_record *rec = NULL;
	struct db_txn_lock *l = walk_lock(w, i, &rec);

	if (!l || !rec)
		return 0;
	if (l->mode == DB_LM_X) {
		gc_record(rec);
		unlock_record(rec, &l->hkey);
	} else {
		unlock_shared(rec, &l->hkey);
	}
	return 0;
}

/* Unregisters a read-only transaction's snapshot. */
static __always_inline void end_snapshot(struct db_txn *t)
{
	if (t->snap_ts) {
		__sync_lock_test_and_set(&t->snap_ts, 0);
		stat_add(&snapshots, -1);
	}
}

DB_STAGE_PROG(stage_begin)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	__u32 idx = txn_index(slot);
	struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);
	if (!t || t->state == DB_TXN_ACTIVE)
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST); /* user space hands out entries */
	t->id = __sync_fetch_and_add(&txn_gen, 1) + 1;
	t->n_locks = 0;
	t->n_writes = 0;
	t->abort_detail = 0;
	t->commit_ts = 0;
	t->read_only = !!(slot->req.flags & DB_F_READ_ONLY);
	if (t->read_only) {
		/* Publish the snapshot, then check last_ts did not move past it:
		 * a GC that read an older horizon before our publish cannot have
		 * reclaimed anything this snapshot sees. */
		__u64 snap = db_snapshot_ts();
		bool stable = false;

		stat_add(&snapshots, 1);
		for (int i = 0; i < DB_SNAP_TRIES && !stable; i++) {
			__sync_lock_test_and_set(&t->snap_ts, snap);
			__u64 now = db_snapshot_ts();
			stable = now == snap;
			snap = now;
		}
		if (!stable) {
			end_snapshot(t);
			return fail(slot, -EBUSY, DB_D_COMMIT_BUSY);
		}
	}
	t->state = DB_TXN_ACTIVE;
	stat_add(&stats.txn_active, 1);
	slot->resp.txn_id = t->id;
	slot->resp.ts = t->read_only ? t->snap_ts : db_snapshot_ts();
	return 0;
}

DB_STAGE_PROG(stage_commit)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	struct db_txn *t = active_txn(slot);
	if (!t)
		return 0;
	struct txn_walk w = { .txn = txn_index(slot) };

	if (t->read_only) {
		end_snapshot(t);
	} else if (t->n_writes) {
		/* Log the whole commit, then make it visible. Nothing is stamped
		 * if the log has no room: the transaction stays active. */
		__u32 detail = DB_D_NONE;
		bpf_loop(t->n_locks, size_one, &w, 0);
		int err = commit_open(w.txn, w.bytes, &w.ts, &detail);
		if (err)
			return fail(slot, err, detail);
		if (!wal_frag(DB_WAL_BEGIN, w.ts, NULL, NULL, NULL)) {
			bpf_loop(t->n_locks, log_one, &w, 0);
			err = w.err ? w.err : wal_frag(DB_WAL_COMMIT, w.ts, NULL, NULL, NULL);
		} else {
			err = -EAGAIN;
		}
		if (err) {
			commit_cancel();
			return fail(slot, err, DB_D_WAL_FULL);
		}
		bpf_loop(t->n_locks, stamp_one, &w, 0);
		commit_end(w.ts);
	}
	t->commit_ts = w.ts ? w.ts : db_snapshot_ts();
	t->state = DB_TXN_COMMITTED;
	stat_add(&stats.txn_commits, 1);
	stat_add(&stats.txn_active, -1);
	slot->resp.ts = t->commit_ts;
	bpf_tail_call(ctx, &stages, DB_STAGE_RELEASE);
	return fail(slot, -ENOSYS, DB_D_NONE);
}

/* Entered from ABORT requests and from stages that hit a conflict; keeps
 * the error already in the response. */
DB_STAGE_PROG(stage_abort)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	__u32 idx = txn_index(slot);
	struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);
	if (!t || t->id != slot->req.txn_id)
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST);
	if (t->state != DB_TXN_ACTIVE)
		return fail(slot, -ECANCELED, DB_D_TXN_INACTIVE);
	struct txn_walk w = { .txn = idx };

	end_snapshot(t);
	bpf_loop(t->n_locks, undo_one, &w, 0);
	t->state = DB_TXN_ABORTED;
	stat_add(&stats.txn_aborts, 1);
	stat_add(&stats.txn_active, -1);
	bpf_tail_call(ctx, &stages, DB_STAGE_RELEASE);
	return fail(slot, -ENOSYS, DB_D_NONE);
}

DB_STAGE_PROG(stage_release)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	__u32 idx = txn_index(slot);
	struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);
	if (!t)
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST);
	struct txn_walk w = { .txn = idx };

	bpf_loop(t->n_locks, release_one, &w, 0);
	t->n_locks = 0;
	top_leave_txn(t);
	return 0;
}

#endif /* TXN_STAGES_INC_C */
