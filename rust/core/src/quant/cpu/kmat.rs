//! The matmul over [`kpack`](super::kpack)'s interleaved Q4_K / Q6_K weights: activations quantized to
//! 15-bit integers per block of 32 ([`KAct`]), a tile of 16 rows x `N` tokens per kernel call,
//! the outputs of a tile being 16 adjacent columns of `N` output rows.
//!
//! Activations: `x ~= d q`, `q` a 15-bit integer (`|q| <= 16383`), one `d = max|x| / 16383` per 32
//! values: error `<= max|x| / 32766` per block, as fine as the 8-bit-plus-residual scheme of
//! [`act`](super::act) (`max|x| / 32512`), which the fidelity bounds were met with. A scale per 32, not per
//! 256 as llama.cpp's `q8_K`: real activations have outlier channels, and one outlier would set the step
//! of 256 values.
//!
//! Integer bounds (why a sum is converted to float after each 32 values): a lane adds `|w| |q|` products,
//! 32 per block. Q4_K: `|w| = sc q <= 63 * 15 = 945`: `32 * 945 * 16383 < 2^29`. Q6_K: `|w| = |sc (q - 32)|
//! <= 128 * 32 = 4096`: `32 * 4096 * 16383 = 2 147 352 576 <= 2^31 - 1`. Per lane (row, token) and
//! super-block the float steps are `inner = fma(sum_j, d_j, inner)` over the 8 blocks, then
//! `acc = fma(inner, d_row, acc)`, then for Q4_K `acc = fma(-dmin m_j, s_j, acc)` over the 8 blocks, in
//! this order in the scalar and SIMD kernels and in every tile width, so the levels agree bit for bit and
//! a token's result does not depend on its batch.
//!
//! The 8-bit activation path beside this one ([`kmat8`](super::kmat8), the default since it meets the
//! fidelity bound at twice the integer throughput) shares the driver ([`matmul`]) and the tile types.

use super::act::ROUND_MAGIC;
use super::dispatch::Isa;
use super::kpack::{place, q41, q4k, q6k, q80, KLayout, PackedK, ROWS, SB};
use super::gemm::Out;
use super::{pool, QType};
use half::f16;

/// Largest activation integer (see the bounds above).
pub const QMAX: f32 = 16383.0;
/// Values per activation scale, per integer sum and per Q4_K sub-block.
pub const SUB: usize = 32;

/// Activations `[t, k]` as `d q` per block of 32, with each block's sum `s = d sum(q)` (what Q4_K's mins
/// multiply).
pub struct KAct {
    pub t: usize,
    pub k: usize,
    /// `[t, k]`
    pub q: Vec<i16>,
    /// `[t, k / 32]`
    pub d: Vec<f32>,
    /// `[t, k / 32]`
    pub s: Vec<f32>,
}


/// Tokens at which quantizing is split over the threads (a prefill's quantization otherwise runs on the
/// calling thread while the others wait).
const PARALLEL_TOKENS: usize = 16;

