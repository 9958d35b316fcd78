//! Seeded randomness for tests that must replay a failure.

/// A small deterministic pseudo-random generator (xorshift64*), so a failing run can be
/// repeated from the seed it prints.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `$BPFDB_TEST_SEED` if set, else from the clock; prints the seed.
    pub fn from_env_or_time(what: &str) -> Rng {
        Rng::new(Rng::seed_from_env_or_time(what))
    }

    /// The seed [`Rng::from_env_or_time`] uses, for a test that repeats it in its failure
    /// messages: `$BPFDB_TEST_SEED` if set, else from the clock; prints it.
    pub fn seed_from_env_or_time(what: &str) -> u64 {
        let seed = std::env::var("BPFDB_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{what}: BPFDB_TEST_SEED={seed}");
        seed
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.next_u64() % (hi - lo)
    }
}
