//! The CPU attention's two vector primitives, `a · b` and `o += w · v`, for the instruction set chosen at
//! run time as the quantized kernels choose theirs (`quant::cpu::dispatch`, `MLC_CPU_ISA`). The x86-64
//! wheel is built for the baseline CPU, where these loops compile to scalar SSE; the attention's task body
//! is generic over [`Lanes`] and compiled once more inside an AVX2 function (cpu.rs), so the primitives
//! inline there. The AVX2 versions give the same bits (the same 8 partial sums in the same order, no
//! fused multiply-add), so every level is the reference's arithmetic.

use crate::quant::cpu::act::ROUND_MAGIC;
use crate::quant::cpu::dispatch::{self, Isa};
use half::f16;

/// Whether the attention runs its AVX2 body ([`Avx2`]; the level also guarantees F16C).
pub fn avx2_active() -> bool {
    cfg!(target_arch = "x86_64") && dispatch::active() >= Isa::Avx2
}

/// The primitives of one instruction set.
pub trait Lanes {
    /// `a · b` over 8 partial sums (lane `i` takes the elements `i mod 8`), then lane 0 to 7 in order,
    /// then the remainder past a multiple of 8.
    ///
    /// # Safety
    /// The CPU has the implementation's instruction set.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `o[i] += w * v[i]`.
    ///
    /// # Safety
    /// As [`Lanes::dot`].
    unsafe fn axpy(o: &mut [f32], w: f32, v: &[f32]);
    /// `dst[i] = src[i]` widened to f32 (exact at every level: every f16 is an f32).
    ///
    /// # Safety
    /// As [`Lanes::dot`].
    unsafe fn widen_f16(dst: &mut [f32], src: &[f16]);

    /// `x[i] = exp_poly(x[i] - max)` ([`exp_poly`]) for every `i`; returns their sum over 8 partial sums
    /// (lane `i` takes the elements `i mod 8`), lane 0 to 7 in order, then the remainder past a multiple
    /// of 8: a softmax's numerators and denominator.
    ///
    /// # Safety
    /// As [`Lanes::dot`].
    unsafe fn exp_sum(x: &mut [f32], max: f32) -> f32;

    /// `[a · b_0, ..., a · b_7]`, each with [`Lanes::dot`]'s bits: eight keys against one query at once,
    /// so their dependency chains overlap and the query is loaded once.
    ///
    /// # Safety
    /// As [`Lanes::dot`].
    #[inline(always)]
    unsafe fn dot8(a: &[f32], b: [&[f32]; 8]) -> [f32; 8] {
        // SAFETY: as the caller guarantees.
        b.map(|bj| unsafe { Self::dot(a, bj) })
    }

    /// Whether [`Lanes::dot8_f16`] and [`Lanes::axpy8_f16`] read f16 rows in place (where they do not,
    /// the caller widens the rows once into a buffer and takes the f32 primitives).
    const F16_IN_PLACE: bool = false;

    /// [`Lanes::dot8`] of f16 rows, each value widened exactly: the same bits.
    ///
    /// # Safety
    /// As [`Lanes::dot`].
    #[inline(always)]
    unsafe fn dot8_f16(a: &[f32], b: [&[f16]; 8]) -> [f32; 8] {
        let wide: Vec<Vec<f32>> = b.iter().map(|r| r.iter().map(|h| h.to_f32()).collect()).collect();
        // SAFETY: as the caller guarantees.
        unsafe { Self::dot8(a, std::array::from_fn(|j| wide[j].as_slice())) }
    }

    /// [`Lanes::axpy8`] of f16 rows, each value widened exactly: the same bits.
    ///
    /// # Safety
    /// As [`Lanes::dot`].
    #[inline(always)]
    unsafe fn axpy8_f16(o: &mut [f32], w: [f32; 8], v: [&[f16]; 8]) {
        let wide: Vec<Vec<f32>> = v.iter().map(|r| r.iter().map(|h| h.to_f32()).collect()).collect();
        // SAFETY: as the caller guarantees.
        unsafe { Self::axpy8(o, w, std::array::from_fn(|j| wide[j].as_slice())) }
    }

