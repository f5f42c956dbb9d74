//! FP8 (e4m3) weights of HF checkpoints, in the three layouts published models use:
//!
//! - `quant_method: "fp8"` (transformers' FineGrainedFP8: DeepSeek-V3, Qwen3-*-FP8): blocks of
//!   `weight_block_size` (128 x 128), `weight_scale_inv` `[ceil(out/128), ceil(in/128)]`, `w = q * s`;
//!   without `weight_block_size`, one scale per tensor.
//! - `quant_method: "fbgemm_fp8"` (Meta's Llama 3.1 FP8): `weight_scale` `[out, 1]`, one per row.
//! - `quant_method: "compressed-tensors"`, format `float-quantized` / `naive-quantized` (llm-compressor's
//!   FP8 and FP8-dynamic): `weight_scale` per tensor (`[1]`), per row (`[out, 1]`) or per block.
//!
//! A projection whose `weight` is stored as F8_E4M3 is dequantized at load to the compute dtype
//! (`q as f32 * scale`, the value transformers' `dequantize` reading gives), so every device runs it with
//! the dense kernels; unquantized tensors (lm_head, embeddings, what a config's ignore list names) are
//! read as they are stored. Activations are not quantized: the checkpoints' activation settings
//! (`activation_scheme`, `input_activations`, `input_scale`, `activation_scale_ub`) describe how an FP8
//! tensor-core GEMM would quantize them, which this weight-only reading does not do; the difference is
//! within the activation's own FP8 rounding. An FP8 KV cache (`kv_cache_scheme`) is refused.

use crate::error::{EngineError, Result};
use crate::model::config::HfConfig;
use candle_core::{DType, Tensor};
use serde_json::Value;

/// How a checkpoint's FP8 weights are scaled; what [`dequantize`] needs beyond the tensors' shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Config {
    /// `[rows, cols]` of one scale's block, for block-scaled layouts.
    pub block: Option<[usize; 2]>,
}

const FP8_KEYS: &[&str] = &["quant_method", "activation_scheme", "fmt", "weight_block_size", "modules_to_not_convert", "dequantize", "ignored_layers"];
const FBGEMM_KEYS: &[&str] = &["quant_method", "activation_scale_ub", "modules_to_not_convert"];
const COMPRESSED_KEYS: &[&str] = &[
    "quant_method", "format", "quantization_status", "global_compression_ratio", "ignore", "config_groups", "kv_cache_scheme",
    "sparsity_config", "transform_config", "version", "provider",
];

/// Reads `quantization_config`: `None` when the checkpoint is not quantized, the FP8 layout when it is
/// one we read, an error naming the key otherwise.
pub fn read_config(c: &HfConfig<'_>) -> Result<Option<Fp8Config>> {
    let Some(q) = c.get("quantization_config") else { return Ok(None) };
    if q.as_bool() == Some(false) {
        return Ok(None);
    }
    let Some(o) = q.as_object() else { return Err(c.err(format!("quantization_config must be an object, found {q}"))) };
    if o.is_empty() {
        return Ok(None);
    }
    let err = |m: String| c.err(format!("config key \"quantization_config\": {m}"));
    let method = o.get("quant_method").and_then(Value::as_str).unwrap_or("");
    let known = match method {
        "fp8" => FP8_KEYS,
        "fbgemm_fp8" => FBGEMM_KEYS,
        "compressed-tensors" => COMPRESSED_KEYS,
        _ => return Err(err(format!("quant_method {:?} is not supported (supported: fp8, fbgemm_fp8, compressed-tensors float8)", o.get("quant_method").unwrap_or(&Value::Null)))),
    };
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str()) && !o[k.as_str()].is_null()) {
        return Err(err(format!("key {k:?} of quant_method {method:?} is not supported")));
    }
    let config = match method {
        "fp8" => {
            if let Some(f) = o.get("fmt").filter(|f| !f.is_null()) {
                if f != "e4m3" {
                    return Err(err(format!("fmt {f} is not supported (only e4m3)")));
                }
            }
            Fp8Config { block: block_size(o.get("weight_block_size")).map_err(|m| err(format!("weight_block_size {m}")))? }
        }
        "fbgemm_fp8" => Fp8Config { block: None },
        _ => compressed_tensors(o).map_err(err)?,
    };
    Ok(Some(config))
}

