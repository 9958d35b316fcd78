//! The memcached UDP protocol as the generator speaks it: the 8-byte frame
//! header, a data set's commands with the exact replies a correct server
//! sends to them, and a bounded latency histogram.

/// Frame header: request id, sequence number, datagram count, reserved;
/// each a big-endian u16.
pub const HEADER_BYTES: usize = 8;
/// Digits after a data set's 3-letter prefix: names of 10 bytes, valid
/// file names (no '/', no leading '.').
const KEY_DIGITS: usize = 7;
const KEY_NAME_LIMIT: usize = 10_000_000;
/// Shuffles the order the generator visits keys in, the same every run.
const ORDER_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub request_id: u16,
    pub seq: u16,
    pub count: u16,
}

impl Header {
    /// A request is always one datagram: sequence 0 of 1.
    pub fn request(request_id: u16) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..2].copy_from_slice(&request_id.to_be_bytes());
        h[4..6].copy_from_slice(&1u16.to_be_bytes());
        h
    }

    /// None for a datagram shorter than a header.
    pub fn parse(d: &[u8]) -> Option<Header> {
        if d.len() < HEADER_BYTES {
            return None;
        }
        let u16_at = |i: usize| Some(u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?]));
        Some(Header {
            request_id: u16_at(0)?,
            seq: u16_at(2)?,
            count: u16_at(4)?,
        })
    }
}

/// `keys` keys named PREFIX + 7 digits, each with a value of `value_bytes`
/// bytes that spells its own name over and over, so a server that answers
/// with another key's value is caught.
#[derive(Clone, Copy)]
pub struct DataSet {
    pub prefix: &'static str,
    pub keys: usize,
    pub value_bytes: usize,
}

/// Requests for each key of a data set, the reply a correct server sends
/// to each, and the order the generator visits them in.
pub struct Script {
    pub requests: Vec<Vec<u8>>,
    pub replies: Vec<Vec<u8>>,
    pub order: Vec<u32>,
}

impl DataSet {
    pub fn key(&self, k: usize) -> String {
        assert!(self.prefix.len() == 3 && k < KEY_NAME_LIMIT);
        format!("{}{k:0KEY_DIGITS$}", self.prefix)
    }

    pub fn value(&self, k: usize) -> Vec<u8> {
        let name = self.key(k);
        let pattern = name.bytes().chain([b'-']);
        pattern.cycle().take(self.value_bytes).collect()
    }

    /// `get KEY`, answered by `VALUE KEY 0 LEN`, the value, `END`.
    pub fn gets(&self) -> Script {
        self.script(
            |k, _| format!("get {k}\r\n").into_bytes(),
            |k, v| {
                let mut r = format!("VALUE {k} 0 {}\r\n", v.len()).into_bytes();
                r.extend_from_slice(v);
                r.extend_from_slice(b"\r\nEND\r\n");
                r
            },
        )
    }

    /// `set KEY 0 0 LEN` with the value, answered by `STORED`.
    pub fn sets(&self) -> Script {
        self.script(
            |k, v| {
                let mut r = format!("set {k} 0 0 {}\r\n", v.len()).into_bytes();
                r.extend_from_slice(v);
                r.extend_from_slice(b"\r\n");
                r
            },
            |_, _| b"STORED\r\n".to_vec(),
        )
    }

    fn script(&self, req: Render, reply: Render) -> Script {
        let (requests, replies) = (0..self.keys)
            .map(|k| {
                let (name, value) = (self.key(k), self.value(k));
                (req(&name, &value), reply(&name, &value))
            })
            .unzip();
        Script {
            requests,
            replies,
            order: shuffled(self.keys),
        }
    }
}

/// Renders a request or reply from a key's name and value.
type Render = fn(&str, &[u8]) -> Vec<u8>;

/// 0..n in an order fixed by ORDER_SEED (Fisher-Yates with xorshift64):
/// the servers' lookups see no pattern a cache could follow.
fn shuffled(n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut x = ORDER_SEED;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// A datagram or reply as text for an error report: printable ASCII kept,
/// the rest escaped, cut at SAMPLE_BYTES.
pub fn escape(d: &[u8]) -> String {
    const SAMPLE_BYTES: usize = 80;
    let mut s: String = d
        .iter()
        .take(SAMPLE_BYTES)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if d.len() > SAMPLE_BYTES {
        s.push_str(&format!("... ({} bytes)", d.len()));
    }
    s
}

/// Where a reply departs from the expected one, shown from a little
/// before that byte.
pub fn difference(got: &[u8], want: &[u8]) -> String {
    const CONTEXT_BYTES: usize = 16;
    let at = got.iter().zip(want).position(|(g, w)| g != w);
    let at = at.unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(CONTEXT_BYTES);
    format!(
        "{} bytes, not {}; from byte {from}: `{}`, not `{}`",
        got.len(),
        want.len(),
        escape(&got[from..]),
        escape(&want[from..])
    )
}

/// Sub-buckets per power of two: values are kept to within 1/32 (3%).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// Latencies in ns, log-linear buckets: fixed memory however many
/// requests a run makes.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros();
        let group = (e - SUB_BITS + 1) as usize;
        let sub = ((v >> (e - SUB_BITS)) - SUB) as usize;
        group * SUB as usize + sub
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let (group, sub) = (i as u64 / SUB, i as u64 % SUB);
        if group == 0 {
            return sub;
        }
        let width = 1u64 << (group - 1);
        (SUB + sub) * width + width / 2
    }

    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
    }

    /// The latency `q` (0..=1) of the recorded ones are at most, in ns; 0
    /// if none were recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        let want = ((q * self.total as f64).ceil() as u64).clamp(1, self.total.max(1));
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want && c > 0 {
                return Self::value(i);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_replies_are_what_memcached_sends() {
        assert_eq!(Header::request(0x0102), [1, 2, 0, 0, 0, 1, 0, 0]);
        let h = Header::parse(&[1, 2, 0, 3, 0, 4, 0, 0]);
        let want = Header {
            request_id: 0x0102,
            seq: 3,
            count: 4,
        };
        assert_eq!(
            (h, Header::parse(&[1, 2, 0, 3, 0, 4, 0])),
            (Some(want), None)
        );
        let set = DataSet {
            prefix: "key",
            keys: 3,
            value_bytes: 12,
        };
        let gets = set.gets();
        assert_eq!(gets.requests[2], b"get key0000002\r\n");
        assert_eq!(
            gets.replies[2],
            b"VALUE key0000002 0 12\r\nkey0000002-k\r\nEND\r\n"
        );
        let sets = set.sets();
        assert_eq!(
            sets.requests[1],
            b"set key0000001 0 0 12\r\nkey0000001-k\r\n"
        );
        assert_eq!(sets.replies[1], b"STORED\r\n");
        let mut order = gets.order.clone();
        order.sort();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for ns in 1..=10_000 {
            h.record(ns);
        }
        for (q, want) in [(0.5, 5_000.0), (0.99, 9_900.0), (0.999, 9_990.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(Histogram::default().quantile(0.5), 0);
        for v in [0, 31, 32, 33, 1000, u64::MAX] {
            assert!(Histogram::index(v) < BUCKETS);
        }
    }
}
