//! Test support: runs a fused op ([`super::fused`]) on a device and its reference on the CPU over the same
//! random inputs and reports the differences. The GPU tests drive it through
//! `mlc_llm._core._fused_check`; the CPU unit tests below keep the harness itself honest (on the CPU the
//! entry points run the reference, so every difference is zero).
//!
//! Inputs are drawn in f32, rounded to the case's dtype for the device, and the CPU reference runs in
//! f32 on the rounded values: the differences are the kernels' f32 arithmetic order and their roundings.

use super::rope::RopeStyle;
use super::fused::{self, QkNorm, QkvSpec};
use super::linear::{Linear, StackedLinear, Weight};
use crate::attention::{AttentionMetadata, LayerKvCache, PagedKvCache, SeqAttention};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{bail, DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One random case of one op.
#[derive(Debug, Clone, Deserialize)]
pub struct FusedCase {
    /// "silu_mul", "add_rms_norm", "rope_qkv" or "stacked_linear".
    pub op: String,
    /// "f32", "bf16" or "f16".
    pub dtype: String,
    /// Rows (silu_mul, add_rms_norm, stacked_linear); rope_qkv takes its tokens from `seqs`.
    #[serde(default = "one")]
    pub tokens: usize,
    /// silu_mul: F of `[T, 2F]`.
    #[serde(default)]
    pub ffn: usize,
    /// add_rms_norm: H; stacked_linear: the input width.
    #[serde(default)]
    pub hidden: usize,
    /// rope_qkv: the head layout.
    #[serde(default)]
    pub num_heads: usize,
    #[serde(default)]
    pub num_kv_heads: usize,
    #[serde(default)]
    pub head_dim: usize,
    /// rope_qkv: adjacent pairs (GGUF llama) instead of halves.
    #[serde(default)]
    pub interleaved: bool,
    /// rope_qkv: per-head q/k RMSNorm first (Qwen3).
    #[serde(default)]
    pub qk_norm: bool,
    /// rope_qkv: cache block size and `(query_len, context_len)` per sequence.
    #[serde(default = "sixteen")]
    pub block_size: usize,
    #[serde(default)]
    pub seqs: Vec<(usize, usize)>,
    /// stacked_linear: the output widths of the parts and the weights' type ("none" = dense, "q4_0",
    /// "q8_0"; quantized weights run the quantized matmul on the device).
    #[serde(default)]
    pub outs: Vec<usize>,
    #[serde(default)]
    pub quant: Option<String>,
    /// stacked_linear with two equal parts (gate, up): `forward_silu_mul` (silu(gate) * up, fused into
    /// the GEMV where the device has one) instead of `forward`.
    #[serde(default)]
    pub silu: bool,
    #[serde(default)]
    pub seed: u64,
    /// After the check, time this many further calls of the device op (one synchronize at the end).
    #[serde(default)]
    pub repeat: usize,
}

fn one() -> usize {
    1
}

fn sixteen() -> usize {
    16
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FusedReport {
    pub op: String,
    pub num_tokens: usize,
    /// The op's main output (silu_mul's product, add_rms_norm's sum, rope_qkv's q, stacked_linear's
    /// stacked result against the CPU) against the reference.
    pub max_abs_err: f32,
    pub mean_abs_err: f32,
    pub max_abs_ref: f32,
    /// add_rms_norm: the normed output; rope_qkv: the whole k cache; stacked_linear: the device's
    /// stacked result against its separate matmuls on the same device (with silu: against the separate
    /// matmuls and silu_mul).
    pub second_max_abs_err: Option<f32>,
    pub second_max_abs_ref: Option<f32>,
    /// rope_qkv: the whole v cache (a copy: exact).
    pub v_max_abs_err: Option<f32>,
    /// stacked_linear: whether the parts were stacked into one weight.
    pub stacked: Option<bool>,
    /// Mean time of one device call over `repeat` back-to-back calls.
    pub device_us: Option<f64>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => bail!("unknown dtype {other:?}"),
    }
}

/// Uniform values in `[lo, hi)` rounded to `dtype`, as f32 on the CPU.
fn uniform(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32, dtype: DType) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_dtype(DType::F32)
}

