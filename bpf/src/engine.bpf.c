// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * engine.bpf.c - the bpfdb engine: dispatcher and stage programs.
 *
 * User space writes a request into its slot and calls the trigger function;
 * the uprobe on it runs `dispatch`, which tail-calls the first stage of the
 * op. Stages hand state to each other through the slot (continuation-passing
 * style), never through per-CPU maps: these programs can be preempted.
 *
 * Concurrency: a writer holds the record's lock word exclusively (no-wait:
 * a taken lock fails at once with EBUSY). Readers take no lock; they read the
 * newest committed version and re-check the record's gc_seq afterwards, so a
 * version reclaimed while it was being copied is detected and read again.
 */
#include "engine.bpf.h"
#include "storage.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* ---- records and locks ---- */

static __always_inline bool key_valid(struct db_key *key)
{
	return key->name[0] != 0 && key->name[DB_KEY_SIZE - 1] == 0;
}

static __always_inline __u32 busy_detail(__u64 lock)
{
	if (lock == DB_LOCK_DEAD || (lock & DB_OWNER_AUTOCOMMIT))
		return DB_D_LOCKED_AUTOCOMMIT;
	return DB_D_LOCKED_TXN;
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
	struct db_record *rec = bpf_map_lookup_elem(&records, hkey);

	if (!rec) {
		if (!create) {
			fail(slot, -ENOENT, DB_D_NONE);
			return NULL;
		}
		/* Built in the slot: a record does not fit on the 512-byte stack. */
		struct db_record *init = &slot->scratch;

		__builtin_memset(init, 0, sizeof(*init));
		init->lock = mine;
		init->gc_seq = __sync_fetch_and_add(&record_gen, 1) << 32;
		init->key_len = key_len;
		if (bpf_probe_read_kernel(init->name, sizeof(init->name), key->name)) {
			fail(slot, -EIO, DB_D_NONE);
			return NULL;
		}
		long err = bpf_map_update_elem(&records, hkey, init, BPF_NOEXIST);
		if (err == -EEXIST) {
			fail(slot, -EBUSY, DB_D_LOCKED_AUTOCOMMIT);
			return NULL;
		}
		if (err) {
			fail(slot, -ENOSPC, DB_D_NO_KEYS);
			return NULL;
		}
		rec = bpf_map_lookup_elem(&records, hkey);
		if (!rec || READ_ONCE(rec->lock) != mine) {
			fail(slot, -EBUSY, DB_D_RACE);
			return NULL;
		}
		stat_add(&stats.records, 1);
		return rec;
	}
	__u64 old = __sync_val_compare_and_swap(&rec->lock, DB_LOCK_FREE, mine);
	if (old != DB_LOCK_FREE) {
		fail(slot, -EBUSY, busy_detail(old));
		return NULL;
	}
	if (!name_matches(rec, key, key_len)) {
		/* Still in the map under our hash: another name has it. Gone:
		 * the element was reused between lookup and lock; retry. */
		bool collision = bpf_map_lookup_elem(&records, hkey) == rec;

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

/* Releases the lock; a record left with no versions leaves the map. */
static __always_inline void unlock_record(struct db_record *rec, struct db_hkey *hkey)
{
	if (record_empty(rec)) {
		/* DEAD first: stale lockers fail their CAS; readers see gc_seq move. */
		WRITE_ONCE(rec->lock, DB_LOCK_DEAD);
		__sync_fetch_and_add(&rec->gc_seq, 1);
		bpf_map_delete_elem(&records, hkey);
		stat_add(&stats.records, -1);
		return;
	}
	WRITE_ONCE(rec->lock, DB_LOCK_FREE);
}

/* Oldest timestamp a reader may still need. Snapshots do not exist yet, so
 * every committed end is reclaimable; readers in flight are protected by
 * gc_seq. */
static __always_inline __u64 gc_horizon(void)
{
	return DB_TS_INF - 1;
}

/* Cooperative GC: reclaims versions of a locked record that ended at or
 * before the horizon, with their value storage. */
static __noinline void gc_record(struct db_record *rec)
{
	__u64 horizon = gc_horizon();

	for (int i = 0; i < DB_MAX_VERSIONS; i++) {
		__u64 end = rec->end_ts[i];

		if (!ts_committed(rec->begin_ts[i]) || !ts_committed(end) || end > horizon)
			continue;
		__sync_fetch_and_add(&rec->gc_seq, 1);
		if (!(rec->vflags[i] & DB_VF_NOFREE))
			free_storage(rec->loc[i], rec->meta[i].len);
		rec->begin_ts[i] = 0;
		stat_add(&stats.versions_reclaimed, 1);
	}
}

static __always_inline int free_version_index(struct db_record *rec)
{
	for (int i = 0; i < DB_MAX_VERSIONS; i++)
		if (rec->begin_ts[i] == 0)
			return i;
	return -1;
}

static __always_inline __u64 next_commit_ts(void)
{
	__u64 ts = __sync_fetch_and_add(&last_ts, 1) + 1;

	stat_add(&stats.commits, 1);
	return ts;
}

/* ---- dispatcher ---- */

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
		slot->resp.err = 0;
		return 0;
	}
	__builtin_memset(&slot->resp, 0, sizeof(slot->resp));
	if (op >= DB_OP__COUNT) {
		fail(slot, -EINVAL, DB_D_BAD_REQUEST);
		return 0;
	}
	stat_add(&stats.ops[op], 1);
	if (!key_valid(&slot->req.key)) {
		if (op != DB_OP_SCAN) {
			fail(slot, -EINVAL, DB_D_BAD_REQUEST);
			return 0;
		}
	}
	switch (op) {
	case DB_OP_GET:
		bpf_tail_call(ctx, &stages, DB_STAGE_GET);
		break;
	case DB_OP_SET:
		bpf_tail_call(ctx, &stages, DB_STAGE_SET_PREPARE);
		break;
	case DB_OP_DELETE:
		bpf_tail_call(ctx, &stages, DB_STAGE_DELETE);
		break;
	case DB_OP_RENAME:
		bpf_tail_call(ctx, &stages, DB_STAGE_RENAME);
		break;
	case DB_OP_SCAN:
		bpf_tail_call(ctx, &stages, DB_STAGE_SCAN);
		break;
	}
	fail(slot, -ENOSYS, DB_D_NONE); /* tail call missing: engine not fully loaded */
	return 0;
}

