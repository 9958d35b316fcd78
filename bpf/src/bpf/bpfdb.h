/* SPDX-License-Identifier: MIT */
/*
 * bpfdb.h - the only interface between the eBPF engine and user space.
 *
 * Included by the engine (engine.bpf.c) and mirrored field by field in
 * src/kernel/abi.rs, where compile-time assertions check every size and
 * offset. Its integer constants (each `#define DB_X <integer expression>`
 * and enum member `DB_X = <integer>`) reach Rust through build.rs, which
 * generates them as consts: keep them to one line each.
 * Fixed-width types only; no pointers (user space and kernel disagree on them).
 */
#ifndef BPFDB_H
#define BPFDB_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* ---- limits (every table and loop in the engine is bounded by one) ---- */

#define DB_KEY_MAX 255               /* longest key (file name) in bytes */
#define DB_KEY_SIZE 256              /* key buffer: name + at least one NUL */
/* Name bytes a record holds itself; a longer name is also kept whole in the
 * long_names map (bpfdb_kernel.h). 160 makes a record 440 bytes, which with
 * the hash map's element header (48 bytes, the 16-byte key and the
 * allocator's 8) is one 512-byte allocation. */
#define DB_NAME_INLINE 160
#define DB_VALUE_LIMIT (1u << 20)    /* hard cap on max_value (1 MiB) */
#define DB_PAGE_SIZE 4096            /* values over this live in pages, see storage.bpf.h */
#define DB_VALUE_PAGES (DB_VALUE_LIMIT / DB_PAGE_SIZE)      /* 256 data pages max */
#define DB_WAL_SMALL_FRAG 128        /* the data fragment of a value of up to 128 bytes */
/* Values up to a page live in the small pool: one run of granules of the
 * value's size class. The classes go from 8 to 64 bytes in steps of 8, then
 * four per doubling up to a page (80, 96, 112, 128, 160, ... 3584, 4096),
 * so a value of 25 bytes or more wastes under 25% of its run. */
#define DB_GRANULE_SHIFT 3
#define DB_GRANULE (1u << DB_GRANULE_SHIFT)   /* bytes of a small-pool unit */
#define DB_SMALL_MAX DB_PAGE_SIZE             /* largest run: one class per value up to this */
#define DB_CLASSES 32                         /* size classes: 8 of 8..64, 4 per doubling to 4096 */
/* The value pools grow in segments: maps user space creates when the
 * engine runs out of ready storage (ENOSPC, DB_D_NO_SMALL / DB_D_NO_PAGES)
 * and publishes in an array of maps, up to the caps the options set. A
 * segment is 2 MiB either way: small enough that a pool holds at most one
 * segment it does not use, large enough that growth is rare. A small-pool
 * segment is one array element of 2 MiB of granules plus a page of slack,
 * so that the verifier can bound a copy of up to a page that starts at any
 * granule of it; no run crosses the end of a segment. */
#define DB_SMALL_SEG_SHIFT 18
#define DB_SMALL_SEG (1u << DB_SMALL_SEG_SHIFT) /* granules per segment */
#define DB_SMALL_SEG_BYTES (DB_SMALL_SEG * DB_GRANULE + DB_SMALL_MAX) /* value size of a segment */
#define DB_PAGE_SEG_SHIFT 9
#define DB_PAGE_SEG (1u << DB_PAGE_SEG_SHIFT)   /* pages per segment */
/* A value over a page is an index run (DB_INDEX_IDS ids: its full pages,
 * then the small-pool run of its tail, if any) and the pages. */
#define DB_INDEX_IDS (DB_VALUE_PAGES + 1)
#define DB_MAX_VERSIONS 4            /* versions kept per key (MVCC) */
#define DB_MAX_SLOTS 64              /* request slots (worker threads + API users) */
#define DB_SLOT_HEADER 2048          /* bytes of a slot before its data area */
/* SCAN checks this many map keys per call: user space walks the records map
 * with the kernel's bucket cursor (BPF_MAP_LOOKUP_BATCH, which no insert or
 * delete can shift) and asks the engine which of the keys it found are
 * visible. Keys first in the data area, one flag byte per key after them. */