/// `[rows, cols]` from a JSON pair of positive integers; `None` for null / absent.
fn block_size(v: Option<&Value>) -> std::result::Result<Option<[usize; 2]>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    match v.as_array().map(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>()) {
        Some(Some(d)) if d.len() == 2 && d.iter().all(|&x| (1..=1 << 16).contains(&x)) => Ok(Some([d[0] as usize, d[1] as usize])),
        _ => Err(format!("must be two positive integers, found {v}")),
    }
}

fn compressed_tensors(o: &serde_json::Map<String, Value>) -> std::result::Result<Fp8Config, String> {
    match o.get("format").and_then(Value::as_str) {
        Some("float-quantized" | "naive-quantized") => {}
        f => return Err(format!("compressed-tensors format {f:?} is not supported (only float-quantized FP8)")),
    }
    if o.get("kv_cache_scheme").is_some_and(|v| !v.is_null()) {
        return Err("kv_cache_scheme (an FP8 KV cache with checkpoint scales) is not supported".into());
    }
    for key in ["sparsity_config", "transform_config"] {
        if o.get(key).is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty())) {
            return Err(format!("{key} is not supported"));
        }
    }
    let groups = o.get("config_groups").and_then(Value::as_object).ok_or("compressed-tensors without config_groups")?;
    let mut block = None;
    for (name, g) in groups {
        let w = g.get("weights").filter(|w| !w.is_null()).ok_or(format!("config_groups.{name} has no weights scheme"))?;
        let field = |k: &str| w.get(k).unwrap_or(&Value::Null);
        if field("num_bits") != 8 || field("type") != "float" {
            return Err(format!("config_groups.{name}.weights: only 8-bit float weights are supported, found num_bits {} type {}", field("num_bits"), field("type")));
        }
        if field("symmetric") == false || field("dynamic") == true || !field("group_size").is_null() || !field("actorder").is_null() {
            return Err(format!("config_groups.{name}.weights: only symmetric static FP8 weights without groups are supported ({w})"));
        }
        match field("strategy").as_str() {
            Some("tensor" | "channel") => {}
            Some("block") => block = block_size(Some(field("block_structure"))).map_err(|m| format!("config_groups.{name}.weights.block_structure {m}"))?,
            s => return Err(format!("config_groups.{name}.weights.strategy {s:?} is not supported (tensor, channel, block)")),
        }
        if g.get("output_activations").is_some_and(|v| !v.is_null()) {
            return Err(format!("config_groups.{name}.output_activations is not supported"));
        }
    }
    Ok(Fp8Config { block })
}

