// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * exec_trace.bpf.c - a tracing application on bpfdb: counts execve calls
 * per program name in the keys `exec.<name>` (the value is the count in
 * decimal and a newline, so `cat mnt/exec.ls` reads it), each event one
 * read-write transaction through the engine's stages, logged and recovered
 * like any commit.
 *
 * The event is a uprobe on the C library's execve (every dynamically linked
 * program execs through it), not a ksyscall: this kernel is built without
 * kprobes (CONFIG_KPROBES unset), and the program types it does have for
 * syscalls (tracepoint, fentry) cannot tail-call into the engine.
 *
 * The chain of one event, every arrow a tail call (at most 33 in all):
 *   on_execve (claims a client slot) -> engine BEGIN -> begun -> engine GET -> got
 *             -> engine SET -> set -> engine COMMIT (+RELEASE) -> done
 *             (gives the slot back)
 * A conflict (two CPUs counting the same name at once: no-wait locking),
 * a full log ring or any other failure does not lose the event: its count
 * is kept in `pending` and added by the next transaction on that name.
 */
#include "bpfdb_kernel.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define TRACE_PREFIX "exec."
#define TRACE_PREFIX_LEN 5
#define TRACE_NAME_MAX 48          /* bytes of a program name kept */
#define TRACE_PATH_MAX 256         /* bytes of the execve path read */
#define TRACE_PENDING_MAX 1024     /* names with counts not yet committed */
#define TRACE_DIGITS 20            /* a u64 in decimal */

/* Continuations, at conts[cont_base + TRACE_CONT_*]; the loader puts them. */
enum {
	TRACE_CONT_BEGUN = 0,
	TRACE_CONT_GOT = 1,
	TRACE_CONT_SET = 2,
	TRACE_CONT_DONE = 3,
	TRACE_CONT__COUNT = 4,
};

/* Set by the loader. */
const volatile __u32 cont_base = 0;
const volatile __u64 realtime_offset_ns = 0; /* wall clock minus boot clock at load */
const volatile __u32 own_tgid = 0;           /* the daemon: its execs are not counted */
/* Test hook (Options::trace_defer_pause_loops): iterations of an empty loop
 * a deferred event idles right after it gave its client slot back, so that
 * a test can have other events claim the slot meanwhile. 0 in real use. */
const volatile __u32 defer_pause_loops = 0;

enum trace_counter {
	TRACE_EVENTS = 0,    /* execve calls seen */
	TRACE_COMMITS = 1,   /* transactions committed */
	TRACE_DEFERRED = 2,  /* transactions that failed: the count waits in pending */
	TRACE_LOST = 3,      /* counts dropped: pending was full, or no client slot free */
	TRACE__COUNT = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TRACE__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} trace_stats SEC(".maps");

struct trace_name {
	char name[TRACE_NAME_MAX];
};

/* Counts not yet committed, by name. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TRACE_PENDING_MAX);
	__type(key, struct trace_name);
	__type(value, __u64);
} pending SEC(".maps");

/* The event in flight in each client slot: uprobe programs can be
 * preempted, so state belongs to the task's slot, not to a CPU. */
struct trace_state {
	char path[TRACE_PATH_MAX];
	struct trace_name name; /* "exec.<basename>", zero padded */
	__u32 key_len;
	__u32 last_slash;
	__u64 delta;            /* this event and the pending counts it carries */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DB_CLIENT_SLOTS);
	__type(key, __u32);
	__type(value, struct trace_state);
} trace_state SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *c = bpf_map_lookup_elem(&trace_stats, &what);

	if (c)
		*c += 1;
}

static __always_inline struct trace_state *state(void)
{
	int n = db_kslot_index();
	__u32 idx = n;

	return n < 0 ? NULL : bpf_map_lookup_elem(&trace_state, &idx);
}

static long idle_one(__u64 i, void *unused)
{
	return 0;
}

/* Gives the slot back, then the test pause (nothing when it is 0). */
static __always_inline void release(void)
{
	db_kslot_release();
	if (defer_pause_loops)
		bpf_loop(defer_pause_loops & (DB_READ_PAUSE_MAX - 1), idle_one, NULL, 0);
}

/* The event's own count goes to pending for the next transaction (the
 * pending counts it carried are still there), then the slot is given back:
 * not before, since st is the slot's and the next task to claim the slot
 * rewrites st->name. */
static __always_inline int defer(struct trace_state *st)
{
	__u64 *p = bpf_map_lookup_elem(&pending, &st->name);
	__u64 d = 1;

	count(TRACE_DEFERRED);
	if (!p && bpf_map_update_elem(&pending, &st->name, &d, BPF_NOEXIST) == 0)
		goto out;
	if (!p) /* another CPU inserted it meanwhile, or the map is full */
		p = bpf_map_lookup_elem(&pending, &st->name);
	if (p)
		__sync_fetch_and_add(p, d);
	else
		count(TRACE_LOST);
out:
	release();
	return 0;
}

static __always_inline int call(void *ctx, struct db_slot *slot, __u32 op, __u32 cont)
{
	slot->req.flags = 0;
	db_kcall(ctx, slot, op, cont_base + cont);
	return -ENOSYS; /* the engine is not loaded */
}

struct slash_ctx {
	struct trace_state *st;
};

static long find_slash(__u64 i, struct slash_ctx *sc)
{
	struct trace_state *st = sc->st;

	if (i >= TRACE_PATH_MAX)
		return 1;
	char c = st->path[i & (TRACE_PATH_MAX - 1)];
	if (c == 0)
		return 1;
	if (c == '/')
		st->last_slash = i + 1;
	return 0;
}