#define DB_SCAN_BATCH 2048
#define DB_SCAN_FLAGS (DB_SCAN_BATCH * sizeof(struct db_hkey)) /* data offset of the flag bytes */
#define DB_USER_TXNS 65              /* transaction entries of user space: 64 for users, 1 for checkpoints */
/* eBPF clients that call the engine (bpfdb_kernel.h): request slots and
 * transaction entries they claim, one per task with an op in flight. */
#define DB_CLIENT_SLOTS 4
#define DB_MAX_TXNS (DB_USER_TXNS + DB_CLIENT_SLOTS) /* transaction table entries */
/* The bpf cookie a client program is attached with: how every stage tells
 * a client's op from the trigger's (whose cookie is the engine instance). */
#define DB_CLIENT_COOKIE 0xdbc11e4700000000ULL
#define DB_MAX_CONTS 16              /* continuation programs kernel callers register */
#define DB_TXN_MAX_LOCKS 128         /* keys one transaction may lock (reads + writes) */
#define DB_LOCK_CAS_TRIES 8          /* CAS attempts on a contended lock word before EBUSY */
#define DB_SNAP_TRIES 8              /* attempts to register a snapshot while commits race */
#define DB_READ_PAUSE_MAX (1u << 22) /* test hook: iterations of a GET's pause (bpf_loop's cap is 1 << 23) */

/* ---- timestamps ---- */

#define DB_TS_INF (~0ULL)            /* end of a version that is still current */
#define DB_TS_PENDING (1ULL << 63)   /* begin/end written by an uncommitted owner */

/* ---- lock word of a record ---- */

#define DB_LOCK_FREE 0ULL
#define DB_LOCK_X (1ULL << 63)       /* exclusive; low 32 bits name the owner */
#define DB_LOCK_S (1ULL << 62)       /* shared; low 32 bits count the holders */
#define DB_LOCK_DEAD (~0ULL)         /* record is being removed from the map */
#define DB_OWNER_AUTOCOMMIT (1u << 31) /* owner id bit: an autocommit op of a slot */
					/* (otherwise the owner is a txn table index) */

/* ---- operations ---- */

enum db_op {
	DB_OP_NOP = 0,     /* trigger floor: dispatcher returns at once */
	DB_OP_GET = 1,     /* value + meta of key (flag META_ONLY: meta only) */
	DB_OP_SET = 2,     /* replace value + meta of key (flag META_ONLY: keep value) */
	DB_OP_DELETE = 3,  /* remove key */
	DB_OP_RENAME = 4,  /* key -> key2 atomically, replacing key2 */
	DB_OP_SCAN = 5,    /* which of req.count keys in data are visible */
	DB_OP_BEGIN = 6,   /* start txn req.txn (flag READ_ONLY: a snapshot) */
	DB_OP_COMMIT = 7,  /* commit txn req.txn */
	DB_OP_ABORT = 8,   /* abort txn req.txn */
	DB_OP__COUNT = 9,
};

/* Stage programs, indexes into the prog array. Each op is a chain of these. */
enum db_stage {
	DB_STAGE_GET = 0,
	DB_STAGE_SET_PREPARE = 1, /* lock, GC, allocate */
	DB_STAGE_SET_COPY = 2,    /* copy value bytes into the pool */
	DB_STAGE_SET_COMMIT = 3,  /* install version, stamp, unlock */
	DB_STAGE_DELETE = 4,
	DB_STAGE_RENAME = 5,
	DB_STAGE_SCAN = 6,
	DB_STAGE_BEGIN = 7,
	DB_STAGE_COMMIT = 8,      /* take commit lock, stamp every write */
	DB_STAGE_RELEASE = 9,     /* GC and release every lock of a finished txn */
	DB_STAGE_ABORT = 10,      /* undo staged writes, then RELEASE */
	DB_STAGE_TXN_GET = 11,    /* read under a shared lock, or the txn's own write */
	DB_STAGE_DISPATCH = 12,   /* the dispatcher: where kernel callers enter */
	DB_STAGE__COUNT = 13,
};

