//! A layer's K or V cache as the CPU attention reads it ([`KvRows`]): f32 rows, f16 rows widened exactly
//! (F16C where the AVX2 body runs, `half` elsewhere), or FP8 e4m3 rows widened through a 256-entry table
//! times their row scale; with the prefetches that hide the scattered rows' latency.

use candle_core::{bail, CpuStorage, Layout, Result};
use super::simd::Lanes;
use half::f16;

/// e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, S.1111.111 is NaN) by
/// bit pattern.
pub(super) fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|b| {
            let (sign, exp, mant) = (if b & 0x80 != 0 { -1.0f32 } else { 1.0 }, (b >> 3) & 0xF, (b & 7) as f32);
            match (exp, b & 0x7F) {
                (_, 0x7F) => f32::NAN,
                (0, _) => sign * mant * 2f32.powi(-9),
                _ => sign * (1.0 + mant / 8.0) * 2f32.powi(exp as i32 - 7),
            }
        })
    })
}

/// A layer's K or V cache as the attention reads it.
pub(super) enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// e4m3 bit patterns, and one scale per row of `head_dim` values.
    E4m3(&'a [u8], &'a [f32]),
}

impl<'a> KvRows<'a> {
    /// `scales` (`[num_blocks, block_size, num_kv_heads]`) must come with an e4m3 cache and only with it.
    pub(super) fn of(s: &'a CpuStorage, l: &Layout, scales: Option<&'a [f32]>, what: &str) -> Result<Self> {
        let Some((start, end)) = l.contiguous_offsets() else { bail!("{what} must be contiguous") };
        let dims = l.shape().dims();
        match (s, scales) {
            (CpuStorage::F32(v), None) => Ok(KvRows::F32(&v[start..end])),
            (CpuStorage::F16(v), None) => Ok(KvRows::F16(&v[start..end])),
            (CpuStorage::F8E4M3(v), Some(sc)) if sc.len() * dims[dims.len() - 1] == end - start => {
                Ok(KvRows::E4m3(bytemuck_e4m3(&v[start..end]), sc))
            }
            _ => bail!("{what} must be f32, f16, or f8e4m3 with one scale per row, on cpu"),
        }
    }

    /// Asks for the `n` values from `base` to be brought into the cache ahead of their use: a head's key
    /// rows lie one KV row apart, in blocks wherever the block table put them, which the hardware
    /// prefetchers follow poorly (SmolLM2 decode at 256-650 positions: 125 -> 135-144 tok/s on 2 cores).
    #[inline(always)]
    pub(super) fn prefetch(&self, base: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (p, bytes) = match self {
                KvRows::F32(v) => (v[base..base + n].as_ptr() as *const i8, n * 4),
                KvRows::F16(v) => (v[base..base + n].as_ptr() as *const i8, n * 2),
                KvRows::E4m3(v, _) => (v[base..base + n].as_ptr() as *const i8, n),
            };
            for off in (0..bytes).step_by(64) {
                // SAFETY: the address lies within the row checked above; a prefetch never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (base, n);
    }

    /// [`KvRows::prefetch`] of the rows at `bases[i..i + 8]` that exist.
    #[inline(always)]
    pub(super) fn prefetch8(&self, bases: &[usize], i: usize, n: usize) {
        for r in i..(i + 8).min(bases.len()) {
            self.prefetch(bases[r], n);
        }
    }

    /// `n` values from each of `bases[i..i + 8]`, widened into `bufs` (`[8, n]`) where the cache is f16 or
    /// FP8 (once per row, however many query heads of the group then read it). Index loops, no iterator
    /// adapters or closures: those may stay out of line, without the AVX2 body's target features.
    ///
    /// # Safety
    /// The CPU has `L`'s instruction set.
    #[inline(always)]
    pub(super) unsafe fn rows8<'b, L: Lanes>(&'b self, bases: &[usize], i: usize, n: usize, bufs: &'b mut [f32]) -> [&'b [f32]; 8] {
        let bases = &bases[i..i + 8];
        let mut out: [&[f32]; 8] = [&[]; 8];
        match self {
            KvRows::F32(v) => {
                for r in 0..8 {
                    out[r] = &v[bases[r]..bases[r] + n];
                }
                return out;
            }
            KvRows::F16(v) => {
                for r in 0..8 {
                    // SAFETY: as the caller guarantees.
                    unsafe { L::widen_f16(&mut bufs[r * n..(r + 1) * n], &v[bases[r]..bases[r] + n]) };
                }
            }
            KvRows::E4m3(..) => {
                for r in 0..8 {
                    // SAFETY: as the caller guarantees.
                    unsafe { self.row::<L>(bases[r], n, &mut bufs[r * n..(r + 1) * n]) };
                }
            }
        }
        let bufs = &*bufs;
        for r in 0..8 {
            out[r] = &bufs[r * n..(r + 1) * n];
        }
        out
    }

    /// `n` values from `base`, widened into `buf` where the cache is f16 or FP8.
    ///
    /// # Safety
    /// The CPU has `L`'s instruction set.
    #[inline(always)]
    pub(super) unsafe fn row<'b, L: Lanes>(&'b self, base: usize, n: usize, buf: &'b mut [f32]) -> &'b [f32] {
        match self {
            KvRows::F32(v) => &v[base..base + n],
            KvRows::F16(v) => {
                // SAFETY: as the caller guarantees.
                unsafe { L::widen_f16(&mut buf[..n], &v[base..base + n]) };
                &buf[..n]
            }
            KvRows::E4m3(v, scales) => {
                let (table, scale) = (e4m3_table(), scales[base / n]);
                for (o, &b) in buf[..n].iter_mut().zip(&v[base..base + n]) {
                    *o = table[b as usize] * scale;
                }
                &buf[..n]
            }
        }
    }
}

/// The bit patterns of e4m3 values (one byte each).
pub(super) fn bytemuck_e4m3<T>(v: &[T]) -> &[u8] {
    assert_eq!(std::mem::size_of::<T>(), 1, "e4m3 values are one byte");
    // SAFETY: a one-byte plain value (float8's F8E4M3 is a u8 newtype); same length, same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}
