//! MLC's 4-bit group quantization (`q4f16_1`, `q4f32_1`, `q4bf16_1`): symmetric, groups of 32 consecutive
//! inputs of one output row, one scale per group, `w = (q - 7) * scale` with `q` in 0..=14; 8 values per u32,
//! value `i` of a word in bits `4 i .. 4 i + 4` (low first). Weights are `q_weight: u32 [rows, cols / 8]` and
//! `q_scale: [rows, cols / 32]` (the "NK" layout of every linear layer and the embedding).
//!
//! The same numbers are a GGML `Q4_0` block (`x = (q' - 8) * d` with `d` an f16) with `q' = q + 1` and
//! `d = scale`, nibbles reordered (byte `j` of a block holds values `j` and `j + 16`). For f16 scales the
//! mapping is exact, so q4f16_1 runs on the Q4_0 kernels (CPU and CUDA) without requantizing.

use half::{bf16, f16};
use rayon::prelude::*;

pub const GROUP: usize = 32;
const PER_WORD: usize = 8;
const MAX_INT: f32 = 7.0;
/// Bytes of one GGML Q4_0 block: an f16 scale and 16 bytes of nibbles.
pub const Q4_0_BLOCK_BYTES: usize = 18;

/// The element type of `q_scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleType {
    F16,
    F32,
    BF16,
}

impl ScaleType {
    pub fn mlc_name(&self) -> &'static str {
        match self {
            ScaleType::F16 => "float16",
            ScaleType::F32 => "float32",
            ScaleType::BF16 => "bfloat16",
        }
    }

    pub fn size(&self) -> usize {
        match self {
            ScaleType::F32 => 4,
            ScaleType::F16 | ScaleType::BF16 => 2,
        }
    }

    /// The model dtype rounds every intermediate of MLC's quantizer (its TIR computes in that dtype).
    fn round(&self, x: f32) -> f32 {
        match self {
            ScaleType::F16 => f16::from_f32(x).to_f32(),
            ScaleType::BF16 => bf16::from_f32(x).to_f32(),
            ScaleType::F32 => x,
        }
    }

    fn read(&self, bytes: &[u8], i: usize) -> f32 {
        match self {
            ScaleType::F16 => f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            ScaleType::BF16 => bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            ScaleType::F32 => f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]),
        }
    }

    fn write(&self, out: &mut Vec<u8>, x: f32) {
        match self {
            ScaleType::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
            ScaleType::BF16 => out.extend_from_slice(&bf16::from_f32(x).to_le_bytes()),
            ScaleType::F32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// Packed weights of one matrix: `q_weight` bytes (u32 little-endian) and `q_scale` bytes.
pub struct Packed {
    pub q_weight: Vec<u8>,
    pub q_scale: Vec<u8>,
}

/// Quantizes `w: [rows, cols]` (row-major f32; `cols` a multiple of 32) as MLC's converter does: the weight is
/// first cast to the model dtype, `scale = max|w| / 7` and `w / scale + 7` are rounded to it, then
/// `q = clamp(round(.), 0, 14)` (ties to even). An all-zero group gets scale 0 and `q = 7`.
pub fn quantize(w: &[f32], rows: usize, cols: usize, scale_type: ScaleType) -> Packed {
    assert_eq!(w.len(), rows * cols, "weight has rows * cols values");
    assert_eq!(cols % GROUP, 0, "columns are whole groups");
    let per_row: Vec<(Vec<u8>, Vec<u8>)> = w
        .par_chunks(cols)
        .map(|row| {
            let mut words = Vec::with_capacity(cols / PER_WORD * 4);
            let mut scales = Vec::with_capacity(cols / GROUP * scale_type.size());
            for group in row.chunks(GROUP) {
                let vals: Vec<f32> = group.iter().map(|&x| scale_type.round(x)).collect();
                let max_abs = vals.iter().fold(0f32, |m, x| m.max(x.abs()));
                let scale = scale_type.round(max_abs / MAX_INT);
                scale_type.write(&mut scales, scale);
                let q: Vec<u32> = vals
                    .iter()
                    .map(|&x| {
                        if scale == 0.0 {
                            return MAX_INT as u32;
                        }
                        let shifted = scale_type.round(scale_type.round(x / scale) + MAX_INT);
                        shifted.round_ties_even().clamp(0.0, 2.0 * MAX_INT) as u32
                    })
                    .collect();
                for chunk in q.chunks(PER_WORD) {
                    let word = chunk.iter().enumerate().fold(0u32, |acc, (i, &v)| acc | (v << (4 * i)));
                    words.extend_from_slice(&word.to_le_bytes());
                }
            }
            (words, scales)
        })
        .collect();
    let mut packed = Packed { q_weight: Vec::with_capacity(rows * cols / 2), q_scale: Vec::new() };
    for (words, scales) in per_row {
        packed.q_weight.extend_from_slice(&words);
        packed.q_scale.extend_from_slice(&scales);
    }
    packed
}

/// The 4-bit value `i` of a row's packed words.
fn nibble(words: &[u8], i: usize) -> u8 {
    (words[i / 2] >> (4 * (i % 2))) & 0xF
}

/// Checks that the byte lengths match `rows x cols`; the message names what is wrong.
pub fn check_sizes(q_weight: &[u8], q_scale: &[u8], rows: usize, cols: usize, scale_type: ScaleType) -> Result<(), String> {
    if cols % GROUP != 0 {
        return Err(format!("{cols} input columns are not a multiple of the group size {GROUP}"));
    }
    if q_weight.len() != rows * cols / 2 {
        return Err(format!("q_weight has {} bytes, {rows} x {cols} 4-bit values need {}", q_weight.len(), rows * cols / 2));
    }
    let want = rows * (cols / GROUP) * scale_type.size();
    if q_scale.len() != want {
        return Err(format!("q_scale has {} bytes, {rows} x {} scales need {want}", q_scale.len(), cols / GROUP));
    }
    Ok(())
}

/// `[rows, cols]` f32 values of packed weights (sizes checked by [`check_sizes`] first).
pub fn dequantize(q_weight: &[u8], q_scale: &[u8], rows: usize, cols: usize, scale_type: ScaleType) -> Vec<f32> {
    let groups = cols / GROUP;
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let words = &q_weight[r * cols / 2..(r + 1) * cols / 2];
        for (i, x) in row.iter_mut().enumerate() {
            let scale = scale_type.read(q_scale, r * groups + i / GROUP);
            *x = (nibble(words, i) as f32 - MAX_INT) * scale;
        }
    });
    out
}

