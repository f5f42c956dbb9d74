//! The per-sequence pseudo-random generator: xoshiro256++ whose state is filled by SplitMix64.
//!
//! Written out here rather than taken from `rand` because `rand` does not promise that `StdRng` or
//! `SmallRng` keep their algorithm across releases or platforms, and a request's `seed` must give the
//! same tokens on every platform and every version of this engine. Both algorithms are fixed by their
//! published definitions (Blackman and Vigna); a unit test pins the first outputs.

/// A seedable generator with a stable, documented output stream.
#[derive(Debug, Clone)]
pub(crate) struct SeqRng {
    s: [u64; 4],
}

impl SeqRng {
    pub(crate) fn from_seed(seed: u64) -> Self {
        // SplitMix64 rather than the raw seed: small user seeds (0, 1, 2, ...) would otherwise start
        // xoshiro in nearly-zero states with poor early output. Its mixing function is a bijection
        // applied to four distinct counters, so at most one word is zero and the all-zero state (the
        // one xoshiro never leaves) cannot occur.
        let mut counter = seed;
        let s = [
            splitmix64(&mut counter),
            splitmix64(&mut counter),
            splitmix64(&mut counter),
            splitmix64(&mut counter),
        ];
        SeqRng { s }
    }

    /// An unseeded request gets a seed from the operating system's entropy (through `rand`'s
    /// thread-local generator, which is seeded from it).
    pub(crate) fn from_entropy() -> Self {
        Self::from_seed(rand::random::<u64>())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.s;
        let out = s0.wrapping_add(s3).rotate_left(23).wrapping_add(s0);
        let t = s1 << 17;
        let s2 = s2 ^ s0;
        let s3 = s3 ^ s1;
        let s1 = s1 ^ s2;
        let s0 = s0 ^ s3;
        self.s = [s0, s1, s2 ^ t, s3.rotate_left(45)];
        out
    }

    /// Uniform in [0, 1) from the top 53 bits, the full precision of an f64 mantissa.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn splitmix64(counter: &mut u64) -> u64 {
    *counter = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *counter;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
