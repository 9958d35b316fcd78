//! The load generator: threads, each with a UDP socket of its own
//! connected to the server, keeping up to `window` requests outstanding,
//! sending and receiving BATCH datagrams per system call (sendmmsg,
//! recvmmsg). Replies are matched by request id and compared byte for byte
//! with what a correct server sends; a request with no reply within
//! REPLY_TIMEOUT is counted lost and its slot reused, so a server that
//! drops requests slows the generator down but never hangs it.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::proto::{HEADER_BYTES, Header, Histogram, Script, difference, escape};
use Work::{For, Once};

/// Most requests one thread keeps outstanding.
pub const MAX_WINDOW: usize = 256;
/// Datagrams per sendmmsg or recvmmsg.
const BATCH: usize = 32;
/// The largest UDP payload: a longer reply is not cut off unseen.
const DATAGRAM_BYTES: usize = 65_536;
/// Far past any queue a window builds on loopback (milliseconds at most).
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a receive blocks, so the deadline and timeouts are checked.
const RECV_POLL: Duration = Duration::from_millis(5);
/// Room for every reply a window can have in flight (1000-byte values).
const SOCKET_BUFFER_BYTES: libc::c_int = 4 << 20;
/// A reply of more datagrams than this is wrong: the values here fit in one.
const MAX_REPLY_DATAGRAMS: usize = 16;
/// Wrong replies kept to show; the rest are counted.
const MAX_SAMPLES: usize = 3;
/// A request id is its slot (low bits) and the slot's use count (high
/// bits), so a late reply to a slot's previous request is not taken for
/// the current one.
const _: () = assert!(MAX_WINDOW.is_power_of_two() && MAX_WINDOW <= 1 << 16);

/// Generator threads and the requests each keeps outstanding.
#[derive(Clone, Copy)]
pub struct Load {
    pub threads: usize,
    pub window: usize,
}

/// What the threads do: cycle over every key for a time, or send each of
/// these keys once (within a time limit).
#[derive(Clone, Copy)]
pub enum Work<'a> {
    For(Duration),
    Once(&'a [u32], Duration),
}

/// What a run saw. `correct` replies alone count as served.
#[derive(Default)]
pub struct Outcome {
    pub correct: u64,
    pub wrong: u64,
    pub lost: u64,
    /// Datagrams whose request id matches nothing outstanding.
    pub unmatched: u64,
    pub samples: Vec<String>,
    pub latency: Histogram,
    pub elapsed: Duration,
    /// Keys (in `Work::Once`) not answered correctly.
    pub failed: Vec<u32>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.correct as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub fn merge(&mut self, o: Outcome) {
        self.correct += o.correct;
        self.wrong += o.wrong;
        self.lost += o.lost;
        self.unmatched += o.unmatched;
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(o.samples.into_iter().take(room));
        self.latency.merge(&o.latency);
        self.elapsed = self.elapsed.max(o.elapsed);
        self.failed.extend(o.failed);
    }
}

/// Runs `work` against the server at `addr` with `load`.
pub fn run(addr: SocketAddrV4, script: &Script, load: Load, work: Work) -> Result<Outcome, String> {
    assert!(load.threads > 0 && (1..=MAX_WINDOW).contains(&load.window));
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..load.threads)
            .map(|t| {
                sc.spawn(move || {
                    let w = Worker::new(addr, script, load.window)?;
                    match work {
                        For(time) => {
                            // Threads start at different places in the order.
                            let start = t * script.order.len() / load.threads;
                            let keys = script.order.iter().cycle().skip(start).copied();
                            w.drive(keys, time, false)
                        }
                        Once(keys, limit) => {
                            let share = keys.len().div_ceil(load.threads);
                            let mine = keys.chunks(share.max(1)).nth(t).unwrap_or(&[]);
                            w.drive(mine.iter().copied(), limit, true)
                        }
                    }
                })
            })
            .collect();
        let mut total = Outcome::default();
        for h in workers {
            let o = h
                .join()
                .unwrap_or_else(|_| Err("generator thread panicked".into()))?;
            total.merge(o);
        }
        Ok(total)
    })
}

