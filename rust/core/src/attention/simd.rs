//! The CPU attention's two vector primitives, `a · b` and `o += w · v`, for the instruction set chosen at
//! run time as the quantized kernels choose theirs (`quant::cpu::dispatch`, `MLC_CPU_ISA`). The x86-64
//! wheel is built for the baseline CPU, where these loops compile to scalar SSE; the attention's task body
//! is generic over [`Lanes`] and compiled once more inside an AVX2 function (cpu.rs), so the primitives
//! inline there. The AVX2 versions give the same bits (the same 8 partial sums in the same order, no
//! fused multiply-add), so every level is the reference's arithmetic.

use crate::quant::cpu::dispatch::{self, Isa};

/// Whether the attention runs its AVX2 body ([`Avx2`]).
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
}

/// x86-64 AVX2 (only where [`avx2_active`]).
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
                }
            }
        }
    }
}
