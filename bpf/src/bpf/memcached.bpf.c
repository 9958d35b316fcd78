// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * memcached.bpf.c - answers memcached UDP `get`/`gets` hits in XDP, from
 * bpfdb's data, through the snapshot reads of bpfdb_kernel.h.
 *
 * A request is answered here only when every part of it is certain: one
 * IPv4 datagram without options or fragments to the configured port, one
 * memcached frame (sequence 0 of 1), `get` or `gets` of 1..MC_MAX_KEYS
 * keys, every key found at one snapshot with a value of at most one page,
 * and a reply that fits one frame (MC_REPLY_MAX bytes). Everything else
 * (misses, big values, set, delete, malformed input) is passed up to the
 * daemon's UDP server, which has the whole protocol and every error reply:
 * a miss here is only a hint (see db_view_open), so it is never answered.
 *
 * The reply is built in a per-CPU scratch buffer (XDP programs do not nest
 * on a CPU), then the frame is resized and turned around (XDP_TX).
 */
#include "bpfdb_kernel.h"
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define MC_HDR 8             /* memcached UDP frame header */
#define MC_REQ_MAX 512       /* request bytes parsed here; longer ones go up */
#define MC_MAX_KEYS 16       /* words of one get parsed here: the command and 15 keys */
#define MC_KEY_MAX 250       /* memcached's key limit */
#define MC_REPLY_MAX 1400    /* payload of one reply frame, as memcached sends */
#define MC_OUT_SIZE (2 * DB_PAGE_SIZE) /* scratch: any offset < DB_PAGE_SIZE plus a page */
/* Growth at the front when the tail has no room: at most XDP's 256 bytes
 * of headroom, tried in steps down from there (what is left of it is not
 * known: the kernel keeps room for its struct xdp_frame). */
#define MC_HEAD_GROW 256
#define MC_HEAD_STEP 32
#define MC_VALUE_LINE 32     /* "VALUE " + " 0 " + len + " " + cas + "\r\n", beside the key */

/* Port, in host order; set by the loader. */
const volatile __u16 mc_port = 11211;

/* Counters, per CPU, read by the daemon for .stats. */
enum mc_counter {
	MC_HIT = 0,       /* answered here */
	MC_PASS_MISS = 1, /* a key not found (or a hint of it) */
	MC_PASS_BIG = 2,  /* a value or the reply too large for one frame */
	MC_PASS_OTHER = 3, /* not a get, or not parsed here */
	MC_PASS_RACE = 4, /* GC reclaimed a value while it was copied */
	MC__COUNT = 5,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MC__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} mc_stats SEC(".maps");

struct mc_key_ref {
	__u16 off;
	__u16 len;
};