impl KAct {
    /// `x: [t, k]`, `k` a multiple of 256. With AVX2 (the dispatch's choice) eight lanes at a time, the
    /// same bits as [`KAct::quantize_scalar`].
    pub fn quantize(x: &[f32], k: usize) -> KAct {
        let t = x.len() / k;
        let mut a = KAct { t, k, q: vec![0; t * k], d: vec![0.0; t * k / SUB], s: vec![0.0; t * k / SUB] };
        #[cfg(target_arch = "x86_64")]
        let avx2 = super::dispatch::active() >= Isa::Avx2;
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        let one = |x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 is there (dispatch); the slices cover the same blocks.
                return unsafe { quantize_blocks_avx2(x, q, d, s) };
            }
            quantize_blocks(x, q, d, s);
        };
        let kb = k / SUB;
        let mut rows: Vec<_> = a.q.chunks_mut(k).zip(a.d.chunks_mut(kb)).zip(a.s.chunks_mut(kb)).map(|((q, d), s)| (q, d, s)).collect();
        if t >= PARALLEL_TOKENS {
            let per = t.div_ceil(pool::threads() * 4);
            pool::for_each_chunk_mut(&mut rows, per, |c, chunk| {
                for (i, (q, d, s)) in chunk.iter_mut().enumerate() {
                    let r = c * per + i;
                    one(&x[r * k..(r + 1) * k], q, d, s);
                }
            });
        } else {
            for (r, (q, d, s)) in rows.iter_mut().enumerate() {
                one(&x[r * k..(r + 1) * k], q, d, s);
            }
        }
        a
    }

    /// [`KAct::quantize`] in portable code on one thread: the reference.
    pub fn quantize_scalar(x: &[f32], k: usize) -> KAct {
        let t = x.len() / k;
        let mut a = KAct { t, k, q: vec![0; t * k], d: vec![0.0; t * k / SUB], s: vec![0.0; t * k / SUB] };
        quantize_blocks(x, &mut a.q, &mut a.d, &mut a.s);
        a
    }
}

/// Blocks of 32 of `x` -> their integers `q`, scales `d` and sums `s`.
fn quantize_blocks(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    for ((xs, qs), (d, s)) in x.chunks_exact(SUB).zip(q.chunks_exact_mut(SUB)).zip(d.iter_mut().zip(s.iter_mut())) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        *d = amax / QMAX;
        let id = if *d > 0.0 { 1.0 / *d } else { 0.0 };
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = ((v * id + ROUND_MAGIC) - ROUND_MAGIC) as i16;
        }
        *s = *d * qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
    }
}

/// [`quantize_blocks`] with AVX2: `max |x|` (exact in any order), the same element-wise steps and an
/// integer sum, so the same bits.
///
/// # Safety
/// The CPU has AVX2; `q.len() == x.len()`, `d.len() == s.len() == x.len() / 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    use super::x86::{hsum_epi32, load32_amax};
    use std::arch::x86_64::*;
    assert!(q.len() == x.len() && d.len() * SUB == x.len() && s.len() == d.len(), "activation blocks differ");
    // SAFETY (all intrinsics): AVX2 as the caller guarantees; block b reads and writes [32 b, 32 b + 32).
    unsafe {
        let magic = _mm256_set1_ps(ROUND_MAGIC);
        for b in 0..d.len() {
            let (v, amax) = load32_amax!(x.as_ptr().add(b * SUB));
            let db = amax / QMAX;
            let id = _mm256_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
            let mut qi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                qi[j] = _mm256_cvtps_epi32(_mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[j], id), magic), magic)); // integral: exact
            }
            let sum = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
            // packs interleave 128-bit lanes: a0-3 b0-3 a4-7 b4-7 -> a0-7 b0-7 by 64-bit lanes 0 2 1 3
            let lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(qi[0], qi[1]));
            let hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(qi[2], qi[3]));
            let out = q.as_mut_ptr().add(b * SUB) as *mut __m256i;
            _mm256_storeu_si256(out, lo);
            _mm256_storeu_si256(out.add(1), hi);
            d[b] = db;
            s[b] = db * hsum_epi32!(sum) as f32;
        }
    }
}

/// Quantized activations a packed layout's kernels take: [`KAct`] (15 bits) or
/// [`KAct8`](super::kmat8::KAct8) (8 bits).
pub trait KActivations: Sync {
    /// The weight layout whose kernels take these activations.
    const LAYOUT: KLayout;
    /// Bytes per quantized value (the scales aside).
    const VALUE_BYTES: usize;
    fn tokens(&self) -> usize;
    fn k(&self) -> usize;
}

impl KActivations for KAct {
    const LAYOUT: KLayout = KLayout::Pairs;
    const VALUE_BYTES: usize = 2;
    fn tokens(&self) -> usize {
        self.t
    }
    fn k(&self) -> usize {
        self.k
    }
}

