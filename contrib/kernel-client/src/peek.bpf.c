// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * peek.bpf.c - the smallest bpfdb kernel client: a BPF_PROG_TYPE_SYSCALL
 * program, run on demand by its loader (BPF_PROG_RUN), that reads one key
 * of a running daemon from its pinned maps with the snapshot reads of
 * bpfdb_kernel.h. The same calls work from XDP, tc or tracing programs.
 */
#include "bpfdb_kernel.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The program's context: the loader fills name/name_len, reads the rest. */
struct peek_args {
	struct db_key name;   /* zero padded */
	__u32 name_len;
	__s32 err;            /* 0, or -ENOENT, -E2BIG (over one page), -EAGAIN */
	struct db_meta meta;
	__u64 ts;             /* commit timestamp of the version read */
};

/* The value read: a helper cannot write into the context, so it goes
 * through this map, which the loader reads after the run. */
struct peek_value {
	__u8 bytes[DB_PAGE_SIZE];
	struct db_key name; /* the context's name, copied: the API's loops
			     * index it, which a context pointer does not allow */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct peek_value);
} peek_out SEC(".maps");

SEC("syscall")
int peek(struct peek_args *a)
{
	struct db_layout *l = db_layout();
	struct db_hkey h = {};
	struct db_view v = {};
	__u32 len = a->name_len;
	__u32 zero = 0;
	struct peek_value *out = bpf_map_lookup_elem(&peek_out, &zero);

	if (!out || !l || l->magic != DB_LAYOUT_MAGIC || len == 0 || len > DB_KEY_MAX) {
		a->err = -EINVAL;
		return 0;
	}
	__builtin_memcpy(&out->name, &a->name, sizeof(out->name));
	/* One snapshot: the newest whole commit. */
	__u64 at = db_snapshot_ts();
	int err = db_key_hash(&out->name, len, l->hash_seed, &h);

	if (!err)
		err = db_view_open(&v, &out->name, len, &h, at);
	if (!err) {
		__u32 n = v.meta.len;

		if (v.value && n > 0 && n <= DB_SMALL_MAX)
			err = bpf_probe_read_kernel(out->bytes, n, v.value);
		/* Valid only if GC reclaimed nothing while we copied. */
		if (!err && !db_view_valid(&v))
			err = -EAGAIN;
	}
	a->err = err;
	a->meta = v.meta;
	a->ts = v.ts;
	return 0;
}
