//! The AVX2 tile for weight types whose values fit 8 bits (Q4_0, Q4_1, Q8_0), with 16-bit operands.
//!
//! Without VNNI, the byte form of [`x86_tile`](super::tile) pays for each of the activation's two stages
//! (`q` and the residual `r`, see [`act`](super::act)) a `maddubs` and a `madd`, plus a shift to combine
//! them: 6 instructions per 32 weights, and Q8_0's signed weights two `sign`s more per stage. Here the
//! weights are widened to i16 as they are unpacked (`vpmovzxbw` / `vpmovsxbw` from memory: a 4-bit
//! block's nibbles come out in 3 instructions, not 5) and meet the activation's two stages as one i16 value
//! `128 q + r` (`|.| <= 128 * 127 + 64 = 16320`, [`ActBlock::x`], made when the activations are quantized):
//! one `vpmaddwd` per 16 weights. The integer sums are the same (exact), only their split over
//! the 8 lanes differs from the byte form's, so the f32 results can differ from it in the last bits; every
//! tile shape of this kernel does the same operations per (row, token), so a token's result still does not
//! depend on its batch.
//!
//! Exactness: `|w| <= 128` and `|x| <= 16320` give `|vpmaddwd| <= 2 * 128 * 16320` per lane and at most
//! `4 * 128 * 16320 < 2^24` after the two halves are added, so the lane sums are exact in i32 and as f32.

/// `$name<R, N>` from a type's `$load16!(row_ptr, b) -> (lo, hi, d, o)`: block `b`'s weights 0..16 and
/// 16..32 as i16 (`__m256i` each), its scale and its offset (as for [`x86_tile`](super::tile)).
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_i16_tile {
    ($name:ident, $row_bytes:expr, $load16:ident, $offset:expr) => {
        /// # Safety
        /// The CPU has AVX2, FMA and F16C (the dispatcher checks it).
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[ActBlock]; N]) -> [[f32; N]; R] {
            let nb = tile_blocks!(w, x, $row_bytes);
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            // As in x86_tile: the next tile's rows are prefetched while this one runs.
            let row_len = $row_bytes(nb);
            let step = row_len / nb;
            for b in 0..nb {
                let mut lo = [_mm256_setzero_si256(); R];
                let mut hi = [_mm256_setzero_si256(); R];
                let mut dv = [_mm256_setzero_ps(); R];
                let mut ov = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    // SAFETY: activation block b's weights lie within w[r] (lengths checked above).
                    _mm_prefetch::<_MM_HINT_T0>(w[r].as_ptr().wrapping_add(R * row_len + b * step) as *const i8);
                    let (l, h, d, o) = $load16!(w[r].as_ptr(), b);
                    lo[r] = l;
                    hi[r] = h;
                    dv[r] = _mm256_set1_ps(d);
                    ov[r] = _mm256_set1_ps(o);
                }
                for t in 0..N {
                    let a = x[t].get_unchecked(b);
                    let xs = a.x.as_ptr() as *const __m256i;
                    let (xlo, xhi) = (_mm256_loadu_si256(xs), _mm256_loadu_si256(xs.add(1)));
                    let dx = _mm256_set1_ps(a.fine_scale());
                    // The offset goes into all 8 lanes, so each carries an eighth (exact: a power of 2).
                    let sv = _mm256_set1_ps(a.s * 0.125);
                    for r in 0..R {
                        let p = _mm256_add_epi32(_mm256_madd_epi16(lo[r], xlo), _mm256_madd_epi16(hi[r], xhi));
                        acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dv[r], dx), _mm256_cvtepi32_ps(p), acc[r][t]);
                        if $offset {
                            acc[r][t] = _mm256_fmadd_ps(ov[r], sv, acc[r][t]);
                        }
                    }
                }
            }
            let mut out = [[0f32; N]; R];
            for r in 0..R {
                for t in 0..N {
                    out[r][t] = hsum_ps!(acc[r][t]);
                }
            }
            out
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2_i16_tile;

/// 16 bytes of packed nibbles at `p` (GGML's order: byte `j` holds values `j` and `j + 16`) -> values 0..16
/// and 16..32 as i16.
#[cfg(target_arch = "x86_64")]
macro_rules! nibbles_i16 {
    ($p:expr) => {{
        let bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128($p as *const __m128i));
        (_mm256_and_si256(bytes, _mm256_set1_epi16(0xF)), _mm256_srli_epi16::<4>(bytes))
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use nibbles_i16;
