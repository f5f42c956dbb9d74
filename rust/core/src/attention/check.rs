//! Test support: runs the KV write and paged attention on a device and on the CPU reference over the
//! same random inputs and reports the differences. The GPU kernel tests drive it through
//! `mlc_llm._core._attention_check`; a CPU unit test keeps the harness itself honest.

use super::{AttentionMetadata, LayerKvCache, PagedKvCache, SeqAttention};
use candle_core::{bail, DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One random step: `seqs` are `(query_len, context_len)` pairs (decode = `(1, n)`, a prefill chunk
/// = `(q, n)` with its first `n - q` positions already cached).
#[derive(Debug, Clone, Deserialize)]
pub struct AttentionCase {
    /// "f32", "bf16" or "f16": the device's cache and q dtype (the CPU reference runs in f32 on the
    /// same values, rounded to this dtype).
    pub dtype: String,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub seqs: Vec<(usize, usize)>,
    #[serde(default)]
    pub seed: u64,
    /// Also compute the CPU reference and compare (off for timing-only cases, whose reference would
    /// take long on the CPU).
    #[serde(default = "yes")]
    pub reference: bool,
    /// After the checked run, time this many further attend calls (launched back to back, one
    /// synchronize at the end) and report the mean per call.
    #[serde(default)]
    pub repeat: usize,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize)]
pub struct AttentionReport {
    pub num_tokens: usize,
    /// Output differences against the CPU reference (`None` without a reference).
    pub max_abs_err: Option<f32>,
    pub mean_abs_err: Option<f32>,
    pub max_abs_ref: Option<f32>,
    /// Largest difference between the device's and the CPU's caches after the write (0 when exact).
    pub kv_max_abs_err: Option<f32>,
    /// Split plan of the device step (all 0 on CPU).
    pub num_work: usize,
    pub num_partials: usize,
    pub max_splits: usize,
    /// Wall time of the device's first prepare + write + attend (synchronized), for information only.
    pub device_ms: f64,
    /// Mean time of one attend call over `repeat` back-to-back calls (`None` when `repeat` is 0).
    pub attend_us: Option<f64>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => bail!("unknown dtype {other:?}"),
    }
}

