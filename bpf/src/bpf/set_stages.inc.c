/* SPDX-License-Identifier: MIT */
/*
 * set_stages.inc.c - SET: prepare (lock, GC, allocate) -> [copy the value] ->
 * commit (stage the write in its transaction, or commit it now).
 *
 * Programs, not declarations: included once by engine.bpf.c, after the
 * dispatcher and its helpers, so that they share its object (one skeleton,
 * one prog array of stages).
 */
#ifndef SET_STAGES_INC_C
#define SET_STAGES_INC_C

/* ---- SET: prepare -> [copy] -> commit ---- */

DB_STAGE_PROG(stage_set_prepare)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	__u32 flags = slot->req.flags;
	__u32 len = slot->req.meta.len;
	__u32 owner = owner_of(ctx, slot);
	struct db_txn *t = NULL;
	struct db_txn_lock *l = NULL;
	struct db_record *rec;
	int li = 0;

	if (len > max_value)
		return fail(slot, -EFBIG, DB_D_TOO_BIG);
	if (slot->req.txn) {
		t = active_txn(slot);
		if (!t)
			return 0;
		if (t->read_only)
			return fail(slot, -EROFS, DB_D_READ_ONLY);
		rec = txn_lock(slot, t, owner, DB_LM_X, &li);
		if (!rec)
			return txn_conflict(ctx, slot, t);
		l = &t->locks[L(li)];
	} else {
		rec = lock_record(slot, false, owner, !(flags & DB_F_MUST_EXIST));
		if (!rec)
			return 0;
	}
	int cur = latest_version(rec);
	bool staged = l && l->staged >= 0;
	bool exists = staged || ((!l || !l->deleted) && version_live(rec, cur));
	int base = staged ? l->staged : cur; /* version a META_ONLY write keeps the value of */
	int err = 0, idx = -1;
	__u32 detail = DB_D_NONE;

	if (t && !exists && !(flags & (DB_F_MUST_EXIST | DB_F_META_ONLY)) && key_is_top(slot, 0)) {
		/* An insert of a top-level key: no scan of another may hold the set. */
		__u32 d = top_join_txn(owner, DB_TOP_WRITING);
		if (d) {
			fail(slot, -EBUSY, d);
			return txn_conflict(ctx, slot, t);
		}
	}
	slot->cont.reuse = staged;
	slot->cont.lock_index = li;
	if ((flags & DB_F_NOREPLACE) && exists) {
		err = -EEXIST;
	} else if ((flags & (DB_F_MUST_EXIST | DB_F_META_ONLY)) && !exists) {
		err = -ENOENT;
	} else if (staged && (flags & DB_F_META_ONLY)) {
		/* Metadata of our own staged value: edit it in place. */
		slot->req.meta.len = rec->meta[V(base)].len;
		rec->meta[V(base)] = slot->req.meta;
		slot->resp.meta = slot->req.meta;
		return 0;
	} else {
		if (staged) {
			idx = l->staged;
		} else {
			gc_record(rec);
			idx = free_version_index(rec);
		}
		if (idx < 0) {
			err = -EBUSY;
			detail = DB_D_VERSIONS_FULL;
		} else if (flags & DB_F_META_ONLY) {
			slot->cont.loc = rec->loc[V(base)];
			len = rec->meta[V(base)].len;
			slot->req.meta.len = len;
		} else {
			err = alloc_storage(len, &slot->cont.loc, &detail);
		}
	}
	if (err) {
		if (!t)
			unlock_record(rec, &slot->req.hkey);
		return fail(slot, err, detail);
	}
	slot->cont.version = idx;
	if (!staged) {
		/* Reserve the version: pending, invisible to readers. */
		rec->end_ts[V(idx)] = DB_TS_INF;
		WRITE_ONCE(rec->begin_ts[V(idx)], DB_TS_PENDING | owner);
	}
	if ((flags & DB_F_META_ONLY) || len <= DB_SMALL_MAX) {
		if (!(flags & DB_F_META_ONLY) && write_storage(slot_index(ctx), slot->cont.loc, len))
			slot->resp.err = -EIO; /* commit stage undoes */
		bpf_tail_call(ctx, &stages, DB_STAGE_SET_COMMIT);
	} else {
		bpf_tail_call(ctx, &stages, DB_STAGE_SET_COPY);
	}
	return fail(slot, -ENOSYS, DB_D_NONE);
}

