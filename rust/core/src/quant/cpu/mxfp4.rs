//! llama.cpp's MXFP4 weights (ggml type 39, gpt-oss's experts): blocks of 32 as `e8m0 s, 16 bytes of
//! nibbles` (byte `j`: value `j` low, `j + 16` high), each nibble an e2m1 value. ggml multiplies them as
//! integers: the doubled e2m1 values (`kvalues_mxfp4`, -12..12) times `2^(s - 128)`. Here those integers
//! biased by 12 (0..24, the unsigned operand of `vpdpbusd` / `maddubs`) and the `- 12 d` as
//! [`tile`](super::tile)'s offset, so MXFP4 runs the kernels Q4_0 runs, with a 16-entry table lookup
//! (`vpshufb`) where Q4_0 takes its nibbles as they are. Every weight is exact: `d (q - 12)` is ggml's value.

use super::act::QK;
use super::tile::{self, ScalarBlock};

/// Activation blocks per weight block.
const SUBS: usize = 1;
pub const BLOCK_BYTES: usize = crate::quant::mxfp4::GGML_BLOCK_BYTES;

/// ggml's doubled e2m1 values by nibble, plus 12.
const BIASED: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];
const BIAS: f32 = 12.0;

/// ggml's `GGML_E8M0_TO_FP32_HALF`: `2^(s - 128)`, subnormal below s = 2 (255 reads as 2^127, as ggml).
fn half_scale(s: u8) -> f32 {
    f32::from_bits(if s < 2 { 0x0020_0000 << s } else { (s as u32 - 1) << 23 })
}

fn decode(row: &[u8], b: usize) -> ScalarBlock {
    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
    let d = half_scale(blk[0]);
    let mut q = [0i32; QK];
    for j in 0..QK / 2 {
        q[j] = BIASED[(blk[1 + j] & 0xF) as usize] as i32;
        q[j + QK / 2] = BIASED[(blk[1 + j] >> 4) as usize] as i32;
    }
    ScalarBlock { q, d, o: -BIAS * d }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{half_scale, row_bytes, BIAS, BIASED, BLOCK_BYTES};
    use crate::quant::cpu::act::ActBlock;
    use crate::quant::cpu::pairs::{avx512_pairs_tile, avx512_rowpairs_tile};
    use crate::quant::cpu::tile::{idot_bytes, x86_tile, x_bytes};
    use crate::quant::cpu::x86::*;
    use std::arch::x86_64::*;

    macro_rules! load {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let p = $row.add($b * BLOCK_BYTES);
            let d = half_scale(*p);
            let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(BIASED.as_ptr() as *const __m128i));
            (_mm256_shuffle_epi8(lut, unpack_nibbles!(p.add(1))), _mm256_setzero_si256(), d, -BIAS * d)
        }};
    }
    x86_tile!(avx2, "avx2,fma,f16c", row_bytes, load, dot_u8i8_avx2, no_post, true);
    x86_tile!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", row_bytes, load, dot_u8i8_vnni, no_post, true);
    avx512_pairs_tile!(avx512_pairs, row_bytes, load, true);
    avx512_rowpairs_tile!(avx512_rowpairs, row_bytes, load, true);
}

tile::type_kernels!(pairs);

#[cfg(test)]
mod tests {
    /// The reference dequantization is ggml's, bit for bit up to the sign of zero.
    #[test]
    fn dequantizes_as_ggml() {
        let mut b = vec![0u8; 3 * super::BLOCK_BYTES];
        for (i, v) in b.iter_mut().enumerate() {
            *v = (i * 37 + 11) as u8;
        }
        (b[0], b[17], b[34]) = (0, 127, 200); // (near 255 the biased integers overflow f32 before ggml's do)
        let mut got = vec![0f32; 96];
        super::dequantize_row(&b, &mut got);
        let want = crate::quant::mxfp4::dequantize_ggml(&b);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w && (g.to_bits() == w.to_bits() || *g == 0.0), "value {i}: {g} vs ggml's {w}");
        }
    }
}
