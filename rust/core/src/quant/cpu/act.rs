//! Activations quantized to 8 bits per block of 32, the other operand of every integer dot product
//! (llama.cpp's `q8_0` / `q8_1`), plus an 8-bit residual.
//!
//! Why the residual: with one 8-bit stage (llama.cpp's scheme, f32 scales) SmolLM2-135M Q4_1 misses the
//! fidelity bound against the f32 reference (teacher-forced mean |delta logprob| 0.063-0.070 nats, max
//! 0.52, against <= 0.05 / 0.5): its activations have outlier channels, so a block's scale is set by one
//! large value and the rest round coarsely. The residual `x - d q` is at most `d / 2`, so it is stored
//! on the fixed scale `d / 128` (`|r| <= 64`): `x ~= d (q + r / 128)` to about 15 bits. The kernels
//! combine both dot products in integers (`128 p_q + p_r`, exact in i32), so the cost is one more
//! integer dot product per block; decode, bound by reading the weights, does not see it.
//!
//! One block format serves every weight type: Q4_0 / Q4_1 / Q8_0 blocks are 32 wide, and the K-quants'
//! sub-blocks (32 for Q4_K, two scales of 16 for Q6_K) fall inside one activation block each.

/// Values per activation block.
pub const QK: usize = 32;

/// 32 activations as `x ~= d (q + r / 128)`; `s = d * sum(q + r / 128)` is what a weight block's offset
/// (Q4_1's `m`, Q4_K's `-dmin * m`, Q4_0's `-8 d`) multiplies, precomputed once per activation instead of
/// once per weight row. `x = 128 q + r` (`|x| <= 16320`) is both stages as one i16, for kernels that
/// multiply 16-bit operands (AVX2's [`tile16`](super::tile16)): made once per activation here, not once
/// per tile of weight rows.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActBlock {
    pub d: f32,
    pub s: f32,
    pub q: [i8; QK],
    pub r: [i8; QK],
    pub x: [i16; QK],
}

impl ActBlock {
    pub const ZERO: ActBlock = ActBlock { d: 0.0, s: 0.0, q: [0; QK], r: [0; QK], x: [0; QK] };

    /// The scale of the combined integer `128 q + r`.
    pub fn fine_scale(&self) -> f32 {
        self.d * (1.0 / 128.0)
    }
}

/// Adding and subtracting 1.5 * 2^23 rounds an f32 below 2^22 in magnitude to the nearest integer, ties to
/// even, in plain SSE2 arithmetic the loop vectorizes (`round_ties_even` is a libm call on baseline x86-64).
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantizes one row `x: [k]` (`k` a multiple of 32) into `out: [k / 32]`: `d = max|x| / 127`,
/// `q = round_ties_even(x / d)` (what llama.cpp's SIMD quantizers do), `r = round_ties_even(128 (x / d - q))`.
/// With AVX2 (the dispatch's choice) the same arithmetic eight lanes at a time: the same bits.
pub fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    assert_eq!(x.len(), out.len() * QK, "activation row and blocks differ");
    #[cfg(target_arch = "x86_64")]
    if super::dispatch::active() >= super::dispatch::Isa::Avx2 {
        // SAFETY: AVX2 is there (dispatch); lengths checked above.
        return unsafe { quantize_row_avx2(x, out) };
    }
    quantize_row_scalar(x, out);
}

/// [`quantize_row`] in portable code: the reference.
pub fn quantize_row_scalar(x: &[f32], out: &mut [ActBlock]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xs, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (((q, r), x), &v) in blk.q.iter_mut().zip(blk.r.iter_mut()).zip(blk.x.iter_mut()).zip(xs) {
            // |v * id| <= 127 up to rounding, so the casts never saturate meaningfully; |r| <= 64.
            let scaled = v * id;
            let rq = (scaled + ROUND_MAGIC) - ROUND_MAGIC;
            let rr = ((scaled - rq) * 128.0 + ROUND_MAGIC) - ROUND_MAGIC;
            *q = rq as i8;
            *r = rr as i8;
            *x = 128 * *q as i16 + *r as i16;
            sum += *x as i32;
        }
        blk.d = d;
        blk.s = blk.fine_scale() * sum as f32;
    }
}