DB_STAGE_PROG(stage_set_copy)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	if (write_storage(slot_index(ctx), slot->cont.loc, slot->req.meta.len))
		slot->resp.err = -EIO;
	bpf_tail_call(ctx, &stages, DB_STAGE_SET_COMMIT);
	return fail(slot, -ENOSYS, DB_D_NONE);
}

/* Undoes a SET that will not commit: frees the new storage (a META_ONLY
 * write borrowed the old one), drops the reserved version (a transaction's
 * own staged version stays) and, outside a transaction, unlocks. */
static __always_inline int set_undo(struct db_slot *slot, struct db_record *rec, int err,
				    __u32 detail)
{
	if (!(slot->req.flags & DB_F_META_ONLY))
		free_storage(slot->cont.loc, slot->req.meta.len);
	if (!slot->cont.reuse)
		rec->begin_ts[V(slot->cont.version)] = 0;
	if (!slot->req.txn)
		unlock_record(rec, &slot->req.hkey);
	return fail(slot, err, detail);
}

/* Writes the request's meta and the new storage into version v. */
static __always_inline void install_version(struct db_slot *slot, struct db_record *rec, __u32 v)
{
	rec->meta[V(v)] = slot->req.meta;
	rec->loc[V(v)] = slot->cont.loc;
	rec->vflags[V(v)] = 0;
}

/* A write in a read-write transaction: stage version v in the lock set, to
 * be logged and stamped by COMMIT (txn_stages.inc.c). A write over the
 * transaction's own staged version frees what that version stored, unless
 * it borrowed the committed value's storage. */
static __always_inline int set_stage_in_txn(struct db_slot *slot, struct db_record *rec, __u32 v)
{
	__u32 idx = txn_index(slot);
	struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);
	if (!t)
		return fail(slot, -EIO, DB_D_NONE);
	struct db_txn_lock *l = &t->locks[L(slot->cont.lock_index)];

	if (slot->cont.reuse && !l->shared)
		free_storage(rec->loc[V(v)], rec->meta[V(v)].len);
	install_version(slot, rec, v);
	l->staged = v;
	l->deleted = 0;
	l->shared = !!(slot->req.flags & DB_F_META_ONLY);
	t->n_writes++;
	slot->resp.meta = slot->req.meta;
	return 0;
}

/* An autocommit write: log, stamp and publish version v now, replacing
 * the key's current version. A META_ONLY write's version shares the old
 * version's storage (handed on, see commit_stamp). */
static __always_inline int set_commit_now(struct db_slot *slot, struct db_record *rec, __u32 owner,
					  __u32 v)
{
	__u64 ts = 0;
	__u32 detail = DB_D_NONE;

	install_version(slot, rec, v);
	/* Log first: the version becomes visible only once its record is out. */
	int err = commit_log_one(owner, slot, NULL, NULL, rec, &slot->req.hkey, v, &ts, &detail);
	if (err)
		return set_undo(slot, rec, err, detail);
	commit_stamp(rec, v, latest_version(rec), slot->req.flags & DB_F_META_ONLY, ts);
	commit_end(ts);
	gc_record(rec);
	unlock_record(rec, &slot->req.hkey);
	slot->resp.ts = ts;
	slot->resp.meta = slot->req.meta;
	return 0;
}

/* The last stage of SET, full or META_ONLY alike (META_ONLY only changes
 * whose storage the version names, decided in stage_set_prepare). What it
 * does depends on the request: stage the write in its transaction, or
 * commit it now. Two inline functions, not two stages: the choice is one
 * branch on req.txn, both need the same lock check and undo first, and a
 * stage more would be a prog-array entry, a tail call and a slot of the
 * stage ABI for no gain. */
DB_STAGE_PROG(stage_set_commit)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	__u32 owner = owner_of(ctx, slot);
	struct db_record *rec = db_find_record(&slot->req.hkey);
	if (!rec || READ_ONCE(rec->lock) != (DB_LOCK_X | owner))
		return fail(slot, -EIO, DB_D_NONE); /* lost our own lock: a bug */
	if (slot->resp.err) /* the value copy failed */
		return set_undo(slot, rec, slot->resp.err, slot->resp.detail);
	if (slot->req.txn)
		return set_stage_in_txn(slot, rec, slot->cont.version);
	return set_commit_now(slot, rec, owner, slot->cont.version);
}

#endif /* SET_STAGES_INC_C */
