//! Rebuilds commits from the fragments the engine streams through the wal
//! ringbuf (layout in bpfdb.h and docs/FORMAT.md): pure user space, so the
//! tests below feed it every sequence the engine emits, whole and broken.

use std::mem::{offset_of, size_of};

use log::{error, warn};

use crate::durability::format::{self as wal, Reader};
use crate::kernel::abi::{
    KEY_MAX, Meta, PAGE_SIZE, VALUE_LIMIT, WAL_BEGIN, WAL_COMMIT, WAL_DEL, WAL_NUDGE, WAL_PUT,
    WAL_SMALL_FRAG, WalFrag,
};
use crate::types::NewMeta;

/// Bytes of a header fragment; data fragments are WAL_SMALL_FRAG or PAGE_SIZE.
const FRAG_BYTES: usize = size_of::<WalFrag>();

/// A commit being rebuilt from its fragments.
struct Building {
    ts: u64,
    /// `ts | n_ops | op*` (wal.rs); n_ops is filled in at COMMIT.
    payload: Vec<u8>,
    n_ops: u32,
    /// A fragment of it was malformed: if its COMMIT arrives, the engine
    /// acknowledged a commit the log cannot hold.
    poisoned: bool,
}

/// A PUT whose data fragments are still arriving.
struct PendingPut {
    key: Vec<u8>,
    meta: NewMeta,
    len: usize,
    value: Vec<u8>,
    /// Data fragments still to come, and the size each has.
    left: usize,
    chunk: usize,
}

/// Rebuilds commits from ringbuf fragments (format in bpfdb.h). Header
/// fragments are FRAG_BYTES long and data fragments WAL_SMALL_FRAG or
/// PAGE_SIZE, so the kind of a fragment is known from its length before it
/// is parsed: a commit whose emission failed part-way (the engine cancels
/// it; it is never acknowledged) cannot make the next commit's header be
/// taken for value bytes.
#[derive(Default)]
pub(crate) struct Assembler {
    cur: Option<Building>,
    put: Option<PendingPut>,
    /// A BEGIN has been seen. Before the first one, fragments are the rest
    /// of a commit a previous daemon left half-read in a pinned ringbuf; its
    /// restart checkpoint holds that commit, so they are skipped quietly.
    in_sync: bool,
    pub(crate) done: Vec<(u64, Vec<u8>)>,
    /// A commit the engine acknowledged (its COMMIT arrived) that could not
    /// be rebuilt: the log no longer holds every acknowledged commit.
    pub(crate) lost: Option<u64>,
    /// Commits dropped because their emission failed part-way.
    dropped: u64,
}

/// The fields of a header fragment, read at the offsets of struct
/// db_wal_frag; None if the bytes end before them.
struct Header {
    kind: u32,
    key_len: usize,
    ts: u64,
    meta: NewMeta,
    len: usize,
}

impl Header {
    fn parse(b: &[u8]) -> Option<Header> {
        let u32_at = |at| Reader::at(b, at).u32();
        let u64_at = |at| Reader::at(b, at).u64();
        let m = offset_of!(WalFrag, meta);
        Some(Header {
            kind: u32_at(offset_of!(WalFrag, kind))?,
            key_len: u32_at(offset_of!(WalFrag, key_len))? as usize,
            ts: u64_at(offset_of!(WalFrag, ts))?,
            meta: NewMeta {
                mtime_ns: u64_at(m + offset_of!(Meta, mtime_ns))?,
                mode: u32_at(m + offset_of!(Meta, mode))?,
                uid: u32_at(m + offset_of!(Meta, uid))?,
                gid: u32_at(m + offset_of!(Meta, gid))?,
                ctime_ns: u64_at(m + offset_of!(Meta, ctime_ns))?,
            },
            len: u32_at(m + offset_of!(Meta, len))? as usize,
        })
    }
}

/// Data fragments, and the size of each, the engine emits for a PUT of
/// `len` bytes (wal_value() in wal.bpf.h).
fn data_fragments(len: usize) -> (usize, usize) {
    match len {
        0 => (0, 0),
        l if l <= WAL_SMALL_FRAG => (1, WAL_SMALL_FRAG),
        l => (l.div_ceil(PAGE_SIZE), PAGE_SIZE),
    }
}