    /// `o += w_0 v_0`, then `o += w_1 v_1`, ... `w_7 v_7`: [`Lanes::axpy`] eight times in order, the same bits,
    /// with `o` loaded and stored once.
    ///
    /// # Safety
    /// As [`Lanes::dot`].
    #[inline(always)]
    unsafe fn axpy8(o: &mut [f32], w: [f32; 8], v: [&[f32]; 8]) {
        for (wj, vj) in w.into_iter().zip(v) {
            // SAFETY: as the caller guarantees.
            unsafe { Self::axpy(o, wj, vj) };
        }
    }
}

/// Portable Rust: the reference.
pub struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (xa, xb) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += xa[i] * xb[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    unsafe fn axpy(o: &mut [f32], w: f32, v: &[f32]) {
        for (od, vd) in o.iter_mut().zip(v) {
            *od += w * vd;
        }
    }

    #[inline(always)]
    unsafe fn exp_sum(x: &mut [f32], max: f32) -> f32 {
        let mut acc = [0f32; 8];
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            for i in 0..8 {
                c[i] = exp_poly(c[i] - max);
                acc[i] += c[i];
            }
        }
        let mut tail = 0f32;
        for v in chunks.into_remainder() {
            *v = exp_poly(*v - max);
            tail += *v;
        }
        acc.iter().sum::<f32>() + tail
    }

    /// One value at a time through `half` (its software conversion, or the hardware's where `half` finds
    /// one at run time).
    #[inline(always)]
    unsafe fn widen_f16(dst: &mut [f32], src: &[f16]) {
        for (o, h) in dst.iter_mut().zip(src) {
            *o = h.to_f32();
        }
    }
}

/// The body of [`Avx2::dot8`] over rows `$b` (8 slices of `$n`, a multiple of 8) whose 8 values at a
/// pointer `$load` returns as f32 lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! dot8_avx2 {
    ($a:expr, $b:expr, $n:expr, $load:ident) => {{
        // The empty sums `dot` adds (its start value and its empty remainder), so the bits match.
        let zero: f32 = [0f32; 0].iter().sum();
        {
            // Eight named accumulators and row pointers: as an array indexed in a loop, LLVM kept the
            // accumulators in memory (a store-to-load chain per key).
            // (No closures here: they would not inherit the caller's target features.)
            let p = [$b[0].as_ptr(), $b[1].as_ptr(), $b[2].as_ptr(), $b[3].as_ptr(), $b[4].as_ptr(), $b[5].as_ptr(), $b[6].as_ptr(), $b[7].as_ptr()];
            let z = _mm256_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) = (z, z, z, z, z, z, z, z);
            let mut i = 0;
            while i < $n {
                let x = _mm256_loadu_ps($a.as_ptr().add(i));
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(x, $load(p[0].add(i))));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(x, $load(p[1].add(i))));
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(x, $load(p[2].add(i))));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(x, $load(p[3].add(i))));
                a4 = _mm256_add_ps(a4, _mm256_mul_ps(x, $load(p[4].add(i))));
                a5 = _mm256_add_ps(a5, _mm256_mul_ps(x, $load(p[5].add(i))));
                a6 = _mm256_add_ps(a6, _mm256_mul_ps(x, $load(p[6].add(i))));
                a7 = _mm256_add_ps(a7, _mm256_mul_ps(x, $load(p[7].add(i))));
                i += 8;
            }
            let acc = [a0, a1, a2, a3, a4, a5, a6, a7];
            // Transpose: t[l] holds lane l of every key's accumulator, so adding t[0], t[1], ... in order
            // sums each key's lanes in `dot`'s order.
            let t = transpose8(acc);
            let mut r = _mm256_add_ps(_mm256_set1_ps(zero), t[0]);
            for tl in &t[1..] {
                r = _mm256_add_ps(r, *tl);
            }
            r = _mm256_add_ps(r, _mm256_set1_ps(zero));
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), r);
            out
        }
    }};
}

