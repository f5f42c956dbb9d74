//! GGML Q4_0 weights (also MLC's q4f16_1, mapped losslessly by `quant::group4::to_q4_0`): blocks of 32 as
//! `f16 d, 16 bytes of nibbles`, `w = (q - 8) * d`. The nibbles stay unsigned (VNNI's u8 x i8 product
//! takes them as they are) and the `- 8 d` becomes [`tile`](super::tile)'s offset.

use super::act::QK;
use super::tile::{self, ScalarBlock};
use half::f16;

/// Activation blocks per weight block.
const SUBS: usize = 1;
pub const BLOCK_BYTES: usize = 18;

fn decode(row: &[u8], b: usize) -> ScalarBlock {
    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let mut q = [0i32; QK];
    for j in 0..QK / 2 {
        q[j] = (blk[2 + j] & 0xF) as i32;
        q[j + QK / 2] = (blk[2 + j] >> 4) as i32;
    }
    ScalarBlock { q, d, o: -8.0 * d }
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
            let d = f16_at!(p);
            (unpack_nibbles!(p.add(2)), _mm256_setzero_si256(), d, -8.0 * d)
        }};
    }
    macro_rules! load16 {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let p = $row.add($b * BLOCK_BYTES);
            let d = f16_at!(p);
            let (lo, hi) = nibbles_i16!(p.add(2));
            (lo, hi, d, -8.0 * d)
        }};
    }
    x86_tile!(i16 avx2, row_bytes, load16, true);
    x86_tile!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", row_bytes, load, dot_u8i8_vnni, no_post, true);
    avx512_pairs_tile!(avx512_pairs, row_bytes, load, true);
    avx512_rowpairs_tile!(avx512_rowpairs, row_bytes, load, true);
}

tile::type_kernels!(pairs);
