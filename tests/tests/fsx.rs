//! An fsx-style file exerciser (docs/SEMANTICS.md: Writing). One key is driven through one open
//! O_RDWR fd by random writes (holes included), truncates, reads, shared-mmap reads and writes,
//! fsyncs and close/reopen commits, and checked after every op against a shadow copy of what it
//! must hold: the writer sees its own buffer (fstat, lseek, stat by path, pread), and another
//! process sees what the last close, fsync or msync committed (`cmp` with the shadow in $T).
//!
//! Seeds: `BPFDB_FSX_SEEDS=1,2,3` (else [`DEFAULT_SEEDS`]); ops per seed: `BPFDB_FSX_OPS` (else
//! [`DEFAULT_OPS`]). A failure names the seed and op and prints the last ops and a replay line.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Error, Seek, SeekFrom};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use bpfdb_tests::{Mount, Rng};

/// Seeds run when `BPFDB_FSX_SEEDS` is unset: arbitrary, fixed so every run does the same ops.
const DEFAULT_SEEDS: [u64; 5] = [0x5eed, 0xcafe, 0x9e37_79b9, 0x2545_f491, 0x6a09_e667];
/// Ops per seed when `BPFDB_FSX_OPS` is unset (about 2.5 s a seed on an idle 2-core machine).
const DEFAULT_OPS: usize = 400;
/// Largest size a write or truncate makes: well under the default 1 MiB max_value, so no op
/// meets EFBIG, and large enough that values span many pages and several FUSE reads.
const MAX_SIZE: usize = 256 * 1024;
/// Longest write, read or mmap range.
const MAX_LEN: usize = 64 * 1024;
/// How far past EOF a read may start (it must then return nothing).
const READ_PAST_EOF: usize = 4096;
/// Ops shown in a failure report.
const LOG_OPS: usize = 20;

#[derive(Clone, Copy)]
enum Op {
    Write,
    Truncate,
    Read,
    MapRead,
    MapWrite,
    Fsync,
    Reopen,
}

/// Name and weight (out of 100) of each op: edits and reads dominate, as in fsx; commits are
/// rarer, so the writer's buffer drifts well away from the committed value between them.
const OPS: [(Op, &str, u64); 7] = [
    (Op::Write, "write", 30),
    (Op::Truncate, "truncate", 10),
    (Op::Read, "read", 15),
    (Op::MapRead, "mmap read", 12),
    (Op::MapWrite, "mmap write", 12),
    (Op::Fsync, "fsync", 11),
    (Op::Reopen, "close and reopen", 10),
];

/// `Ok` if `got` (read from file offset `off`) equals `want`, else where they first differ.
fn compare(what: &str, off: usize, got: &[u8], want: &[u8]) -> Result<(), String> {
    let (g, w) = (got.len(), want.len());
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None if g == w => Ok(()),
        None => Err(format!("{what}: got {g} bytes, want {w}; none differs")),
        Some(i) => Err(format!(
            "{what}: first difference at file offset {} (got {:#04x}, want {:#04x}); got {g} \
             bytes, want {w}",
            off + i,
            got[i],
            want[i]
        )),
    }
}

/// Up to `len` bytes at `off`, by as many preads as it takes; fewer only at EOF. Bounded: each
/// round reads at least one byte or stops.
fn pread(f: &File, off: usize, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], (off + got) as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("pread(off {}, len {}): {e}", off + got, len - got)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// A shared mapping of the first `len` bytes of `f`. Failing here is a failure of the test,
/// never a skip: keys are meant to be mappable (FUSE_DIRECT_IO_ALLOW_MMAP, fsd/src/fuse.rs).
fn map(f: &File, len: usize, prot: i32) -> Result<*mut u8, String> {
    // A touch past the size the kernel knows (fstat refreshes it) is a SIGBUS that would kill
    // the test with no report, so a short fstat is reported here instead.
    let known = f.metadata().map(|s| s.len());
    let known = known.map_err(|e| format!("fstat before mmap: {e}"))?;
    if known < len as u64 {
        return Err(format!(
            "not mapping {len} bytes: fstat says {known}, and touching past that is SIGBUS"
        ));
    }
    let fd = f.as_raw_fd();
    // SAFETY: a new mapping at an address the kernel picks; it aliases no Rust object.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        let e = Error::last_os_error();
        return Err(format!("mmap(len {len}, prot {prot:#x}, MAP_SHARED): {e}"));
    }
    Ok(p.cast())
}

fn unmap(p: *mut u8, len: usize) -> Result<(), String> {
    // SAFETY: `p`/`len` are a mapping made by `map`, not used after this.
    if unsafe { libc::munmap(p.cast(), len) } != 0 {
        return Err(format!("munmap(len {len}): {}", Error::last_os_error()));
    }
    Ok(())
}

struct Fsx<'a> {
    m: &'a Mount,
    seed: u64,
    name: String,
    path: PathBuf,
    /// The writer; `None` only inside a close/reopen.
    file: Option<File>,
    shadow: Vec<u8>,
    rng: Rng,
    /// The last [`LOG_OPS`] ops, for the failure report.
    log: VecDeque<String>,
}