/* request flags */
#define DB_F_META_ONLY (1u << 0)  /* GET: skip the value; SET: keep the value */
#define DB_F_NOREPLACE (1u << 1)  /* SET: fail with EEXIST if key exists; RENAME: if key2 exists */
#define DB_F_MUST_EXIST (1u << 2) /* SET: fail with ENOENT if key does not exist */
#define DB_F_READ_ONLY (1u << 3)  /* BEGIN: a read-only snapshot transaction */
#define DB_F_NUDGE (1u << 4)      /* NOP: wake the log writer (a NUDGE fragment) */
#define DB_F_CHECK_LOCK (1u << 5) /* GET: EBUSY if a transaction holds the key (a write would conflict) */
/* SCAN in a read-write transaction: first lock the set of top-level keys
 * (no '/') against inserts and removals by others until the transaction
 * ends (top.bpf.h); user space sends it with 0 keys before its walk. */
#define DB_F_LOCK_TOP (1u << 6)

/* ---- shared structs ---- */

struct db_key {
	char name[DB_KEY_SIZE]; /* zero padded: equal names are equal keys */
};

struct db_meta {
	__u64 mtime_ns; /* wall clock of the commit that wrote the key */
	__u32 mode;     /* file type and permission bits */
	__u32 uid;
	__u32 gid;
	__u32 len;      /* value length in bytes */
	__u64 ctime_ns; /* wall clock of the last change of value or metadata */
};

/* Map key of a record: SipHash-1-3-128 of the name, keyed per database
 * (k0 = hash_seed, k1 = hash_seed ^ DB_HASH_K1_XOR; db_key_hash in
 * bpfdb_kernel.h, key_hash in types.rs), so eBPF callers can compute it. The
 * record keeps the full name and every access compares it, so two names
 * with one hash can never alias (the second is refused, see DB_D_COLLISION).
 * A 16-byte map key keeps hashing, comparing and lock/write sets small. */
struct db_hkey {
	__u64 lo;
	__u64 hi;
};

/* Value of the records hash map: one per key. Version i is
 * (begin_ts[i], end_ts[i], meta[i], loc[i], vflags[i]); it is visible to a
 * reader at timestamp S when begin_ts <= S < end_ts and neither carries
 * DB_TS_PENDING. Arrays, not an array of structs, so that finding the
 * visible version reads one cache line. */
struct db_record {
	__u64 lock;                        /* DB_LOCK_* */
	__u64 gc_seq;                      /* bumped before storage is freed: readers retry */
	__u64 begin_ts[DB_MAX_VERSIONS];   /* 0: version unused */
	__u64 end_ts[DB_MAX_VERSIONS];
	/* begin of the oldest version sharing this version's storage (chmod
	 * and rename hand storage on): the storage lives over [born, end). */
	__u64 born_ts[DB_MAX_VERSIONS];
	struct db_meta meta[DB_MAX_VERSIONS];
	__u32 loc[DB_MAX_VERSIONS];        /* first granule of the value's run (or index run), by meta.len */
	__u32 vflags[DB_MAX_VERSIONS];     /* DB_VF_* */
	__u32 key_len;
	__u32 pad;
	/* zero padded; a name over DB_NAME_INLINE bytes has its first
	 * DB_NAME_INLINE here and all of it in long_names */
	char name[DB_NAME_INLINE];
};

#define DB_VF_NOFREE (1u << 0) /* value storage was handed to a newer version */

struct db_page {
	__u8 bytes[DB_PAGE_SIZE];
};

struct db_req {
	__u32 op;          /* enum db_op */
	__u32 flags;       /* DB_F_* */
	struct db_hkey hkey;
	struct db_hkey hkey2;
	__u32 count;       /* SCAN: keys (struct db_hkey) at the start of data */
	__u32 key_len;     /* bytes of key before its zero padding */
	__u32 key2_len;
	__u32 txn;         /* 0: autocommit; else txn table index + 1 */
	__u64 txn_id;      /* id BEGIN returned: a stale handle cannot touch a reused entry */
	struct db_meta meta; /* SET: new meta; meta.len is the value length */
	struct db_key key;
	struct db_key key2;  /* RENAME target */
	__u32 cont;        /* kernel callers: index in the conts prog array of the program
			    * the engine tail-calls once the op is done */
	__u32 pad;
};

