/* SPDX-License-Identifier: MIT */
/*
 * delete_stages.inc.c - the stages that end a key's version: DELETE, and RENAME
 * (key -> key2 in one commit: a delete of key and a put of key2).
 *
 * Programs, not declarations: included once by engine.bpf.c, after the
 * dispatcher and its helpers, so that they share its object (one skeleton,
 * one prog array of stages).
 */
#ifndef DELETE_STAGES_INC_C
#define DELETE_STAGES_INC_C

/* ---- DELETE ---- */

static __always_inline int txn_delete(struct pt_regs *ctx, struct db_slot *slot)
{
	struct db_txn *t = active_txn(slot);
	int li = 0;

	if (!t)
		return 0;
	if (t->read_only)
		return fail(slot, -EROFS, DB_D_READ_ONLY);
	struct db_record *rec = txn_lock(slot, t, txn_index(slot), DB_LM_X, &li);
	if (!rec)
		return txn_conflict(ctx, slot, t);
	struct db_txn_lock *l = &t->locks[L(li)];
	bool committed = version_live(rec, latest_version(rec));

	if (committed && !l->deleted && key_is_top(slot, 0)) {
		/* A removal of a top-level key: no scan of another may hold the set. */
		__u32 d = top_join_txn(txn_index(slot), DB_TOP_WRITING);
		if (d) {
			fail(slot, -EBUSY, d);
			return txn_conflict(ctx, slot, t);
		}
	}
	if (l->staged >= 0) {
		/* Drop our own staged value. */
		__s32 s = l->staged;
		if (!l->shared)
			free_storage(rec->loc[V(s)], rec->meta[V(s)].len);
		rec->begin_ts[V(s)] = 0;
		l->staged = -1;
		l->shared = 0;
	} else if (l->deleted || !committed) {
		return fail(slot, -ENOENT, DB_D_NONE);
	}
	l->deleted = committed;
	t->n_writes++;
	return 0;
}

DB_STAGE_PROG(stage_delete)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	if (slot->req.txn)
		return txn_delete(ctx, slot);
	__u32 owner = autocommit_owner(ctx);
	struct db_record *rec = lock_record(slot, false, owner, false);
	if (!rec)
		return 0;
	int cur = latest_version(rec);
	if (!version_live(rec, cur)) {
		unlock_record(rec, &slot->req.hkey);
		return fail(slot, -ENOENT, DB_D_NONE);
	}
	__u64 ts = 0;
	__u32 detail = DB_D_NONE;
	int err = commit_log_one(owner, slot, rec, &slot->req.hkey, NULL, NULL, 0, &ts, &detail);

	if (err) {
		unlock_record(rec, &slot->req.hkey);
		return fail(slot, err, detail);
	}
	commit_stamp(rec, -1, cur, false, ts);
	commit_end(ts);
	slot->resp.ts = ts;
	gc_record(rec);
	unlock_record(rec, &slot->req.hkey);
	return 0;
}

/* ---- RENAME: key -> key2, replacing key2, one commit ---- */

DB_STAGE_PROG(stage_rename)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	if (!key_valid(&slot->req.key2))
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST);
	__u32 owner = autocommit_owner(ctx);
	struct db_record *src = lock_record(slot, false, owner, false);
	if (!src)
		return 0;
	int s = latest_version(src);
	if (!version_live(src, s)) {
		unlock_record(src, &slot->req.hkey);
		return fail(slot, -ENOENT, DB_D_NONE);
	}
	if (slot->req.hkey.lo == slot->req.hkey2.lo && slot->req.hkey.hi == slot->req.hkey2.hi &&
	    name_matches(src, &slot->req.hkey2, &slot->req.key2, slot->req.key2_len)) {
		unlock_record(src, &slot->req.hkey); /* rename onto itself */
		return 0;
	}
	struct db_record *dst = lock_record(slot, true, owner, true);
	if (!dst) {
		unlock_record(src, &slot->req.hkey);
		return 0;
	}
	int d = latest_version(dst);
	int err = 0, n = -1;
	__u32 detail = DB_D_NONE;
	__u64 ts = 0;

	if (version_live(dst, d) && (slot->req.flags & DB_F_NOREPLACE)) {
		err = -EEXIST;
	} else {
		gc_record(dst);
		/* GC may have reclaimed d (ended, seen by no snapshot now) and
		 * freed its index for n: stamp what is newest after it, or the
		 * commit would end the new version as the replaced one. */
		d = latest_version(dst);
		n = free_version_index(dst);
		if (n < 0) {
			err = -EBUSY;
			detail = DB_D_VERSIONS_FULL;
		} else {
			/* The value moves: the new version owns the storage, the
			 * source's ended version keeps a reference only for older
			 * readers. Invisible until stamped (begin_ts is 0). */
			dst->meta[V(n)] = src->meta[V(s)];
			dst->loc[V(n)] = src->loc[V(s)];
			dst->vflags[V(n)] = 0;
			dst->end_ts[V(n)] = DB_TS_INF;
			err = commit_log_one(owner, slot, src, &slot->req.hkey, dst,
					     &slot->req.hkey2, n, &ts, &detail);
		}
	}
	if (err) {
		unlock_record(dst, &slot->req.hkey2);
		unlock_record(src, &slot->req.hkey);
		return fail(slot, err, detail);
	}
	commit_stamp(dst, n, d, false, ts);
	/* Stamped as born now; the storage was born with the source's. */
	dst->born_ts[V(n)] = src->born_ts[V(s)];
	commit_stamp(src, -1, s, true, ts);
	commit_end(ts);
	slot->resp.ts = ts;
	slot->resp.meta = dst->meta[V(n)];
	gc_record(dst);
	gc_record(src);
	unlock_record(dst, &slot->req.hkey2);
	unlock_record(src, &slot->req.hkey);
	return 0;
}

#endif /* DELETE_STAGES_INC_C */