/// The body of [`Avx2::axpy8`] over rows `$v` (8 slices of `$n`, a multiple of 8) read through `$load`.
#[cfg(target_arch = "x86_64")]
macro_rules! axpy8_avx2 {
    ($o:expr, $w:expr, $v:expr, $n:expr, $load:ident) => {{
        // (No closures here: they would not inherit the caller's target features.)
        let p = [$v[0].as_ptr(), $v[1].as_ptr(), $v[2].as_ptr(), $v[3].as_ptr(), $v[4].as_ptr(), $v[5].as_ptr(), $v[6].as_ptr(), $v[7].as_ptr()];
        let mut ws = [_mm256_setzero_ps(); 8];
        for j in 0..8 {
            ws[j] = _mm256_set1_ps($w[j]);
        }
        let mut i = 0;
        while i < $n {
            let po = $o.as_mut_ptr().add(i);
            // key after key, as `axpy` adds them: the same roundings in the same order
            let mut acc = _mm256_loadu_ps(po);
            for j in 0..8 {
                acc = _mm256_add_ps(acc, _mm256_mul_ps(ws[j], $load(p[j].add(i))));
            }
            _mm256_storeu_ps(po, acc);
            i += 8;
        }
    }};
}

/// 8 f16 at `p` as f32 lanes (F16C).
///
/// # Safety
/// The CPU has F16C; `p` points at 8 readable values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load8_f16(p: *const f16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: as the caller guarantees.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
}

