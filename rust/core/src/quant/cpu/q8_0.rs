//! GGML Q8_0 weights (SmolLM2's embedding / tied output head): blocks of 32 as `f16 d, 32 x i8`,
//! `w = q * d`. Both operands are signed:
//! - AVX2: `q` widened to i16 by `vpmovsxbw` ([`tile16`](super::tile16)), no sign tricks needed.
//! - VNNI: `q + 128` (a u8) times `qx`, minus `128 d * (dx sum(qx))` as [`tile`](super::tile)'s offset:
//!   `vpdpbusd` takes u8 x i8 and sums into i32 with no i16 step to overflow.

use super::act::QK;
use super::tile::{self, ScalarBlock};
use half::f16;

/// Activation blocks per weight block.
const SUBS: usize = 1;
pub const BLOCK_BYTES: usize = 34;

fn decode(row: &[u8], b: usize) -> ScalarBlock {
    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
    let mut q = [0i32; QK];
    for (q, &b) in q.iter_mut().zip(&blk[2..2 + QK]) {
        *q = b as i8 as i32;
    }
    ScalarBlock { q, d: f16::from_le_bytes([blk[0], blk[1]]).to_f32(), o: 0.0 }
}


#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{row_bytes, BLOCK_BYTES};
    use crate::quant::cpu::act::ActBlock;
    use crate::quant::cpu::pairs::{avx512_pairs_tile, avx512_rowpairs_tile};
    use crate::quant::cpu::tile::{idot_bytes, x86_tile, x_bytes};
    use crate::quant::cpu::tile16::{idot_i16, x_i16};
    use crate::quant::cpu::x86::*;
    use std::arch::x86_64::*;

    macro_rules! load16 {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let p = $row.add($b * BLOCK_BYTES);
            let q = p.add(2) as *const __m128i;
            (_mm256_cvtepi8_epi16(_mm_loadu_si128(q)), _mm256_cvtepi8_epi16(_mm_loadu_si128(q.add(1))), f16_at!(p), 0.0f32)
        }};
    }
    macro_rules! load_biased {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let p = $row.add($b * BLOCK_BYTES);
            let d = f16_at!(p);
            let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
            (_mm256_xor_si256(q, _mm256_set1_epi8(-128)), _mm256_setzero_si256(), d, -128.0 * d)
        }};
    }
    x86_tile!(i16 avx2, row_bytes, load16, false);
    x86_tile!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", row_bytes, load_biased, dot_u8i8_vnni, no_post, true);
    avx512_pairs_tile!(avx512_pairs, row_bytes, load_biased, true);
    avx512_rowpairs_tile!(avx512_rowpairs, row_bytes, load_biased, true);
}

tile::type_kernels!(pairs);
