//! MXFP4 (OCP microscaling FP4), as gpt-oss checkpoints store their experts: groups of 32 e2m1 values
//! (1 sign, 2 exponent, 1 mantissa bit; two per byte, the low nibble first) sharing one e8m0 scale byte
//! (the power of two `2^(s - 127)`). Read at load into the compute dtype: every value is exact in f32 and
//! bf16 (a 4-bit value times a power of two).

use crate::error::{EngineError, Result};
use candle_core::{Device, Tensor};

/// e2m1 values by nibble.
const E2M1: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// `2^(s - 127)` exactly, `s` = 0 included (a subnormal f32); 255 (e8m0's NaN) reads as NaN.
fn e8m0(s: u8) -> f32 {
    match s {
        0 => f32::from_bits(1 << 22),
        255 => f32::NAN,
        _ => f32::from_bits((s as u32) << 23),
    }
}

/// `blocks: [..., G, 16]` u8 and `scales: [..., G]` u8 -> `[..., G * 32]` f32 on the CPU (rows of
/// `G * 32` values, in order). `name` names the tensor in errors.
pub fn dequantize(blocks: &Tensor, scales: &Tensor, name: &str) -> Result<Tensor> {
    let (bd, sd) = (blocks.dims(), scales.dims());
    if bd.len() < 2 || bd[bd.len() - 1] != 16 || bd[..bd.len() - 1] != *sd {
        return Err(EngineError::model_load(name, format!("MXFP4 blocks {bd:?} and scales {sd:?} do not fit ([..., G, 16] and [..., G])")));
    }
    let bytes = blocks.flatten_all()?.to_vec1::<u8>()?;
    let exps = scales.flatten_all()?.to_vec1::<u8>()?;
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for (group, &s) in bytes.chunks_exact(16).zip(&exps) {
        let scale = e8m0(s);
        for &b in group {
            out.push(E2M1[(b & 0x0F) as usize] * scale);
            out.push(E2M1[(b >> 4) as usize] * scale);
        }
    }
    let mut shape = sd.to_vec();
    *shape.last_mut().expect("at least one dimension") *= 32;
    Ok(Tensor::from_vec(out, shape, &Device::Cpu)?)
}

/// Bytes of one block of llama.cpp's MXFP4 (ggml type 39): the e8m0 byte, then 16 bytes of nibbles.
pub const GGML_BLOCK_BYTES: usize = 17;

/// `blocks: [..., G, 16]` u8 and `scales: [..., G]` u8 as transformers stores them (byte `j` holds values
/// `2j` and `2j + 1`) -> llama.cpp's blocks of the same values (the scale byte, then byte `j` holding values
/// `j` and `j + 16`), rows in order: ggml's value `kvalues[n] 2^(e - 128)` is the e2m1 value times
/// `2^(e - 127)`, so the scale byte carries over as it is.
pub fn to_ggml_blocks(blocks: &Tensor, scales: &Tensor, name: &str) -> Result<Vec<u8>> {
    let (bd, sd) = (blocks.dims(), scales.dims());
    if bd.len() < 2 || bd[bd.len() - 1] != 16 || bd[..bd.len() - 1] != *sd {
        return Err(EngineError::model_load(name, format!("MXFP4 blocks {bd:?} and scales {sd:?} do not fit ([..., G, 16] and [..., G])")));
    }
    let bytes = blocks.flatten_all()?.to_vec1::<u8>()?;
    let exps = scales.flatten_all()?.to_vec1::<u8>()?;
    let mut out = Vec::with_capacity(exps.len() * GGML_BLOCK_BYTES);
    for (group, &s) in bytes.chunks_exact(16).zip(&exps) {
        let nibble = |k: usize| (group[k / 2] >> (4 * (k % 2))) & 0x0F;
        out.push(s);
        out.extend((0..16).map(|j| nibble(j) | (nibble(j + 16) << 4)));
    }
    Ok(out)
}

