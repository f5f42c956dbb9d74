//! GGML Q4_K weights: super-blocks of 256 as `f16 d, f16 dmin, 12 bytes of 6-bit scales and mins,
//! 128 bytes of nibbles`; sub-block `j` (32 values) is `w = d * sc_j * q - dmin * m_j`. Sub-blocks line up
//! with activation blocks, so in [`tile`](super::tile)'s terms a sub-block has scale `d * sc_j` and offset
//! `-dmin * m_j`. Nibbles: bytes `32 p .. 32 p + 32` hold sub-block `2 p` (low) and `2 p + 1` (high).

use super::act::QK;
use super::tile::{self, ScalarBlock};
use half::f16;

pub const BLOCK_BYTES: usize = 144;
pub const BLOCK_VALUES: usize = 256;
const SUBS: usize = BLOCK_VALUES / QK;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Sub-block `j`'s 6-bit scale and min (llama.cpp's `get_scale_min_k4`).
#[inline]
pub(super) fn scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

fn decode(row: &[u8], b: usize) -> ScalarBlock {
    let (sb, j) = (b / SUBS, b % SUBS);
    let blk = &row[sb * BLOCK_BYTES..(sb + 1) * BLOCK_BYTES];
    let scales: &[u8; 12] = blk[4..16].try_into().expect("12 scale bytes");
    let (sc, m) = scale_min(j, scales);
    let qs = &blk[16 + 32 * (j / 2)..16 + 32 * (j / 2) + QK];
    let shift = 4 * (j % 2);
    let mut q = [0i32; QK];
    for (q, &byte) in q.iter_mut().zip(qs) {
        *q = ((byte >> shift) & 0xF) as i32;
    }
    ScalarBlock { q, d: f16_at(blk, 0) * sc as f32, o: -(f16_at(blk, 2) * m as f32) }
}


#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{row_bytes, BLOCK_BYTES, SUBS};
    use crate::quant::cpu::act::ActBlock;
    use crate::quant::cpu::pairs::{avx512_pairs_tile, avx512_rowpairs_tile};
    use crate::quant::cpu::tile::{idot_bytes, x86_tile, x_bytes};
    use crate::quant::cpu::x86::*;
    use std::arch::x86_64::*;

    /// A super-block's 8 scales `d * sc_j` and offsets `-dmin * m_j` into `$st[0..8]`, `$st[8..16]`:
    /// llama.cpp's word-wise unpacking of the 12 bytes of 6-bit values, then one conversion for all 8.
    macro_rules! scales {
        ($p:expr, $st:expr) => {{
            let p = $p;
            let st: &mut [f32; 16] = $st;
            let s = p.add(4) as *const u32;
            let (u0, u1, u2) = (s.read_unaligned(), s.add(1).read_unaligned(), s.add(2).read_unaligned());
            const M6: u32 = 0x3f3f_3f3f;
            const M4: u32 = 0x0f0f_0f0f;
            const M2: u32 = 0x0303_0303;
            let sc = _mm_set_epi32(0, 0, ((u2 & M4) | (((u0 >> 6) & M2) << 4)) as i32, (u0 & M6) as i32);
            let mn = _mm_set_epi32(0, 0, (((u2 >> 4) & M4) | (((u1 >> 6) & M2) << 4)) as i32, (u1 & M6) as i32);
            let to_f32 = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
            _mm256_storeu_ps(st.as_mut_ptr(), _mm256_mul_ps(to_f32(sc), _mm256_set1_ps(f16_at!(p))));
            // -(dmin * m), as the scalar decoder rounds it.
            let neg = _mm256_set1_ps(-0.0);
            _mm256_storeu_ps(st.as_mut_ptr().add(8), _mm256_xor_ps(_mm256_mul_ps(to_f32(mn), _mm256_set1_ps(f16_at!(p.add(2)))), neg));
        }};
    }
    macro_rules! load {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let (sb, j) = ($b / SUBS, $b % SUBS);
            let p = $row.add(sb * BLOCK_BYTES);
            let st: &mut [f32; 16] = $scratch;
            if j == 0 {
                scales!(p, &mut *st);
            }
            let raw = _mm256_loadu_si256(p.add(16 + 32 * (j / 2)) as *const __m256i);
            let q = _mm256_and_si256(_mm256_srl_epi16(raw, _mm_cvtsi32_si128(4 * (j % 2) as i32)), _mm256_set1_epi8(0xF));
            (q, _mm256_setzero_si256(), st[j], st[8 + j])
        }};
    }
    x86_tile!(avx2, "avx2,fma,f16c", row_bytes, load, dot_u8i8_avx2, no_post, true);
    x86_tile!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", row_bytes, load, dot_u8i8_vnni, no_post, true);
    avx512_pairs_tile!(avx512_pairs, row_bytes, load, true);
    avx512_rowpairs_tile!(avx512_rowpairs, row_bytes, load, true);
}

tile::type_kernels!(pairs);