/// `(max |a - b|, mean |a - b|, max |b|)` over f32 CPU tensors of one shape.
fn diff(a: &Tensor, b: &Tensor) -> Result<(f32, f32, f32)> {
    let (a, b) = (to_cpu_f32(a)?.flatten_all()?, to_cpu_f32(b)?.flatten_all()?);
    if a.dims() != b.dims() {
        bail!("compared tensors differ in size: {:?} vs {:?}", a.dims(), b.dims());
    }
    let d = (&a - &b)?.abs()?;
    let n = d.elem_count().max(1) as f32;
    let max = if d.elem_count() == 0 { 0.0 } else { d.max(0)?.to_scalar::<f32>()? };
    let max_ref = if b.elem_count() == 0 { 0.0 } else { b.abs()?.max(0)?.to_scalar::<f32>()? };
    Ok((max, d.sum_all()?.to_scalar::<f32>()? / n, max_ref))
}

fn to_cpu_f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.to_device(&Device::Cpu)
}

fn on(t: &Tensor, device: &Device, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)?.to_device(device)
}

/// Mean microseconds of `repeat` calls of `f` launched back to back (one synchronize at the end).
fn time(device: &Device, repeat: usize, mut f: impl FnMut() -> Result<()>) -> Result<Option<f64>> {
    if repeat == 0 {
        return Ok(None);
    }
    f()?;
    device.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..repeat {
        f()?;
    }
    device.synchronize()?;
    Ok(Some(t.elapsed().as_secs_f64() * 1e6 / repeat as f64))
}

/// Runs `case` on `device` and the reference on the CPU and compares them.
pub fn compare_with_cpu(device: &Device, case: &FusedCase) -> Result<FusedReport> {
    let dtype = parse_dtype(&case.dtype)?;
    if !device.is_cuda() && dtype != DType::F32 {
        bail!("the CPU reference runs in f32 only");
    }
    let mut rng = StdRng::seed_from_u64(case.seed);
    match case.op.as_str() {
        "silu_mul" => check_silu_mul(device, dtype, case, &mut rng),
        "add_rms_norm" => check_add_rms_norm(device, dtype, case, &mut rng),
        "rope_qkv" => check_rope_qkv(device, dtype, case, &mut rng),
        "stacked_linear" => check_stacked_linear(device, dtype, case, &mut rng),
        other => bail!("unknown fused op {other:?} (silu_mul, add_rms_norm, rope_qkv, stacked_linear)"),
    }
}

fn report(case: &FusedCase, num_tokens: usize, (max, mean, max_ref): (f32, f32, f32)) -> FusedReport {
    FusedReport { op: case.op.clone(), num_tokens, max_abs_err: max, mean_abs_err: mean, max_abs_ref: max_ref, ..Default::default() }
}

fn check_silu_mul(device: &Device, dtype: DType, case: &FusedCase, rng: &mut StdRng) -> Result<FusedReport> {
    let x = uniform(rng, &[case.tokens, 2 * case.ffn], -6.0, 6.0, dtype)?;
    let want = fused::silu_mul_reference(&x)?;
    let xd = on(&x, device, dtype)?;
    let got = fused::silu_mul(&xd)?;
    let mut r = report(case, case.tokens, diff(&got, &want)?);
    r.device_us = time(device, case.repeat, || fused::silu_mul(&xd).map(drop))?;
    Ok(r)
}