struct mc_scratch {
	__u8 req[MC_REQ_MAX];
	__u8 out[MC_OUT_SIZE];
	struct db_key key;
	struct mc_key_ref keys[MC_MAX_KEYS];
	__u64 at;   /* the snapshot every key of the request is read at */
	__u64 seed; /* the database's hash seed */
	__u32 cas;  /* gets: add the cas unique (the commit timestamp) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mc_scratch);
} mc_scratch SEC(".maps");

static __always_inline int count(__u32 what, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&mc_stats, &what);

	if (c)
		*c += 1;
	return verdict;
}

/* ---- parsing the key list ---- */

struct parse_ctx {
	struct mc_scratch *s;
	__u32 len;    /* request bytes before "\r\n" */
	__u32 nkeys;
	__u32 start;  /* start of the current key, or ~0 between keys */
	__u32 bad;
};

/* A byte of memcached's key syntax that is also a bpfdb file name byte
 * (no '/'); a leading '.' is bpfdb's control namespace. */
static __always_inline bool key_byte(__u8 c, bool first)
{
	return c > ' ' && c != 0x7f && c != '/' && !(first && c == '.');
}

static long parse_byte(__u64 i, struct parse_ctx *p)
{
	if (i > p->len || i >= MC_REQ_MAX)
		return 1;
	__u8 c = i == p->len ? ' ' : p->s->req[i & (MC_REQ_MAX - 1)];

	if (c == ' ') {
		if (p->start != ~0u) {
			__u32 n = p->nkeys;
			__u32 klen = i - p->start;

			if (n >= MC_MAX_KEYS || klen > MC_KEY_MAX) {
				p->bad = 1;
				return 1;
			}
			p->s->keys[n & (MC_MAX_KEYS - 1)].off = p->start;
			p->s->keys[n & (MC_MAX_KEYS - 1)].len = klen;
			p->nkeys = n + 1;
			p->start = ~0u;
		}
		return 0;
	}
	if (!key_byte(c, p->start == ~0u)) {
		p->bad = 1;
		return 1;
	}
	if (p->start == ~0u)
		p->start = i;
	return 0;
}

/* ---- building the reply ---- */

struct reply_ctx {
	struct mc_scratch *s;
	__u32 off;     /* reply bytes written */
	__u32 verdict; /* MC_* counter of why the request was passed up, or MC_HIT */
};

static __always_inline void put_byte(struct mc_scratch *s, __u32 off, __u8 c)
{
	s->out[off & (MC_OUT_SIZE - 1)] = c;
}

/* Writes n in decimal at off (< DB_PAGE_SIZE); returns the digits
 * written. A global function: the verifier checks it once, not once per
 * path of its callers. */
__attribute__((noinline)) int mc_put_u64(struct mc_scratch *s, __u32 off, __u64 n)
{
	__u8 d[24] = {};
	__u32 k = 1;

	if (!s)
		return 0;
	for (int i = 0; i < 20; i++) {
		__u64 q = n / 10;

		d[23 - i] = '0' + (n - q * 10);
		if (n)
			k = i + 1;
		n = q;
	}
	if (k < 1 || k > 20)
		return 0;
	bpf_probe_read_kernel(&s->out[off & (DB_PAGE_SIZE - 1)], k, &d[24 - k]);
	return k;
}

/* Appends word idx (a key) of the request to the reply at off: its VALUE
 * line and data, read at the snapshot s->at. The new offset, or -(MC_* counter)
 * of why the request goes up. A global function, so the verifier checks it
 * once, not once per path of the callers. */
__attribute__((noinline)) int mc_reply_key(struct mc_scratch *s, __u32 idx, __u32 off)
{
	if (!s)
		return -MC_PASS_OTHER;
	struct mc_key_ref ref = s->keys[idx & (MC_MAX_KEYS - 1)];
	__u32 klen = ref.len;

	if (klen == 0 || klen > MC_KEY_MAX || ref.off >= MC_REQ_MAX - MC_KEY_MAX || off >= MC_REPLY_MAX)
		return -MC_PASS_OTHER;
	__builtin_memset(&s->key, 0, sizeof(s->key));
	if (bpf_probe_read_kernel(s->key.name, klen, &s->req[ref.off]))
		return -MC_PASS_OTHER;
	struct db_hkey h = {};
	struct db_view v = {};
	int err = db_key_hash(&s->key, klen, s->seed, &h);

	if (!err)
		err = db_view_open(&v, &s->key, klen, &h, s->at);
	if (err)
		return err == -E2BIG ? -MC_PASS_BIG : err == -EAGAIN ? -MC_PASS_RACE : -MC_PASS_MISS;
	__u32 len = v.meta.len;
	/* "VALUE <key> 0 <len>[ <cas>]\r\n<data>\r\n", then "END\r\n" */
	if (off + klen + len + MC_VALUE_LINE + 5 > MC_REPLY_MAX)
		return -MC_PASS_BIG;
	__u32 o = off;

	__builtin_memcpy(&s->out[o & (DB_PAGE_SIZE - 1)], "VALUE ", 6);
	o += 6;
	if (bpf_probe_read_kernel(&s->out[o & (DB_PAGE_SIZE - 1)], klen, s->key.name))
		return -MC_PASS_OTHER;
	o += klen;
	__builtin_memcpy(&s->out[o & (DB_PAGE_SIZE - 1)], " 0 ", 3);
	o += 3;
	o += mc_put_u64(s, o, len) & 31;
	if (s->cas) {
		put_byte(s, o++, ' ');
		o += mc_put_u64(s, o, v.ts) & 31;
	}
	put_byte(s, o++, '\r');
	put_byte(s, o++, '\n');
	o &= DB_PAGE_SIZE - 1;
	if (v.value && len > 0 && len <= DB_SMALL_MAX)
		err = bpf_probe_read_kernel(&s->out[o], len, v.value);
	else if (len != 0)
		err = -EIO;
	/* Checked after the copy: GC may have reclaimed the storage under it. */
	if (err || !db_view_valid(&v))
		return -MC_PASS_RACE;
	o += len;
	put_byte(s, o++, '\r');
	put_byte(s, o++, '\n');
	return o;
}

static long reply_key(__u64 i, struct reply_ctx *r)
{
	int o = mc_reply_key(r->s, i + 1, r->off);

	if (o < 0) {
		r->verdict = -o;
		return 1;
	}
	r->off = o;
	return 0;
}

/* ---- turning the frame around ---- */

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;

	ip->check = 0;
	for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Makes the frame `grow` bytes longer (or shorter): at the tail where
 * there is room, else at the front, into the headroom XDP keeps (on veth
 * and on lo's generic path a frame often has little tailroom: its buffer
 * is the request's size), else partly at each end. 0, or -1 with the
 * frame as it was. */
static __always_inline int resize(struct xdp_md *ctx, int grow)
{
	if (grow <= 0)
		return bpf_xdp_adjust_tail(ctx, grow) ? -1 : 0;
	if (bpf_xdp_adjust_tail(ctx, grow) == 0)
		return 0;
	/* The headroom left is not known: try the largest front part first. */
	for (int front = MC_HEAD_GROW; front > 0; front -= MC_HEAD_STEP) {
		if (bpf_xdp_adjust_head(ctx, -(front < grow ? front : grow)))
			continue;
		if (front >= grow || bpf_xdp_adjust_tail(ctx, grow - front) == 0)
			return 0;
		bpf_xdp_adjust_head(ctx, front);
	}
	return -1;
}

/* Resizes the frame for reply_len bytes after the frame header, writes the
 * request's headers back at its start (it may have grown at the front) and
 * the reply after them, and swaps addresses and ports. */
static __always_inline int turn_around(struct xdp_md *ctx, struct mc_scratch *s, __u32 req_len,
				       __u32 reply_len)
{
	const __u32 payload_off = sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr) + MC_HDR;
	__u8 headers[sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr) + MC_HDR];