struct Pending {
    id: u16,
    key: u32,
    sent: Instant,
    /// Datagrams of a reply split over several, by sequence number.
    parts: Vec<Option<Vec<u8>>>,
}

struct Worker<'a> {
    sock: UdpSocket,
    script: &'a Script,
    slots: Vec<Option<Pending>>,
    uses: Vec<u16>,
    /// Slots free to send on; at most `window` of them.
    free: Vec<usize>,
    window: usize,
    recv_bufs: Vec<u8>,
    out: Outcome,
    /// Work::Once: keep the keys that failed, for a retry.
    keep_failed: bool,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl<'a> Worker<'a> {
    fn new(addr: SocketAddrV4, script: &'a Script, window: usize) -> Result<Self, String> {
        let sock = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.connect(addr).map(|()| s))
            .and_then(|s| s.set_read_timeout(Some(RECV_POLL)).map(|()| s))
            .map_err(|e| format!("generator socket to {addr}: {e}"))?;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            let size = SOCKET_BUFFER_BYTES;
            // SAFETY: setsockopt on our socket with a c_int option value.
            // Failure (not root) leaves the default buffer: not fatal.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        let slots = window.next_power_of_two();
        Ok(Worker {
            sock,
            script,
            slots: (0..slots).map(|_| None).collect(),
            uses: vec![0; slots],
            free: (0..window).rev().collect(),
            window,
            recv_bufs: vec![0; BATCH * DATAGRAM_BYTES],
            out: Outcome::default(),
            keep_failed: false,
        })
    }

    /// Sends `keys` and takes the replies until `time` passes or, `once`,
    /// every key is answered or lost.
    fn drive(
        mut self,
        keys: impl Iterator<Item = u32>,
        time: Duration,
        once: bool,
    ) -> Result<Outcome, String> {
        self.keep_failed = once;
        let start = Instant::now();
        let mut keys = keys.peekable();
        while start.elapsed() < time {
            self.expire(Instant::now());
            if once && keys.peek().is_none() && self.free.len() == self.window {
                break;
            }
            self.send(&mut keys)?;
            self.recv()?;
        }
        self.out.elapsed = start.elapsed();
        if once {
            // Past the limit: what is outstanding is lost, and neither it
            // nor what was never sent is done.
            let outstanding: Vec<u32> = self
                .slots
                .iter_mut()
                .filter_map(Option::take)
                .map(|p| p.key)
                .collect();
            self.out.lost += outstanding.len() as u64;
            self.out.failed.extend(outstanding);
            self.out.failed.extend(keys);
        }
        Ok(self.out)
    }

    fn send(
        &mut self,
        keys: &mut std::iter::Peekable<impl Iterator<Item = u32>>,
    ) -> Result<(), String> {
        let mut batch: [(usize, u32, [u8; HEADER_BYTES]); BATCH] =
            [(0, 0, [0; HEADER_BYTES]); BATCH];
        let mut n = 0;
        while n < BATCH {
            let Some(&slot) = self.free.last() else { break };
            let Some(key) = keys.next() else { break };
            self.free.pop();
            self.uses[slot] = self.uses[slot].wrapping_add(1);
            let id = (usize::from(self.uses[slot]) * self.slots.len() + slot) as u16;
            batch[n] = (slot, key, Header::request(id));
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        let mut iovs = [[libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2]; BATCH];
        // SAFETY: mmsghdr is plain C data; all zero is a valid empty one.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let req = &self.script.requests[batch[i].1 as usize];
            iovs[i][0] = libc::iovec {
                iov_base: batch[i].2.as_mut_ptr().cast(),
                iov_len: HEADER_BYTES,
            };
            iovs[i][1] = libc::iovec {
                iov_base: req.as_ptr().cast_mut().cast(),
                iov_len: req.len(),
            };
            msgs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
        }
        // Before the call: on loopback, sending runs the server's receive
        // path (and an XDP server's whole answer) inside it.
        let now = Instant::now();
        // SAFETY: n messages, each pointing at buffers alive for the call;
        // the socket is connected, so no addresses.
        let sent = unsafe { libc::sendmmsg(self.sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        let sent = usize::try_from(sent).map_err(|_| os_err("sendmmsg"))?;
        for (i, &(slot, key, header)) in batch[..n].iter().enumerate() {
            if i < sent {
                let id = u16::from_be_bytes([header[0], header[1]]);
                self.slots[slot] = Some(Pending {
                    id,
                    key,
                    sent: now,
                    parts: Vec::new(),
                });
            } else {
                // Not sent (the call stopped early): the slot is free again.
                self.free.push(slot);
                self.fail(key);
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<(), String> {
        // Taken out of self for the call, so datagrams can be read from it
        // while self changes.
        let mut bufs = std::mem::take(&mut self.recv_bufs);
        let r = self.recv_into(&mut bufs);
        self.recv_bufs = bufs;
        r
    }

    fn recv_into(&mut self, bufs: &mut [u8]) -> Result<(), String> {
        let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: bufs[i * DATAGRAM_BYTES..].as_mut_ptr().cast(),
            iov_len: DATAGRAM_BYTES,
        });
        // SAFETY: as in send.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: BATCH messages into disjoint DATAGRAM_BYTES pieces of
        // recv_bufs. MSG_WAITFORONE: block (up to RECV_POLL) for the first
        // datagram only, then take what is already queued.
        let got = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let now = Instant::now();
        let Ok(got) = usize::try_from(got) else {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(()),
                _ => Err(format!("recvmmsg from the server: {e}")),
            };
        };
        for (i, m) in msgs[..got].iter().enumerate() {
            let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let at = i * DATAGRAM_BYTES;
            self.datagram(&bufs[at..at + m.msg_len as usize], truncated, now);
        }
        Ok(())
    }

    fn datagram(&mut self, d: &[u8], truncated: bool, now: Instant) {
        let Some(h) = Header::parse(d) else {
            self.out.unmatched += 1;
            return;
        };
        let slot = usize::from(h.request_id) & (self.slots.len() - 1);
        let Some(mut p) = self.slots[slot].take_if(|p| p.id == h.request_id) else {
            self.out.unmatched += 1;
            return;
        };
        let payload = &d[HEADER_BYTES..];
        let count = usize::from(h.count);
        let changed = !p.parts.is_empty() && p.parts.len() != count;
        if truncated || changed || count == 0 || count > MAX_REPLY_DATAGRAMS || h.seq >= h.count {
            let why = if truncated {
                "cut off"
            } else {
                "out of sequence"
            };
            let (seq, n, text) = (h.seq, h.count, escape(payload));
            let e = format!("datagram {seq} of {n} {why}: {text}");
            return self.finish(slot, p, Err(e), now);
        }
        if count == 1 {
            return self.finish(slot, p, Ok(payload), now);
        }
        p.parts.resize(count, None);
        p.parts[usize::from(h.seq)] = Some(payload.to_vec());
        if p.parts.iter().all(Option::is_some) {
            let whole: Vec<u8> = p.parts.iter().flatten().flatten().copied().collect();
            self.finish(slot, p, Ok(&whole), now);
        } else {
            self.slots[slot] = Some(p);
        }
    }

    fn finish(&mut self, slot: usize, p: Pending, reply: Result<&[u8], String>, now: Instant) {
        self.free.push(slot);
        let want = &self.script.replies[p.key as usize];
        match reply {
            Ok(r) if r == want.as_slice() => {
                self.out.correct += 1;
                self.out
                    .latency
                    .record(now.duration_since(p.sent).as_nanos() as u64);
            }
            got => {
                self.out.wrong += 1;
                if self.out.samples.len() < MAX_SAMPLES {
                    let got = got.map_or_else(|e| e, |r| difference(r, want));
                    let request = escape(&self.script.requests[p.key as usize]);
                    self.out.samples.push(format!("`{request}`: {got}"));
                }
                self.fail(p.key);
            }
        }
    }

    /// Counts requests older than REPLY_TIMEOUT lost and frees their slots.
    fn expire(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let old = |p: &mut Pending| now.duration_since(p.sent) > REPLY_TIMEOUT;
            if let Some(p) = self.slots[slot].take_if(old) {
                self.out.lost += 1;
                self.free.push(slot);
                self.fail(p.key);
            }
        }
    }

    fn fail(&mut self, key: u32) {
        if self.keep_failed {
            self.out.failed.push(key);
        }
    }
}