impl Assembler {
    pub(crate) fn fragment(&mut self, b: &[u8]) {
        if let Some(p) = &mut self.put {
            if b.len() == p.chunk {
                let take = (p.len - p.value.len()).min(b.len());
                p.value.extend_from_slice(&b[..take]);
                p.left -= 1;
                debug_assert!(p.value.len() <= p.len);
                debug_assert!(p.left > 0 || p.value.len() == p.len);
                if p.left == 0 {
                    self.finish_put();
                }
                return;
            }
            if b.len() != FRAG_BYTES {
                let why = format!(
                    "a data fragment of {} bytes where {} were expected",
                    b.len(),
                    p.chunk
                );
                self.put = None;
                self.malformed(&why);
                return;
            }
            // A header where data was expected: the engine stopped emitting
            // this commit part-way and cancelled it. The header belongs to
            // what came next.
            let got = data_fragments(p.len).0 - p.left;
            let what = format!(
                "a PUT ended after {got} of {} data fragments",
                data_fragments(p.len).0
            );
            self.put = None;
            self.drop_failed(&what);
        }
        if b.len() != FRAG_BYTES {
            self.malformed(&format!(
                "a data fragment of {} bytes outside a PUT",
                b.len()
            ));
            return;
        }
        // FRAG_BYTES long, so every field is there.
        let Some(Header {
            kind,
            key_len,
            ts,
            meta,
            len,
        }) = Header::parse(b)
        else {
            return self.malformed("a header fragment shorter than its fields");
        };
        match kind {
            WAL_BEGIN => {
                if self.cur.is_some() {
                    self.drop_failed("no COMMIT came before the next BEGIN");
                }
                self.in_sync = true;
                let mut payload = Vec::with_capacity(64);
                payload.extend_from_slice(&ts.to_le_bytes());
                payload.extend_from_slice(&0u32.to_le_bytes());
                self.cur = Some(Building {
                    ts,
                    payload,
                    n_ops: 0,
                    poisoned: false,
                });
            }
            WAL_PUT | WAL_DEL => {
                let op = if kind == WAL_PUT { "PUT" } else { "DEL" };
                if key_len == 0 || key_len > KEY_MAX {
                    return self.malformed(&format!("{op} with a key of {key_len} bytes"));
                }
                if kind == WAL_PUT && len > VALUE_LIMIT {
                    // How many data fragments follow is unknown: they are
                    // refused one by one as data outside a PUT.
                    return self.malformed(&format!("PUT of {len} bytes"));
                }
                match &self.cur {
                    Some(c) if c.ts != ts => {
                        let why = format!("{op} of commit {ts} inside commit {}", c.ts);
                        self.malformed(&why);
                    }
                    None if self.in_sync => {
                        error!("log: {op} of commit {ts} outside a commit; not logged")
                    }
                    _ => {}
                }
                let key = b[offset_of!(WalFrag, key)..][..key_len].to_vec();
                if kind == WAL_DEL {
                    if let Some(c) = &mut self.cur {
                        wal::del_op(&mut c.payload, &key);
                        c.n_ops += 1;
                    }
                    return;
                }
                // Tracked even outside a commit, so that its data fragments
                // are skipped rather than taken as stray.
                let (left, chunk) = data_fragments(len);
                self.put = Some(PendingPut {
                    key,
                    meta,
                    len,
                    value: Vec::with_capacity(len),
                    left,
                    chunk,
                });
                if left == 0 {
                    self.finish_put();
                }
            }
            WAL_COMMIT => match self.cur.take() {
                Some(mut c) if c.ts == ts && !c.poisoned => {
                    c.payload[8..12].copy_from_slice(&c.n_ops.to_le_bytes());
                    debug_assert!(wal::decode_commit(&c.payload).is_some_and(|d| d.ts == ts));
                    self.done.push((ts, c.payload));
                }
                Some(c) if c.ts == ts => self.lose(ts, "malformed"),
                Some(c) => self.lose(ts, &format!("ended inside commit {}", c.ts)),
                None if self.in_sync => self.lose(ts, "without its BEGIN"),
                None => {}
            },
            WAL_NUDGE => {}
            _ => self.malformed(&format!("unknown fragment kind {kind}")),
        }
    }