	if (reply_len == 0 || reply_len > MC_REPLY_MAX)
		return XDP_PASS;
	if (bpf_xdp_load_bytes(ctx, 0, headers, sizeof(headers)))
		return count(MC_PASS_OTHER, XDP_PASS);
	if (resize(ctx, (int)reply_len - (int)req_len))
		return count(MC_PASS_BIG, XDP_PASS); /* no room to grow into */
	if (bpf_xdp_store_bytes(ctx, 0, headers, sizeof(headers)) ||
	    bpf_xdp_store_bytes(ctx, payload_off, s->out, reply_len))
		return XDP_DROP; /* resized already: the request is gone either way */
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)ip + sizeof(*ip);

	if ((void *)(udp + 1) > end)
		return XDP_DROP;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__be32 addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*udp) + MC_HDR + reply_len);
	ip->ttl = 64;
	ip->check = ip_checksum(ip);
	__be16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(sizeof(*udp) + MC_HDR + reply_len);
	udp->check = 0; /* optional for UDP over IPv4 */
	return count(MC_HIT, XDP_TX);
}

SEC("xdp")
int mc_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)ip + sizeof(*ip);
	__u8 *mc = (void *)(udp + 1);

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(mc_port))
		return XDP_PASS;
	/* From here on the datagram is ours: count why it goes up. */
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return count(MC_PASS_OTHER, XDP_PASS); /* options or a fragment */
	if ((void *)(mc + MC_HDR) > end)
		return count(MC_PASS_OTHER, XDP_PASS);
	/* sequence 0 of 1 datagram */
	if (mc[2] || mc[3] || mc[4] || mc[5] != 1)
		return count(MC_PASS_OTHER, XDP_PASS);
	__u32 udp_len = bpf_ntohs(udp->len);
	__u32 pkt_len = end - (void *)(mc + MC_HDR);
	if (udp_len < sizeof(*udp) + MC_HDR)
		return count(MC_PASS_OTHER, XDP_PASS);
	__u32 req_len = udp_len - sizeof(*udp) - MC_HDR;
	/* Trailing bytes past the UDP length (Ethernet padding) stay out. */
	if (req_len > pkt_len || req_len < 7 || req_len >= MC_REQ_MAX)
		return count(MC_PASS_OTHER, XDP_PASS);
	if (req_len < pkt_len && bpf_xdp_adjust_tail(ctx, -(int)(pkt_len - req_len)))
		return count(MC_PASS_OTHER, XDP_PASS);

	__u32 zero = 0;
	struct mc_scratch *s = bpf_map_lookup_elem(&mc_scratch, &zero);
	struct db_layout *l = db_layout();
	if (!s || !l || l->magic != DB_LAYOUT_MAGIC)
		return XDP_PASS;
	const __u32 payload_off = sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr) + MC_HDR;
	__u32 n = req_len & (MC_REQ_MAX - 1);
	if (n == 0 || bpf_xdp_load_bytes(ctx, payload_off, s->req, n))
		return count(MC_PASS_OTHER, XDP_PASS);

	/* "get " or "gets ", keys, "\r\n" at the very end */
	__u32 skip, cas = 0;
	if (s->req[0] != 'g' || s->req[1] != 'e' || s->req[2] != 't')
		return count(MC_PASS_OTHER, XDP_PASS);
	if (s->req[3] == 's' && s->req[4] == ' ') {
		cas = 1;
		skip = 5;
	} else if (s->req[3] == ' ') {
		skip = 4;
	} else {
		return count(MC_PASS_OTHER, XDP_PASS);
	}
	__u32 body = req_len - 2;
	if (s->req[body & (MC_REQ_MAX - 1)] != '\r' || s->req[(body + 1) & (MC_REQ_MAX - 1)] != '\n')
		return count(MC_PASS_OTHER, XDP_PASS);
	struct parse_ctx p = { .s = s, .len = body, .start = ~0u };
	bpf_loop(MC_REQ_MAX, parse_byte, &p, 0);
	/* parse_byte starts at 0: the command word is a "key" to skip. */
	if (p.bad || p.nkeys < 2 || s->keys[0].off != 0 || s->keys[0].len != skip - 1)
		return count(MC_PASS_OTHER, XDP_PASS);

	s->at = db_snapshot_ts();
	s->seed = l->hash_seed;
	s->cas = cas;
	struct reply_ctx r = { .s = s, .verdict = MC_HIT };
	bpf_loop(p.nkeys - 1, reply_key, &r, 0);
	if (r.verdict != MC_HIT)
		return count(r.verdict, XDP_PASS);
	__u32 o = r.off & (DB_PAGE_SIZE - 1);
	__builtin_memcpy(&s->out[o], "END\r\n", 5);
	return turn_around(ctx, s, req_len, o + 5);
}