struct db_resp {
	__s32 err;         /* 0 or a negative errno */
	__u32 detail;      /* DB_D_*: which limit or conflict, for the error message */
	__u64 ts;          /* commit timestamp of a write */
	struct db_meta meta;
	__u32 count;       /* SCAN: keys found visible */
	__u32 pad[3];
	__u64 txn_id;      /* BEGIN: id of the new transaction */
};

/* Continuation state carried between the stage programs of one op. */
struct db_cont {
	__u32 loc;         /* storage allocated for the new version */
	__u32 reuse;       /* txn write over its own staged version */
	__u32 version;     /* index of the new version in the record */
	__u32 lock_index;  /* txn write: entry in the txn's lock set */
};

/* error details (resp.detail) */
enum db_detail {
	DB_D_NONE = 0,
	DB_D_LOCKED_TXN = 1,        /* EBUSY: a transaction holds the key */
	DB_D_LOCKED_AUTOCOMMIT = 2, /* EBUSY: a short autocommit op holds the key; retry */
	DB_D_NO_KEYS = 3,           /* ENOSPC: records map full */
	DB_D_NO_SMALL = 4,          /* ENOSPC: no ready run of granules (user space adds a segment or fails) */
	DB_D_NO_PAGES = 5,          /* ENOSPC: no ready page (user space adds a segment or fails) */
	DB_D_VERSIONS_FULL = 6,     /* EBUSY: every version still needed by a snapshot */
	DB_D_TOO_BIG = 7,           /* EFBIG */
	DB_D_BAD_REQUEST = 8,       /* EINVAL */
	DB_D_RACE = 9,              /* EAGAIN: storage reclaimed under a reader; retry */
	DB_D_COLLISION = 10,        /* ENOSPC: another key has the same 128-bit hash */
	DB_D_TXN_TOO_BIG = 11,      /* ENOSPC: more than DB_TXN_MAX_LOCKS keys in one txn */
	DB_D_TXN_INACTIVE = 12,     /* ECANCELED: txn already committed or aborted */
	DB_D_READ_ONLY = 13,        /* EROFS: write in a snapshot */
	DB_D_COMMIT_BUSY = 14,      /* EBUSY: another commit is stamping; retry */
	DB_D_WAL_FULL = 15,         /* EAGAIN: the log ringbuf lacks room; retry after it drains */
	DB_D_WAL_TOO_BIG = 16,      /* EFBIG: the commit is larger than the log ringbuf */
	DB_D_TOP_LOCKED = 17,       /* EBUSY: a transaction holds the set of top-level keys (top.bpf.h) */
};

/* ---- pinned state: what a restarted daemon checks before reusing maps ---- */

#define DB_LAYOUT_MAGIC 0x5344504644504221ULL /* "!BPFDPDS" */
/* The layout of freshly pinned maps a start is still recovering into: they
 * hold part of the data, so the next start discards them rather than reuse
 * them, and kernel clients, which check for DB_LAYOUT_MAGIC, refuse them. */
#define DB_LAYOUT_MAGIC_RECOVERING 0x474e495245564f43ULL /* "COVERING" */
#define DB_LAYOUT_VERSION 8 /* bump on any change to a pinned map's layout (3: SipHash keys, clock map; 4: pools in segments, records not preallocated, 160-byte inline names; 5: size classes in a pool of granules; 6: keys may hold '/', the daemon's directories; 7: the lock on the top-level keys, top_gate in .bss and db_txn.top; 8: records in two inner maps of an array of maps, picked by the hkey's top bit) */
#define DB_HASH_K1_XOR 0x9e3779b97f4a7c15ULL /* second SipHash key word from the seed */
/* The top bit of a map key's hi word is not the hash's: it is set iff the
 * name holds no '/' (a top-level key), and it is the index of the record's
 * map in `records` (bpfdb_kernel.h). */