fn check_add_rms_norm(device: &Device, dtype: DType, case: &FusedCase, rng: &mut StdRng) -> Result<FusedReport> {
    let shape = [case.tokens, case.hidden];
    let x = uniform(rng, &shape, -2.0, 2.0, dtype)?;
    let res = uniform(rng, &shape, -2.0, 2.0, dtype)?;
    let w = uniform(rng, &[case.hidden], 0.5, 1.5, dtype)?;
    let eps = 1e-5;
    let (want_sum, want_norm) = fused::add_rms_norm_reference(&x, &res, &w, eps)?;
    let (xd, rd, wd) = (on(&x, device, dtype)?, on(&res, device, dtype)?, on(&w, device, dtype)?);
    let (sum, norm) = fused::add_rms_norm(&xd, &rd, &wd, eps)?;
    let mut r = report(case, case.tokens, diff(&sum, &want_sum)?);
    let (e, _, m) = diff(&norm, &want_norm)?;
    (r.second_max_abs_err, r.second_max_abs_ref) = (Some(e), Some(m));
    r.device_us = time(device, case.repeat, || fused::add_rms_norm(&xd, &rd, &wd, eps).map(drop))?;
    Ok(r)
}

/// Scattered block tables (a shuffled pool) and the slots and positions of each sequence's new tokens.
fn random_step(rng: &mut StdRng, seqs: &[(usize, usize)], block_size: usize) -> Result<(AttentionMetadata, Vec<u32>, usize)> {
    let num_blocks = seqs.iter().map(|&(_, ctx)| ctx.div_ceil(block_size)).sum::<usize>() + 3;
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    pool.shuffle(rng);
    let mut meta = AttentionMetadata { slot_mapping: Vec::new(), seqs: Vec::new(), block_size };
    let mut positions = Vec::new();
    let mut next = 0;
    for &(q, ctx) in seqs {
        if q == 0 || q > ctx {
            bail!("sequence ({q}, {ctx}): need 1 <= query_len <= context_len");
        }
        let table = pool[next..next + ctx.div_ceil(block_size)].to_vec();
        next += table.len();
        let query_start = meta.slot_mapping.len();
        for pos in ctx - q..ctx {
            meta.slot_mapping.push(table[pos / block_size] * block_size as u32 + (pos % block_size) as u32);
            positions.push(pos as u32);
        }
        meta.seqs.push(SeqAttention { query_start, query_len: q, context_len: ctx, block_table: table });
    }
    Ok((meta, positions, num_blocks))
}