/* execve(filename, argv, envp), at the C library's entry. */
SEC("uprobe")
int on_execve(struct pt_regs *ctx)
{
	const char *filename = (const char *)PT_REGS_PARM1(ctx);

	if ((bpf_get_current_pid_tgid() >> 32) == own_tgid)
		return 0;
	count(TRACE_EVENTS);
	struct db_slot *slot = db_kslot_claim();
	struct trace_state *st = state();
	if (!slot || !st) {
		count(TRACE_LOST);
		db_kslot_release();
		return 0;
	}
	long path_len = bpf_probe_read_user_str(st->path, sizeof(st->path), filename);
	if (path_len <= 1) {
		db_kslot_release();
		return 0;
	}
	struct slash_ctx sc = { .st = st };

	st->last_slash = 0;
	bpf_loop(path_len & (TRACE_PATH_MAX - 1), find_slash, &sc, 0); /* the path's bytes only */
	__builtin_memset(&st->name, 0, sizeof(st->name));
	__builtin_memcpy(st->name.name, TRACE_PREFIX, TRACE_PREFIX_LEN);
	long n = bpf_probe_read_kernel_str(&st->name.name[TRACE_PREFIX_LEN],
					   TRACE_NAME_MAX - TRACE_PREFIX_LEN,
					   &st->path[st->last_slash & (TRACE_PATH_MAX - 1)]);
	if (n <= 1) { /* a path ending in '/' */
		db_kslot_release();
		return 0;
	}
	st->key_len = TRACE_PREFIX_LEN + n - 1;
	st->delta = 1;
	__u64 *p = bpf_map_lookup_elem(&pending, &st->name);
	if (p)
		st->delta += __sync_fetch_and_add(p, 0);
	slot->req.txn = db_ktxn();
	slot->req.txn_id = 0;
	return call(ctx, slot, DB_OP_BEGIN, TRACE_CONT_BEGUN) ? defer(st) : 0;
}

SEC("uprobe")
int begun(struct pt_regs *ctx)
{
	struct trace_state *st = state();
	struct db_slot *slot = db_kslot();

	if (!st || !slot)
		return 0;
	if (slot->resp.err)
		return defer(st);
	slot->req.txn_id = slot->resp.txn_id;
	if (db_kreq_key(slot, st->name.name, st->key_len & 0xff))
		return call(ctx, slot, DB_OP_ABORT, TRACE_CONT_DONE);
	return call(ctx, slot, DB_OP_GET, TRACE_CONT_GOT);
}

/* The count read, plus this event's; the value written back in decimal. */
struct parse {
	struct db_slot *slot;
	__u32 len;
	__u64 n;
};

static long parse_digit(__u64 i, void *arg)
{
	struct parse *p = arg;

	if (i >= p->len || i >= TRACE_DIGITS)
		return 1;
	__u8 c = p->slot->data[i & 31];
	if (c < '0' || c > '9')
		return 1;
	p->n = p->n * 10 + (c - '0');
	return 0;
}

SEC("uprobe")
int got(struct pt_regs *ctx)
{
	struct trace_state *st = state();
	struct db_slot *slot = db_kslot();

	if (!st || !slot)
		return 0;
	struct parse p = { .slot = slot };

	if (slot->resp.err == 0) {
		p.len = slot->resp.meta.len;
		bpf_loop(TRACE_DIGITS, parse_digit, &p, 0);
	} else if (slot->resp.err != -ENOENT) {
		return call(ctx, slot, DB_OP_ABORT, TRACE_CONT_DONE);
	}
	__u64 n = p.n + st->delta;
	__u32 k = 0;

	/* The digits backwards, then turned around in place. */
	for (int i = 0; i < TRACE_DIGITS; i++) {
		slot->data[i] = '0' + n % 10;
		n /= 10;
		k = i + 1;
		if (!n)
			break;
	}
	for (__u32 i = 0; i < TRACE_DIGITS / 2; i++) {
		if (i >= k / 2)
			break;
		__u8 c = slot->data[i];
		slot->data[i] = slot->data[(k - 1 - i) & 31];
		slot->data[(k - 1 - i) & 31] = c;
	}
	slot->data[k & 31] = '\n';
	__u64 now = bpf_ktime_get_boot_ns() + realtime_offset_ns;
	slot->req.meta.mode = 0100644;
	slot->req.meta.uid = 0;
	slot->req.meta.gid = 0;
	slot->req.meta.len = k + 1;
	slot->req.meta.mtime_ns = now;
	slot->req.meta.ctime_ns = now;
	return call(ctx, slot, DB_OP_SET, TRACE_CONT_SET);
}

SEC("uprobe")
int set(struct pt_regs *ctx)
{
	struct db_slot *slot = db_kslot();

	if (!slot)
		return 0;
	if (slot->resp.err)
		return call(ctx, slot, DB_OP_ABORT, TRACE_CONT_DONE);
	return call(ctx, slot, DB_OP_COMMIT, TRACE_CONT_DONE);
}

/* After COMMIT, or after an ABORT: req.op says which. */
SEC("uprobe")
int done(struct pt_regs *ctx)
{
	struct trace_state *st = state();
	struct db_slot *slot = db_kslot();

	if (!st || !slot)
		return 0;
	if (slot->req.op == DB_OP_COMMIT && slot->resp.err == 0) {
		count(TRACE_COMMITS);
		/* The pending counts this transaction carried are in now. */
		__u64 *p = bpf_map_lookup_elem(&pending, &st->name);
		if (p && st->delta > 1)
			__sync_fetch_and_add(p, -(st->delta - 1));
		db_kslot_release();
		return 0;
	}
	if (slot->req.op == DB_OP_COMMIT) /* the transaction is still open */
		return call(ctx, slot, DB_OP_ABORT, TRACE_CONT_DONE);
	return defer(st);
}
