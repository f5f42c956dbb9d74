//! Test support: runs the KV write and paged attention on a device and on the CPU reference over the
//! same random inputs and reports the differences. The GPU kernel tests drive it through
//! `mlc_llm._core._attention_check`; a CPU unit test keeps the harness itself honest.
//!
//! A case may give the layer a sliding window and a score cap, point the block-table entries before
//! every query's window at a block of NaNs (the placeholder a KV manager may leave after handing those
//! blocks back: one read of it, even masked, turns outputs into NaN), lay the step out as a fixed
//! decode plan (the CUDA-graph path), and give every head a sink (gpt-oss).
//!
//! With `kv_dtype` "fp8" both caches are FP8 e4m3 ([`PagedKvCache::new`] with [`DType::F8E4M3`], so each
//! has its row scales): the random context is written into every slot through [`PagedKvCache::write`] on
//! both sides (the device from `dtype` rows, the reference from the same rows widened to f32), so the
//! device's quantization is checked against the CPU's on every row, then the step runs as above. Both
//! sides then hold the same e4m3 values and scales, and the attention differences are those of `dtype`.

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
    /// The caches' dtype: "fp8" / "fp8_e4m3" for an FP8 e4m3 cache with per-row scales (`dtype` is then
    /// that of q, the new K/V rows and the output); None: `dtype`.
    #[serde(default)]
    pub kv_dtype: Option<String>,
}

