//! The 8-bit activation path of the Q4_K / Q6_K matmul: [`kpack`](super::kpack)'s [`KLayout::Quads`]
//! weights times activations quantized to int8 with one f32 scale per 32 values ([`KAct8`]), through
//! `vpdpbusd` (u8 weight x s8 activation, 4 products per i32 lane: 64 per AVX-512 instruction, twice
//! [`kmat`](super::kmat)'s `vpdpwssd`). The weights go in unscaled (a 6-bit scale times a 4- or 6-bit
//! value does not fit a byte), so each sub-block's integer sum is multiplied by its scale (`vpmulld`)
//! once per 32 (Q4_K) or 16 (Q6_K) values and token.
//!
//! Activations: `x ~= d q`, `|q| <= 127`, `d = max|x| / 127` per 32 values (llama.cpp's `q8_K` has one
//! per 256; one outlier channel would set the step of 256 values). Error `<= max|x| / 254` per block,
//! against [`kmat`]'s `max|x| / 32766`: Qwen2.5-Coder-1.5B Q4_K_M still meets the fidelity bound
//! (`qwen_k_quants_logprobs_within_the_fidelity_bound`, 62 positions: mean |delta logprob| 0.0194 nats,
//! max 0.100, against <= 0.05 / 0.5; the 15-bit path: 0.00016 / 0.00076), so this path is the default
//! and the 15-bit one stays, exact to 15 bits, behind `MLC_CPU_KQUANT_ACT=15` ([`KLayout::active`]).
//!
//! Q6_K's stored values are `u = w + 32` (0..=63, unsigned as `vpdpbusd` needs); `sum w x = sum u x - 32
//! sum x`, so each 16-value sum starts at `-32 sum x` ([`KAct8::bias`], per token, not per row).
//!
//! Integer bounds (all sums exact): Q4_K, per row and 32 values, `|sum u q| <= 32 * 15 * 127 = 60 960`,
//! times the scale (`<= 63`): `3 840 480 < 2^24`. Q6_K, per 16 values, `|sum w q| <= 16 * 32 * 127 =
//! 65 024` (partial sums from the bias: `<= 16 * 63 * 127 + 65 024`), times `|sc| <= 128`, two halves:
//! `16 646 144 < 2^24`. AVX2's `vpmaddubsw` pairs stay below `2 * 63 * 127 = 16 002`, so never saturate,
//! and its kernels add them up in i16 lanes (2 products per lane and instruction) before widening:
//! Q4_K over 32 values, `16 * 15 * 127 = 30 480` per lane; Q6_K over 16 values from [`KAct8::bias16`],
//! `|sum w q| <= 8 * 32 * 127 = 32 512` per lane at the end (the `u q` partial sums may wrap past
//! 32 767 on the way: wrapping adds, the end value in range, so exact).
//! The float steps per lane (row, token) and super-block: `inner = fma(sum_j, d_j, inner)` over the 8
//! blocks of 32 (`sum_j` the scaled integer sum), `acc = fma(inner, d_row, acc)`, then for Q4_K `acc =
//! fma(-dmin m_j, s_j, acc)` over the 8 blocks: [`kmat`]'s order, in every kernel and tile width.

use super::dispatch::Isa;
use super::kmat::{ktiles, KActivations, KTiles, SUB};
use super::kpack::{q4k, q6k, KLayout, ROWS, SB};
use super::{pool, QType};
use half::f16;

/// Values per Q6_K scale, so per [`KAct8::bias`] entry.
pub const HALF: usize = 16;

/// Activations `[t, k]` as `d q` (`q` int8) per block of 32.
pub struct KAct8 {
    pub t: usize,
    pub k: usize,
    /// `[t, k]`
    pub q: Vec<i8>,
    /// `[t, k / 32]`
    pub d: Vec<f32>,
    /// `[t, k / 32]`: `d sum(q)`, what Q4_K's mins multiply.
    pub s: Vec<f32>,
    /// `[t, k / 16]`: `-32 sum(q)` per 16 values, Q6_K's `+32` taken off in integers.
    pub bias: Vec<i32>,
    /// `[t, k / 16]`: the same split by the `vpmaddubsw` lane that meets each value (values `v % 4 < 2`
    /// in the low i16, the others in the high one), the start of the AVX2 kernel's i16 sums ([`slot_bias`]).
    pub bias16: Vec<i32>,
}