/// x86-64 AVX2 and F16C (only where [`avx2_active`]).
#[cfg(target_arch = "x86_64")]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let full = n / 8 * 8;
        // SAFETY (all intrinsics): the caller guarantees AVX2; loads stay below `full` <= both lengths.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < full {
                let (x, y) = (_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y)); // no FMA: the portable version's rounding
                i += 8;
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
            lanes.iter().sum::<f32>() + tail
        }
    }

    #[inline(always)]
    unsafe fn dot8(a: &[f32], b: [&[f32]; 8]) -> [f32; 8] {
        use std::arch::x86_64::*;
        let n = a.len();
        if n % 8 != 0 || b.iter().any(|bj| bj.len() != n) {
            // SAFETY: as the caller guarantees.
            return b.map(|bj| unsafe { Self::dot(a, bj) });
        }
        // SAFETY: the caller guarantees AVX2; every load is within n of its slice.
        unsafe { dot8_avx2!(a, b, n, _mm256_loadu_ps) }
    }

    const F16_IN_PLACE: bool = true;

    /// [`Avx2::dot8`] with each row's 8 values widened by `vcvtph2ps` from memory as they are used (no
    /// widened copy written and read back: per key and query head that was a third of the instructions).
    #[inline(always)]
    unsafe fn dot8_f16(a: &[f32], b: [&[f16]; 8]) -> [f32; 8] {
        use std::arch::x86_64::*;
        let n = a.len();
        if n % 8 != 0 || b.iter().any(|bj| bj.len() != n) {
            let wide: Vec<Vec<f32>> = b.iter().map(|r| r.iter().map(|h| h.to_f32()).collect()).collect();
            // SAFETY: as the caller guarantees.
            return unsafe { Self::dot8(a, std::array::from_fn(|j| wide[j].as_slice())) };
        }
        // SAFETY: the caller guarantees AVX2 (and so F16C, dispatch); every load is within n of its slice.
        unsafe { dot8_avx2!(a, b, n, load8_f16) }
    }

    #[inline(always)]
    unsafe fn axpy(o: &mut [f32], w: f32, v: &[f32]) {
        use std::arch::x86_64::*;
        let n = o.len().min(v.len());
        let full = n / 8 * 8;
        // SAFETY: as in `dot`; element-wise, so the same bits as the portable loop at any width.
        unsafe {
            let wv = _mm256_set1_ps(w);
            let mut i = 0;
            while i < full {
                let p = o.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(wv, _mm256_loadu_ps(v.as_ptr().add(i)))));
                i += 8;
            }
        }
        for (od, vd) in o[full..n].iter_mut().zip(&v[full..n]) {
            *od += w * vd;
        }
    }

    #[inline(always)]
    unsafe fn exp_sum(x: &mut [f32], max: f32) -> f32 {
        use std::arch::x86_64::*;
        let n = x.len();
        let full = n / 8 * 8;
        // SAFETY (all intrinsics): AVX2 as the caller guarantees; loads and stores stay below `full`.
        unsafe {
            let (m, mut acc) = (_mm256_set1_ps(max), _mm256_setzero_ps());
            let mut i = 0;
            while i < full {
                let p = x.as_mut_ptr().add(i);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
                i += 8;
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let mut tail = 0f32;
            for v in &mut x[full..] {
                *v = exp_poly(*v - max);
                tail += *v;
            }
            lanes.iter().sum::<f32>() + tail
        }
    }

    /// Eight values per F16C `vcvtph2ps`, then the rest one by one.
    #[inline(always)]
    unsafe fn widen_f16(dst: &mut [f32], src: &[f16]) {
        use std::arch::x86_64::*;
        let n = dst.len().min(src.len());
        let full = n / 8 * 8;
        // SAFETY: the caller guarantees AVX2 (and so F16C, dispatch); 16-byte loads and 32-byte stores
        // stay below `full` <= both lengths.
        unsafe {
            let mut i = 0;
            while i < full {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                i += 8;
            }
        }
        for (o, h) in dst[full..n].iter_mut().zip(&src[full..n]) {
            *o = h.to_f32();
        }
    }

    #[inline(always)]
    unsafe fn axpy8(o: &mut [f32], w: [f32; 8], v: [&[f32]; 8]) {
        use std::arch::x86_64::*;
        let n = o.len();
        if n % 8 != 0 || v.iter().any(|vj| vj.len() != n) {
            for (wj, vj) in w.into_iter().zip(v) {
                // SAFETY: as the caller guarantees.
                unsafe { Self::axpy(o, wj, vj) };
            }
            return;
        }
        // SAFETY: AVX2 as the caller guarantees; every access is within n of its slice.
        unsafe { axpy8_avx2!(o, w, v, n, _mm256_loadu_ps) }
    }

    /// [`Avx2::axpy8`] with the rows' values widened from memory as they are used (see `dot8_f16`).
    #[inline(always)]
    unsafe fn axpy8_f16(o: &mut [f32], w: [f32; 8], v: [&[f16]; 8]) {
        use std::arch::x86_64::*;
        let n = o.len();
        if n % 8 != 0 || v.iter().any(|vj| vj.len() != n) {
            let wide: Vec<Vec<f32>> = v.iter().map(|r| r.iter().map(|h| h.to_f32()).collect()).collect();
            // SAFETY: as the caller guarantees.
            return unsafe { Self::axpy8(o, w, std::array::from_fn(|j| wide[j].as_slice())) };
        }
        // SAFETY: AVX2 (and so F16C) as the caller guarantees; every access is within n of its slice.
        unsafe { axpy8_avx2!(o, w, v, n, load8_f16) }
    }
}