/// `q: [out, in]` (F8_E4M3) times its scale -> `[out, in]` f32. `scale`: one value (per tensor),
/// `[out, 1]` or `[out]` (per row), or `[ceil(out / rows), ceil(in / cols)]` with `config.block` (the last
/// blocks of a row or column may be partial). `name` is the weight's, for errors.
pub fn dequantize(q: &Tensor, scale: &Tensor, config: &Fp8Config, name: &str) -> Result<Tensor> {
    let (out, inp) = q.dims2()?;
    let w = q.to_dtype(DType::F32)?;
    let s = scale.to_dtype(DType::F32)?;
    let dims = s.dims().to_vec();
    let blocked = config.block.map(|[r, c]| [out.div_ceil(r), inp.div_ceil(c)]);
    if let (Some([br, bc]), Some([r, c])) = (config.block, blocked) {
        if dims == [r, c] {
            let rows = Tensor::from_iter((0..out).map(|i| (i / br) as u32), s.device())?;
            let cols = Tensor::from_iter((0..inp).map(|j| (j / bc) as u32), s.device())?;
            return Ok((w * s.index_select(&rows, 0)?.index_select(&cols, 1)?)?); // [out, in]
        }
    }
    if s.elem_count() == 1 {
        return Ok(w.broadcast_mul(&s.flatten_all()?.reshape((1, 1))?)?);
    }
    if dims == [out, 1] || dims == [out] {
        return Ok(w.broadcast_mul(&s.reshape((out, 1))?)?);
    }
    let expected = match blocked {
        Some([r, c]) => format!("[{r}, {c}] (blocks), [{out}, 1] or [1]"),
        None => format!("[{out}, 1] or [1]"),
    };
    Err(EngineError::model_load(name, format!("FP8 scale of shape {dims:?} does not fit the weight [{out}, {inp}]: expected {expected}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn e4m3(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap().to_dtype(DType::F8E4M3).unwrap()
    }

    #[test]
    fn partial_blocks_take_the_scale_of_the_block_they_fall_in() {
        // [3, 5] weight of ones in blocks of 2 x 2: scale rows 0-1 / 2, columns 0-1 / 2-3 / 4.
        let q = e4m3(&[1.0; 15], (3, 5));
        let s = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.], (2, 3), &Device::Cpu).unwrap();
        let w = dequantize(&q, &s, &Fp8Config { block: Some([2, 2]) }, "w").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(w, vec![vec![1., 1., 2., 2., 3.], vec![1., 1., 2., 2., 3.], vec![4., 4., 5., 5., 6.]]);
    }

    #[test]
    fn per_row_and_per_tensor_scales_and_e4m3_values() {
        // 448 is e4m3's largest value, 0.015625 = 2^-6 its smallest normal; -1.75 needs the mantissa.
        let q = e4m3(&[448.0, -1.75, 0.015625, 2.0], (2, 2));
        let rows = Tensor::from_slice(&[0.5f32, 4.0], (2, 1), &Device::Cpu).unwrap();
        let w = dequantize(&q, &rows, &Fp8Config { block: None }, "w").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(w, vec![vec![224.0, -0.875], vec![0.0625, 8.0]]);
        let one = Tensor::from_slice(&[2.0f32], 1, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let w = dequantize(&q, &one, &Fp8Config { block: Some([128, 128]) }, "w").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(w, vec![vec![896.0, -3.5], vec![0.03125, 4.0]]);
    }

    #[test]
    fn a_scale_that_fits_no_layout_is_an_error_naming_the_weight() {
        let q = e4m3(&[1.0; 6], (2, 3));
        let s = Tensor::from_slice(&[1f32, 2., 3.], 3, &Device::Cpu).unwrap();
        let e = dequantize(&q, &s, &Fp8Config { block: None }, "model.layers.0.mlp.up_proj.weight").unwrap_err().to_string();
        assert!(e.contains("up_proj") && e.contains("[3]"), "{e}");
    }

    fn read(q: serde_json::Value) -> Result<Option<Fp8Config>> {
        let obj = serde_json::json!({ "quantization_config": q }).as_object().unwrap().clone();
        read_config(&HfConfig::new(obj, "config.json"))
    }

    #[test]
    fn the_published_layouts_are_read_and_the_rest_refused_by_name() {
        let block = read(serde_json::json!({"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]}));
        assert_eq!(block.unwrap(), Some(Fp8Config { block: Some([128, 128]) }));
        assert_eq!(read(serde_json::json!({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0})).unwrap(), Some(Fp8Config { block: None }));
        let ct = |weights: serde_json::Value, extra: serde_json::Value| {
            let mut q = serde_json::json!({"quant_method": "compressed-tensors", "format": "float-quantized",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": {"num_bits": 8, "type": "float", "dynamic": true}}}});
            q.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            read(q)
        };
        let channel = serde_json::json!({"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": true, "dynamic": false});
        assert_eq!(ct(channel.clone(), serde_json::json!({})).unwrap(), Some(Fp8Config { block: None }));
        let blocks = serde_json::json!({"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 64]});
        assert_eq!(ct(blocks, serde_json::json!({})).unwrap(), Some(Fp8Config { block: Some([128, 64]) }));
        for (bad, words) in [
            (read(serde_json::json!({"quant_method": "gptq", "bits": 4})), "\"gptq\""),
            (read(serde_json::json!({"quant_method": "fp8", "fmt": "e5m2"})), "e5m2"),
            (read(serde_json::json!({"quant_method": "fp8", "weight_block_size": [128]})), "weight_block_size"),
            (read(serde_json::json!({"quant_method": "fbgemm_fp8", "group_size": 64})), "group_size"),
            (ct(channel.clone(), serde_json::json!({"kv_cache_scheme": {"num_bits": 8, "type": "float"}})), "kv_cache_scheme"),
            (ct(channel.clone(), serde_json::json!({"format": "pack-quantized"})), "pack-quantized"),
            (ct(serde_json::json!({"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}), serde_json::json!({})), "num_bits 4"),
        ] {
            let e = bad.unwrap_err().to_string();
            assert!(e.contains("\"quantization_config\"") && e.contains(words), "{e}");
        }
        assert_eq!(read(serde_json::json!({})).unwrap(), None);
    }
}