/// GGML Q4_0 blocks (`rows x cols / 32` blocks of 18 bytes, row-major) of f16-scaled packed weights.
pub fn to_q4_0(q_weight: &[u8], q_scale: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let groups = cols / GROUP;
    let mut out = vec![0u8; rows * groups * Q4_0_BLOCK_BYTES];
    out.par_chunks_mut(groups * Q4_0_BLOCK_BYTES).enumerate().for_each(|(r, row_out)| {
        let words = &q_weight[r * cols / 2..(r + 1) * cols / 2];
        for (g, block) in row_out.chunks_mut(Q4_0_BLOCK_BYTES).enumerate() {
            let s = 2 * (r * groups + g);
            block[..2].copy_from_slice(&q_scale[s..s + 2]);
            let base = g * GROUP;
            for j in 0..GROUP / 2 {
                let lo = nibble(words, base + j) + 1;
                let hi = nibble(words, base + j + GROUP / 2) + 1;
                block[2 + j] = (lo & 0xF) | (hi << 4);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 5) as f32)).collect()
    }

    #[test]
    fn dequantized_values_are_within_half_a_step() {
        let (rows, cols) = (3, 64);
        let w = sample(rows, cols);
        let p = quantize(&w, rows, cols, ScaleType::F32);
        let d = dequantize(&p.q_weight, &p.q_scale, rows, cols, ScaleType::F32);
        for (g, (wg, dg)) in w.chunks(GROUP).zip(d.chunks(GROUP)).enumerate() {
            let step = wg.iter().fold(0f32, |m, x| m.max(x.abs())) / 7.0;
            for (a, b) in wg.iter().zip(dg) {
                assert!((a - b).abs() <= step * 0.5 + 1e-6, "group {g}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn packing_puts_value_i_in_bits_4i() {
        // One group whose max is 7 (scale 1): q = w + 7.
        let w: Vec<f32> = (0..32).map(|i| (i % 15) as f32 - 7.0).collect();
        let p = quantize(&w, 1, 32, ScaleType::F32);
        let word0 = u32::from_le_bytes(p.q_weight[..4].try_into().unwrap());
        for i in 0..8 {
            assert_eq!((word0 >> (4 * i)) & 0xF, (i % 15) as u32);
        }
    }

    #[test]
    fn q4_0_blocks_dequantize_to_the_same_values() {
        let (rows, cols) = (2, 96);
        let w = sample(rows, cols);
        let p = quantize(&w, rows, cols, ScaleType::F16);
        let want = dequantize(&p.q_weight, &p.q_scale, rows, cols, ScaleType::F16);
        let blocks = to_q4_0(&p.q_weight, &p.q_scale, rows, cols);
        for (b, block) in blocks.chunks(Q4_0_BLOCK_BYTES).enumerate() {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            for j in 0..16 {
                let lo = (block[2 + j] & 0xF) as f32 - 8.0;
                let hi = (block[2 + j] >> 4) as f32 - 8.0;
                assert_eq!(lo * d, want[b * 32 + j]);
                assert_eq!(hi * d, want[b * 32 + j + 16]);
            }
        }
    }

    #[test]
    fn zero_groups_quantize_to_zero() {
        let p = quantize(&[0.0; 32], 1, 32, ScaleType::F16);
        assert!(dequantize(&p.q_weight, &p.q_scale, 1, 32, ScaleType::F16).iter().all(|&x| x == 0.0));
    }
}
