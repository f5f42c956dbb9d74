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

#[cfg(test)]
mod tests {
    use super::*;

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