    fn finish_put(&mut self) {
        let Some(p) = self.put.take() else { return };
        debug_assert_eq!((p.left, p.value.len()), (0, p.len));
        if let Some(c) = &mut self.cur {
            wal::put_op(&mut c.payload, &p.key, &p.meta, &p.value);
            c.n_ops += 1;
        }
    }

    /// The commit in progress stopped part-way: the engine cancelled it.
    fn drop_failed(&mut self, what: &str) {
        if let Some(c) = self.cur.take() {
            self.dropped += 1;
            warn!(
                "log: commit {} was cut short ({what}): its emission failed and it was \
                 never acknowledged; dropped",
                c.ts
            );
        }
    }

    /// A fragment the engine cannot have emitted: the commit in progress
    /// cannot be rebuilt (if its COMMIT comes, it is lost).
    fn malformed(&mut self, why: &str) {
        if !self.in_sync {
            return;
        }
        match &mut self.cur {
            Some(c) => {
                error!("log: commit {}: {why}", c.ts);
                c.poisoned = true;
            }
            None => error!("log: {why}; skipped"),
        }
    }

    fn lose(&mut self, ts: u64, why: &str) {
        error!("log: COMMIT {ts} {why}: this acknowledged commit cannot be logged");
        self.lost.get_or_insert(ts);
    }
}

#[cfg(test)]
mod tests {
    //! The assembler is pure user space: these feed it the fragment
    //! sequences the engine emits (bpfdb.h, wal.bpf.h), whole and broken.

    use super::*;
    use crate::durability::format::{LogOp, decode_commit};

    const META: NewMeta = NewMeta {
        mode: 0o100644,
        uid: 7,
        gid: 8,
        mtime_ns: 11,
        ctime_ns: 12,
    };

    /// A header fragment as wal_frag() builds it.
    fn header(kind: u32, ts: u64, key: &[u8], len: u32) -> Vec<u8> {
        let mut f = vec![0u8; FRAG_BYTES];
        f[0..4].copy_from_slice(&kind.to_le_bytes());
        f[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        f[8..16].copy_from_slice(&ts.to_le_bytes());
        f[16..24].copy_from_slice(&META.mtime_ns.to_le_bytes());
        f[24..28].copy_from_slice(&META.mode.to_le_bytes());
        f[28..32].copy_from_slice(&META.uid.to_le_bytes());
        f[32..36].copy_from_slice(&META.gid.to_le_bytes());
        f[36..40].copy_from_slice(&len.to_le_bytes());
        f[40..48].copy_from_slice(&META.ctime_ns.to_le_bytes());
        f[48..48 + key.len()].copy_from_slice(key);
        f
    }

    fn value(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
    }

    /// The data fragments wal_value() emits for `v`: one fragment of
    /// WAL_SMALL_FRAG bytes up to that length, else whole pages (padded
    /// with zeros here; the engine leaves the padding unspecified).
    fn data(v: &[u8]) -> Vec<Vec<u8>> {
        let chunk = if v.len() <= WAL_SMALL_FRAG {
            WAL_SMALL_FRAG
        } else {
            PAGE_SIZE
        };
        v.chunks(chunk)
            .map(|c| {
                let mut f = c.to_vec();
                f.resize(chunk, 0);
                f
            })
            .collect()
    }

    fn put(ts: u64, key: &[u8], v: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![header(WAL_PUT, ts, key, v.len() as u32)];
        out.extend(data(v));
        out
    }

    fn commit(ts: u64, ops: Vec<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
        let mut out = vec![header(WAL_BEGIN, ts, b"", 0)];
        out.extend(ops.into_iter().flatten());
        out.push(header(WAL_COMMIT, ts, b"", 0));
        out
    }

    fn feed(asm: &mut Assembler, frags: &[Vec<u8>]) {
        for f in frags {
            asm.fragment(f);
        }
    }

    /// The commits assembled so far, decoded.
    fn decoded(asm: &mut Assembler) -> Vec<(u64, Vec<LogOp>)> {
        std::mem::take(&mut asm.done)
            .into_iter()
            .map(|(ts, payload)| {
                let c = decode_commit(&payload).expect("assembled payload decodes");
                assert_eq!(c.ts, ts);
                (ts, c.ops)
            })
            .collect()
    }

    fn put_op(key: &[u8], v: &[u8]) -> LogOp {
        LogOp::Put {
            key: key.to_vec(),
            meta: META,
            value: v.to_vec(),
        }
    }

    #[test]
    fn every_value_class_is_rebuilt_exactly() {
        let lens = [
            0,
            1,
            127,
            128,
            129,
            4095,
            4096,
            4097,
            5 * 4096 - 100,
            VALUE_LIMIT,
        ];
        let mut asm = Assembler::default();
        let mut want = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let ts = 10 + i as u64;
            let v = value(len, i as u8);
            let key = format!("k{i}").into_bytes();
            feed(
                &mut asm,
                &commit(
                    ts,
                    vec![put(ts, &key, &v), vec![header(WAL_DEL, ts, b"gone", 0)]],
                ),
            );
            want.push((
                ts,
                vec![
                    put_op(&key, &v),
                    LogOp::Del {
                        key: b"gone".to_vec(),
                    },
                ],
            ));
        }
        assert_eq!(decoded(&mut asm), want);
    }