#define DB_HKEY_TOP_SHIFT 63
#define DB_HKEY_TOP (1ULL << DB_HKEY_TOP_SHIFT)
#define DB_RECORDS_BELOW 0 /* index in `records` of the map of names with a '/' */
#define DB_RECORDS_TOP 1   /* ... and of the top-level names */
#define DB_RECORDS_MAPS 2
_Static_assert(DB_RECORDS_TOP == (DB_HKEY_TOP >> DB_HKEY_TOP_SHIFT) && DB_RECORDS_BELOW == 0,
	       "a map key's top bit is the index of its records map");

struct db_layout {
	__u64 magic;
	__u32 version;
	__u32 max_keys;
	__u32 small_granules;
	__u32 pages;
	__u32 wal_buffer;
	__u32 kernel_slot_base; /* first client slot (not compared at a restart) */
	__u64 hash_seed; /* records are keyed by this seed's hashes */
};

/* What lock-free readers in any object need of the engine's clock: a named
 * map (`clock`), not the engine's .bss, so that XDP and tc programs
 * compiled with bpfdb_kernel.h share it. */
struct db_clock {
	/* Newest fully applied commit. Advanced only by the holder of the
	 * commit lock after it stamped every version of its commit, so a
	 * reader at last_ts never sees half a commit. */
	__u64 last_ts;
	/* Bumped when GC frees storage that an older version of another record
	 * may still name (after a rename): lock-free readers re-check it like
	 * gc_seq. */
	__u64 shared_free_seq;
};

/* ---- write-ahead log: fragments streamed through the wal ringbuf ----
 *
 * A commit is emitted under the commit lock, so its fragments are contiguous
 * and commits appear in timestamp order:
 *   BEGIN(ts)  { PUT(key, meta) data... | DEL(key) }*  COMMIT(ts)
 * A PUT of meta.len bytes is followed by its data fragments, whatever its
 * storage: one of DB_WAL_SMALL_FRAG bytes for len <= 128, else
 * pages_of(len) of 4096 bytes; the last fragment is cut to the length by
 * the reader (its bytes past the length are unspecified). A BEGIN with no COMMIT
 * (emission failed) is discarded by the reader at the next BEGIN. */
enum db_wal_kind {
	DB_WAL_BEGIN = 1,
	DB_WAL_PUT = 2,
	DB_WAL_DEL = 3,
	DB_WAL_COMMIT = 4,
	DB_WAL_NUDGE = 5, /* carries nothing; wakes the log writer for a request */
};

struct db_wal_frag {
	__u32 kind;        /* enum db_wal_kind */
	__u32 key_len;
	__u64 ts;
	struct db_meta meta;
	char key[DB_KEY_SIZE];
};

#define DB_RINGBUF_HDR 8   /* bytes the ringbuf adds to every record */

/* ---- transactions ---- */

enum db_txn_state {
	DB_TXN_FREE = 0,
	DB_TXN_ACTIVE = 1,
	DB_TXN_COMMITTED = 2,
	DB_TXN_ABORTED = 3,
};

#define DB_LM_S 1 /* lock mode: shared */
#define DB_LM_X 2 /* lock mode: exclusive */

/* One key a transaction holds a lock on, and what it staged there. */
struct db_txn_lock {
	struct db_hkey hkey;
	__u32 mode;     /* DB_LM_* */
	__s32 staged;   /* version index of the staged value, -1: none */
	__u32 deleted;  /* staged delete of the committed value */
	__u32 shared;   /* staged version borrows the committed value's storage */
};

struct db_txn {
	__u64 id;           /* changes on every BEGIN */
	__u64 snap_ts;      /* read-only: registered snapshot; 0 when none */
	__u64 commit_ts;
	__u32 state;        /* enum db_txn_state */
	__u32 read_only;
	__u32 n_locks;
	__u32 n_writes;     /* staged writes and deletes */
	__u32 abort_detail; /* DB_D_* that aborted it */
	__u32 top;          /* DB_TOP_*: its side of the top-level keys' lock (top.bpf.h) */
	struct db_txn_lock locks[DB_TXN_MAX_LOCKS];
};

