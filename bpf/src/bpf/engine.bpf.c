// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * engine.bpf.c - the bpfdb engine: dispatcher and the key-value stages.
 *
 * User space writes a request into its slot and calls the trigger function;
 * the uprobe on it runs `dispatch`, which tail-calls the first stage of the
 * op. Stages hand state to each other through the slot (continuation-passing
 * style), never through per-CPU maps: these programs can be preempted.
 *
 * Concurrency: writers hold the record's lock word (no-wait: a taken lock
 * fails at once with EBUSY) and stamp their versions under the global commit
 * lock, after which last_ts moves. Readers outside a read-write transaction
 * take no lock: they read the version visible at a timestamp no newer than
 * last_ts and re-check the record's gc_seq afterwards, so a version
 * reclaimed while it was being copied is detected and read again.
 */
#include "engine.bpf.h"
#include "storage.bpf.h"
#include "record.bpf.h"
#include "wal.bpf.h"
#include "commit.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

static __always_inline __u32 slot_index(struct pt_regs *ctx)
{
	return (__u32)PT_REGS_PARM2(ctx);
}

/* Lock owner of the request: its transaction, or its slot for autocommit. */
static __always_inline __u32 owner_of(struct pt_regs *ctx, struct db_slot *slot)
{
	return slot->req.txn ? txn_index(slot) : autocommit_owner(ctx);
}

/* A lock conflict inside a read-write transaction aborts it (no-wait 2PL),
 * unless the holder is a short autocommit op: then the op is retried. So
 * does outgrowing the lock set. Other errors fail only the op. */
static __always_inline int txn_conflict(struct pt_regs *ctx, struct db_slot *slot, struct db_txn *t)
{
	__u32 d = slot->resp.detail;

	if (slot->resp.err != -EBUSY && d != DB_D_TXN_TOO_BIG)
		return 0;
	if (d == DB_D_LOCKED_AUTOCOMMIT || d == DB_D_RACE)
		return 0;
	t->abort_detail = slot->resp.detail;
	stat_add(&stats.txn_aborts_conflict, 1);
	bpf_tail_call(ctx, &stages, DB_STAGE_ABORT);
	return 0;
}

/* ---- dispatcher ---- */

static __always_inline bool needs_key(__u32 op)
{
	return op == DB_OP_GET || op == DB_OP_SET || op == DB_OP_DELETE || op == DB_OP_RENAME;
}

SEC("uprobe")
int dispatch(struct pt_regs *ctx)
{
	/* Every engine in the process sees every trigger call: answer only
	 * requests addressed to this one. */
	if (bpf_get_attach_cookie(ctx) != (__u32)PT_REGS_PARM1(ctx))
		return 0;
	struct db_slot *slot = slot_of(ctx);
	if (!slot)
		return 0;
	__u32 op = slot->req.op;
	if (op == DB_OP_NOP) {
		/* Under the commit lock, so it never lands inside a commit's
		 * fragments; if a commit holds the lock, the nudger's own wait
		 * runs the writer (wal_writer.rs), so skipping is harmless. */
		if ((slot->req.flags & DB_F_NUDGE) && commit_begin(autocommit_owner(ctx))) {
			wal_frag(DB_WAL_NUDGE, 0, NULL, NULL, 0);
			commit_cancel();
		}
		slot->resp.err = 0;
		return 0;
	}
	__builtin_memset(&slot->resp, 0, sizeof(slot->resp));
	if (op >= DB_OP__COUNT || slot->req.txn > DB_MAX_TXNS)
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST);
	stat_add(&stats.ops[op], 1);
	if (needs_key(op) && !key_valid(&slot->req.key))
		return fail(slot, -EINVAL, DB_D_BAD_REQUEST);

	switch (op) {
	case DB_OP_GET:
		if (slot->req.txn) {
			__u32 idx = txn_index(slot);
			struct db_txn *t = bpf_map_lookup_elem(&txns, &idx);

			if (t && !t->read_only)
				bpf_tail_call(ctx, &stages, DB_STAGE_TXN_GET);
		}
		bpf_tail_call(ctx, &stages, DB_STAGE_GET);
		break;
	case DB_OP_SET:
		bpf_tail_call(ctx, &stages, DB_STAGE_SET_PREPARE);
		break;
	case DB_OP_DELETE:
		bpf_tail_call(ctx, &stages, DB_STAGE_DELETE);
		break;
	case DB_OP_RENAME:
		if (slot->req.txn)
			return fail(slot, -EINVAL, DB_D_BAD_REQUEST); /* user space composes it */
		bpf_tail_call(ctx, &stages, DB_STAGE_RENAME);
		break;
	case DB_OP_SCAN:
		bpf_tail_call(ctx, &stages, DB_STAGE_SCAN);
		break;
	case DB_OP_BEGIN:
		bpf_tail_call(ctx, &stages, DB_STAGE_BEGIN);
		break;
	case DB_OP_COMMIT:
		bpf_tail_call(ctx, &stages, DB_STAGE_COMMIT);
		break;
	case DB_OP_ABORT:
		bpf_tail_call(ctx, &stages, DB_STAGE_ABORT);
		break;
	}
	return fail(slot, -ENOSYS, DB_D_NONE); /* tail call missing: engine not fully loaded */
}

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