impl KActivations for KAct8 {
    const LAYOUT: KLayout = KLayout::Quads;
    const VALUE_BYTES: usize = 1;
    fn tokens(&self) -> usize {
        self.t
    }
    fn k(&self) -> usize {
        self.k
    }
}

/// See `act::ROUND_MAGIC`: round to nearest, ties to even, in plain f32 arithmetic.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Tokens at which quantizing is split over the threads.
const PARALLEL_TOKENS: usize = 16;

/// One token row's slices of a [`KAct8`].
type RowMut<'a> = (&'a mut [i8], &'a mut [f32], &'a mut [f32], &'a mut [i32], &'a mut [i32]);

impl KAct8 {
    fn zeros(t: usize, k: usize) -> KAct8 {
        let (q, d, s) = (vec![0; t * k], vec![0.0; t * k / SUB], vec![0.0; t * k / SUB]);
        KAct8 { t, k, q, d, s, bias: vec![0; t * k / HALF], bias16: vec![0; t * k / HALF] }
    }

    fn rows(&mut self) -> Vec<RowMut<'_>> {
        let k = self.k;
        let rows = self.q.chunks_mut(k).zip(self.d.chunks_mut(k / SUB)).zip(self.s.chunks_mut(k / SUB));
        let rows = rows.zip(self.bias.chunks_mut(k / HALF)).zip(self.bias16.chunks_mut(k / HALF));
        rows.map(|((((q, d), s), b), b16)| (q, d, s, b, b16)).collect()
    }

    /// `x: [t, k]`, `k` a multiple of 256. With AVX2 (the dispatch's choice) eight lanes at a time, the
    /// same bits as [`KAct8::quantize_scalar`].
    pub fn quantize(x: &[f32], k: usize) -> KAct8 {
        let t = x.len() / k;
        let mut a = KAct8::zeros(t, k);
        #[cfg(target_arch = "x86_64")]
        let avx2 = super::dispatch::active() >= Isa::Avx2;
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        let one = |x: &[f32], r: &mut RowMut| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 is there (dispatch); the row's slices cover the same blocks.
                return unsafe { quantize_blocks_avx2(x, r) };
            }
            quantize_blocks(x, r);
        };
        let mut rows = a.rows();
        if t >= PARALLEL_TOKENS {
            let per = t.div_ceil(pool::threads() * 4);
            pool::for_each_chunk_mut(&mut rows, per, |c, chunk| {
                for (i, r) in chunk.iter_mut().enumerate() {
                    let tok = c * per + i;
                    one(&x[tok * k..(tok + 1) * k], r);
                }
            });
        } else {
            for (tok, r) in rows.iter_mut().enumerate() {
                one(&x[tok * k..(tok + 1) * k], r);
            }
        }
        drop(rows);
        a
    }

    /// [`KAct8::quantize`] in portable code on one thread: the reference.
    pub fn quantize_scalar(x: &[f32], k: usize) -> KAct8 {
        let mut a = KAct8::zeros(x.len() / k, k);
        for (xr, r) in x.chunks_exact(k).zip(a.rows().iter_mut()) {
            quantize_blocks(xr, r);
        }
        a
    }
}

/// A Q6_K bias of 16 quantized values as the AVX2 kernel's two i16 lanes: `-32` times the sum of the
/// values `v % 4 < 2` (low half) and of the others (high half). Each is at most `32 * 8 * 127 = 32 512`.
fn slot_bias(q: &[i8]) -> i32 {
    let (mut lo, mut hi) = (0i32, 0i32);
    for quad in q.chunks_exact(4) {
        lo += quad[0] as i32 + quad[1] as i32;
        hi += quad[2] as i32 + quad[3] as i32;
    }
    ((-32 * lo) as i16 as u16 as i32) | ((-32 * hi) << 16)
}

