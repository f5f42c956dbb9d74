//! Test support: runs the KV write and paged attention on a device and on the CPU reference over the
//! same random inputs and reports the differences. The GPU kernel tests drive it through
//! `mlc_llm._core._attention_check`; a CPU unit test keeps the harness itself honest.
//!
//! A case may give the layer a sliding window and a score cap, point the block-table entries before
//! every query's window at a block of NaNs (the placeholder a KV manager may leave after handing those
//! blocks back: one read of it, even masked, turns outputs into NaN), lay the step out as a fixed
//! decode plan (the CUDA-graph path), and give every head a sink (gpt-oss).

use super::plan::FixedDecodeKey;
use super::{AttentionMetadata, AttnParams, LayerKvCache, PagedKvCache, SeqAttention};
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
    /// The layer's score multiplier (default 1/sqrt(head_dim)), cap and sliding window.
    #[serde(default)]
    pub scale: Option<f32>,
    #[serde(default)]
    pub softcap: Option<f32>,
    #[serde(default)]
    pub window: Option<usize>,
    /// Block-table entries wholly before each sequence's first query's window point to a block of NaNs
    /// (on the device and in the reference).
    #[serde(default)]
    pub placeholders: bool,
    /// Plan the step as a fixed decode step padded to this many rows ([`PagedKvCache::prepare_fixed`],
    /// what CUDA graphs replay); every sequence must be a decode `(1, n)`. CUDA only (ignored on CPU).
    #[serde(default)]
    pub fixed_bucket: Option<usize>,
    /// gpt-oss's per-head sinks, of size `a`: head `h`'s sink is `a * [2, -1, 0.5, 0.1][h % 4]` plus
    /// uniform noise in (-0.25, 0.25) (with `a` = 4: above every score of a row, below all of them,
    /// among them). None: no sinks.
    #[serde(default)]
    pub sinks: Option<f32>,
}

impl AttentionCase {
    fn params(&self) -> AttnParams {
        let scale = self.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt());
        AttnParams { scale, softcap: self.softcap, window: self.window }
    }
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
    /// Largest difference between the device's and the CPU's caches after the write (0 when exact;
    /// NaN placeholders count as equal to themselves).
    pub kv_max_abs_err: Option<f32>,
    /// Non-finite values in the device's output rows (a read of a NaN placeholder shows here).
    pub nonfinite: usize,
    /// Block-table entries set to the NaN placeholder.
    pub placeholders: usize,
    /// With a window or a cap (and no placeholders): the same prepared step attended as a plain causal
    /// layer, against its own reference (one plan serves both kinds of layer).
    pub plain_max_abs_err: Option<f32>,
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

/// Random block tables (a shuffled block pool, so sequences' blocks are scattered) and slot mapping;
/// also the number of blocks and one block no sequence uses.
fn random_meta(rng: &mut StdRng, seqs: &[(usize, usize)], block_size: usize) -> Result<(AttentionMetadata, usize, u32)> {
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
    Ok((meta, num_blocks, pool[needed]))
}

/// Points every block-table entry wholly before its sequence's first query's window at `block`;
/// returns how many entries it replaced.
fn set_placeholders(meta: &mut AttentionMetadata, params: &AttnParams, block: u32) -> usize {
    let bs = meta.block_size;
    let mut n = 0;
    for seq in &mut meta.seqs {
        let first_key = params.window_start(seq.context_len - seq.query_len);
        for b in seq.block_table.iter_mut().take(first_key / bs) {
            *b = block;
            n += 1;
        }
    }
    n
}

/// Random `[n, ..rest]` rows in `(-bound, bound)`, with `block`'s rows NaN when given (caches).
fn random_rows(rng: &mut StdRng, shape: &[usize], bound: f32, nan_row: Option<usize>) -> Result<Tensor> {
    let mut t = uniform(rng, shape, bound)?;
    if let Some(r) = nan_row {
        let row: usize = shape[1..].iter().product();
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        v[r * row..(r + 1) * row].fill(f32::NAN);
        t = Tensor::from_vec(v, shape, &Device::Cpu)?;
    }
    Ok(t)
}

fn one_layer(k: Tensor, v: Tensor, case: &AttentionCase, num_blocks: usize) -> PagedKvCache {
    PagedKvCache {
        layers: vec![LayerKvCache { k, v }],
        fp8_scales: Vec::new(),
        num_blocks,
        block_size: case.block_size,
        num_kv_heads: case.num_kv_heads,
        head_dim: case.head_dim,
    }
}