struct db_slot {
	struct db_req req;
	struct db_resp resp;
	struct db_cont cont;
	struct db_record scratch; /* a new record is built here, then inserted */
	__u8 header_pad[DB_SLOT_HEADER - sizeof(struct db_req) - sizeof(struct db_resp) -
			sizeof(struct db_cont) - sizeof(struct db_record)];
	__u8 data[DB_VALUE_LIMIT]; /* value in (SET) and out (GET), scan entries */
};

/* Engine counters, in .bss, read by user space through the mmap'ed map. */
struct db_stats {
	__u64 ops[DB_OP__COUNT];
	__u64 keys;            /* live keys */
	__u64 records;         /* records in the map, live or holding old versions */
	__u64 value_bytes;     /* bytes of current values */
	__u64 small_used;      /* granules in use (runs of size classes) */
	__u64 pages_used;      /* pages in use */
	__u64 commits;
	__u64 conflicts;       /* EBUSY returned */
	__u64 versions_reclaimed;
	__u64 read_retries;    /* GC raced a reader; reader retried */
	__u64 errors;          /* any other error returned */
	__u64 txn_commits;
	__u64 txn_aborts;
	__u64 txn_aborts_conflict;
	__u64 txn_active;      /* transactions and snapshots open now */
	__u64 alloc_pauses;    /* test hook: allocations that paused (Options::alloc_pause_loops) */
	__u64 runs_lost;       /* freed runs left off their free list (CAS contention): never reused */
};

/* Layout checks; src/kernel/abi.rs asserts the same numbers on the Rust side. */
_Static_assert(sizeof(struct db_meta) == 32, "db_meta");
_Static_assert(sizeof(struct db_record) == 440, "db_record");
_Static_assert(DB_NAME_INLINE % 8 == 0 && DB_NAME_INLINE <= DB_KEY_SIZE, "inline name words");
_Static_assert(__builtin_offsetof(struct db_record, key_len) == 272, "db_record.key_len");
_Static_assert(__builtin_offsetof(struct db_record, name) == 280, "db_record.name");
_Static_assert(DB_SCAN_FLAGS + DB_SCAN_BATCH <= DB_VALUE_LIMIT, "scan batch fits the data area");
_Static_assert(sizeof(struct db_req) == 616, "db_req");
_Static_assert(__builtin_offsetof(struct db_req, cont) == 608, "db_req.cont");
_Static_assert(sizeof(struct db_clock) == 16, "db_clock");
_Static_assert(__builtin_offsetof(struct db_req, meta) == 64, "db_req.meta");
_Static_assert(__builtin_offsetof(struct db_req, key) == 96, "db_req.key");
_Static_assert(__builtin_offsetof(struct db_req, key2) == 352, "db_req.key2");
_Static_assert(sizeof(struct db_resp) == 72, "db_resp");
_Static_assert(__builtin_offsetof(struct db_slot, resp) == 616, "db_slot.resp");
_Static_assert(__builtin_offsetof(struct db_slot, cont) == 688, "db_slot.cont");
_Static_assert(__builtin_offsetof(struct db_slot, scratch) == 704, "db_slot.scratch");
_Static_assert(__builtin_offsetof(struct db_slot, data) == DB_SLOT_HEADER, "db_slot.data");
_Static_assert(sizeof(struct db_txn_lock) == 32, "db_txn_lock");
_Static_assert(sizeof(struct db_wal_frag) == 304, "db_wal_frag");
_Static_assert(__builtin_offsetof(struct db_wal_frag, ts) == 8, "db_wal_frag.ts");
_Static_assert(__builtin_offsetof(struct db_wal_frag, meta) == 16, "db_wal_frag.meta");
_Static_assert(__builtin_offsetof(struct db_wal_frag, key) == 48, "db_wal_frag.key");
_Static_assert(sizeof(struct db_layout) == 40, "db_layout");
_Static_assert(__builtin_offsetof(struct db_txn, state) == 24, "db_txn.state");
_Static_assert(sizeof(struct db_stats) == 25 * 8, "db_stats");
_Static_assert(DB_INDEX_IDS * 4 <= DB_SMALL_MAX, "an index fits one run");
_Static_assert(DB_SMALL_SEG_BYTES % 8 == 0, "segment of whole words");

#endif /* BPFDB_H */