    #[test]
    fn a_put_cut_short_does_not_swallow_the_next_commit() {
        // The emission of commit 5 failed after 3 of its 5 data pages (the
        // engine cancelled it, so it was never acknowledged); commit 6 went
        // out whole and was acknowledged.
        let mut asm = Assembler::default();
        let big = value(5 * 4096 - 100, 1);
        let mut frags = vec![
            header(WAL_BEGIN, 5, b"", 0),
            header(WAL_PUT, 5, b"big", big.len() as u32),
        ];
        frags.extend(data(&big).into_iter().take(3));
        let small = value(10, 2);
        frags.extend(commit(6, vec![put(6, b"k2", &small)]));
        feed(&mut asm, &frags);
        assert_eq!(decoded(&mut asm), vec![(6, vec![put_op(b"k2", &small)])]);
    }

    #[test]
    fn a_commit_cut_short_between_ops_is_dropped_at_the_next_begin() {
        let mut asm = Assembler::default();
        let mut frags = vec![header(WAL_BEGIN, 5, b"", 0)];
        frags.extend(put(5, b"a", &value(300, 3)));
        frags.extend(commit(6, vec![vec![header(WAL_DEL, 6, b"b", 0)]]));
        feed(&mut asm, &frags);
        assert_eq!(
            decoded(&mut asm),
            vec![(6, vec![LogOp::Del { key: b"b".to_vec() }])]
        );
    }

    #[test]
    fn ops_outside_a_commit_are_not_logged() {
        let mut asm = Assembler::default();
        let mut frags = commit(4, vec![vec![header(WAL_DEL, 4, b"a", 0)]]);
        // A PUT (with its data) and a DEL with no BEGIN: neither may end up
        // in the next commit.
        frags.extend(put(5, b"stray", &value(5000, 4)));
        frags.push(header(WAL_DEL, 5, b"stray2", 0));
        frags.extend(commit(6, vec![vec![header(WAL_DEL, 6, b"b", 0)]]));
        feed(&mut asm, &frags);
        assert_eq!(
            decoded(&mut asm),
            vec![
                (4, vec![LogOp::Del { key: b"a".to_vec() }]),
                (6, vec![LogOp::Del { key: b"b".to_vec() }]),
            ]
        );
    }