/* ---- GET: lock-free read of the newest committed version ---- */

#define V(i) ((i) & (DB_MAX_VERSIONS - 1)) /* bounded version index */

SEC("uprobe")
int stage_get(struct pt_regs *ctx)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	for (int attempt = 0; attempt < DB_READ_RETRIES; attempt++) {
		struct db_record *rec = bpf_map_lookup_elem(&records, &slot->req.hkey);

		if (!rec)
			return fail(slot, -ENOENT, DB_D_NONE);
		__u64 seq = READ_ONCE(rec->gc_seq);
		if (!name_matches(rec, &slot->req.key, slot->req.key_len)) {
			if (READ_ONCE(rec->gc_seq) == seq)
				return fail(slot, -ENOENT, DB_D_NONE); /* another name's hash */
			continue;
		}
		int i = latest_version(rec);
		bool live = version_live(rec, i);
		__u32 len = rec->meta[V(i)].len;
		int err = 0;

		if (live) {
			slot->resp.meta = rec->meta[V(i)];
			slot->resp.ts = rec->begin_ts[V(i)];
			if (!(slot->req.flags & DB_F_META_ONLY) && len <= DB_VALUE_LIMIT)
				err = read_storage((__u32)PT_REGS_PARM2(ctx), rec->loc[V(i)], len);
		}
		if (READ_ONCE(rec->gc_seq) != seq) {
			stat_add(&stats.read_retries, 1);
			continue;
		}
		if (!live)
			return fail(slot, -ENOENT, DB_D_NONE);
		if (err)
			return fail(slot, -EIO, DB_D_NONE);
		return 0;
	}
	return fail(slot, -EAGAIN, DB_D_RACE);
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
	if (len > max_value)
		return fail(slot, -EFBIG, DB_D_TOO_BIG);

	__u32 owner = autocommit_owner(ctx);
	struct db_record *rec = lock_record(slot, false, owner, !(flags & DB_F_MUST_EXIST));
	if (!rec)
		return 0;
	int cur = latest_version(rec);
	bool exists = version_live(rec, cur);
	int err = 0;
	__u32 detail = DB_D_NONE;

	if ((flags & DB_F_NOREPLACE) && exists) {
		err = -EEXIST;
	} else if ((flags & (DB_F_MUST_EXIST | DB_F_META_ONLY)) && !exists) {
		err = -ENOENT;
	} else {
		gc_record(rec);
		int idx = free_version_index(rec);
		if (idx < 0) {
			err = -EBUSY;
			detail = DB_D_VERSIONS_FULL;
		} else {
			slot->cont.version = idx;
			if (flags & DB_F_META_ONLY) {
				slot->cont.loc = rec->loc[V(cur)];
				len = rec->meta[V(cur)].len;
				slot->req.meta.len = len;
			} else {
				err = alloc_storage(len, &slot->cont.loc, &detail);
			}
			if (!err) {
				/* Reserve the version: pending, invisible to readers. */
				rec->end_ts[V(idx)] = DB_TS_INF;
				WRITE_ONCE(rec->begin_ts[V(idx)], DB_TS_PENDING | owner);
			}
		}
	}
	if (err) {
		unlock_record(rec, &slot->req.hkey);
		return fail(slot, err, detail);
	}
	if ((flags & DB_F_META_ONLY) || len <= DB_SMALL_CHUNK) {
		if (!(flags & DB_F_META_ONLY) &&
		    write_storage((__u32)PT_REGS_PARM2(ctx), slot->cont.loc, len))
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
	if (write_storage((__u32)PT_REGS_PARM2(ctx), slot->cont.loc, slot->req.meta.len))
		slot->resp.err = -EIO;
	bpf_tail_call(ctx, &stages, DB_STAGE_SET_COMMIT);
	return fail(slot, -ENOSYS, DB_D_NONE);
}

