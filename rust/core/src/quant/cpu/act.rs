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
/// once per weight row.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActBlock {
    pub d: f32,
    pub s: f32,
    pub q: [i8; QK],
    pub r: [i8; QK],
}

impl ActBlock {
    pub const ZERO: ActBlock = ActBlock { d: 0.0, s: 0.0, q: [0; QK], r: [0; QK] };

    /// The scale of the combined integer `128 q + r`.
    pub fn fine_scale(&self) -> f32 {
        self.d * (1.0 / 128.0)
    }
}

/// Adding and subtracting 1.5 * 2^23 rounds an f32 below 2^22 in magnitude to the nearest integer, ties to
/// even, in plain SSE2 arithmetic the loop vectorizes (`round_ties_even` is a libm call on baseline x86-64).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantizes one row `x: [k]` (`k` a multiple of 32) into `out: [k / 32]`: `d = max|x| / 127`,
/// `q = round_ties_even(x / d)` (what llama.cpp's SIMD quantizers do), `r = round_ties_even(128 (x / d - q))`.
pub fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xs, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for ((q, r), &v) in blk.q.iter_mut().zip(blk.r.iter_mut()).zip(xs) {
            // |v * id| <= 127 up to rounding, so the casts never saturate meaningfully; |r| <= 64.
            let scaled = v * id;
            let rq = (scaled + ROUND_MAGIC) - ROUND_MAGIC;
            let rr = ((scaled - rq) * 128.0 + ROUND_MAGIC) - ROUND_MAGIC;
            *q = rq as i8;
            *r = rr as i8;
            sum += 128 * rq as i32 + rr as i32;
        }
        blk.d = d;
        blk.s = blk.fine_scale() * sum as f32;
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
            assert!((b.s - b.fine_scale() * sum as f32).abs() < 1e-5);
            for ((v, &q), &r) in xs.iter().zip(&b.q).zip(&b.r) {
                assert!((v - b.d * q as f32).abs() <= b.d * 0.5 + 1e-6);
                assert!((v - b.d * (q as f32 + r as f32 / 128.0)).abs() <= b.d / 256.0 + 1e-6);
            }
        }
        let zero = quantize_rows(&[0.0; 32], 32);
        assert_eq!(zero[0], ActBlock::ZERO);
    }
}