    #[test]
    fn nudges_between_commits_are_ignored() {
        let mut asm = Assembler::default();
        let mut frags = vec![header(WAL_NUDGE, 0, b"", 0)];
        frags.extend(commit(4, vec![put(4, b"a", b"x")]));
        frags.push(header(WAL_NUDGE, 0, b"", 0));
        frags.extend(commit(5, vec![put(5, b"b", b"y")]));
        feed(&mut asm, &frags);
        assert_eq!(
            decoded(&mut asm),
            vec![(4, vec![put_op(b"a", b"x")]), (5, vec![put_op(b"b", b"y")])]
        );
    }
    #[test]
    fn a_malformed_commit_that_was_acknowledged_is_reported_lost() {
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "impossible length",
                vec![header(WAL_PUT, 5, b"a", VALUE_LIMIT as u32 + 1)],
            ),
            ("empty key", vec![header(WAL_DEL, 5, b"", 0)]),
            ("long key", {
                let mut f = header(WAL_DEL, 5, b"a", 0);
                f[4..8].copy_from_slice(&256u32.to_le_bytes());
                vec![f]
            }),
            ("wrong data size", {
                let mut p = vec![header(WAL_PUT, 5, b"a", 5000)];
                p.push(vec![0u8; WAL_SMALL_FRAG]);
                p
            }),
            ("op of another commit", vec![header(WAL_DEL, 4, b"a", 0)]),
            ("unknown kind", vec![header(99, 5, b"", 0)]),
        ];
        for (what, ops) in cases {
            let mut asm = Assembler::default();
            let mut frags = commit(4, vec![vec![header(WAL_DEL, 4, b"x", 0)]]);
            frags.extend(commit(5, vec![ops]));
            frags.extend(commit(6, vec![vec![header(WAL_DEL, 6, b"y", 0)]]));
            feed(&mut asm, &frags);
            assert_eq!(asm.lost, Some(5), "{what}");
            let ts: Vec<u64> = decoded(&mut asm).iter().map(|c| c.0).collect();
            assert_eq!(ts, vec![4, 6], "{what}: the commits around it are kept");
        }
    }

    #[test]
    fn a_commit_without_its_begin_is_reported_lost() {
        let mut asm = Assembler::default();
        let mut frags = commit(4, vec![vec![header(WAL_DEL, 4, b"x", 0)]]);
        frags.push(header(WAL_DEL, 5, b"a", 0));
        frags.push(header(WAL_COMMIT, 5, b"", 0));
        feed(&mut asm, &frags);
        assert_eq!(asm.lost, Some(5));
        let mut asm = Assembler::default();
        frags = commit(4, vec![]);
        frags.insert(1, header(WAL_COMMIT, 3, b"", 0));
        feed(&mut asm, &frags);
        assert_eq!(asm.lost, Some(3), "COMMIT of another commit");
    }

    #[test]
    fn the_rest_of_a_half_read_commit_before_the_first_begin_is_skipped() {
        // A pinned ringbuf whose previous reader stopped inside a commit.
        let mut asm = Assembler::default();
        let v = value(9000, 5);
        let mut frags: Vec<Vec<u8>> = data(&v).into_iter().skip(1).collect();
        frags.push(header(WAL_DEL, 3, b"a", 0));
        frags.push(header(WAL_COMMIT, 3, b"", 0));
        frags.extend(commit(4, vec![put(4, b"b", &v)]));
        feed(&mut asm, &frags);
        assert_eq!(asm.lost, None);
        assert_eq!(decoded(&mut asm), vec![(4, vec![put_op(b"b", &v)])]);
    }

    #[test]
    fn cut_short_commits_are_counted() {
        let mut asm = Assembler::default();
        let mut frags = vec![header(WAL_BEGIN, 5, b"", 0)];
        frags.extend(put(5, b"a", &value(9000, 1)).into_iter().take(2));
        frags.push(header(WAL_BEGIN, 5, b"", 0));
        frags.push(header(WAL_NUDGE, 0, b"", 0));
        frags.extend(commit(5, vec![]));
        feed(&mut asm, &frags);
        assert_eq!((asm.dropped, asm.lost), (2, None));
        assert_eq!(decoded(&mut asm), vec![(5, vec![])]);
    }
}
