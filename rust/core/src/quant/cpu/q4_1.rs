//! GGML Q4_1 weights: blocks of 32 as `f16 d, f16 m, 16 bytes of nibbles`, `w = q * d + m`, `q` in 0..=15.
//! Against an activation block (`x = dx * qx`): `dot = d dx sum(q qx) + m * (dx sum(qx))`, the second
//! term being the activation's precomputed `s`.

use super::act::{ActBlock, QK};
use super::{Dot, Kernels};
use crate::quant::cpu::dispatch::Isa;
use half::f16;

pub const BLOCK_BYTES: usize = 20;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `w: [k / 32 blocks] -> out: [k]`, the f32 reference.
pub fn dequantize_row(w: &[u8], out: &mut [f32]) {
    for (blk, y) in w.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        for j in 0..QK / 2 {
            y[j] = (blk[4 + j] & 0xF) as f32 * d + m;
            y[j + QK / 2] = (blk[4 + j] >> 4) as f32 * d + m;
        }
    }
}

pub fn dot_scalar<const N: usize>(w: &[u8], x: [&[ActBlock]; N]) -> [f32; N] {
    let mut out = [0f32; N];
    for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        for (o, xt) in out.iter_mut().zip(&x) {
            let a = &xt[b];
            let mut sum = 0i32;
            for j in 0..QK / 2 {
                sum += (blk[4 + j] & 0xF) as i32 * a.q[j] as i32 + (blk[4 + j] >> 4) as i32 * a.q[j + QK / 2] as i32;
            }
            *o += d * a.d * sum as f32 + m * a.s;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::quant::cpu::x86::*;
    use std::arch::x86_64::*;

    macro_rules! kernel {
        ($name:ident, $feat:literal, $dot:ident) => {
            /// # Safety
            /// The CPU has the instruction set named in `$feat` (the dispatcher checks it).
            #[target_feature(enable = $feat)]
            pub unsafe fn $name<const N: usize>(w: &[u8], x: [&[ActBlock]; N]) -> [f32; N] {
                let nb = w.len() / BLOCK_BYTES;
                assert!(w.len() % BLOCK_BYTES == 0 && x.iter().all(|xt| xt.len() == nb), "q4_1 row and activations differ in length");
                let mut acc = [_mm256_setzero_ps(); N];
                let mut mins = [0f32; N];
                for b in 0..nb {
                    // SAFETY: block b lies within w (length checked above); loads are unaligned.
                    let blk = w.as_ptr().add(b * BLOCK_BYTES);
                    let (d, m) = (f16_at!(blk), f16_at!(blk.add(2)));
                    let q = unpack_nibbles!(blk.add(4));
                    for t in 0..N {
                        let a = x[t].get_unchecked(b);
                        let p = $dot!(q, _mm256_loadu_si256(a.q.as_ptr() as *const __m256i));
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(p), acc[t]);
                        mins[t] += m * a.s;
                    }
                }
                let mut out = [0f32; N];
                for t in 0..N {
                    out[t] = hsum_ps!(acc[t]) + mins[t];
                }
                out
            }
        };
    }
    kernel!(avx2, "avx2,fma,f16c", dot_u8i8_avx2);
    kernel!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot_u8i8_vnni);
}

pub fn kernels(isa: Isa) -> Kernels {
    match isa {
        Isa::Scalar => Kernels::new(dot_scalar::<1> as Dot<1>, dot_scalar::<4> as Dot<4>),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels::new(x86::avx2::<1>, x86::avx2::<4>),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Kernels::new(x86::avx512::<1>, x86::avx512::<4>),
        #[cfg(not(target_arch = "x86_64"))]
        _ => kernels(Isa::Scalar),
    }
}