SEC("uprobe")
int stage_set_commit(struct pt_regs *ctx)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	struct db_record *rec = bpf_map_lookup_elem(&records, &slot->req.hkey);
	if (!rec || READ_ONCE(rec->lock) != (DB_LOCK_X | autocommit_owner(ctx)))
		return fail(slot, -EIO, DB_D_NONE); /* lost our own lock: a bug */

	__u32 flags = slot->req.flags;
	__u32 v = slot->cont.version;
	if (slot->resp.err) {
		if (!(flags & DB_F_META_ONLY))
			free_storage(slot->cont.loc, slot->req.meta.len);
		rec->begin_ts[V(v)] = 0;
		unlock_record(rec, &slot->req.hkey);
		return fail(slot, slot->resp.err, DB_D_NONE);
	}
	int p = latest_version(rec);
	bool existed = version_live(rec, p);
	__u64 prev_len = existed ? rec->meta[V(p)].len : 0;

	rec->meta[V(v)] = slot->req.meta;
	rec->loc[V(v)] = slot->cont.loc;
	rec->vflags[V(v)] = 0;
	__u64 ts = next_commit_ts();
	/* Newest begin first: a reader between the two stores sees the new
	 * version as the newest, never a gap. */
	WRITE_ONCE(rec->begin_ts[V(v)], ts);
	if (existed) {
		if (flags & DB_F_META_ONLY)
			rec->vflags[V(p)] |= DB_VF_NOFREE; /* storage now belongs to v */
		WRITE_ONCE(rec->end_ts[V(p)], ts);
	} else {
		stat_add(&stats.keys, 1);
	}
	stat_add(&stats.value_bytes, (__s64)slot->req.meta.len - (__s64)prev_len);
	gc_record(rec);
	unlock_record(rec, &slot->req.hkey);
	slot->resp.ts = ts;
	slot->resp.meta = slot->req.meta;
	return 0;
}

/* ---- DELETE ---- */