/// Largest and mean |a - b|; NaN on both sides counts as equal, NaN on one side as infinitely far.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
    let (a, b) = (a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    if a.len() != b.len() {
        bail!("compared tensors differ in size: {} vs {}", a.len(), b.len());
    }
    let (mut max, mut sum) = (0f32, 0f64);
    for (x, y) in a.iter().zip(&b) {
        let d = match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (x - y).abs(),
            _ => f32::INFINITY,
        };
        max = max.max(d);
        sum += d as f64;
    }
    Ok((max, (sum / a.len().max(1) as f64) as f32))
}

fn to_cpu_f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.to_device(&Device::Cpu)
}

/// `x` with random rows appended up to `rows` (the padding rows of a fixed decode plan).
fn pad_rows(rng: &mut StdRng, x: &Tensor, rows: usize) -> Result<Tensor> {
    let dims = x.dims();
    if rows <= dims[0] {
        return Ok(x.clone());
    }
    let mut shape = dims.to_vec();
    shape[0] = rows - dims[0];
    Tensor::cat(&[x, &uniform(rng, &shape, 1.0)?], 0)
}

/// Runs `case` on `device` and on the CPU reference and compares outputs and caches.
pub fn compare_with_cpu(device: &Device, case: &AttentionCase) -> Result<AttentionReport> {
    let dtype = parse_dtype(&case.dtype)?;
    let (h, kvh, d, bs) = (case.num_heads, case.num_kv_heads, case.head_dim, case.block_size);
    let params = case.params();
    params.validate()?;
    let mut rng = StdRng::seed_from_u64(case.seed);
    let (mut meta, num_blocks, spare) = random_meta(&mut rng, &case.seqs, bs)?;
    let placeholders = if case.placeholders { set_placeholders(&mut meta, &params, spare) } else { 0 };
    let nan_block = case.placeholders.then_some(spare as usize);
    let t = meta.num_tokens();
    // Every value goes through `dtype` first, so both sides start from identical inputs.
    let round = |x: Tensor| -> Result<Tensor> { x.to_dtype(dtype)?.to_dtype(DType::F32) };
    let k_cache = round(random_rows(&mut rng, &[num_blocks, bs, kvh, d], 1.0, nan_block)?)?; // [num_blocks, block_size, kv_heads, head_dim]
    let v_cache = round(random_rows(&mut rng, &[num_blocks, bs, kvh, d], 1.0, nan_block)?)?;
    let q = round(uniform(&mut rng, &[t, h, d], 3.0)?)?; // [num_tokens, heads, head_dim]
    let k_new = round(uniform(&mut rng, &[t, kvh, d], 1.0)?)?; // [num_tokens, kv_heads, head_dim]
    let v_new = round(uniform(&mut rng, &[t, kvh, d], 1.0)?)?;

    let on_dev = |x: &Tensor| -> Result<Tensor> { x.to_dtype(dtype)?.to_device(device) };
    // `copy`: the device caches must not alias the reference's (on the CPU, to_device is a no-op).
    let dev = one_layer(on_dev(&k_cache)?.copy()?, on_dev(&v_cache)?.copy()?, case, num_blocks);
    let fixed = case.fixed_bucket.filter(|_| device.is_cuda());
    let rows = fixed.unwrap_or(t);
    let q_d = on_dev(&pad_rows(&mut rng, &q, rows)?)?; // [rows, heads, head_dim]
    let k_d = on_dev(&pad_rows(&mut rng, &k_new, rows)?)?; // [rows, kv_heads, head_dim]
    let v_d = on_dev(&pad_rows(&mut rng, &v_new, rows)?)?;
    // Drawn last, so that cases without sinks keep their inputs.
    let sinks = match case.sinks {
        Some(a) => {
            let v: Vec<f32> = (0..h).map(|i| a * [2.0, -1.0, 0.5, 0.1][i % 4] + rng.random_range(-0.25f32..0.25)).collect();
            Some(Tensor::from_vec(v, h, &Device::Cpu)?) // [heads] f32
        }
        None => None,
    };
    let sinks_d = sinks.as_ref().map(|s| s.to_device(device)).transpose()?;
    device.synchronize()?;
    let start = std::time::Instant::now();
    let step = match fixed {
        Some(bucket) => prepare_fixed(&dev, meta, bucket, device)?,
        None => dev.prepare(meta)?,
    };
    dev.write(0, &k_d, &v_d, &step)?;
    let out = dev.attend_with_sinks(0, &q_d, &step, &params, sinks_d.as_ref())?.narrow(0, 0, t)?; // [num_tokens, heads, head_dim]
    device.synchronize()?;
    let device_ms = start.elapsed().as_secs_f64() * 1e3;
    let attend_us = if case.repeat > 0 {
        let start = std::time::Instant::now();
        for _ in 0..case.repeat {
            dev.attend_with_sinks(0, &q_d, &step, &params, sinks_d.as_ref())?;
        }
        device.synchronize()?;
        Some(start.elapsed().as_secs_f64() * 1e6 / case.repeat as f64)
    } else {
        None
    };
    let out = to_cpu_f32(&out)?;
    let nonfinite = out.flatten_all()?.to_vec1::<f32>()?.iter().filter(|x| !x.is_finite()).count();

    let mut diffs = None;
    let mut plain_max_abs_err = None;
    if case.reference {
        let cpu = one_layer(k_cache, v_cache, case, num_blocks);
        let cpu_step = cpu.prepare(step.meta().clone())?;
        cpu.write(0, &k_new, &v_new, &cpu_step)?;
        let reference = cpu.attend_with_sinks(0, &q, &cpu_step, &params, sinks.as_ref())?; // [num_tokens, heads, head_dim]
        let (max_err, mean_err) = max_abs_diff(&out, &reference)?;
        let (k_err, _) = max_abs_diff(&to_cpu_f32(&dev.layers[0].k)?, &cpu.layers[0].k)?;
        let (v_err, _) = max_abs_diff(&to_cpu_f32(&dev.layers[0].v)?, &cpu.layers[0].v)?;
        let max_ref = reference.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        diffs = Some((max_err, mean_err, max_ref, k_err.max(v_err)));
        let plain = AttnParams::causal(params.scale);
        if params != plain && !case.placeholders {
            let out = to_cpu_f32(&dev.attend_with(0, &q_d, &step, &plain)?.narrow(0, 0, t)?)?;
            plain_max_abs_err = Some(max_abs_diff(&out, &cpu.attend_with(0, &q, &cpu_step, &plain)?)?.0);
        }
    }
    let plan = step.plan();
    Ok(AttentionReport {
        num_tokens: t,
        max_abs_err: diffs.map(|d| d.0),
        mean_abs_err: diffs.map(|d| d.1),
        max_abs_ref: diffs.map(|d| d.2),
        kv_max_abs_err: diffs.map(|d| d.3),
        nonfinite,
        placeholders,
        plain_max_abs_err,
        num_work: plan.map_or(0, |p| p.num_work),
        num_partials: plan.map_or(0, |p| p.num_partials),
        max_splits: plan.map_or(0, |p| p.max_splits),
        device_ms,
        attend_us,
    })
}

