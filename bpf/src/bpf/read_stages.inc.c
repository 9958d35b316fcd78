/* SPDX-License-Identifier: MIT */
/*
 * read_stages.inc.c - the reading stages: GET without locks (autocommit reads and
 * snapshots), GET in a read-write transaction (under a shared lock, or its
 * own staged write) and SCAN (which keys of a batch are visible).
 *
 * Programs, not declarations: included once by engine.bpf.c, after the
 * dispatcher and its helpers, so that they share its object (one skeleton,
 * one prog array of stages).
 */
#ifndef READ_STAGES_INC_C
#define READ_STAGES_INC_C

/* Copies version i of rec (meta, commit ts, value unless META_ONLY) into the
 * response. */
static __always_inline int respond_version(struct pt_regs *ctx, struct db_slot *slot,
					   struct db_record *rec, int i)
{
	__u32 len = rec->meta[V(i)].len;

	slot->resp.meta = rec->meta[V(i)];
	slot->resp.ts = rec->begin_ts[V(i)];
	if ((slot->req.flags & DB_F_META_ONLY) || len > DB_VALUE_LIMIT)
		return 0;
	return read_storage(slot_index(ctx), rec->loc[V(i)], len);
}

/* ---- GET without locks: autocommit reads and snapshots ---- */

/* The test pause (read_pause_loops); nothing when it is 0. */
static __always_inline void read_pause(void)
{
	test_pause(read_pause_loops);
}

DB_STAGE_PROG(stage_get)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	__u64 snap = 0;        /* the snapshot's timestamp, when snapshot is set */
	bool snapshot = false; /* else read at last_ts */
	if (slot->req.txn) {
		struct db_txn *t = active_txn(slot);
		if (!t)
			return 0;
		/* A flag, not snap != 0: a snapshot of the empty database reads
		 * at 0 and must not see later commits. */
		snapshot = true;
		snap = t->snap_ts;
	}
	for (int attempt = 0; attempt < DB_READ_RETRIES; attempt++) {
		struct db_record *rec = db_find_record(&slot->req.hkey);

		if (!rec)
			return fail(slot, -ENOENT, DB_D_NONE);
		/* The record's GC count before the clock: GC that reclaims the
		 * version visible at `at` then moves it before the check below.
		 * (Clock first, GC could reclaim that version between the two
		 * loads, and a key that exists would read as missing.) */
		__u64 seq = READ_ONCE(rec->gc_seq);
		__u64 shared_seq = db_shared_free_seq();
		read_pause();
		/* An unregistered reader takes a fresh timestamp each attempt:
		 * GC may have reclaimed what an older one saw. */
		__u64 at = snapshot ? snap : db_snapshot_ts();
		if (!name_matches(rec, &slot->req.hkey, &slot->req.key, slot->req.key_len)) {
			if (READ_ONCE(rec->gc_seq) == seq)
				return fail(slot, -ENOENT, DB_D_NONE); /* another name's hash */
			continue;
		}
		/* A writer about to open the key learns now, not at its commit,
		 * that a transaction holds it (shared or exclusive): shells never
		 * see the error a close reports. Present or not: a transaction
		 * that read a missing key holds its placeholder. */
		if ((slot->req.flags & DB_F_CHECK_LOCK) && txn_holds(READ_ONCE(rec->lock)))
			return fail(slot, -EBUSY, DB_D_LOCKED_TXN);
		int i = visible_version(rec, at);
		int err = i >= 0 ? respond_version(ctx, slot, rec, i) : 0;

		if (READ_ONCE(rec->gc_seq) != seq || db_shared_free_seq() != shared_seq) {
			stat_add(&stats.read_retries, 1);
			continue;
		}
		if (i < 0)
			return fail(slot, -ENOENT, DB_D_NONE);
		if (err)
			return fail(slot, -EIO, DB_D_NONE);
		return 0;
	}
	return fail(slot, -EAGAIN, DB_D_RACE);
}

/* ---- GET in a read-write transaction: shared lock, or its own write ---- */