SEC("uprobe")
int stage_delete(struct pt_regs *ctx)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	struct db_record *rec = lock_record(slot, false, autocommit_owner(ctx), false);
	if (!rec)
		return 0;
	int cur = latest_version(rec);
	if (!version_live(rec, cur)) {
		unlock_record(rec, &slot->req.hkey);
		return fail(slot, -ENOENT, DB_D_NONE);
	}
	__u64 ts = next_commit_ts();

	WRITE_ONCE(rec->end_ts[V(cur)], ts);
	stat_add(&stats.keys, -1);
	stat_add(&stats.value_bytes, -(__s64)rec->meta[V(cur)].len);
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
	bool replacing = version_live(dst, d);
	int err = 0;
	__u32 detail = DB_D_NONE;

	if (replacing && (slot->req.flags & DB_F_NOREPLACE)) {
		err = -EEXIST;
	} else {
		gc_record(dst);
		if (free_version_index(dst) < 0) {
			err = -EBUSY;
			detail = DB_D_VERSIONS_FULL;
		}
	}
	if (err) {
		unlock_record(dst, &slot->req.hkey2);
		unlock_record(src, &slot->req.hkey);
		return fail(slot, err, detail);
	}
	int n = free_version_index(dst);
	__u64 ts = next_commit_ts();

	/* The value moves: the new version owns the storage, the source's
	 * ended version keeps a reference only for older readers. */
	dst->meta[V(n)] = src->meta[V(s)];
	dst->loc[V(n)] = src->loc[V(s)];
	dst->vflags[V(n)] = 0;
	dst->end_ts[V(n)] = DB_TS_INF;
	WRITE_ONCE(dst->begin_ts[V(n)], ts);
	if (replacing) {
		WRITE_ONCE(dst->end_ts[V(d)], ts);
		stat_add(&stats.keys, -1);
		stat_add(&stats.value_bytes, -(__s64)dst->meta[V(d)].len);
	}
	src->vflags[V(s)] |= DB_VF_NOFREE;
	WRITE_ONCE(src->end_ts[V(s)], ts);
	slot->resp.ts = ts;
	slot->resp.meta = dst->meta[V(n)];
	gc_record(dst);
	gc_record(src);
	unlock_record(dst, &slot->req.hkey2);
	unlock_record(src, &slot->req.hkey);
	return 0;
}

/* ---- SCAN: names of live keys, resumable by element count ---- */

struct scan_ctx {
	__u32 slot_idx;
	__u32 skip;    /* elements still to pass over */
	__u32 visited; /* elements looked at after skipping */
	__u32 off;     /* bytes written to data */
	__u32 count;
	__u32 full;
};

static long scan_one(void *map, struct db_hkey *hkey, struct db_record *rec,
		     struct scan_ctx *sc)
{
	if (sc->skip) {
		sc->skip--;
		return 0;
	}
	__u32 off = sc->off;
	if (off > DB_VALUE_LIMIT - DB_SCAN_ENTRY_MAX) {
		sc->full = 1;
		return 1;
	}
	sc->visited++;
	if (!version_live(rec, latest_version(rec)))
		return 0;
	struct db_slot *slot = bpf_map_lookup_elem(&slots, &sc->slot_idx);
	if (!slot)
		return 1;
	__u32 len = rec->key_len & 0xff;

	/* Entry: one length byte, then the name (no terminator). */
	slot->data[off] = len;
	if (bpf_probe_read_kernel(&slot->data[off + 1], len, rec->name))
		return 1;
	sc->off = off + 1 + len;
	sc->count++;
	return 0;
}

SEC("uprobe")
int stage_scan(struct pt_regs *ctx)
{
	struct db_slot *slot = slot_of(ctx);

	if (!slot)
		return 0;
	struct scan_ctx sc = {
		.slot_idx = (__u32)PT_REGS_PARM2(ctx),
		.skip = slot->req.cursor,
	};

	bpf_for_each_map_elem(&records, scan_one, &sc, 0);
	slot->resp.count = sc.count;
	slot->resp.next_cursor = slot->req.cursor + sc.visited;
	slot->resp.done = !sc.full;
	slot->resp.meta.len = sc.off;
	return 0;
}