/// 16 rows (one group) x `N` tokens from token `t0` -> `[N][16]`.
///
/// # Safety
/// The kernel's instruction set is available ([`tiles`] hands out only those).
pub type KTile<const N: usize, A = KAct> = unsafe fn(&[u8], &A, usize) -> [[f32; ROWS]; N];

/// One type's kernels at one level, in the tile widths the driver uses.
pub struct KTiles<A = KAct> {
    pub t1: KTile<1, A>,
    pub t2: KTile<2, A>,
    pub t4: KTile<4, A>,
    pub t8: KTile<8, A>,
    /// The widest tile worth using at this level (registers: 32 at AVX-512, 16 below; the AVX-512
    /// kernels hold 2 vectors per token).
    pub max: usize,
}

// By hand: a derive would ask `A: Copy`, and only function pointers are copied.
impl<A> Clone for KTiles<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for KTiles<A> {}

macro_rules! ktiles {
    ($($f:ident)::+, $max:expr) => {
        KTiles { t1: $($f)::+::<1>, t2: $($f)::+::<2>, t4: $($f)::+::<4>, t8: $($f)::+::<8>, max: $max }
    };
    // A kernel with one more const parameter after the width.
    ($($f:ident)::+ [$c:expr], $max:expr) => {
        KTiles { t1: $($f)::+::<1, $c>, t2: $($f)::+::<2, $c>, t4: $($f)::+::<4, $c>, t8: $($f)::+::<8, $c>, max: $max }
    };
}
pub(crate) use ktiles;

/// `qtype`'s packed kernels at `isa` (lowered to what the CPU has).
pub fn tiles(qtype: QType, isa: Isa) -> KTiles {
    let isa = isa.min(super::dispatch::detect());
    #[cfg(target_arch = "x86_64")]
    {
        use super::kx86;
        match (qtype, isa) {
            (QType::Q4K, Isa::Avx512Vnni) => return ktiles!(kx86::q4k_avx512, 8),
            (QType::Q6K, Isa::Avx512Vnni) => return ktiles!(kx86::q6k_avx512, 8),
            (QType::Q4K, Isa::Avx2) => return ktiles!(kx86::q4k_avx2, 4),
            (QType::Q6K, Isa::Avx2) => return ktiles!(kx86::q6k_avx2, 4),
            (QType::Q4_0 | QType::Q4_1, Isa::Avx512Vnni) => return ktiles!(kx86::b32_avx512[false], 8),
            (QType::Q8_0, Isa::Avx512Vnni) => return ktiles!(kx86::b32_avx512[true], 8),
            (QType::Q4_0 | QType::Q4_1, Isa::Avx2) => return ktiles!(kx86::b32_avx2[false], 4),
            (QType::Q8_0, Isa::Avx2) => return ktiles!(kx86::b32_avx2[true], 4),
            _ => {}
        }
    }
    match qtype {
        QType::Q4K => ktiles!(scalar_q4k, 4),
        QType::Q4_0 | QType::Q4_1 => ktiles!(scalar_q41, 4),
        QType::Q8_0 => ktiles!(scalar_q80, 4),
        _ => ktiles!(scalar_q6k, 4),
    }
}

/// The reference of Q4_0 / Q4_1 ([`q41`]) and Q8_0 ([`q80`]) groups: per row, token and block of 32, the
/// integer sum of `q_w q_x`, then `acc = fma(sum d, d_x, acc)` and (Q4_0 / Q4_1) `acc = fma(m, s_x, acc)`,
/// the AVX2 kernels' steps.
fn scalar_q41<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    scalar_b32::<N>(g, x, t0, false)
}

fn scalar_q80<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    scalar_b32::<N>(g, x, t0, true)
}

