/* SPDX-License-Identifier: MIT */
/*
 * wal.bpf.h - emitting commits into the wal ringbuf (format in bpfdb.h).
 *
 * Callers hold the commit lock, check room first with wal_room(), and emit
 * before stamping, so a commit is never visible without its log record. A
 * commit that does not fit fails; a record is never dropped.
 */
#ifndef WAL_BPF_H
#define WAL_BPF_H

#include "engine.bpf.h"
#include "storage.bpf.h"

#define WAL_FRAG_BYTES (sizeof(struct db_wal_frag) + DB_RINGBUF_HDR)

/* Ringbuf bytes one PUT of len value bytes takes. */
static __always_inline __u64 wal_put_bytes(__u32 len)
{
	if (len == 0)
		return WAL_FRAG_BYTES;
	if (len <= DB_WAL_SMALL_FRAG)
		return WAL_FRAG_BYTES + DB_WAL_SMALL_FRAG + DB_RINGBUF_HDR;
	return WAL_FRAG_BYTES + (__u64)pages_of(len) * (DB_PAGE_SIZE + DB_RINGBUF_HDR);
}

/* 0 when `need` bytes fit now; else the error and detail to report. */
static __always_inline int wal_room(__u64 need, __u32 *detail)
{
	if (!READ_ONCE(wal_on))
		return 0;
	__u64 size = bpf_ringbuf_query(&wal, BPF_RB_RING_SIZE);
	__u64 used = bpf_ringbuf_query(&wal, BPF_RB_AVAIL_DATA);

	need += 2 * WAL_FRAG_BYTES; /* BEGIN and COMMIT */
	if (need > size) {
		*detail = DB_D_WAL_TOO_BIG;
		return -EFBIG;
	}
	if (need > size - used) {
		*detail = DB_D_WAL_FULL;
		return -EAGAIN;
	}
	return 0;
}

/* One header fragment, named after rec (NULL: no name), whose map key is
 * hkey: its inline name, or the whole of a long one from long_names. */
static __always_inline int wal_frag(__u32 kind, __u64 ts, struct db_meta *meta,
				    struct db_record *rec, const struct db_hkey *hkey)
{
	if (!READ_ONCE(wal_on))
		return 0;
	struct db_wal_frag *f = bpf_ringbuf_reserve(&wal, sizeof(*f), 0);

	if (!f)
		return -EAGAIN;
	f->kind = kind;
	f->key_len = 0;
	f->ts = ts;
	if (meta)
		f->meta = *meta;
	else
		__builtin_memset(&f->meta, 0, sizeof(f->meta));
	__builtin_memset(f->key, 0, sizeof(f->key));
	if (rec) {
		const void *name = rec->name;
		__u32 n = DB_NAME_INLINE;

		f->key_len = rec->key_len;
		if (f->key_len > DB_NAME_INLINE) {
			/* Held under the record's lock: it cannot be missing. */
			name = hkey ? bpf_map_lookup_elem(&long_names, hkey) : NULL;
			n = DB_KEY_SIZE;
		}
		if (!name || bpf_probe_read_kernel(f->key, n, name)) {
			bpf_ringbuf_discard(f, 0);
			return -EIO;
		}
	}
	/* Only a nudge wakes the log writer's thread: a committer writes its
	 * own commit (wal_writer.rs), so waking a thread per commit would only
	 * cost a context switch. */
	bool wake = kind == DB_WAL_NUDGE;
	bpf_ringbuf_submit(f, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	return 0;
}

static long wal_one_page(__u64 i, struct page_loop *pl)
{
	struct db_page *p = data_page(pl, i);

	if (!p || bpf_ringbuf_output(&wal, p, DB_PAGE_SIZE, BPF_RB_NO_WAKEUP)) {
		pl->err = -EAGAIN;
		return 1;
	}
	return 0;
}

/* One data fragment of frag bytes (DB_WAL_SMALL_FRAG or a page) holding the
 * n bytes of the run at granule g; the rest of it is left as the ring had it
 * (the reader cuts a value to its length). */
static __always_inline int wal_run(__u32 g, __u32 n, bool small)
{
	__u8 *run = db_small_at(g);
	void *f = small ? bpf_ringbuf_reserve(&wal, DB_WAL_SMALL_FRAG, 0)
			: bpf_ringbuf_reserve(&wal, DB_PAGE_SIZE, 0);

	if (!f)
		return -EAGAIN;
	if (!run || n > (small ? DB_WAL_SMALL_FRAG : DB_PAGE_SIZE) ||
	    bpf_probe_read_kernel(f, n, run)) {
		bpf_ringbuf_discard(f, 0);
		return -EIO;
	}
	bpf_ringbuf_submit(f, BPF_RB_NO_WAKEUP);
	return 0;
}

/* The data fragments of a value stored at loc. */
__noinline int wal_value(__u32 loc, __u32 len)
{
	if (!READ_ONCE(wal_on) || len == 0)
		return 0;
	if (len <= DB_SMALL_MAX)
		return wal_run(loc, len, len <= DB_WAL_SMALL_FRAG);
	struct page_loop pl = { .index_id = loc };
	__u32 full = full_pages(len), tail = tail_of(len);

	bpf_loop(full, wal_one_page, &pl, 0);
	if (pl.err || !tail)
		return pl.err;
	__u32 *t = index_entry(loc, full);

	return t ? wal_run(*t, tail, false) : -EIO;
}

/* PUT of version v of rec (map key hkey) under its own name. */
__noinline int wal_put(__u64 ts, struct db_record *rec, const struct db_hkey *hkey, __u32 v)
{
	if (!rec || !hkey)
		return -EIO;
	v &= DB_MAX_VERSIONS - 1;
	if (wal_frag(DB_WAL_PUT, ts, &rec->meta[v], rec, hkey))
		return -EAGAIN;
	return wal_value(rec->loc[v], rec->meta[v].len);
}

#endif /* WAL_BPF_H */
