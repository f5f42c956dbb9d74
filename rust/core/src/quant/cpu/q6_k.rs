//! GGML Q6_K weights: super-blocks of 256 as `128 bytes of low nibbles, 64 bytes of high 2-bit pairs,
//! 16 x i8 scales, f16 d`; `w = d * sc * (q - 32)` with one scale per 16 values, `q` in 0..=63. An
//! activation block (32 values) spans two scales, so the kernels scale the integer dot product per lane
//! half (`aux`) before the block's float scale `d`; there is no offset term.
//!
//! Layout of the 32 values of sub-block `j` (`n = j / 4`, `g = j % 4`): low nibbles from
//! `ql[64 n + 32 (g & 1) ..]` shifted by `4 (g >> 1)`, high bits from `qh[32 n ..]` shifted by `2 g`,
//! scales `sc[8 n + 2 g]` and `sc[8 n + 2 g + 1]`.

use super::act::QK;
use super::tile::{self, ScalarBlock};
use half::f16;

pub const BLOCK_BYTES: usize = 210;
pub const BLOCK_VALUES: usize = 256;
const SUBS: usize = BLOCK_VALUES / QK;
pub(super) const QH: usize = 128;
pub(super) const SCALES: usize = 192;
pub(super) const D: usize = 208;

fn decode(row: &[u8], b: usize) -> ScalarBlock {
    let (sb, j) = (b / SUBS, b % SUBS);
    let (n, g) = (j / 4, j % 4);
    let blk = &row[sb * BLOCK_BYTES..(sb + 1) * BLOCK_BYTES];
    let ql = &blk[64 * n + 32 * (g & 1)..][..QK];
    let qh = &blk[QH + 32 * n..][..QK];
    let mut q = [0i32; QK];
    for (l, q) in q.iter_mut().enumerate() {
        let q6 = ((ql[l] >> (4 * (g >> 1))) & 0xF) | (((qh[l] >> (2 * g)) & 3) << 4);
        let sc = blk[SCALES + 8 * n + 2 * g + l / 16] as i8 as i32;
        *q = sc * (q6 as i32 - 32);
    }
    ScalarBlock { q, d: f16::from_le_bytes([blk[D], blk[D + 1]]).to_f32(), o: 0.0 }
}


#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{row_bytes, BLOCK_BYTES, D, QH, SCALES, SUBS};
    use crate::quant::cpu::act::ActBlock;
    use crate::quant::cpu::tile::{idot_bytes, x86_tile, x_bytes};
    use crate::quant::cpu::x86::*;
    use std::arch::x86_64::*;

    /// `q - 32` as i8 (signed operand) and the two scales as i32 lanes: lanes 0..4 hold values 0..16.
    macro_rules! load {
        ($row:expr, $b:expr, $scratch:expr) => {{
            let (sb, j) = ($b / SUBS, $b % SUBS);
            let (n, g) = (j / 4, j % 4);
            let p = $row.add(sb * BLOCK_BYTES);
            let ql = _mm256_loadu_si256(p.add(64 * n + 32 * (g & 1)) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(QH + 32 * n) as *const __m256i);
            let lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (g >> 1) as i32)), _mm256_set1_epi8(0xF));
            let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)), _mm256_set1_epi8(3));
            let q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
            let sc = p.add(SCALES + 8 * n + 2 * g) as *const i8;
            let aux = _mm256_set_m128i(_mm_set1_epi32(*sc.add(1) as i32), _mm_set1_epi32(*sc as i32));
            (q, aux, f16_at!(p.add(D)), 0.0f32)
        }};
    }
    macro_rules! dot6_avx2 {
        ($acc:expr, $w:expr, $x:expr) => {
            dot_signed!(dot_u8i8_avx2, $acc, $w, $x)
        };
    }
    macro_rules! dot6_vnni {
        ($acc:expr, $w:expr, $x:expr) => {
            dot_signed!(dot_u8i8_vnni, $acc, $w, $x)
        };
    }
    /// The two scales of 16, per lane half (a lane of 4 products: at most 128 * (4 * 32 * 127 + 4 * 32 * 64 / 128)
    /// * 128 < 2^31).
    macro_rules! scale16 {
        ($p:expr, $aux:expr) => {
            _mm256_mullo_epi32($p, $aux)
        };
    }
    x86_tile!(avx2, "avx2,fma,f16c", row_bytes, load, dot6_avx2, scale16, false);
    x86_tile!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", row_bytes, load, dot6_vnni, scale16, false);
}

tile::type_kernels!();