/// Below this `exp` is taken as 0 (`e^-87.3` is about `f32::MIN_POSITIVE`, and a softmax's largest
/// numerator is 1).
const EXP_LO: f32 = -87.3;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts (Cephes): `n * LN2_HI` is exact for the integers `n` that occur (`|n| <= 126`).
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `e^r - 1 - r` over `r^2` on `|r| <= ln 2 / 2` (Cephes' `expf` coefficients), highest power first.
const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

/// `e^x` to about 1 ulp in plain f32 multiplications and additions (no fused multiply-add), so that
/// [`exp8`] gives its bits lane by lane: `x = n ln 2 + r`, `e^x = 2^n (1 + r + r^2 P(r))`. 0 below
/// [`EXP_LO`], NaN for NaN; for `x <= 88` (a softmax takes `x <= 0`). Why not libm's `expf`: it is one
/// call per softmax score, which no loop vectorizes, and the levels must agree bit for bit.
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let xc = if x < EXP_LO { EXP_LO } else { x };
    let n = (xc * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut y = EXP_P[0];
    for &c in &EXP_P[1..] {
        y = y * r + c;
    }
    let y = (y * (r * r) + r) + 1.0;
    let e = y * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < EXP_LO {
        0.0
    } else {
        e
    }
}

/// [`exp_poly`] of 8 lanes, the same operations in the same order.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: register arithmetic only; AVX2 as the caller guarantees.
    unsafe {
        let lo = _mm256_set1_ps(EXP_LO);
        let magic = _mm256_set1_ps(ROUND_MAGIC);
        // x below the bound (ordered: false for NaN) -> the bound, as the scalar `if`.
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let xc = _mm256_blendv_ps(x, lo, below);
        let n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)), magic), magic);
        let r = _mm256_sub_ps(_mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))), _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)));
        let mut y = _mm256_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0));
        // n is integral (or NaN, whose lanes are replaced below): the conversion is exact.
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        let e = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
        let e = _mm256_andnot_ps(below, e);
        _mm256_blendv_ps(e, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }
}

