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
fn scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
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
    use super::{row_bytes, scale_min, BLOCK_BYTES, SUBS};
    use crate::quant::cpu::act::ActBlock;
    use crate::quant::cpu::pairs::avx512_pairs_tile;
    use crate::quant::cpu::tile::x86_tile;
    use crate::quant::cpu::x86::*;
    use std::arch::x86_64::*;

    macro_rules! load {
        ($row:expr, $b:expr) => {{
            let (sb, j) = ($b / SUBS, $b % SUBS);
            let p = $row.add(sb * BLOCK_BYTES);
            let (sc, m) = scale_min(j, &*(p.add(4) as *const [u8; 12]));
            let raw = _mm256_loadu_si256(p.add(16 + 32 * (j / 2)) as *const __m256i);
            let q = _mm256_and_si256(_mm256_srl_epi16(raw, _mm_cvtsi32_si128(4 * (j % 2) as i32)), _mm256_set1_epi8(0xF));
            (q, _mm256_setzero_si256(), f16_at!(p) * sc as f32, -(f16_at!(p.add(2)) * m as f32))
        }};
    }
    x86_tile!(avx2, "avx2,fma,f16c", row_bytes, load, dot_u8i8_avx2, no_post, true);
    x86_tile!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", row_bytes, load, dot_u8i8_vnni, no_post, true);
    avx512_pairs_tile!(avx512_pairs, row_bytes, load, true);
}

tile::type_kernels!(pairs);
