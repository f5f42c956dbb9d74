//! The AVX2 operands for weight types whose values fit 8 bits (Q4_0, Q4_1, Q8_0): 16-bit ones, for
//! [`x86_tile`](super::tile)'s `i16` form.
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

/// A token's `128 q + r` for one block as i16: values 0..16 and 16..32.
#[cfg(target_arch = "x86_64")]
macro_rules! x_i16 {
    ($a:expr) => {{
        let xs = $a.x.as_ptr() as *const __m256i;
        (_mm256_loadu_si256(xs), _mm256_loadu_si256(xs.add(1)))
    }};
}

/// The block's dot product from its i16 weights `lo` (0..16) and `hi` (16..32, in the tile's `aux` slot):
/// one `vpmaddwd` per half. (`$dot` / `$post` are the byte form's; unused here.)
#[cfg(target_arch = "x86_64")]
macro_rules! idot_i16 {
    ($lo:expr, $hi:expr, $x:expr, $dot:ident, $post:ident) => {
        _mm256_add_epi32(_mm256_madd_epi16($lo, $x.0), _mm256_madd_epi16($hi, $x.1))
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use {idot_i16, x_i16};

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