/// The step as a fixed decode plan of `bucket` rows, uploaded into a step buffer as CUDA graphs use it.
fn prepare_fixed(cache: &PagedKvCache, meta: AttentionMetadata, bucket: usize, device: &Device) -> Result<super::StepAttention> {
    let n = meta.seqs.len();
    let max_context = meta.seqs.iter().map(|s| s.context_len).max().unwrap_or(1);
    let Some(key) = FixedDecodeKey::for_step(n, max_context, bucket, usize::MAX >> 1, cache.block_size) else {
        bail!("fixed decode: {n} sequences do not fit a bucket of {bucket}");
    };
    let buffer = Tensor::zeros(key.packed_len(), DType::U32, device)?; // [packed_len] u32
    let tokens = vec![0u32; n];
    let positions: Vec<u32> = meta.seqs.iter().map(|s| (s.context_len - 1) as u32).collect();
    cache.prepare_fixed(meta, &tokens, &positions, key, &buffer)?.ok_or_else(|| candle_core::Error::Msg("fixed decode: the step is not a decode step that fits its key".into()))
}

/// Malformed calls on `device`, each of which must fail with an error (never a panic): returns
/// `(case, Some(error message))`, or `None` for a call that wrongly succeeded.
pub fn error_cases(device: &Device) -> Result<Vec<(String, Option<String>)>> {
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    let other = if device.is_cuda() { DType::F32 } else { DType::BF16 };
    let (h, kvh, d, bs) = (4, 2, 64, 16);
    let mut rng = StdRng::seed_from_u64(7);
    let (meta, num_blocks, _) = random_meta(&mut rng, &[(3, 20), (1, 5)], bs)?;
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
    let q = zeros(&[t, h, d], dtype)?;
    let bad = |softcap, window| AttnParams { scale, softcap, window };
    record("softcap of 0", cache.attend_with(0, &q, &step, &bad(Some(0.0), None)).map(drop));
    record("negative softcap", cache.attend_with(0, &q, &step, &bad(Some(-30.0), None)).map(drop));
    record("window of 0 keys", cache.attend_with(0, &q, &step, &bad(None, Some(0))).map(drop));
    record("scale of 0", cache.attend_with(0, &q, &step, &AttnParams::causal(0.0)).map(drop));
    let with_sinks = |sinks: Tensor| cache.attend_with_sinks(0, &q, &step, &AttnParams::causal(scale), Some(&sinks)).map(drop);
    record("sinks for another head count", with_sinks(zeros(&[h + 1], DType::F32)?));
    record("sinks not in f32", with_sinks(zeros(&[h], DType::BF16)?));
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

    fn case(seqs: Vec<(usize, usize)>, block_size: usize) -> AttentionCase {
        AttentionCase {
            dtype: "f32".into(),
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            block_size,
            seqs,
            seed: 3,
            reference: true,
            repeat: 0,
            scale: None,
            softcap: None,
            window: None,
            placeholders: false,
            fixed_bucket: None,
            sinks: None,
        }
    }

    #[test]
    fn cpu_against_itself_is_exact_and_errors_are_errors() {
        let r = compare_with_cpu(&Device::Cpu, &AttentionCase { repeat: 2, ..case(vec![(1, 9), (5, 5), (2, 8)], 4) }).unwrap();
        assert_eq!(r.num_tokens, 8);
        assert_eq!(r.max_abs_err, Some(0.0));
        assert_eq!(r.kv_max_abs_err, Some(0.0));
        assert!(r.max_abs_ref.unwrap() > 0.0);
        assert!(r.attend_us.is_some());
        assert_eq!((r.nonfinite, r.placeholders, r.plain_max_abs_err), (0, 0, None));
        for (case, err) in error_cases(&Device::Cpu).unwrap() {
            assert!(err.is_some(), "{case} succeeded");
        }
    }

    #[test]
    fn windows_caps_and_nan_placeholders() {
        let seqs = vec![(1, 40), (20, 20), (9, 33), (1, 5)];
        let windowed = AttentionCase { window: Some(6), softcap: Some(1.5), ..case(seqs, 4) };
        let r = compare_with_cpu(&Device::Cpu, &windowed).unwrap();
        assert_eq!((r.max_abs_err, r.plain_max_abs_err, r.nonfinite), (Some(0.0), Some(0.0), 0));
        // Entries before the window point at a NaN block: nothing reads it (else NaN outputs), and the
        // caches, NaN block included, still match.
        let r = compare_with_cpu(&Device::Cpu, &AttentionCase { placeholders: true, ..windowed }).unwrap();
        // Windows start at 34 (decode at 39) and 19 (first query of the chunk at 24): blocks of 4.
        assert_eq!(r.placeholders, 8 + 4);
        assert_eq!((r.max_abs_err, r.kv_max_abs_err, r.nonfinite), (Some(0.0), Some(0.0), 0));
        // A fixed plan is CUDA only: on the CPU the case runs as a plain step.
        let r = compare_with_cpu(&Device::Cpu, &AttentionCase { fixed_bucket: Some(4), ..case(vec![(1, 30), (1, 3)], 4) }).unwrap();
        assert_eq!((r.num_tokens, r.max_abs_err), (2, Some(0.0)));
    }

    #[test]
    fn sinks_reach_both_sides() {
        let plain = case(vec![(1, 40), (20, 20), (3, 9)], 4);
        let with = compare_with_cpu(&Device::Cpu, &AttentionCase { sinks: Some(4.0), ..plain.clone() }).unwrap();
        assert_eq!((with.max_abs_err, with.nonfinite), (Some(0.0), 0));
        // Same inputs (the sinks are drawn last): a sink only scales each row's output down.
        let without = compare_with_cpu(&Device::Cpu, &plain).unwrap();
        assert!(with.max_abs_ref.unwrap() < without.max_abs_ref.unwrap(), "{with:?} vs {without:?}");
    }
}