fn scalar_b32<const N: usize>(g: &[u8], x: &KAct, t0: usize, q8: bool) -> [[f32; ROWS]; N] {
    let (k, nb, bytes) = (x.k, x.k / SUB, if q8 { q80::BYTES } else { q41::BYTES });
    assert!(g.len() == nb * bytes && t0 + N <= x.t, "packed group and activations differ");
    let mut acc = [[0f32; ROWS]; N];
    for j in 0..nb {
        let b = &g[j * bytes..][..bytes];
        for i in 0..ROWS {
            let weight = |v: usize| -> i32 {
                if q8 {
                    return b[q80::QS + 32 * (v / 2) + 2 * i + v % 2] as i8 as i32;
                }
                let (byte, shift, _, _) = place(i, v);
                ((b[q41::QS + byte] >> shift) & 0xF) as i32
            };
            let d = f16_at(b, if q8 { q80::D } else { q41::D } + 2 * i);
            for (tt, a) in acc.iter_mut().enumerate() {
                let t = t0 + tt;
                let xs = &x.q[t * k + j * SUB..][..SUB];
                let isum: i32 = xs.iter().enumerate().map(|(v, &q)| weight(v) * q as i32).sum();
                let blk = t * (k / SUB) + j;
                a[i] = (isum as f32 * d).mul_add(x.d[blk], a[i]);
                if !q8 {
                    a[i] = f16_at(b, q41::M + 2 * i).mul_add(x.s[blk], a[i]);
                }
            }
        }
    }
    acc
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The reference: the layout read value by value, the float steps of the SIMD kernels lane by lane.
fn scalar_q4k<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    scalar::<N>(g, x, t0, QType::Q4K)
}

fn scalar_q6k<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    scalar::<N>(g, x, t0, QType::Q6K)
}

/// Row `i`'s integer weight (scale times value) at `v` (0..256) of a packed super-block `b`.
fn weight(qtype: QType, b: &[u8], i: usize, v: usize) -> i32 {
    let (byte, shift, hbyte, hshift) = place(i, v);
    let lo = ((b[byte] >> shift) & 0xF) as i32;
    match qtype {
        QType::Q4K => lo * b[q4k::SC + 16 * (v / SUB) + i] as i32,
        _ => {
            let q = lo | ((((b[q6k::QH + hbyte] >> hshift) & 3) as i32) << 4);
            (q - 32) * b[q6k::SC + 16 * (v / 16) + i] as i8 as i32
        }
    }
}