fn check_rope_qkv(device: &Device, dtype: DType, case: &FusedCase, rng: &mut StdRng) -> Result<FusedReport> {
    let (nh, nkv, hd, bs) = (case.num_heads, case.num_kv_heads, case.head_dim, case.block_size);
    let style = if case.interleaved { RopeStyle::Interleaved } else { RopeStyle::Half };
    let spec = QkvSpec { num_heads: nh, num_kv_heads: nkv, head_dim: hd, style, eps: 1e-6 };
    let (meta, positions, num_blocks) = random_step(rng, &case.seqs, bs)?;
    let n = positions.len();
    // Rope tables as the model builds them (theta 10000), two rows past the longest context.
    let max_pos = case.seqs.iter().map(|&(_, ctx)| ctx).max().unwrap_or(0) + 2;
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10_000f32.powf(2.0 * i as f32 / hd as f32)).collect();
    let freqs: Vec<f32> = (0..max_pos).flat_map(|p| inv.iter().map(move |f| p as f32 * f)).collect();
    let freqs = Tensor::from_vec(freqs, (max_pos, hd / 2), &Device::Cpu)?;
    let cos = freqs.cos()?.to_dtype(dtype)?.to_dtype(DType::F32)?;
    let sin = freqs.sin()?.to_dtype(dtype)?.to_dtype(DType::F32)?;
    let qkv = uniform(rng, &[n, spec.width()], -2.0, 2.0, dtype)?;
    let cache_shape = [num_blocks, bs, nkv, hd];
    let (k0, v0) = (uniform(rng, &cache_shape, -1.0, 1.0, dtype)?, uniform(rng, &cache_shape, -1.0, 1.0, dtype)?);
    let norms = if case.qk_norm {
        Some((uniform(rng, &[hd], 0.5, 1.5, dtype)?, uniform(rng, &[hd], 0.5, 1.5, dtype)?))
    } else {
        None
    };
    let pos_cpu = Tensor::from_vec(positions, n, &Device::Cpu)?;
    let cache = |k: Tensor, v: Tensor| PagedKvCache { layers: vec![LayerKvCache { k, v }], fp8_scales: Vec::new(), num_blocks, block_size: bs, num_kv_heads: nkv, head_dim: hd };

    // Reference: f32 on the CPU.
    let kv_ref = cache(k0.copy()?, v0.copy()?);
    let step_ref = kv_ref.prepare(meta.clone())?;
    let (cos_g, sin_g) = fused::gather_rope(&cos, &sin, &pos_cpu)?;
    let norm_ref = norms.as_ref().map(|(q, k)| QkNorm { q, k });
    let want_q = fused::rope_qkv_reference(&qkv, &cos_g, &sin_g, &spec, norm_ref, &kv_ref, 0, &step_ref)?;

    // Device: the op under test, through the model's entry point.
    let kv_dev = cache(on(&k0, device, dtype)?, on(&v0, device, dtype)?);
    let step_dev = kv_dev.prepare(meta)?;
    let (qkv_d, pos_d) = (on(&qkv, device, dtype)?, pos_cpu.to_device(device)?);
    let (cos_d, sin_d) = (on(&cos, device, dtype)?, on(&sin, device, dtype)?);
    let norms_d = match &norms {
        Some((q, k)) => Some((on(q, device, dtype)?, on(k, device, dtype)?)),
        None => None,
    };
    let norm_d = norms_d.as_ref().map(|(q, k)| QkNorm { q, k });
    let run = || fused::rope_qkv(&qkv_d, &pos_d, &cos_d, &sin_d, &spec, norm_d, &kv_dev, 0, &step_dev);
    let got_q = run()?;
    let mut r = report(case, n, diff(&got_q, &want_q)?);
    let (e, _, m) = diff(&kv_dev.layers[0].k, &kv_ref.layers[0].k)?;
    (r.second_max_abs_err, r.second_max_abs_ref) = (Some(e), Some(m));
    r.v_max_abs_err = Some(diff(&kv_dev.layers[0].v, &kv_ref.layers[0].v)?.0);
    r.device_us = time(device, case.repeat, || run().map(drop))?;
    Ok(r)
}

