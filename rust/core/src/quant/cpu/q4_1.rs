//! GGML Q4_1 weights: blocks of 32 as `f16 d, f16 m, 16 bytes of nibbles`, `w = q * d + m`, `q` in 0..=15
//! (byte `j` holds values `j` and `j + 16`). In [`tile`](super::tile)'s terms the offset is `m`.

use super::act::QK;
use super::tile::{self, ScalarBlock};
use half::f16;

/// Activation blocks per weight block.
const SUBS: usize = 1;
pub const BLOCK_BYTES: usize = 20;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn decode(row: &[u8], b: usize) -> ScalarBlock {
    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
    let mut q = [0i32; QK];
    for j in 0..QK / 2 {
        q[j] = (blk[4 + j] & 0xF) as i32;
        q[j + QK / 2] = (blk[4 + j] >> 4) as i32;
    }
    ScalarBlock { q, d: f16_at(blk, 0), o: f16_at(blk, 2) }
}


#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{row_bytes, BLOCK_BYTES};
    use crate::quant::cpu::act::ActBlock;
    use crate::quant::cpu::pairs::{avx512_pairs_tile, avx512_rowpairs_tile};
    use crate::quant::cpu::tile::{idot_bytes, x86_tile, x_bytes};
    use crate::quant::cpu::tile16::{idot_i16, nibbles_i16, x_i16};
    use crate::quant::cpu::x86::*;
    use std::arch::x86_64::*;

    macro_rules! load {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let p = $row.add($b * BLOCK_BYTES);
            // d and m are adjacent: one conversion gives both.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            (unpack_nibbles!(p.add(4)), _mm256_setzero_si256(), _mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)))
        }};
    }
    macro_rules! load16 {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let p = $row.add($b * BLOCK_BYTES);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            let (lo, hi) = nibbles_i16!(p.add(4));
            (lo, hi, _mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)))
        }};
    }
    x86_tile!(i16 avx2, row_bytes, load16, true);
    x86_tile!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", row_bytes, load, dot_u8i8_vnni, no_post, true);
    avx512_pairs_tile!(avx512_pairs, row_bytes, load, true);
    avx512_rowpairs_tile!(avx512_rowpairs, row_bytes, load, true);
}

tile::type_kernels!(pairs);