fn scalar<const N: usize>(g: &[u8], x: &KAct, t0: usize, qtype: QType) -> [[f32; ROWS]; N] {
    let (k, nsb) = (x.k, x.k / SB);
    let bytes = if qtype == QType::Q4K { q4k::BYTES } else { q6k::BYTES };
    assert!(g.len() == nsb * bytes && t0 + N <= x.t, "packed group and activations differ");
    let mut acc = [[0f32; ROWS]; N];
    for sb in 0..nsb {
        let b = &g[sb * bytes..][..bytes];
        for i in 0..ROWS {
            for (tt, a) in acc.iter_mut().enumerate() {
                let t = t0 + tt;
                let blocks = t * (k / SUB) + sb * (SB / SUB)..;
                let (dx, sx) = (&x.d[blocks.clone()], &x.s[blocks]);
                let mut inner = 0f32;
                for (j, xs) in x.q[t * k + sb * SB..][..SB].chunks_exact(SUB).enumerate() {
                    let isum: i32 = xs.iter().enumerate().map(|(l, &q)| weight(qtype, b, i, SUB * j + l) * q as i32).sum();
                    inner = (isum as f32).mul_add(dx[j], inner);
                }
                if qtype == QType::Q4K {
                    a[i] = inner.mul_add(f16_at(b, q4k::D + 2 * i), a[i]);
                    let dmin = f16_at(b, q4k::DMIN + 2 * i);
                    for j in 0..SB / SUB {
                        a[i] = (-(dmin * b[q4k::M + 16 * j + i] as f32)).mul_add(sx[j], a[i]);
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

/// Tasks per thread: more than one, so a core slowed by another process does not hold the others up.
const TASKS_PER_THREAD: usize = 4;

/// Activation bytes per token block (see [`matmul`]): half of a Zen 3 core's 512 KiB L2.
const BLOCK_ACT_BYTES: usize = 256 * 1024;

/// `x: [t, k]` -> `[t, n]`. Tasks take runs of row groups; tokens go in blocks whose activations fit
/// [`BLOCK_ACT_BYTES`] (all of a decode batch); per block, each of the task's groups meets the block's
/// tokens in tiles of up to `tiles.max`, so a group's weights leave memory once per block (once per
/// call up to 85-340 tokens, by `k`) while the block's activations stay in cache. (Walking tiles outside
/// groups instead read every weight from memory once per tile: twice per step at batch 8 on AVX2.)
pub fn matmul<A: KActivations>(w: &PackedK, act: &A, kern: KTiles<A>) -> Vec<f32> {
    let (n, t) = (w.n, act.tokens());
    assert_eq!(act.k(), w.k, "activations and weight differ in k");
    assert_eq!(w.layout, A::LAYOUT, "weight layout and activations differ");
    let groups = w.groups();
    let per_task = groups.div_ceil(pool::threads() * TASKS_PER_THREAD).max(1);
    let block = (BLOCK_ACT_BYTES / (w.k * A::VALUE_BYTES)).max(kern.max) / kern.max * kern.max;
    let mut out = vec![0f32; t * n];
    let shared = Out { ptr: out.as_mut_ptr(), t, n };
    // SAFETY: `w` is a live repacked weight, which leaves `ahead` as it is dropped.
    unsafe { super::ahead::starting(w.group(0).as_ptr() as usize, w.bytes()) };
    pool::run(groups.div_ceil(per_task), |c| {
        let range = c * per_task..((c + 1) * per_task).min(groups);
        for b0 in (0..t).step_by(block) {
            let b1 = (b0 + block).min(t);
            for g in range.clone() {
                let grp = w.group(g);
                let mut t0 = b0;
                while t0 < b1 {
                    let width = [8, 4, 2, 1].into_iter().find(|&wd| wd <= kern.max && t0 + wd <= b1).unwrap_or(1);
                    // SAFETY (every call): `kern` comes from `tiles`, which checks the CPU's features.
                    unsafe {
                        match width {
                            8 => shared.put_rows(g * ROWS, t0, (kern.t8)(grp, act, t0)),
                            4 => shared.put_rows(g * ROWS, t0, (kern.t4)(grp, act, t0)),
                            2 => shared.put_rows(g * ROWS, t0, (kern.t2)(grp, act, t0)),
                            _ => shared.put_rows(g * ROWS, t0, (kern.t1)(grp, act, t0)),
                        }
                    }
                    t0 += width;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::KAct;

    /// The dispatched quantizer (AVX2 here where the CPU has it, threads past 16 tokens) gives the
    /// scalar reference's bits: outliers, ties at half steps, zero blocks, tiny values.
    #[test]
    fn the_vector_quantizer_gives_the_scalar_bits() {
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        for t in [1, 3, 17, 40] {
            let k = 512;
            let mut x: Vec<f32> = (0..t * k).map(|i| rnd() * if i % 89 == 0 { 500.0 } else { 3.0 }).collect();
            x[32..64].fill(0.0);
            x[64..96].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 0.25);
            x[128..160].iter_mut().for_each(|v| *v *= 1e-30);
            let (got, want) = (KAct::quantize(&x, k), KAct::quantize_scalar(&x, k));
            assert_eq!(got.q, want.q, "q, {t} tokens");
            assert_eq!(got.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "d, {t} tokens");
            assert_eq!(got.s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "s, {t} tokens");
        }
    }
}