impl AttentionCase {
    fn params(&self) -> AttnParams {
        let scale = self.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt());
        AttnParams { scale, softcap: self.softcap, window: self.window }
    }

    /// Whether the caches are FP8 e4m3.
    fn fp8(&self) -> Result<bool> {
        match self.kv_dtype.as_deref() {
            None => Ok(false),
            Some("fp8" | "fp8_e4m3" | "float8_e4m3") => Ok(true),
            Some(other) if parse_dtype(other)? == parse_dtype(&self.dtype)? => Ok(false),
            Some(other) => bail!("kv_dtype {other:?}: a cache is either of the case's dtype ({}) or fp8", self.dtype),
        }
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
    /// NaN placeholders count as equal to themselves). FP8 caches: of the values times their row scales
    /// and of the scales themselves.
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

/// A one-layer cache on `device` holding the random context `k` / `v` (`[num_blocks, block_size,
/// kv_heads, head_dim]` f32, already rounded to the case's dtype) as `rows` values: the tensors
/// themselves (copied: the caches of the two sides must not alias), or with `fp8` an e4m3 cache from
/// [`PagedKvCache::new`] into whose every slot they are written by [`PagedKvCache::write`], as `rows`
/// (prefill steps over the blocks in order). `nan_block`: that block holds NaNs, the
/// placeholder nothing may read; in an e4m3 cache its values and its row scales are NaN, set after the
/// write (a write of NaN rows would leave its scales to the max of NaNs, which need not match).
#[allow(clippy::too_many_arguments)]
fn context_cache(case: &AttentionCase, fp8: bool, k: &Tensor, v: &Tensor, num_blocks: usize, nan_block: Option<usize>, rows: DType, device: &Device) -> Result<PagedKvCache> {
    let (bs, kvh, d) = (case.block_size, case.num_kv_heads, case.head_dim);
    let on_dev = |x: &Tensor| -> Result<Tensor> { x.to_dtype(rows)?.to_device(device)?.copy() };
    if !fp8 {
        let layers = vec![LayerKvCache { k: on_dev(k)?, v: on_dev(v)? }];
        return Ok(PagedKvCache { layers, fp8_scales: Vec::new(), num_blocks, block_size: bs, num_kv_heads: kvh, head_dim: d });
    }
    let cache = PagedKvCache::new(1, num_blocks, bs, kvh, d, DType::F8E4M3, device)?;
    // Prefill steps of up to 8192 slots (whole blocks), each block's rows at its own slots.
    let per_step = (8192 / bs).max(1);
    for first in (0..num_blocks).step_by(per_step) {
        let nb = per_step.min(num_blocks - first);
        let n = nb * bs;
        let seq = SeqAttention { query_start: 0, query_len: n, context_len: n, block_table: (first as u32..(first + nb) as u32).collect() };
        let slots = ((first * bs) as u32..((first + nb) * bs) as u32).collect();
        let step = cache.prepare(AttentionMetadata { slot_mapping: slots, seqs: vec![seq], block_size: bs })?;
        let rows = |x: &Tensor| on_dev(&x.narrow(0, first, nb)?.reshape((n, kvh, d))?); // [n, kv_heads, head_dim]
        cache.write(0, &rows(k)?, &rows(v)?, &step)?;
    }
    if let Some(b) = nan_block {
        // e4m3 NaN bytes, made on the CPU (candle's CUDA backend may not cast to F8E4M3).
        let nan = Tensor::full(f32::NAN, (1, bs, kvh, d), &Device::Cpu)?.to_dtype(DType::F8E4M3)?.to_device(device)?; // [1, block_size, kv_heads, head_dim]
        let nan_scale = Tensor::full(f32::NAN, (1, bs, kvh, 1), device)?; // [1, block_size, kv_heads, 1]
        for (c, s) in [(&cache.layers[0].k, &cache.fp8_scales[0].k), (&cache.layers[0].v, &cache.fp8_scales[0].v)] {
            c.slice_set(&nan, 0, b)?;
            s.slice_set(&nan_scale, 0, b)?;
        }
    }
    Ok(cache)
}

/// A cache's contents as CPU f32 tensors to compare: K and V, or for an e4m3 cache K and V times their
/// row scales and the scales themselves (moved to the CPU before any cast from F8E4M3).
fn cache_values(cache: &PagedKvCache) -> Result<Vec<Tensor>> {
    let (k, v) = (&cache.layers[0].k, &cache.layers[0].v);
    let Some(s) = cache.fp8_scales.first() else { return Ok(vec![to_cpu_f32(k)?, to_cpu_f32(v)?]) };
    let cpu = |x: &Tensor| -> Result<Tensor> { x.to_device(&Device::Cpu)?.to_dtype(DType::F32) };
    let (ks, vs) = (cpu(&s.k)?, cpu(&s.v)?); // [num_blocks, block_size, kv_heads, 1]
    Ok(vec![cpu(k)?.broadcast_mul(&ks)?, cpu(v)?.broadcast_mul(&vs)?, ks, vs])
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
    let fp8 = case.fp8()?;
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
    // An e4m3 cache gets its NaN block after the write (`context_cache`); the same random draws either way.
    let nan_rows = nan_block.filter(|_| !fp8);
    let k_cache = round(random_rows(&mut rng, &[num_blocks, bs, kvh, d], 1.0, nan_rows)?)?; // [num_blocks, block_size, kv_heads, head_dim]
    let v_cache = round(random_rows(&mut rng, &[num_blocks, bs, kvh, d], 1.0, nan_rows)?)?;
    let q = round(uniform(&mut rng, &[t, h, d], 3.0)?)?; // [num_tokens, heads, head_dim]
    let k_new = round(uniform(&mut rng, &[t, kvh, d], 1.0)?)?; // [num_tokens, kv_heads, head_dim]
    let v_new = round(uniform(&mut rng, &[t, kvh, d], 1.0)?)?;

    let on_dev = |x: &Tensor| -> Result<Tensor> { x.to_dtype(dtype)?.to_device(device) };
    let dev = context_cache(case, fp8, &k_cache, &v_cache, num_blocks, nan_block, dtype, device)?;
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
        let cpu = context_cache(case, fp8, &k_cache, &v_cache, num_blocks, nan_block, DType::F32, &Device::Cpu)?;
        let cpu_step = cpu.prepare(step.meta().clone())?;
        cpu.write(0, &k_new, &v_new, &cpu_step)?;
        let reference = cpu.attend_with_sinks(0, &q, &cpu_step, &params, sinks.as_ref())?; // [num_tokens, heads, head_dim]
        let (max_err, mean_err) = max_abs_diff(&out, &reference)?;
        let mut kv_err = 0f32;
        for (a, b) in cache_values(&dev)?.iter().zip(&cache_values(&cpu)?) {
            kv_err = kv_err.max(max_abs_diff(a, b)?.0);
        }
        let max_ref = reference.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        diffs = Some((max_err, mean_err, max_ref, kv_err));
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
            kv_dtype: None,
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

    #[test]
    fn fp8_caches_are_written_and_compared_on_both_sides() {
        let seqs = vec![(1, 40), (20, 20), (9, 33), (1, 5)];
        let fp8 = |c: AttentionCase| AttentionCase { kv_dtype: Some("fp8".into()), ..c };
        let base = AttentionCase { window: Some(6), softcap: Some(1.5), ..case(seqs, 4) };
        let r = compare_with_cpu(&Device::Cpu, &fp8(base.clone())).unwrap();
        assert_eq!((r.max_abs_err, r.kv_max_abs_err, r.plain_max_abs_err, r.nonfinite), (Some(0.0), Some(0.0), Some(0.0), 0));
        // Same random inputs as the f32 cache, through e4m3 (`context_cache`'s own test checks the rows).
        let full = compare_with_cpu(&Device::Cpu, &base).unwrap();
        assert!((r.max_abs_ref.unwrap() - full.max_abs_ref.unwrap()).abs() < 0.1, "{r:?} vs {full:?}");
        let r = compare_with_cpu(&Device::Cpu, &fp8(AttentionCase { placeholders: true, sinks: Some(4.0), ..base.clone() })).unwrap();
        assert_eq!(r.placeholders, 8 + 4);
        assert_eq!((r.max_abs_err, r.kv_max_abs_err, r.nonfinite), (Some(0.0), Some(0.0), 0));
        let r = compare_with_cpu(&Device::Cpu, &AttentionCase { kv_dtype: Some("fp8_e4m3".into()), repeat: 1, ..case(vec![(1, 70), (3, 3)], 16) }).unwrap();
        assert_eq!((r.max_abs_err, r.kv_max_abs_err), (Some(0.0), Some(0.0)));
        // 9003 blocks of 1: the context is written in two steps.
        let r = compare_with_cpu(&Device::Cpu, &fp8(case(vec![(1, 9000)], 1))).unwrap();
        assert_eq!((r.max_abs_err, r.kv_max_abs_err, r.nonfinite), (Some(0.0), Some(0.0), 0));
        // A kv_dtype of the case's own dtype is the plain cache; another one is an error.
        assert_eq!(compare_with_cpu(&Device::Cpu, &AttentionCase { kv_dtype: Some("f32".into()), ..base.clone() }).unwrap().max_abs_ref, full.max_abs_ref);
        assert!(compare_with_cpu(&Device::Cpu, &AttentionCase { kv_dtype: Some("bf16".into()), ..base }).is_err());
    }

    #[test]
    fn an_fp8_context_cache_holds_every_row_and_a_nan_block() {
        let c = AttentionCase { kv_dtype: Some("fp8".into()), ..case(vec![(1, 9)], 4) };
        let mut rng = StdRng::seed_from_u64(1);
        let k = uniform(&mut rng, &[5, 4, 2, 16], 1.0).unwrap();
        let v = (uniform(&mut rng, &[5, 4, 2, 16], 1.0).unwrap() * 1e-3).unwrap();
        let cache = context_cache(&c, true, &k, &v, 5, Some(3), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(cache.layers[0].k.dtype(), DType::F8E4M3);
        let [kq, vq, ks, _]: [Tensor; 4] = cache_values(&cache).unwrap().try_into().unwrap();
        for (x, q, rel) in [(&k, &kq, 1.0), (&v, &vq, 1e-3)] {
            let (x, q) = (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), q.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let block = 4 * 2 * 16;
            assert!(q[3 * block..4 * block].iter().all(|y| y.is_nan()));
            for (a, b) in x[..3 * block].iter().chain(&x[4 * block..]).zip(q[..3 * block].iter().chain(&q[4 * block..])) {
                // Within e4m3's half step (2^-4 relative) of the row max, at any magnitude.
                assert!((a - b).abs() <= rel / 16.0 + 1e-9, "{a} vs {b}");
            }
        }
        let ks = ks.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(ks[24..32].iter().all(|s| s.is_nan()));
        assert!(ks[..24].iter().chain(&ks[32..]).all(|s| *s > 0.0 && *s <= 1.0 / 448.0));
    }
}
