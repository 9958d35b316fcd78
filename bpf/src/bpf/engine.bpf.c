// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * engine.bpf.c - the bpfdb engine: the one eBPF object. This file holds the
 * dispatcher and the helpers every stage shares; the stages are in the
 * files it includes at its end (one object, one prog array of stages):
 *   read_stages.inc.c    GET, GET in a transaction, SCAN
 *   set_stages.inc.c     SET: prepare -> [copy] -> commit
 *   delete_stages.inc.c  DELETE, RENAME
 *   txn_stages.inc.c     BEGIN, COMMIT, ABORT, RELEASE
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
#include "top.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Lock owner of the request: its transaction, or its slot for autocommit. */
static __always_inline __u32 owner_of(struct pt_regs *ctx, struct db_slot *slot)
{
	return slot->req.txn ? txn_index(slot) : autocommit_owner(ctx);
}

/* A lock conflict inside a read-write transaction aborts it (no-wait 2PL),
 * unless the holder is a short autocommit op or a commit stamping (a
 * scan's lock on the top-level keys is taken under the commit lock): then
 * the op is retried. So does outgrowing the lock set. Other errors fail
 * only the op. */
static __always_inline int txn_conflict(struct pt_regs *ctx, struct db_slot *slot, struct db_txn *t)
{
	__u32 d = slot->resp.detail;

	if (slot->resp.err != -EBUSY && d != DB_D_TXN_TOO_BIG)
		return 0;
	if (d == DB_D_LOCKED_AUTOCOMMIT || d == DB_D_RACE || d == DB_D_COMMIT_BUSY)
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

DB_STAGE_PROG(dispatch)
{
	/* Every engine in the process sees every trigger call: answer only
	 * requests addressed to this one. Clients come through the prog
	 * array (stages[DB_STAGE_DISPATCH]) of the engine they loaded with. */
	if (!from_client(ctx) && bpf_get_attach_cookie(ctx) != (__u32)PT_REGS_PARM1(ctx))
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
			wal_frag(DB_WAL_NUDGE, 0, NULL, NULL, NULL);
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

/* ---- the stages, programs of this object ---- */

#include "read_stages.inc.c"
#include "set_stages.inc.c"
#include "delete_stages.inc.c"
#include "txn_stages.inc.c"