/// One token's blocks of 32 -> integers, scales, sums and Q6_K biases.
fn quantize_blocks(x: &[f32], (q, d, s, bias, bias16): &mut RowMut) {
    for (b, xs) in x.chunks_exact(SUB).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let db = amax / 127.0;
        let id = if db > 0.0 { 1.0 / db } else { 0.0 };
        let qs = &mut q[b * SUB..(b + 1) * SUB];
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = ((v * id + ROUND_MAGIC) - ROUND_MAGIC) as i8;
        }
        let half = |h: usize| qs[h * HALF..(h + 1) * HALF].iter().map(|&q| q as i32).sum::<i32>();
        let (h0, h1) = (half(0), half(1));
        d[b] = db;
        s[b] = db * (h0 + h1) as f32;
        bias[2 * b] = -32 * h0;
        bias[2 * b + 1] = -32 * h1;
        bias16[2 * b] = slot_bias(&qs[..HALF]);
        bias16[2 * b + 1] = slot_bias(&qs[HALF..]);
    }
}

/// [`quantize_blocks`] with AVX2: `max |x|` (exact in any order), the same element-wise steps and
/// integer sums, so the same bits.
///
/// # Safety
/// The CPU has AVX2; the row's slices hold `x.len()` values, `x.len() / 32` and `/ 16` entries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], (q, d, s, bias, bias16): &mut RowMut) {
    use super::x86::{hsum_epi32, load32_amax};
    use std::arch::x86_64::*;
    assert!(q.len() == x.len() && d.len() * SUB == x.len() && s.len() == d.len() && bias.len() * HALF == x.len(), "activation blocks differ");
    // SAFETY (all intrinsics): AVX2 as the caller guarantees; block b reads and writes [32 b, 32 b + 32).
    unsafe {
        let magic = _mm256_set1_ps(ROUND_MAGIC);
        // byte order after the two packs: dwords a0-3 b0-3 c0-3 d0-3 a4-7 b4-7 c4-7 d4-7
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..d.len() {
            let (v, amax) = load32_amax!(x.as_ptr().add(b * SUB));
            let db = amax / 127.0;
            let id = _mm256_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
            let mut qi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                qi[j] = _mm256_cvtps_epi32(_mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[j], id), magic), magic)); // integral: exact
            }
            let h0 = hsum_epi32!(_mm256_add_epi32(qi[0], qi[1]));
            let h1 = hsum_epi32!(_mm256_add_epi32(qi[2], qi[3]));
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
            _mm256_storeu_si256(q.as_mut_ptr().add(b * SUB) as *mut __m256i, _mm256_permutevar8x32_epi32(packed, order));
            d[b] = db;
            s[b] = db * (h0 + h1) as f32;
            bias[2 * b] = -32 * h0;
            bias[2 * b + 1] = -32 * h1;
            bias16[2 * b] = slot_bias(&q[b * SUB..][..HALF]);
            bias16[2 * b + 1] = slot_bias(&q[b * SUB + HALF..][..HALF]);
        }
    }
}

/// `qtype`'s 8-bit kernels at `isa` (lowered to what the CPU has).
pub fn tiles(qtype: QType, isa: Isa) -> KTiles<KAct8> {
    let isa = isa.min(super::dispatch::detect());
    #[cfg(target_arch = "x86_64")]
    {
        use super::kx86_8;
        match (qtype, isa) {
            (QType::Q4K, Isa::Avx512Vnni) => return ktiles!(kx86_8::q4k_avx512, 8),
            (QType::Q6K, Isa::Avx512Vnni) => return ktiles!(kx86_8::q6k_avx512, 8),
            (QType::Q4K, Isa::Avx2) => return ktiles!(kx86_8::q4k_avx2, 4),
            (QType::Q6K, Isa::Avx2) => return ktiles!(kx86_8::q6k_avx2, 8),
            _ => {}
        }
    }
    match qtype {
        QType::Q4K => ktiles!(scalar_q4k, 4),
        _ => ktiles!(scalar_q6k, 4),
    }
}

fn scalar_q4k<const N: usize>(g: &[u8], x: &KAct8, t0: usize) -> [[f32; ROWS]; N] {
    scalar::<N>(g, x, t0, QType::Q4K)
}

fn scalar_q6k<const N: usize>(g: &[u8], x: &KAct8, t0: usize) -> [[f32; ROWS]; N] {
    scalar::<N>(g, x, t0, QType::Q6K)
}

