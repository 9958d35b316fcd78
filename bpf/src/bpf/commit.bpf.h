/* SPDX-License-Identifier: MIT */
/*
 * commit.bpf.h - one commit: the commit lock, the log room check, the
 * BEGIN..COMMIT emission, stamping and publishing last_ts.
 *
 * Every commit (SET, DELETE, RENAME, a transaction's COMMIT) runs
 *   commit_open        take the commit lock, check the log has room
 *   emit the log       BEGIN {PUT | DEL}* COMMIT, before anything is visible
 *   commit_stamp       per version: the new begin, the old end
 *   commit_end         publish last_ts, release the commit lock
 * and fails before commit_stamp without leaving anything visible. The
 * one-op commits emit with commit_log_one, which does the first two steps;
 * a transaction walks its lock set between them (txn_stages.inc.c).
 */
#ifndef COMMIT_BPF_H
#define COMMIT_BPF_H

#include "engine.bpf.h"
#include "record.bpf.h"
#include "wal.bpf.h"

/* ---- the commit lock: one commit stamps its versions at a time ---- */

/* Takes the commit lock and returns the new commit timestamp, or 0 when
 * another commit holds it (the caller undoes and reports a transient EBUSY). */
static __always_inline __u64 commit_begin(__u32 owner)
{
	struct db_clock *c = db_clock();

	if (!c)
		return 0;
	for (int i = 0; i < DB_LOCK_CAS_TRIES; i++)
		if (__sync_val_compare_and_swap(&commit_lock, 0, (__u64)owner + 1) == 0)
			return READ_ONCE(c->last_ts) + 1;
	return 0;
}

/* Releases the commit lock of a commit that did not happen. */
static __always_inline void commit_cancel(void)
{
	__sync_lock_test_and_set(&commit_lock, 0);
}

/* Publishes ts to readers and releases the commit lock. */
static __always_inline void commit_end(__u64 ts)
{
	struct db_clock *c = db_clock();

	if (c) /* never NULL: commit_begin found it */
		WRITE_ONCE(c->last_ts, ts);
	__sync_lock_test_and_set(&commit_lock, 0);
	stat_add(&stats.commits, 1);
}

/* ---- the sequence ---- */

/* Takes the commit lock for a commit of log_bytes bytes of log (BEGIN and
 * COMMIT not counted). 0 with the lock held and the commit's timestamp in
 * *ts; else the error and *detail to report, the lock not held. */
static __always_inline int commit_open(__u32 owner, __u64 log_bytes, __u64 *ts, __u32 *detail)
{
	*ts = commit_begin(owner);
	if (!*ts) {
		*detail = DB_D_COMMIT_BUSY;
		return -EBUSY;
	}
	int err = wal_room(log_bytes, detail);

	if (err)
		commit_cancel();
	return err;
}

/* Whether the one-op commit of slot's request inserts or removes a
 * top-level key: del's name (the request's key) goes, or put's name (key,
 * or key2 when put_second: a rename) comes where none was. A global
 * function: verified once in each stage that commits. */
__noinline int commit_changes_top(struct db_slot *slot, struct db_record *del,
				  struct db_record *put, int put_second)
{
	if (!slot)
		return 0;
	if (del && key_is_top(slot, 0))
		return 1;
	return put && !version_live(put, latest_version(put)) && key_is_top(slot, put_second);
}

/* commit_open, then the log of a one-op commit of slot's request: BEGIN, a
 * DEL of del's name when del is set, a PUT of version v of put when put is
 * set (each record with its map key), COMMIT. A commit that inserts or
 * removes a top-level key is refused while a transaction's scan holds the
 * set (top.bpf.h): a scan joins under the commit lock, so under it the
 * check and the stamp that follows are one step to a scan. Which keys the
 * commit changes is looked at only when a scan holds the set: otherwise
 * the check is one load. 0 with the lock held and the timestamp in
 * *ts, to stamp and commit_end; else the error and *detail to report, the
 * lock not held and nothing to stamp. */
static __always_inline int commit_log_one(__u32 owner, struct db_slot *slot,
					  struct db_record *del, const struct db_hkey *del_hkey,
					  struct db_record *put, const struct db_hkey *put_hkey,
					  __u32 v, __u64 *ts, __u32 *detail)
{
	__u64 bytes = 0;

	if (del)
		bytes += WAL_FRAG_BYTES;
	if (put)
		bytes += wal_put_bytes(put->meta[V(v)].len);
	int err = commit_open(owner, bytes, ts, detail);

	if (err)
		return err;
	if (DB_TOP_COUNT(READ_ONCE(top_gate), DB_TOP_LISTER) &&
	    commit_changes_top(slot, del, put, put_hkey == &slot->req.hkey2)) {
		commit_cancel();
		*detail = DB_D_TOP_LOCKED;
		return -EBUSY;
	}
	test_pause(top_commit_pause_loops);
	if (wal_frag(DB_WAL_BEGIN, *ts, NULL, NULL, NULL) ||
	    (del && wal_frag(DB_WAL_DEL, *ts, NULL, del, del_hkey)) ||
	    (put && wal_put(*ts, put, put_hkey, v)) ||
	    wal_frag(DB_WAL_COMMIT, *ts, NULL, NULL, NULL)) {
		commit_cancel();
		*detail = DB_D_WAL_FULL;
		return -EAGAIN;
	}
	return 0;
}

/* Stamps, at ts, version nv of rec (-1: none, a delete) as the one that
 * replaces version old (-1 or not live: none, an insert), and counts the
 * change in the stats. handed_on: old's storage now belongs to nv (a
 * metadata-only write) or to another record (the source of a rename), so
 * old must not free it and nv's storage was born with old's. */
static __always_inline void commit_stamp(struct db_record *rec, int nv, int old, bool handed_on,
					 __u64 ts)
{
	bool live = version_live(rec, old);

	if (nv >= 0) {
		rec->born_ts[V(nv)] = live && handed_on ? rec->born_ts[V(old)] : ts;
		WRITE_ONCE(rec->begin_ts[V(nv)], ts);
		stat_add(&stats.value_bytes, rec->meta[V(nv)].len);
		if (!live)
			stat_add(&stats.keys, 1);
	} else if (live) {
		stat_add(&stats.keys, -1);
	}
	if (live) {
		if (handed_on)
			rec->vflags[V(old)] |= DB_VF_NOFREE;
		WRITE_ONCE(rec->end_ts[V(old)], ts);
		stat_add(&stats.value_bytes, -(__s64)rec->meta[V(old)].len);
	}
}

#endif /* COMMIT_BPF_H */