fn check_stacked_linear(device: &Device, dtype: DType, case: &FusedCase, rng: &mut StdRng) -> Result<FusedReport> {
    let quant = match case.quant.as_deref() {
        None | Some("none") => None,
        Some("q4_0") => Some(GgmlDType::Q4_0),
        Some("q8_0") => Some(GgmlDType::Q8_0),
        Some(other) => bail!("unknown quant {other:?} (none, q4_0, q8_0)"),
    };
    let x = uniform(rng, &[case.tokens, case.hidden], -1.0, 1.0, dtype)?;
    let ws = case.outs.iter().map(|&o| uniform(rng, &[o, case.hidden], -0.1, 0.1, dtype)).collect::<Result<Vec<_>>>()?;
    let linears = |dev: &Device| -> Result<Vec<Linear>> {
        ws.iter()
            .map(|w| {
                let weight = match quant {
                    None => Weight::Dense(on(w, dev, if dev.is_cuda() { dtype } else { DType::F32 })?),
                    Some(q) => {
                        // Quantized on the CPU, the same blocks then loaded onto the device.
                        let t = QTensor::quantize(w, q)?;
                        let t = if dev.is_cpu() { t } else { qtensor_from_ggml(q, &t.data()?, w.dims().to_vec(), dev)? };
                        Weight::Quantized(QMatMul::from_qtensor(t)?)
                    }
                };
                Ok(Linear { weight, bias: None })
            })
            .collect()
    };
    if case.silu && !(case.outs.len() == 2 && case.outs[0] == case.outs[1]) {
        bail!("stacked_linear with silu needs two equal parts (gate, up), got {:?}", case.outs);
    }
    // The reference: the parts one by one on the CPU, concatenated (with silu: then silu(gate) * up).
    let cpu_parts = linears(&Device::Cpu)?;
    let mut want = Tensor::cat(&cpu_parts.iter().map(|l| l.forward(&x)).collect::<Result<Vec<_>>>()?, 1)?;
    let parts = linears(device)?;
    let xd = on(&x, device, if quant.is_some() { DType::F32 } else { dtype })?;
    let mut separate = Tensor::cat(&parts.iter().map(|l| l.forward(&xd)).collect::<Result<Vec<_>>>()?, 1)?;
    if case.silu {
        want = fused::silu_mul_reference(&want)?;
        separate = fused::silu_mul(&separate)?;
    }
    let stacked = StackedLinear::new(parts)?;
    let run = || if case.silu { stacked.forward_silu_mul(&xd) } else { stacked.forward(&xd) };
    let got = run()?;
    let mut r = report(case, case.tokens, diff(&got, &want)?);
    let (e, _, m) = diff(&got, &separate)?;
    (r.second_max_abs_err, r.second_max_abs_ref, r.stacked) = (Some(e), Some(m), Some(stacked.is_stacked()));
    r.device_us = time(device, case.repeat, || run().map(drop))?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(json: &str) -> FusedCase {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_cpu_runs_the_reference_exactly() {
        for c in [
            r#"{"op": "silu_mul", "dtype": "f32", "tokens": 3, "ffn": 40}"#,
            r#"{"op": "add_rms_norm", "dtype": "f32", "tokens": 3, "hidden": 64}"#,
            r#"{"op": "rope_qkv", "dtype": "f32", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "seqs": [[1, 20], [5, 5]]}"#,
            r#"{"op": "rope_qkv", "dtype": "f32", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "seqs": [[3, 9]], "interleaved": true, "qk_norm": true}"#,
        ] {
            let r = compare_with_cpu(&Device::Cpu, &case(c)).unwrap();
            assert_eq!(r.max_abs_err, 0.0, "{c}: {r:?}");
            assert!(r.max_abs_ref > 0.0, "{c}: {r:?}");
            assert!(r.second_max_abs_err.is_none_or(|e| e == 0.0), "{c}: {r:?}");
            assert!(r.v_max_abs_err.is_none_or(|e| e == 0.0), "{c}: {r:?}");
        }
    }

    #[test]
    fn rope_writes_k_and_v_into_the_cache_slots() {
        // The reference against a hand check: v rows land in their slots unchanged, other slots keep
        // their values, and q at position 0 is not rotated.
        let c = case(r#"{"op": "rope_qkv", "dtype": "f32", "num_heads": 2, "num_kv_heads": 1, "head_dim": 8, "seqs": [[2, 2]], "block_size": 4}"#);
        let mut rng = StdRng::seed_from_u64(c.seed);
        let (meta, positions, num_blocks) = random_step(&mut rng, &c.seqs, c.block_size).unwrap();
        assert_eq!(positions, vec![0, 1]);
        let qkv = Tensor::arange(0f32, 2.0 * 32.0, &Device::Cpu).unwrap().reshape((2, 32)).unwrap();
        let zeros = Tensor::zeros((num_blocks, 4, 1, 8), DType::F32, &Device::Cpu).unwrap();
        let kv = PagedKvCache { layers: vec![LayerKvCache { k: zeros.copy().unwrap(), v: zeros }], fp8_scales: Vec::new(), num_blocks, block_size: 4, num_kv_heads: 1, head_dim: 8 };
        let step = kv.prepare(meta.clone()).unwrap();
        let spec = QkvSpec { num_heads: 2, num_kv_heads: 1, head_dim: 8, style: RopeStyle::Half, eps: 1e-6 };
        let freqs = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
        let (cos, sin) = (freqs.cos().unwrap(), freqs.sin().unwrap()); // identity rotation
        let q = fused::rope_qkv(&qkv, &Tensor::new(&[0u32, 1], &Device::Cpu).unwrap(), &cos, &sin, &spec, None, &kv, 0, &step).unwrap();
        assert_eq!(q.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..16], (0..16).map(|i| i as f32).collect::<Vec<_>>()[..]);
        let v = kv.layers[0].v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (t, &slot) in meta.slot_mapping.iter().enumerate() {
            let want: Vec<f32> = (0..8).map(|i| (t * 32 + 24 + i) as f32).collect();
            assert_eq!(v[slot as usize * 8..slot as usize * 8 + 8], want[..]);
        }
        let written: usize = v.iter().filter(|&&x| x != 0.0).count();
        assert_eq!(written, 2 * 8, "only the two slots are written");
    }

    #[test]
    fn stacked_linears_match_the_separate_ones_exactly_on_the_cpu() {
        for quant in ["none", "q4_0", "q8_0"] {
            let c = case(&format!(r#"{{"op": "stacked_linear", "dtype": "f32", "tokens": 3, "hidden": 64, "outs": [64, 32, 32], "quant": "{quant}"}}"#));
            let r = compare_with_cpu(&Device::Cpu, &c).unwrap();
            // Dense weights stay separate on the CPU (exact as before); quantized ones stack exactly.
            assert_eq!(r.stacked, Some(quant != "none"), "{quant}");
            assert_eq!(r.max_abs_err, 0.0, "{quant}: {r:?}");
            assert_eq!(r.second_max_abs_err, Some(0.0), "{quant}: {r:?}");
        }
    }

    #[test]
    fn the_silu_case_runs_the_reference_on_the_cpu_and_needs_two_equal_parts() {
        let c = case(r#"{"op": "stacked_linear", "dtype": "f32", "tokens": 2, "hidden": 64, "outs": [48, 48], "silu": true}"#);
        let r = compare_with_cpu(&Device::Cpu, &c).unwrap();
        assert_eq!((r.max_abs_err, r.second_max_abs_err), (0.0, Some(0.0)), "{r:?}");
        assert!(r.max_abs_ref > 0.0, "{r:?}");
        let bad = case(r#"{"op": "stacked_linear", "dtype": "f32", "tokens": 2, "hidden": 64, "outs": [48, 32], "silu": true}"#);
        let e = compare_with_cpu(&Device::Cpu, &bad).unwrap_err().to_string();
        assert!(e.contains("two equal parts"), "{e}");
    }

    #[test]
    fn mixed_weight_types_stay_separate() {
        let w = Tensor::zeros((32, 64), DType::F32, &Device::Cpu).unwrap();
        let q4 = Linear { weight: Weight::Quantized(QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap()).unwrap()), bias: None };
        let q8 = Linear { weight: Weight::Quantized(QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap()), bias: None };
        let dense = Linear { weight: Weight::Dense(w.clone()), bias: None };
        assert!(!StackedLinear::new(vec![q4.clone(), q8]).unwrap().is_stacked());
        assert!(!StackedLinear::new(vec![q4.clone(), dense.clone()]).unwrap().is_stacked());
        let biased = Linear { weight: Weight::Dense(w), bias: Some(Tensor::ones(32, DType::F32, &Device::Cpu).unwrap()) };
        assert!(!StackedLinear::new(vec![dense.clone(), biased.clone()]).unwrap().is_stacked());
        let both = Linear::stack(&[biased.clone(), biased]).unwrap();
        assert!(both.is_none(), "dense weights stay separate on the CPU");
        let qb = |l: &Linear| Linear { weight: l.weight.clone(), bias: Some(Tensor::ones(32, DType::F32, &Device::Cpu).unwrap()) };
        let both = StackedLinear::new(vec![qb(&q4), qb(&q4)]).unwrap();
        assert!(both.is_stacked(), "quantized parts of one type, all biased");
        let y = both.forward(&Tensor::ones((2, 64), DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(y.dims(), &[2, 64]);
        assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 128.0);
        let separate = StackedLinear::new(vec![q4, dense]).unwrap();
        assert_eq!(separate.forward(&Tensor::ones((2, 64), DType::F32, &Device::Cpu).unwrap()).unwrap().dims(), &[2, 64]);
    }
}