SEC("uprobe")
int stage_get(struct pt_regs *ctx)
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
		struct db_record *rec = bpf_map_lookup_elem(&records, &slot->req.hkey);
		/* An unregistered reader takes a fresh timestamp each attempt:
		 * GC may have reclaimed what an older one saw. */
		__u64 at = snapshot ? snap : READ_ONCE(last_ts);

		if (!rec)
			return fail(slot, -ENOENT, DB_D_NONE);
		__u64 seq = READ_ONCE(rec->gc_seq);
		__u64 shared_seq = READ_ONCE(shared_free_seq);
		if (!name_matches(rec, &slot->req.key, slot->req.key_len)) {
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

		if (READ_ONCE(rec->gc_seq) != seq || READ_ONCE(shared_free_seq) != shared_seq) {
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

SEC("uprobe")
int stage_txn_get(struct pt_regs *ctx)
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
	int i = visible_version(rec, READ_ONCE(last_ts));
	if (i < 0)
		return fail(slot, -ENOENT, DB_D_NONE);
	return respond_version(ctx, slot, rec, i) ? fail(slot, -EIO, DB_D_NONE) : 0;
}

/* ---- SET: prepare -> [copy] -> commit ---- */

SEC("uprobe")
int stage_set_prepare(struct pt_regs *ctx)
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
	if ((flags & DB_F_META_ONLY) || len <= DB_SMALL_CHUNK) {
		if (!(flags & DB_F_META_ONLY) && write_storage(slot_index(ctx), slot->cont.loc, len))
			slot->resp.err = -EIO; /* commit stage undoes */
		bpf_tail_call(ctx, &stages, DB_STAGE_SET_COMMIT);
	} else {
		bpf_tail_call(ctx, &stages, DB_STAGE_SET_COPY);
	}
	return fail(slot, -ENOSYS, DB_D_NONE);
}

SEC("uprobe")
int stage_set_copy(struct pt_regs *ctx)
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
	int err = commit_log_one(owner, NULL, rec, v, &ts, &detail);
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
SEC("uprobe")
int stage_set_commit(struct pt_regs *ctx)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	__u32 owner = owner_of(ctx, slot);
	struct db_record *rec = bpf_map_lookup_elem(&records, &slot->req.hkey);
	if (!rec || READ_ONCE(rec->lock) != (DB_LOCK_X | owner))
		return fail(slot, -EIO, DB_D_NONE); /* lost our own lock: a bug */
	if (slot->resp.err) /* the value copy failed */
		return set_undo(slot, rec, slot->resp.err, slot->resp.detail);
	if (slot->req.txn)
		return set_stage_in_txn(slot, rec, slot->cont.version);
	return set_commit_now(slot, rec, owner, slot->cont.version);
}

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

SEC("uprobe")
int stage_delete(struct pt_regs *ctx)
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
	int err = commit_log_one(owner, rec, NULL, 0, &ts, &detail);

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

SEC("uprobe")
int stage_rename(struct pt_regs *ctx)
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
	    name_matches(src, &slot->req.key2, slot->req.key2_len)) {
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
			err = commit_log_one(owner, src, dst, n, &ts, &detail);
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
		struct db_record *rec = bpf_map_lookup_elem(&records, hkey);

		if (!rec)
			break; /* removed since user space found it: changed */
		__u64 seq = READ_ONCE(rec->gc_seq);
		__u64 at = sc->snapshot ? sc->snap : READ_ONCE(last_ts);

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

SEC("uprobe")
int stage_scan(struct pt_regs *ctx)
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
	}
	bpf_loop(n, scan_check, &sc, 0);
	slot->resp.count = sc.visible;
	return 0;
}

#include "txn_stages.inc.c" /* the transaction stages, programs of this object */