fn uniform(rng: &mut StdRng, shape: &[usize], bound: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Random block tables (a shuffled block pool, so sequences' blocks are scattered) and slot mapping.
fn random_meta(rng: &mut StdRng, seqs: &[(usize, usize)], block_size: usize) -> Result<(AttentionMetadata, usize)> {
    let needed: usize = seqs.iter().map(|&(_, ctx)| ctx.div_ceil(block_size)).sum();
    let num_blocks = needed + 3;
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    pool.shuffle(rng);
    let mut meta = AttentionMetadata { slot_mapping: Vec::new(), seqs: Vec::new(), block_size };
    let mut next = 0;
    for &(q, ctx) in seqs {
        if q == 0 || q > ctx {
            bail!("sequence ({q}, {ctx}): need 1 <= query_len <= context_len");
        }
        let nb = ctx.div_ceil(block_size);
        let table = pool[next..next + nb].to_vec();
        next += nb;
        let query_start = meta.slot_mapping.len();
        for pos in ctx - q..ctx {
            meta.slot_mapping.push(table[pos / block_size] * block_size as u32 + (pos % block_size) as u32);
        }
        meta.seqs.push(SeqAttention { query_start, query_len: q, context_len: ctx, block_table: table });
    }
    Ok((meta, num_blocks))
}

fn one_layer(k: Tensor, v: Tensor, case: &AttentionCase, num_blocks: usize) -> PagedKvCache {
    PagedKvCache {
        layers: vec![LayerKvCache { k, v }],
        num_blocks,
        block_size: case.block_size,
        num_kv_heads: case.num_kv_heads,
        head_dim: case.head_dim,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
    let d = (a - b)?.abs()?.flatten_all()?;
    let n = d.elem_count().max(1) as f32;
    Ok((d.max(0)?.to_scalar::<f32>()?, d.sum_all()?.to_scalar::<f32>()? / n))
}

fn to_cpu_f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.to_device(&Device::Cpu)
}

/// Runs `case` on `device` and on the CPU reference and compares outputs and caches.
pub fn compare_with_cpu(device: &Device, case: &AttentionCase) -> Result<AttentionReport> {
    let dtype = parse_dtype(&case.dtype)?;
    let (h, kvh, d, bs) = (case.num_heads, case.num_kv_heads, case.head_dim, case.block_size);
    let mut rng = StdRng::seed_from_u64(case.seed);
    let (meta, num_blocks) = random_meta(&mut rng, &case.seqs, bs)?;
    let t = meta.num_tokens();
    // Every value goes through `dtype` first, so both sides start from identical inputs.
    let round = |x: Tensor| -> Result<Tensor> { x.to_dtype(dtype)?.to_dtype(DType::F32) };
    let k_cache = round(uniform(&mut rng, &[num_blocks, bs, kvh, d], 1.0)?)?; // [num_blocks, block_size, kv_heads, head_dim]
    let v_cache = round(uniform(&mut rng, &[num_blocks, bs, kvh, d], 1.0)?)?;
    let q = round(uniform(&mut rng, &[t, h, d], 3.0)?)?; // [num_tokens, heads, head_dim]
    let k_new = round(uniform(&mut rng, &[t, kvh, d], 1.0)?)?; // [num_tokens, kv_heads, head_dim]
    let v_new = round(uniform(&mut rng, &[t, kvh, d], 1.0)?)?;
    let scale = 1.0 / (d as f32).sqrt();

    let on_dev = |x: &Tensor| -> Result<Tensor> { x.to_dtype(dtype)?.to_device(device) };
    // `copy`: the device caches must not alias the reference's (on the CPU, to_device is a no-op).
    let dev = one_layer(on_dev(&k_cache)?.copy()?, on_dev(&v_cache)?.copy()?, case, num_blocks);
    let (q_d, k_d, v_d) = (on_dev(&q)?, on_dev(&k_new)?, on_dev(&v_new)?);
    device.synchronize()?;
    let start = std::time::Instant::now();
    let step = dev.prepare(meta)?;
    dev.write(0, &k_d, &v_d, &step)?;
    let out = dev.attend(0, &q_d, &step, scale)?;
    device.synchronize()?;
    let device_ms = start.elapsed().as_secs_f64() * 1e3;
    let attend_us = if case.repeat > 0 {
        let start = std::time::Instant::now();
        for _ in 0..case.repeat {
            dev.attend(0, &q_d, &step, scale)?;
        }
        device.synchronize()?;
        Some(start.elapsed().as_secs_f64() * 1e6 / case.repeat as f64)
    } else {
        None
    };

    let mut diffs = None;
    if case.reference {
        let cpu = one_layer(k_cache, v_cache, case, num_blocks);
        let cpu_step = cpu.prepare(step.meta().clone())?;
        cpu.write(0, &k_new, &v_new, &cpu_step)?;
        let reference = cpu.attend(0, &q, &cpu_step, scale)?; // [num_tokens, heads, head_dim]
        let (max_err, mean_err) = max_abs_diff(&to_cpu_f32(&out)?, &reference)?;
        let (k_err, _) = max_abs_diff(&to_cpu_f32(&dev.layers[0].k)?, &cpu.layers[0].k)?;
        let (v_err, _) = max_abs_diff(&to_cpu_f32(&dev.layers[0].v)?, &cpu.layers[0].v)?;
        let max_ref = reference.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        diffs = Some((max_err, mean_err, max_ref, k_err.max(v_err)));
    }
    let plan = step.plan();
    Ok(AttentionReport {
        num_tokens: t,
        max_abs_err: diffs.map(|d| d.0),
        mean_abs_err: diffs.map(|d| d.1),
        max_abs_ref: diffs.map(|d| d.2),
        kv_max_abs_err: diffs.map(|d| d.3),
        num_work: plan.map_or(0, |p| p.num_work),
        num_partials: plan.map_or(0, |p| p.num_partials),
        max_splits: plan.map_or(0, |p| p.max_splits),
        device_ms,
        attend_us,
    })
}

/// Malformed calls on `device`, each of which must fail with an error (never a panic): returns
/// `(case, Some(error message))`, or `None` for a call that wrongly succeeded.
pub fn error_cases(device: &Device) -> Result<Vec<(String, Option<String>)>> {
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    let other = if device.is_cuda() { DType::F32 } else { DType::BF16 };
    let (h, kvh, d, bs) = (4, 2, 64, 16);
    let mut rng = StdRng::seed_from_u64(7);
    let (meta, num_blocks) = random_meta(&mut rng, &[(3, 20), (1, 5)], bs)?;
    let t = meta.num_tokens();
    let zeros = |shape: &[usize], dt: DType| Tensor::zeros(shape, dt, device);
    let cache = PagedKvCache::new(1, num_blocks, bs, kvh, d, dtype, device)?;
    let step = cache.prepare(meta.clone())?;
    let scale = 0.125;
    let mut out = Vec::new();
    let mut record = |case: &str, r: Result<()>| out.push((case.to_string(), r.err().map(|e| e.to_string())));

    record("q dtype differs from the cache", cache.attend(0, &zeros(&[t, h, d], other)?, &step, scale).map(drop));
    record("q head_dim differs from the cache", cache.attend(0, &zeros(&[t, h, d + 8], dtype)?, &step, scale).map(drop));
    record("q heads not a multiple of kv heads", cache.attend(0, &zeros(&[t, 3, d], dtype)?, &step, scale).map(drop));
    record("q token count differs from the step", cache.attend(0, &zeros(&[t + 1, h, d], dtype)?, &step, scale).map(drop));
    record("layer outside the cache", cache.attend(1, &zeros(&[t, h, d], dtype)?, &step, scale).map(drop));
    let k_bad = zeros(&[t, kvh + 1, d], dtype)?;
    record("new rows with the wrong kv heads", cache.write(0, &k_bad, &k_bad, &step));
    let k_other = zeros(&[t, kvh, d], other)?;
    record("new rows of another dtype", cache.write(0, &k_other, &k_other, &step));
    let mut wrong_bs = meta.clone();
    wrong_bs.block_size = 8;
    record("metadata block size differs from the cache", cache.prepare(wrong_bs).map(drop));
    let mut outside = meta.clone();
    outside.seqs[0].block_table[0] = num_blocks as u32;
    record("block id outside the cache", cache.prepare(outside).map(drop));
    let mut slot = meta;
    slot.slot_mapping[0] = (num_blocks * bs) as u32;
    record("slot outside the cache", cache.prepare(slot).map(drop));
    if device.is_cuda() {
        let big = PagedKvCache::new(1, num_blocks, bs, kvh, 512, dtype, device)?;
        let big_step = big.prepare(random_meta(&mut StdRng::seed_from_u64(7), &[(3, 20), (1, 5)], bs)?.0)?;
        record("head_dim above the kernels' limit", big.attend(0, &zeros(&[t, h, 512], dtype)?, &big_step, scale).map(drop));
        let cpu_step = PagedKvCache::new(1, num_blocks, bs, kvh, d, DType::F32, &Device::Cpu)?.prepare(step.meta().clone())?;
        record("step prepared for a CPU cache", cache.attend(0, &zeros(&[t, h, d], dtype)?, &cpu_step, scale).map(drop));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_against_itself_is_exact_and_errors_are_errors() {
        let case = AttentionCase {
            dtype: "f32".into(),
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            block_size: 4,
            seqs: vec![(1, 9), (5, 5), (2, 8)],
            seed: 3,
            reference: true,
            repeat: 2,
        };
        let r = compare_with_cpu(&Device::Cpu, &case).unwrap();
        assert_eq!(r.num_tokens, 8);
        assert_eq!(r.max_abs_err, Some(0.0));
        assert_eq!(r.kv_max_abs_err, Some(0.0));
        assert!(r.max_abs_ref.unwrap() > 0.0);
        assert!(r.attend_us.is_some());
        for (case, err) in error_cases(&Device::Cpu).unwrap() {
            assert!(err.is_some(), "{case} succeeded");
        }
    }
}
