//! The CPU attention's two vector primitives, `a · b` and `o += w · v`, with the instruction set chosen at
//! run time as the quantized kernels choose theirs (`quant::cpu::dispatch`, `MLC_CPU_ISA`). The x86-64
//! wheel is built for the baseline CPU, where these loops compile to scalar SSE; the AVX2 versions give
//! the same bits (the same 8 partial sums in the same order, no fused multiply-add), so every level is
//! the reference's arithmetic.

use crate::quant::cpu::dispatch::{self, Isa};

/// The primitives for one attention call (chosen once per call, not per key).
#[derive(Clone, Copy)]
pub struct VecOps {
    /// `a · b` over 8 partial sums (lane `i` takes the elements `i mod 8`), then lane 0 to 7 in order,
    /// then the remainder past a multiple of 8.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `o[i] += w * v[i]`.
    pub axpy: fn(&mut [f32], f32, &[f32]),
}

impl VecOps {
    pub fn active() -> Self {
        Self::for_isa(dispatch::active())
    }

    pub fn for_isa(isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            return VecOps { dot: x86::dot, axpy: x86::axpy };
        }
        let _ = isa;
        VecOps { dot: dot_portable, axpy: axpy_portable }
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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
fn axpy_portable(o: &mut [f32], w: f32, v: &[f32]) {
    for (od, vd) in o.iter_mut().zip(v) {
        *od += w * vd;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: chosen only where dispatch found AVX2.
        unsafe { dot_avx2(a, b) }
    }

    pub fn axpy(o: &mut [f32], w: f32, v: &[f32]) {
        // SAFETY: as above.
        unsafe { axpy_avx2(o, w, v) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let full = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            // SAFETY: i + 8 <= full <= both lengths.
            let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y)); // no FMA: the portable version's rounding
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
        lanes.iter().sum::<f32>() + tail
    }

    #[target_feature(enable = "avx2")]
    unsafe fn axpy_avx2(o: &mut [f32], w: f32, v: &[f32]) {
        super::axpy_portable(o, w, v) // element-wise: the same bits at any vector width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level gives the portable version's bits, for lengths around the 8-lane blocks.
    #[test]
    fn every_level_gives_the_portable_bits() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 8.0
        };
        for n in [1, 7, 8, 9, 31, 64, 65, 128, 130] {
            let (a, b): (Vec<f32>, Vec<f32>) = (0..n).map(|_| (rnd(), rnd())).unzip();
            let w = rnd();
            for isa in Isa::available() {
                let ops = VecOps::for_isa(isa);
                assert_eq!((ops.dot)(&a, &b).to_bits(), dot_portable(&a, &b).to_bits(), "{isa:?} dot, n {n}");
                let (mut o, mut want) = (b.clone(), b.clone());
                (ops.axpy)(&mut o, w, &a);
                axpy_portable(&mut want, w, &a);
                assert_eq!(o, want, "{isa:?} axpy, n {n}");
            }
        }
    }
}