impl Fsx<'_> {
    fn file(&self) -> &File {
        self.file.as_ref().expect("the file is open between ops")
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        self.rng.range(0, n as u64) as usize
    }

    fn rand_bytes(&mut self, len: usize) -> Vec<u8> {
        let words = len.div_ceil(8);
        let bytes = (0..words).flat_map(|_| self.rng.next_u64().to_le_bytes());
        bytes.take(len).collect()
    }

    fn open(&self, create: bool) -> Result<File, String> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create).truncate(false);
        o.open(&self.path)
            .map_err(|e| format!("open(O_RDWR, create {create}) of {}: {e}", self.name))
    }

    /// Closes the writer with close(2) itself: the commit's error is what close returns, and
    /// dropping a `File` would ignore it.
    fn close(&mut self) -> Result<(), String> {
        let fd = self.file.take().expect("open").into_raw_fd();
        // SAFETY: `fd` was just released by its `File`; nothing else owns it.
        if unsafe { libc::close(fd) } != 0 {
            return Err(format!("close (the commit): {}", Error::last_os_error()));
        }
        Ok(())
    }

    /// Picks the next op and its offset and length, and logs it before it runs.
    fn pick(&mut self, i: usize) -> (Op, usize, usize) {
        let size = self.shadow.len();
        let mut r = self.rng.range(0, OPS.iter().map(|o| o.2).sum());
        let mut k = 0;
        // Bounded by OPS.len(): r is below the sum of the weights.
        while r >= OPS[k].2 {
            r -= OPS[k].2;
            k += 1;
        }
        let (op, name, _) = OPS[k];
        let coin = self.rng.range(0, 2) == 0;
        let (off, len) = match op {
            Op::Write => {
                let len = 1 + self.below(MAX_LEN);
                // Half start inside or at the end of the value, half anywhere, which mostly
                // leaves a hole that must read back as zeros.
                let top = if coin { size } else { MAX_SIZE };
                (self.below(top.min(MAX_SIZE - len) + 1), len)
            }
            // Half shrink, half go anywhere (mostly growing, zero-filled).
            Op::Truncate if coin && size > 0 => (self.below(size), 0),
            Op::Truncate => (self.below(MAX_SIZE + 1), 0),
            Op::Read => (self.below(size + READ_PAST_EOF), 1 + self.below(MAX_LEN)),
            // A range inside the value; an empty value cannot be mapped (EINVAL for length 0).
            Op::MapRead | Op::MapWrite if size > 0 => {
                let off = self.below(size);
                (off, 1 + self.below((size - off).min(MAX_LEN)))
            }
            _ => (0, 0),
        };
        let what = match op {
            Op::Truncate => format!("truncate {size} -> {off}"),
            Op::Fsync | Op::Reopen => format!("{name} (size {size})"),
            _ if len == 0 => format!("{name}: size 0, nothing to map"),
            _ => format!("{name} off {off} len {len} (size {size})"),
        };
        if self.log.len() == LOG_OPS {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{i} {what}"));
        (op, off, len)
    }

    fn run(&mut self, op: Op, off: usize, len: usize) -> Result<(), String> {
        let size = self.shadow.len();
        match op {
            Op::Write => {
                let data = self.rand_bytes(len);
                let r = self.file().write_all_at(&data, off as u64);
                r.map_err(|e| format!("pwrite: {e}"))?;
                self.shadow.resize(size.max(off + len), 0);
                self.shadow[off..off + len].copy_from_slice(&data);
            }
            Op::Truncate => {
                let r = self.file().set_len(off as u64);
                r.map_err(|e| format!("ftruncate: {e}"))?;
                self.shadow.resize(off, 0);
            }
            Op::Read => {
                let got = pread(self.file(), off, len)?;
                // Short exactly where the shadow ends, empty past it.
                let want = &self.shadow[off.min(size)..(off + len).min(size)];
                compare("pread of the range", off, &got, want)?;
            }
            Op::MapRead | Op::MapWrite if len == 0 => {}
            Op::MapRead => {
                let p = map(self.file(), size, libc::PROT_READ)?;
                // SAFETY: `off + len <= size`, the mapped length.
                let got = unsafe { std::slice::from_raw_parts(p.add(off), len) }.to_vec();
                unmap(p, size)?;
                let want = &self.shadow[off..off + len];
                compare("read through the mapping", off, &got, want)?;
            }
            Op::MapWrite => {
                let data = self.rand_bytes(len);
                let p = map(self.file(), size, libc::PROT_READ | libc::PROT_WRITE)?;
                // SAFETY: `off + len <= size`, the mapped length; `data` is a buffer of ours.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(off), len) };
                // SAFETY: the mapping made above.
                let synced = unsafe { libc::msync(p.cast(), size, libc::MS_SYNC) };
                let e = Error::last_os_error();
                unmap(p, size)?;
                if synced != 0 {
                    return Err(format!("msync(MS_SYNC): {e}"));
                }
                self.shadow[off..off + len].copy_from_slice(&data);
                // msync(MS_SYNC) fsyncs the file, which commits the buffer.
                self.committed("after msync(MS_SYNC)")?;
            }
            Op::Fsync => {
                self.file().sync_all().map_err(|e| format!("fsync: {e}"))?;
                self.committed("after fsync")?;
            }
            Op::Reopen => {
                self.close()?;
                self.committed("after close")?;
                self.file = Some(self.open(false)?);
                self.committed("after reopen (a writer open, nothing written yet)")?;
            }
        }
        Ok(())
    }

    /// Another process (`cmp`) must read exactly the shadow: the value committed last.
    fn committed(&self, when: &str) -> Result<(), String> {
        let copy = self.m.scratch().join("shadow");
        std::fs::write(&copy, &self.shadow).map_err(|e| format!("write {copy:?}: {e}"))?;
        let script = format!("cmp {} \"$T/shadow\"", self.name);
        let out = self.m.sh(&script);
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "committed value {when}: `{script}` (shadow {} bytes) failed with {}: {}{}",
            self.shadow.len(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    /// What every op must leave: the writer sees its own buffer, its size and its content.
    fn check(&self) -> Result<(), String> {
        let want = self.shadow.len() as u64;
        let mut f = self.file();
        // All three, as the kernel answers them differently: lseek(SEEK_END) may use the size
        // it tracks from the writes, fstat and stat refetch the daemon's attributes.
        let by_path = || std::fs::metadata(&self.path).map(|s| s.len());
        let sizes = [
            ("fstat of the open fd", f.metadata().map(|s| s.len())),
            ("lseek(SEEK_END) on the open fd", f.seek(SeekFrom::End(0))),
            ("stat by path", by_path()),
        ];
        for (how, got) in sizes {
            let got = got.map_err(|e| format!("size by {how}: {e}"))?;
            if got != want {
                return Err(format!("size by {how}: got {got}, want {want}"));
            }
        }
        // One byte more than the shadow, so a file longer than it shows.
        let got = pread(f, 0, self.shadow.len() + 1)?;
        compare("whole-file pread", 0, &got, &self.shadow)
    }

    #[track_caller]
    fn fail(&self, op: usize, err: &str) -> ! {
        let (seed, n, stop) = (self.seed, self.log.len(), op + 1);
        let ops = Vec::from(self.log.clone()).join("\n  ");
        panic!(
            "fsx seed {seed} failed at op {op}: {err}\nlast {n} ops:\n  {ops}\nreplay: \
             BPFDB_FSX_SEEDS={seed} cargo test --release -p bpfdb-tests --test fsx \
             (add BPFDB_FSX_OPS={stop} to stop after this op)"
        );
    }
}

fn from_env<T>(name: &str, parse: impl Fn(&str) -> Option<T>, default: T) -> T {
    match std::env::var(name) {
        Ok(s) => parse(&s).unwrap_or_else(|| panic!("cannot parse {name}={s:?}")),
        Err(_) => default,
    }
}

#[test]
fn random_ops_on_one_open_file_match_a_shadow_copy() {
    let parse_seeds = |s: &str| s.split(',').map(|x| x.trim().parse().ok()).collect();
    let seeds: Vec<u64> = from_env("BPFDB_FSX_SEEDS", parse_seeds, DEFAULT_SEEDS.to_vec());
    let ops = from_env("BPFDB_FSX_OPS", |s| s.parse().ok(), DEFAULT_OPS);
    // One daemon for all seeds (a start costs seconds); each seed has a key of its own.
    let m = Mount::new();
    for seed in seeds {
        eprintln!("fsx: seed {seed}, {ops} ops");
        let started = Instant::now();
        let name = format!("fsx-{seed}");
        let mut fsx = Fsx {
            m: &m,
            seed,
            path: m.path().join(&name),
            name,
            file: None,
            shadow: Vec::new(),
            rng: Rng::new(seed),
            log: VecDeque::new(),
        };
        let file = fsx.open(true).unwrap_or_else(|e| fsx.fail(0, &e));
        fsx.file = Some(file);
        for i in 0..ops {
            let (op, off, len) = fsx.pick(i);
            let r = fsx.run(op, off, len);
            let r = r.and_then(|()| fsx.check().map_err(|e| format!("check after the op: {e}")));
            r.unwrap_or_else(|e| fsx.fail(i, &e));
        }
        let size = fsx.shadow.len();
        fsx.log.push_back(format!("end: close (size {size})"));
        let end = fsx.close().and_then(|()| fsx.committed("at the end"));
        end.unwrap_or_else(|e| fsx.fail(ops, &e));
        let rm = std::fs::remove_file(&fsx.path);
        rm.unwrap_or_else(|e| fsx.fail(ops, &format!("rm {}: {e}", fsx.name)));
        let secs = started.elapsed().as_secs_f64();
        eprintln!("fsx: seed {seed} passed in {secs:.1} s");
    }
}