/// An 8x8 transpose of f32 lanes: out[l] lane j = rows[j] lane l.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8(rows: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // SAFETY: register shuffles only; AVX2 as the caller guarantees.
    unsafe {
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
        let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
        let (s0, s1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
        let (s2, s3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
        let (s4, s5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
        let (s6, s7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 primitives give the portable bits, for lengths around the 8-lane blocks.
    #[test]
    fn avx2_gives_the_portable_bits() {
        if !avx2_active() {
            eprintln!("no AVX2 here: nothing to compare");
            return;
        }
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 8.0
        };
        for n in [1, 7, 8, 9, 31, 64, 65, 128, 130] {
            let (a, b): (Vec<f32>, Vec<f32>) = (0..n).map(|_| (rnd(), rnd())).unzip();
            let w = rnd();
            // SAFETY: AVX2 checked above.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                {
                    assert_eq!(Avx2::dot(&a, &b).to_bits(), Portable::dot(&a, &b).to_bits(), "dot, n {n}");
                    let (mut o, mut want) = (b.clone(), b.clone());
                    Avx2::axpy(&mut o, w, &a);
                    Portable::axpy(&mut want, w, &a);
                    assert_eq!(o, want, "axpy, n {n}");
                    let keys: Vec<Vec<f32>> = (0..8).map(|j| a.iter().map(|x| x * (j as f32 - 3.5) + w).collect()).collect();
                    let refs: [&[f32]; 8] = std::array::from_fn(|j| keys[j].as_slice());
                    let ws: [f32; 8] = std::array::from_fn(|j| w * (j as f32 - 2.5));
                    let (mut o8, mut want8) = (b.clone(), b.clone());
                    Avx2::axpy8(&mut o8, ws, refs);
                    for j in 0..8 {
                        Portable::axpy(&mut want8, ws[j], refs[j]);
                    }
                    assert_eq!(o8, want8, "axpy8, n {n}");
                    let got = Avx2::dot8(&b, refs);
                    for j in 0..8 {
                        assert_eq!(got[j].to_bits(), Portable::dot(&b, refs[j]).to_bits(), "dot8 key {j}, n {n}");
                    }
                    // f16 rows read in place: the bits of the f32 primitives on the widened rows.
                    let halves: Vec<Vec<f16>> = keys.iter().map(|k| k.iter().map(|&x| f16::from_f32(x)).collect()).collect();
                    let wide: Vec<Vec<f32>> = halves.iter().map(|k| k.iter().map(|h| h.to_f32()).collect()).collect();
                    let h16: [&[f16]; 8] = std::array::from_fn(|j| halves[j].as_slice());
                    let got = Avx2::dot8_f16(&b, h16);
                    for j in 0..8 {
                        assert_eq!(got[j].to_bits(), Portable::dot(&b, &wide[j]).to_bits(), "dot8_f16 key {j}, n {n}");
                    }
                    let (mut o16, mut want16) = (b.clone(), b.clone());
                    Avx2::axpy8_f16(&mut o16, ws, h16);
                    for j in 0..8 {
                        Portable::axpy(&mut want16, ws[j], &wide[j]);
                    }
                    assert_eq!(o16, want16, "axpy8_f16, n {n}");
                }
            }
        }
    }

    /// The polynomial `exp` is within 2 ulp of f64's over the softmax's range, 0 below its bound, NaN for
    /// NaN; `exp_sum` gives the same bits at every level (lengths around the 8-lane blocks) and its sum
    /// is the partial sums' order.
    #[test]
    fn the_polynomial_exp_is_close_and_the_same_at_every_level() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -90.0 * i as f32 / 2_000_000.0;
            let (got, want) = (exp_poly(x) as f64, (x as f64).exp());
            if x >= EXP_LO {
                let ulp = (want as f32).next_up() as f64 - want as f32 as f64;
                worst = worst.max((got - want).abs() / ulp);
            } else {
                assert_eq!(got, 0.0, "x {x}");
            }
        }
        assert!(worst <= 2.0, "largest error {worst} ulp");
        assert_eq!(exp_poly(0.0), 1.0);
        assert!(exp_poly(f32::NAN).is_nan());
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        let mut seed = 3u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            -((seed >> 33) as f32 / (1u64 << 31) as f32) * 100.0
        };
        for n in [1, 7, 8, 9, 64, 65, 300] {
            let x: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let max = 0.5;
            let mut want = x.clone();
            // SAFETY: portable code.
            let want_sum = unsafe { Portable::exp_sum(&mut want, max) };
            assert!(want.iter().zip(&x).all(|(w, v)| w.to_bits() == exp_poly(v - max).to_bits()));
            #[cfg(target_arch = "x86_64")]
            if avx2_active() {
                let mut got = x.clone();
                // SAFETY: AVX2 checked above.
                let got_sum = unsafe { Avx2::exp_sum(&mut got, max) };
                assert_eq!(got_sum.to_bits(), want_sum.to_bits(), "sum, n {n}");
                assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "n {n}");
                let mut specials = vec![f32::NAN, f32::NEG_INFINITY, -87.3, -87.4, 0.0, -1e-30, 1.0, -0.0];
                let want: Vec<u32> = specials.iter().map(|&v| exp_poly(v - 0.0).to_bits()).collect();
                // SAFETY: as above.
                unsafe { Avx2::exp_sum(&mut specials, 0.0) };
                assert_eq!(specials.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want, "special values");
            }
        }
    }

    /// Every f16 bit pattern widens to the value of half's software conversion (NaNs to NaNs of the same
    /// payload), at every level; lengths around the 8-value steps.
    #[test]
    fn f16_widening_is_exact_at_every_level() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let want: Vec<u32> = all.iter().map(|h| h.to_f32_const().to_bits()).collect();
        let mut got = vec![0f32; all.len()];
        // SAFETY: portable code.
        unsafe { Portable::widen_f16(&mut got, &all) };
        assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == *w), "portable");
        #[cfg(target_arch = "x86_64")]
        if avx2_active() {
            for n in [1, 7, 8, 9, 64, 65] {
                let mut got = vec![0f32; n];
                // SAFETY: AVX2 (and F16C) checked above.
                unsafe { Avx2::widen_f16(&mut got, &all[1000..1000 + n]) };
                assert!(got.iter().zip(&want[1000..1000 + n]).all(|(g, w)| g.to_bits() == *w), "avx2, n {n}");
            }
            let mut got = vec![0f32; all.len()];
            // SAFETY: as above.
            unsafe { Avx2::widen_f16(&mut got, &all) };
            assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == *w), "avx2, every pattern");
        }
    }
}