/// llama.cpp's MXFP4 rows (`block_mxfp4`: the e8m0 scale byte first, then 16 bytes whose byte `j` holds
/// value `j` in its low nibble and value `j + 16` in its high one) -> f32 values in order, as ggml's
/// `dequantize_row_mxfp4` gives them: its doubled e2m1 table times `2^(e - 128)` is this module's e2m1
/// value times `2^(e - 127)`, the same f32 bits; e = 255 reads as ggml reads it (`2^127` on the doubled
/// value), not as NaN. `bytes.len()` must be whole blocks (the caller checked the tensor's shape).
pub fn dequantize_ggml(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / GGML_BLOCK_BYTES * 32);
    for block in bytes.chunks_exact(GGML_BLOCK_BYTES) {
        let e = block[0];
        // ggml's GGML_E8M0_TO_FP32_HALF: 2^(e - 128), subnormal below e = 2.
        let half = f32::from_bits(if e < 2 { 0x0020_0000 << e } else { (e as u32 - 1) << 23 });
        let qs = &block[1..];
        out.extend(qs.iter().map(|&b| 2.0 * E2M1[(b & 0x0F) as usize] * half));
        out.extend(qs.iter().map(|&b| 2.0 * E2M1[(b >> 4) as usize] * half));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' layout converted to ggml's blocks reads back the same values (every nibble and a
    /// range of scales, subnormal ones included).
    #[test]
    fn hf_blocks_convert_to_ggml_blocks_of_the_same_values() {
        let bytes: Vec<u8> = (0..3 * 2 * 16).map(|i| (i * 73 + 5) as u8).collect();
        let scales: Vec<u8> = vec![0, 1, 100, 127, 130, 140];
        let blocks = Tensor::from_vec(bytes, (3, 2, 16), &Device::Cpu).unwrap();
        let scales = Tensor::from_vec(scales, (3, 2), &Device::Cpu).unwrap();
        let want = dequantize(&blocks, &scales, "w").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = dequantize_ggml(&to_ggml_blocks(&blocks, &scales, "w").unwrap());
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "value {i}: {g} vs {w}");
        }
    }

    #[test]
    fn ggml_blocks_hold_values_j_and_j_plus_16_after_the_scale_byte() {
        // Block 0: scale 2^0; byte 0 = 0x72: value 0 = 1.0 (nibble 2), value 16 = 6.0 (nibble 7);
        // byte 15 = 0x0F: value 15 = -6.0, value 31 = 0. Block 1: scale 2^-3, byte 1 = 0x90: value 1 = 0,
        // value 17 = -0.5.
        let mut b = vec![0u8; 34];
        (b[0], b[1], b[16]) = (127, 0x72, 0x0F);
        (b[17], b[19]) = (124, 0x90);
        let v = dequantize_ggml(&b);
        assert_eq!(v.len(), 64);
        assert_eq!((v[0], v[16], v[15], v[31]), (1.0, 6.0, -6.0, 0.0));
        assert_eq!((v[33], v[49]), (0.0, -0.0625));
        // The same bits as this module's e8m0 at every finite exponent (subnormals included).
        for e in 0..255u8 {
            let mut blk = [0u8; 17];
            (blk[0], blk[1]) = (e, 0x07);
            assert_eq!(dequantize_ggml(&blk)[0].to_bits(), (6.0 * e8m0(e)).to_bits(), "e = {e}");
        }
    }

    #[test]
    fn nibbles_low_first_times_the_groups_power_of_two() {
        // One row of two groups: bytes 0x21 = (0.5, 1.0), 0xF7 = (6.0, -6.0); scales 2^1 and 2^-3.
        let mut b = vec![0u8; 32];
        b[0] = 0x21;
        b[16] = 0xF7;
        let blocks = Tensor::from_vec(b, (1, 2, 16), &Device::Cpu).unwrap();
        let scales = Tensor::from_vec(vec![128u8, 124], (1, 2), &Device::Cpu).unwrap();
        let w = dequantize(&blocks, &scales, "w").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(w[0].len(), 64);
        assert_eq!((w[0][0], w[0][1], w[0][2]), (1.0, 2.0, 0.0));
        assert_eq!((w[0][32], w[0][33]), (0.75, -0.75));
        assert_eq!((e8m0(0), e8m0(127), e8m0(254)), (2f32.powi(-127), 1.0, 2f32.powi(127)));
    }

    #[test]
    fn mismatched_shapes_are_an_error_naming_the_tensor() {
        let blocks = Tensor::zeros((2, 3, 16), candle_core::DType::U8, &Device::Cpu).unwrap();
        let scales = Tensor::zeros((2, 4), candle_core::DType::U8, &Device::Cpu).unwrap();
        let e = dequantize(&blocks, &scales, "experts.down_proj").unwrap_err().to_string();
        assert!(e.contains("down_proj"), "{e}");
    }
}