DB_STAGE_PROG(stage_txn_get)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	struct db_txn *t = active_txn(slot);
	if (!t)
		return 0;
	int li = 0;
	struct db_record *rec = txn_lock(slot, t, txn_index(slot), DB_LM_S, &li);
	if (!rec)
		return txn_conflict(ctx, slot, t);
	struct db_txn_lock *l = &t->locks[L(li)];

	if (l->staged >= 0)
		return respond_version(ctx, slot, rec, l->staged) ? fail(slot, -EIO, DB_D_NONE) : 0;
	if (l->deleted)
		return fail(slot, -ENOENT, DB_D_NONE);
	/* Locked: no writer can move, and GC needs a lock, so read directly. */
	int i = visible_version(rec, db_snapshot_ts());
	if (i < 0)
		return fail(slot, -ENOENT, DB_D_NONE);
	return respond_version(ctx, slot, rec, i) ? fail(slot, -EIO, DB_D_NONE) : 0;
}

/* ---- SCAN: which of a batch of keys are visible at a timestamp ----
 *
 * User space finds the keys with BPF_MAP_LOOKUP_BATCH, whose cursor is a
 * hash bucket: a key present for a whole listing is in exactly one batch,
 * whatever is inserted or removed meanwhile (a position-counting walk of
 * the map skipped keys when an element left an already-walked part). The
 * engine keeps the one rule of visibility; user space takes the names from
 * the batch (a record's name never changes while it is in the map). */

struct scan_ctx {
	__u64 snap;     /* the snapshot's timestamp, when snapshot is set */
	__u32 snapshot; /* else each key is read at the newest commit */
	__u32 slot_idx;
	__u32 visible;
};

static long scan_check(__u64 i, struct scan_ctx *sc)
{
	struct db_slot *slot = bpf_map_lookup_elem(&slots, &sc->slot_idx);

	if (!slot || i >= DB_SCAN_BATCH)
		return 1;
	__u32 k = i & (DB_SCAN_BATCH - 1);
	__u8 seen = 0;

	for (int attempt = 0; attempt < DB_READ_RETRIES; attempt++) {
		struct db_hkey *hkey = (struct db_hkey *)&slot->data[k * sizeof(*hkey)];
		struct db_record *rec = db_find_record(hkey);

		if (!rec)
			break; /* removed since user space found it: changed */
		__u64 seq = READ_ONCE(rec->gc_seq);
		__u64 at = sc->snapshot ? sc->snap : db_snapshot_ts();

		seen = visible_version(rec, at) >= 0;
		/* gc_seq moves when the element is reclaimed or reused for
		 * another key: what was read may belong to someone else. */
		if (READ_ONCE(rec->gc_seq) == seq)
			break;
		seen = 0;
	}
	slot->data[DB_SCAN_FLAGS + k] = seen;
	sc->visible += seen;
	return 0;
}

DB_STAGE_PROG(stage_scan)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	struct scan_ctx sc = { .slot_idx = slot_index(ctx) };
	__u32 n = slot->req.count;

	if (n > DB_SCAN_BATCH)
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST);
	if (slot->req.txn) {
		struct db_txn *t = active_txn(slot);
		if (!t)
			return 0;
		sc.snapshot = t->read_only;
		sc.snap = t->snap_ts;
		/* A snapshot sees no change anyway: only a read-write
		 * transaction locks what it lists. */
		__u32 d = 0;
		if (!t->read_only && (slot->req.flags & DB_F_LOCK_TOP))
			d = top_join_txn(txn_index(slot), DB_TOP_LISTING);
		if (d) {
			fail(slot, -EBUSY, d);
			return txn_conflict(ctx, slot, t);
		}
	} else if (slot->req.flags & DB_F_LOCK_TOP) {
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST); /* no transaction to hold it */
	}
	bpf_loop(n, scan_check, &sc, 0);
	slot->resp.count = sc.visible;
	return 0;
}

#endif /* READ_STAGES_INC_C */