/// [`quantize_row`] with AVX2: per block, `max |x|` (exact in any order), then the scalar's element-wise
/// steps (no fused multiply-add) and an integer sum, so the same bits.
///
/// # Safety
/// The CPU has AVX2; `x.len() == out.len() * 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut [ActBlock]) {
    use super::x86::{hsum_epi32, load32_amax};
    use std::arch::x86_64::*;
    // SAFETY (all intrinsics): AVX2 as the caller guarantees; each block reads x[32 b .. 32 b + 32].
    unsafe {
        let magic = _mm256_set1_ps(ROUND_MAGIC);
        let fine = _mm256_set1_ps(128.0);
        // byte order after the two packs: dwords a0-3 b0-3 c0-3 d0-3 a4-7 b4-7 c4-7 d4-7
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, blk) in out.iter_mut().enumerate() {
            let (v, amax) = load32_amax!(x.as_ptr().add(b * QK));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut qi = [_mm256_setzero_si256(); 4];
            let mut ri = [_mm256_setzero_si256(); 4];
            let mut xi = [_mm256_setzero_si256(); 4];
            let mut sum = _mm256_setzero_si256();
            for j in 0..4 {
                let scaled = _mm256_mul_ps(v[j], id);
                let rq = _mm256_sub_ps(_mm256_add_ps(scaled, magic), magic);
                let rr = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(scaled, rq), fine), magic), magic);
                qi[j] = _mm256_cvtps_epi32(rq); // integral already: exact
                ri[j] = _mm256_cvtps_epi32(rr);
                xi[j] = _mm256_add_epi32(_mm256_slli_epi32::<7>(qi[j]), ri[j]);
                sum = _mm256_add_epi32(sum, xi[j]);
            }
            // i32 -> i16 (|x| <= 16320: no saturation); packs interleaves 128-bit lanes, the permute undoes it.
            let pack16 = |a: __m256i, b: __m256i| _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            _mm256_storeu_si256(blk.x.as_mut_ptr() as *mut __m256i, pack16(xi[0], xi[1]));
            _mm256_storeu_si256(blk.x.as_mut_ptr().add(16) as *mut __m256i, pack16(xi[2], xi[3]));
            let pack = |a: [__m256i; 4]| {
                let ab = _mm256_packs_epi32(a[0], a[1]);
                let cd = _mm256_packs_epi32(a[2], a[3]);
                _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order)
            };
            _mm256_storeu_si256(blk.q.as_mut_ptr() as *mut __m256i, pack(qi));
            _mm256_storeu_si256(blk.r.as_mut_ptr() as *mut __m256i, pack(ri));
            blk.d = d;
            blk.s = blk.fine_scale() * hsum_epi32!(sum) as f32;
        }
    }
}

/// `x: [t, k]` row-major -> `[t, k / 32]` blocks.
pub fn quantize_rows(x: &[f32], k: usize) -> Vec<ActBlock> {
    let mut out = vec![ActBlock::ZERO; x.len() / QK];
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(k / QK)) {
        quantize_row(xr, or);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step_and_the_residual_within_a_256th() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.37).collect();
        let blocks = quantize_rows(&x, 64);
        assert_eq!(blocks.len(), 2);
        for (xs, b) in x.chunks(QK).zip(&blocks) {
            let sum: i32 = b.q.iter().zip(&b.r).map(|(&q, &r)| 128 * q as i32 + r as i32).sum();
            assert!(b.x.iter().zip(b.q.iter().zip(&b.r)).all(|(&x, (&q, &r))| x as i32 == 128 * q as i32 + r as i32));
            assert!((b.s - b.fine_scale() * sum as f32).abs() < 1e-5);
            for ((v, &q), &r) in xs.iter().zip(&b.q).zip(&b.r) {
                assert!((v - b.d * q as f32).abs() <= b.d * 0.5 + 1e-6);
                assert!((v - b.d * (q as f32 + r as f32 / 128.0)).abs() <= b.d / 256.0 + 1e-6);
            }
        }
        let zero = quantize_rows(&[0.0; 32], 32);
        assert_eq!(zero[0], ActBlock::ZERO);
    }

    /// The dispatched quantizer (AVX2 here where the CPU has it) gives the scalar reference's bits: rows
    /// with outliers, ties at half steps, zero blocks, negative zeros and tiny values.
    #[test]
    fn the_vector_quantizer_gives_the_scalar_bits() {
        let mut seed = 11u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        let mut x: Vec<f32> = (0..32 * 64).map(|i| rnd() * if i % 97 == 0 { 300.0 } else { 2.0 }).collect();
        x[32..64].fill(0.0);
        x[64..96].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 0.5); // ties
        x[96] = -0.0;
        x[128..160].iter_mut().for_each(|v| *v *= 1e-30); // tiny scales
        let mut want = vec![ActBlock::ZERO; 64];
        let mut got = vec![ActBlock::ZERO; 64];
        quantize_row_scalar(&x, &mut want);
        quantize_row(&x, &mut got);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!((g.d.to_bits(), g.s.to_bits(), g.q, g.r, g.x), (w.d.to_bits(), w.s.to_bits(), w.q, w.r, w.x), "block {b}");
        }
    }
}