/// Row `i`'s stored value (Q4_K 0..=15, Q6_K 0..=63) at `v` (0..256) of a super-block `b`.
fn stored(qtype: QType, b: &[u8], i: usize, v: usize) -> i32 {
    let (byte, shift, hbyte, hshift) = KLayout::Quads.place(i, v);
    let lo = ((b[byte] >> shift) & 0xF) as i32;
    match qtype {
        QType::Q4K => lo,
        _ => lo | ((((b[q6k::QH + hbyte] >> hshift) & 3) as i32) << 4),
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The reference: the layout read value by value, the integer sums and float steps of the SIMD kernels
/// lane by lane.
fn scalar<const N: usize>(g: &[u8], x: &KAct8, t0: usize, qtype: QType) -> [[f32; ROWS]; N] {
    let (k, nsb) = (x.k, x.k / SB);
    let bytes = if qtype == QType::Q4K { q4k::BYTES } else { q6k::BYTES };
    assert!(g.len() == nsb * bytes && t0 + N <= x.t, "packed group and activations differ");
    let mut acc = [[0f32; ROWS]; N];
    for sb in 0..nsb {
        let b = &g[sb * bytes..][..bytes];
        for i in 0..ROWS {
            for (tt, a) in acc.iter_mut().enumerate() {
                let t = t0 + tt;
                let blk0 = t * (k / SUB) + sb * (SB / SUB);
                let xq = &x.q[t * k + sb * SB..][..SB];
                let dot = |v0: usize, len: usize| -> i32 { (v0..v0 + len).map(|v| stored(qtype, b, i, v) * xq[v] as i32).sum() };
                let mut inner = 0f32;
                for j in 0..SB / SUB {
                    let isum = match qtype {
                        QType::Q4K => b[q4k::SC + 16 * j + i] as i32 * dot(SUB * j, SUB),
                        _ => (2 * j..2 * j + 2)
                            .map(|h| (x.bias[t * (k / HALF) + sb * (SB / HALF) + h] + dot(HALF * h, HALF)) * b[q6k::SC + 16 * h + i] as i8 as i32)
                            .sum(),
                    };
                    inner = (isum as f32).mul_add(x.d[blk0 + j], inner);
                }
                if qtype == QType::Q4K {
                    a[i] = inner.mul_add(f16_at(b, q4k::D + 2 * i), a[i]);
                    let dmin = f16_at(b, q4k::DMIN + 2 * i);
                    for j in 0..SB / SUB {
                        a[i] = (-(dmin * b[q4k::M + 16 * j + i] as f32)).mul_add(x.s[blk0 + j], a[i]);
                    }
                } else {
                    let d = f32::from_le_bytes(b[q6k::D + 4 * i..][..4].try_into().expect("4 bytes"));
                    a[i] = inner.mul_add(d, a[i]);
                }
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::KAct8;

    /// The dispatched quantizer (AVX2 here where the CPU has it, threads past 16 tokens) gives the
    /// scalar reference's bits: outliers, ties at half steps, zero blocks, tiny values.
    #[test]
    fn the_vector_quantizer_gives_the_scalar_bits() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        for t in [1, 3, 17, 40] {
            let k = 512;
            let mut x: Vec<f32> = (0..t * k).map(|i| rnd() * if i % 89 == 0 { 500.0 } else { 3.0 }).collect();
            x[32..64].fill(0.0);
            x[64..96].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 0.5);
            x[128..160].iter_mut().for_each(|v| *v *= 1e-30);
            let (got, want) = (KAct8::quantize(&x, k), KAct8::quantize_scalar(&x, k));
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(got.q, want.q, "q, {t} tokens");
            assert_eq!(bits(&got.d), bits(&want.d), "d, {t} tokens");
            assert_eq!(bits(&got.s), bits(&want.s), "s, {t} tokens");
            assert_eq!(got.bias, want.bias, "bias, {t} tokens");
            assert_eq!(got.bias16, want.bias16, "bias16, {t} tokens");
            for (xs, (q, d)) in x.chunks(32).zip(want.q.chunks(32).zip(&want.d)) {
                for (v, &q) in xs.iter().zip(q) {
                    assert!((v - d * q as f32).abs() <= d * 0.5 * (1.0 + 1e-6) + 1e-37, "{v} vs {d} x {q}");
                }
            }
        }
    }
}
