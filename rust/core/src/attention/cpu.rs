//! CPU implementations of the KV write and paged attention (also the reference for the CUDA kernels).
//!
//! The cache holds f32; f16 (`kv_cache_dtype = "float16"`, the CPU's default: half the memory and half the
//! bytes attention reads per key), each new row rounded to nearest even before the write
//! (`PagedKvCache::write`) and widened exactly as attention reads it (F16C where the AVX2 body runs); or FP8
//! e4m3 (`kv_cache_dtype = "fp8_e4m3"`, about a quarter of the memory): each new K/V row (one token's head)
//! is divided by its own scale and rounded to e4m3 before the write, and attention widens it through a
//! 256-entry table times that scale.

use super::{AttentionMetadata, AttnParams};
use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use crate::quant::cpu::pool;
use super::kv_rows::KvRows;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{what} must be contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("{what} must be f32 on cpu"),
    }
}

/// Copies `row`-sized rows: `cache[slot_mapping[t]] = new[t]`.
fn copy_rows<T: Copy>(slot_mapping: &[u32], cache: &mut [T], new: &[T], row: usize) -> Result<()> {
    let num_slots = cache.len() / row;
    if new.len() != slot_mapping.len() * row {
        bail!("kv-write: {} values for {} tokens of {row}", new.len(), slot_mapping.len());
    }
    for (t, &slot) in slot_mapping.iter().enumerate() {
        let slot = slot as usize;
        if slot >= num_slots {
            bail!("kv-write: slot {slot} outside the cache ({num_slots} slots)");
        }
        cache[slot * row..(slot + 1) * row].copy_from_slice(&new[t * row..(t + 1) * row]);
    }
    Ok(())
}

/// Copies token rows into cache slots: `cache[slot_mapping[t]] = new[t]`, both f32 (values or FP8
/// scales), both f16 or both e4m3.
pub fn kv_write(slot_mapping: &[u32], cache: &mut CpuStorage, cl: &Layout, new: &CpuStorage, nl: &Layout) -> Result<()> {
    // cache: [num_blocks, block_size, kv_heads, head_dim]; new: [num_tokens, kv_heads, head_dim]
    let (start, end) = cl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("cache must be contiguous".into()))?;
    let Some((ns, ne)) = nl.contiguous_offsets() else { bail!("new k/v must be contiguous") };
    let dims = cl.shape().dims();
    let row = dims[2] * dims[3];
    match (cache, new) {
        (CpuStorage::F32(c), CpuStorage::F32(n)) => copy_rows(slot_mapping, &mut c[start..end], &n[ns..ne], row),
        (CpuStorage::F16(c), CpuStorage::F16(n)) => copy_rows(slot_mapping, &mut c[start..end], &n[ns..ne], row),
        (CpuStorage::F8E4M3(c), CpuStorage::F8E4M3(n)) => copy_rows(slot_mapping, &mut c[start..end], &n[ns..ne], row),
        _ => bail!("kv-write: the cache and the new k/v must be both f32, both f16 or both f8e4m3 on cpu"),
    }
}

/// Paged attention of `q` `[num_tokens, num_heads, head_dim]` over the caches
/// `[num_blocks, block_size, num_kv_heads, head_dim]`, in f32: a query at position `pos` attends the keys
/// `params.window_start(pos)..=pos` of its sequence with scores `cap(scale * q·k)`, where
/// `cap(x) = softcap * tanh(x / softcap)` when the layer has a cap (as HF transformers computes Gemma 2:
/// scale, cap, mask, softmax). Block-table entries of keys before the window are never looked at.
/// `sinks` (`[num_heads]`, gpt-oss): head `h`'s softmax also takes the logit `sinks[h]` (unscaled,
/// uncapped) in its max and denominator, with no value: transformers' eager attention concatenates it as
/// an extra score column, subtracts the row max, takes the softmax and drops the column.
/// `fp8_scales`: the K and V row scales of an e4m3 cache (`[num_blocks, block_size, num_kv_heads]`).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    meta: &AttentionMetadata,
    params: &AttnParams,
    sinks: Option<&[f32]>,
    fp8_scales: Option<(&[f32], &[f32])>,
    q: &CpuStorage,
    ql: &Layout,
    k: &CpuStorage,
    kl: &Layout,
    v: &CpuStorage,
    vl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    paged_attention_on(super::simd::avx2_active(), meta, params, sinks, fp8_scales, q, ql, k, kl, v, vl)
}

/// [`paged_attention`] on the AVX2 body (`avx2`, which the caller checked the CPU has: AVX2 and F16C) or
/// the portable one; the tests run both on one machine.
#[allow(clippy::too_many_arguments)]
fn paged_attention_on(
    avx2: bool,
    meta: &AttentionMetadata,
    params: &AttnParams,
    sinks: Option<&[f32]>,
    fp8_scales: Option<(&[f32], &[f32])>,
    q: &CpuStorage,
    ql: &Layout,
    k: &CpuStorage,
    kl: &Layout,
    v: &CpuStorage,
    vl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (num_tokens, num_heads, head_dim) = ql.shape().dims3()?;
    let (_, block_size, kv_heads, kv_dim) = kl.shape().dims4()?;
    if kv_dim != head_dim || num_heads % kv_heads != 0 || vl.shape() != kl.shape() {
        bail!("paged-attention: q {:?} does not match cache {:?}", ql.shape(), kl.shape());
    }
    if num_tokens != meta.num_tokens() {
        bail!("paged-attention: q has {num_tokens} tokens, the step {}", meta.num_tokens());
    }
    if block_size != meta.block_size {
        bail!("paged-attention: cache block size {block_size} != metadata {}", meta.block_size);
    }
    if let Some(s) = sinks.filter(|s| s.len() != num_heads) {
        bail!("paged-attention: {} sinks for {num_heads} heads", s.len());
    }
    let q = contiguous_f32(q, ql, "q")?;
    let k = KvRows::of(k, kl, fp8_scales.map(|s| s.0), "k cache")?;
    let v = KvRows::of(v, vl, fp8_scales.map(|s| s.1), "v cache")?;
    // Token -> (sequence, position) so every output row can be computed independently.
    let mut owner = vec![(0usize, 0usize); num_tokens];
    for (s, seq) in meta.seqs.iter().enumerate() {
        if seq.query_len > seq.context_len || seq.query_start + seq.query_len > num_tokens {
            bail!("paged-attention: sequence {s} has an invalid query range");
        }
        if seq.block_table.len() * block_size < seq.context_len {
            bail!("paged-attention: sequence {s} has too few blocks for {} tokens", seq.context_len);
        }
        let first_pos = seq.context_len - seq.query_len;
        for i in 0..seq.query_len {
            owner[seq.query_start + i] = (s, first_pos + i);
        }
    }
    let group = num_heads / kv_heads;
    let mut out = vec![0f32; num_tokens * num_heads * head_dim];
    let task = Task { meta, params, sinks, q, k, v, owner, num_heads, kv_heads, head_dim, block_size };
    // Every (token, KV head) attends its keys in chunks of CHUNK positions (`attend_chunk`: the query heads
    // of the group share each K and V row), then merges the chunks in order (`merge_chunks`). Where the
    // step has enough (token, KV head) pairs to keep the threads busy (prefill, batched decode), each
    // pair is one task; otherwise (batch-1 decode: 3 KV heads for 2 threads) the chunks are the tasks and
    // the caller merges. The chunk and merge arithmetic is the same either way, so a token's result does
    // not depend on the batch it runs in. The tasks run on the CPU kernels' threads (no wake-ups between
    // a step's matmuls and this).
    let pairs = num_tokens * kv_heads;
    if pairs >= 4 * pool::threads() {
        pool::for_each_chunk_mut(&mut out, group * head_dim, |item, o| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 and F16C are there (dispatch, or the caller's check).
                return unsafe { attend_pair_avx2(&task, item, o) };
            }
            let _ = avx2;
            // SAFETY: portable code.
            unsafe { attend_pair::<super::simd::Portable>(&task, item, o) }
        });
    } else {
        // (token, KV head, chunk) per task; each writes its chunk's [group, 2 + head_dim] (max, sum, values).
        let mut items = Vec::new();
        for t in 0..num_tokens {
            let keys = task.keys(t);
            for kvh in 0..kv_heads {
                for c in keys.start / CHUNK..keys.end.div_ceil(CHUNK) {
                    items.push((t, kvh, c));
                }
            }
        }
        let stride = group * (2 + head_dim);
        let mut parts = vec![0f32; items.len() * stride];
        pool::for_each_chunk_mut(&mut parts, stride, |i, part| {
            let (t, kvh, c) = items[i];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 and F16C are there (dispatch, or the caller's check).
                return unsafe { attend_chunk_avx2(&task, t, kvh, c, part) };
            }
            // SAFETY: portable code.
            unsafe { attend_chunk::<super::simd::Portable>(&task, t, kvh, c, part) }
        });
        let mut i = 0;
        for (pair, o) in out.chunks_exact_mut(group * head_dim).enumerate() {
            let n = items[i..].iter().take_while(|&&(t, kvh, _)| t * kv_heads + kvh == pair).count();
            task.merge_chunks(kvh_of(pair, kv_heads), &parts[i * stride..(i + n) * stride], o);
            i += n;
        }
    }
    Ok((CpuStorage::F32(out), Shape::from((num_tokens, num_heads, head_dim))))
}

/// The KV head of (token, KV head) pair `pair`.
fn kvh_of(pair: usize, kv_heads: usize) -> usize {
    pair % kv_heads
}

/// Key positions per chunk, counted from position 0 (not from the window's start), so a key falls in the
/// same chunk whatever the step. A multiple of 8 (the primitives take eight keys at a time).
const CHUNK: usize = 64;

/// How many keys ahead a task prefetches its K and V rows.
const PREFETCH_KEYS: usize = 16;

/// What every task of one [`paged_attention`] call reads.
struct Task<'a> {
    meta: &'a AttentionMetadata,
    params: &'a AttnParams,
    sinks: Option<&'a [f32]>,
    q: &'a [f32],
    k: KvRows<'a>,
    v: KvRows<'a>,
    /// token -> (sequence, position)
    owner: Vec<(usize, usize)>,
    num_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
}

impl Task<'_> {
    /// The key positions token `t` attends: causal, within the window.
    fn keys(&self, t: usize) -> std::ops::Range<usize> {
        let pos = self.owner[t].1;
        self.params.window_start(pos)..pos + 1
    }

    /// Merges a (token, KV head)'s chunks (`parts`: `[chunks, group, 2 + head_dim]`, in key order) into its
    /// heads' outputs `o` (`[group, head_dim]`): with `M` the largest chunk max (and the head's sink),
    /// `o = sum_c e^(m_c - M) o_c / (sum_c e^(m_c - M) l_c + e^(sink - M))`, chunk after chunk. Plain
    /// element-wise loops, so the same bits wherever it runs.
    fn merge_chunks(&self, kvh: usize, parts: &[f32], o: &mut [f32]) {
        let (hd, group) = (self.head_dim, self.num_heads / self.kv_heads);
        let stride = group * (2 + hd);
        for (g, og) in o.chunks_exact_mut(hd).enumerate() {
            let chunk = |c: usize| &parts[c * stride + g * (2 + hd)..c * stride + (g + 1) * (2 + hd)];
            let chunks = parts.len() / stride;
            let sink = self.sinks.map(|s| s[kvh * group + g]);
            let max = (0..chunks).fold(sink.unwrap_or(f32::NEG_INFINITY), |m, c| m.max(chunk(c)[0]));
            // The sink's share of the denominator (its column is then dropped).
            let mut sum = sink.map_or(0.0, |s| (s - max).exp());
            let mut w = Vec::with_capacity(chunks);
            for c in 0..chunks {
                let e = (chunk(c)[0] - max).exp();
                sum += e * chunk(c)[1];
                w.push(e);
            }
            og.fill(0.0);
            for (c, wc) in w.into_iter().enumerate() {
                let wc = wc / sum;
                for (od, &vd) in og.iter_mut().zip(&chunk(c)[2..]) {
                    *od += wc * vd;
                }
            }
        }
    }
}

/// [`attend_pair`] compiled for AVX2, its primitives inlined.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_pair_avx2(task: &Task, pair: usize, o: &mut [f32]) {
    // SAFETY: the caller guarantees AVX2.
    unsafe { attend_pair::<super::simd::Avx2>(task, pair, o) }
}

/// [`attend_chunk`] compiled for AVX2, its primitives inlined.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_chunk_avx2(task: &Task, t: usize, kvh: usize, c: usize, part: &mut [f32]) {
    // SAFETY: the caller guarantees AVX2.
    unsafe { attend_chunk::<super::simd::Avx2>(task, t, kvh, c, part) }
}

/// (Token, KV head) pair `pair` (`t * kv_heads + kvh`): every chunk of its keys, then their merge, into `o`
/// (`[group, head_dim]`).
///
/// # Safety
/// The CPU has `L`'s instruction set.
#[inline(always)]
unsafe fn attend_pair<L: super::simd::Lanes>(task: &Task, pair: usize, o: &mut [f32]) {
    let (t, kvh) = (pair / task.kv_heads, kvh_of(pair, task.kv_heads));
    let keys = task.keys(t);
    let stride = task.num_heads / task.kv_heads * (2 + task.head_dim);
    let chunks = keys.start / CHUNK..keys.end.div_ceil(CHUNK);
    let mut parts = vec![0f32; chunks.len() * stride];
    for (c, part) in chunks.zip(parts.chunks_exact_mut(stride)) {
        // SAFETY: as the caller guarantees.
        unsafe { attend_chunk::<L>(task, t, kvh, c, part) };
    }
    task.merge_chunks(kvh, &parts, o);
}

/// Chunk `c` of token `t`'s keys (positions `c * CHUNK ..` within its window) against the query heads of KV
/// head `kvh`, into `part` (`[group, 2 + head_dim]`): per head the chunk's largest score `m`, `l = sum
/// e^(s - m)` and `sum e^(s - m) v`, keys in order; scores `cap(scale * q·k)`.
///
/// # Safety
/// The CPU has `L`'s instruction set.
#[inline(always)]
unsafe fn attend_chunk<L: super::simd::Lanes>(task: &Task, t: usize, kvh: usize, c: usize, part: &mut [f32]) {
    let Task { meta, params, q, k, v, owner, num_heads, kv_heads, head_dim, block_size, .. } = task;
    let (kv_heads, head_dim, block_size) = (*kv_heads, *head_dim, *block_size);
    let (per, row, kv_row) = (num_heads / kv_heads, num_heads * head_dim, kv_heads * head_dim);
    let table = &meta.seqs[owner[t].0].block_table;
    let all = task.keys(t);
    let keys = all.start.max(c * CHUNK)..all.end.min((c + 1) * CHUNK);
    let n = keys.len();
    // Where each key's row of this KV head starts in the cache, block by block (one division per block).
    let mut base = [0usize; CHUNK];
    let mut j = keys.start;
    while j < keys.end {
        let first = j / block_size * block_size; // the block's first position
        let slot0 = table[j / block_size] as usize * block_size;
        let end = (first + block_size).min(keys.end);
        for jj in j..end {
            base[jj - keys.start] = (slot0 + jj - first) * kv_row + kvh * head_dim;
        }
        j = end;
    }
    let base = &base[..n];
    let cap = |x: f32| params.softcap.map_or(x, |c| c * (x / c).tanh());
    let h0 = kvh * per; // the group's first query head
    let qs = &q[t * row + h0 * head_dim..t * row + (h0 + per) * head_dim]; // [per, head_dim]
    let mut scores = vec![0f32; per * n]; // [per, keys]
    let mut buf = vec![0f32; head_dim]; // an f16 or FP8 row, widened
    // Eight keys at a time (their dot products overlap), then the rest one by one; the same bits.
    let mut bufs = vec![0f32; 8 * head_dim]; // eight f16 or FP8 rows, widened
    // The chunk's first rows (the K pass below prefetches the rest, K's and V's, ahead of use).
    for i in (0..PREFETCH_KEYS).step_by(8) {
        k.prefetch8(base, i, head_dim);
        v.prefetch8(base, i, head_dim);
    }
    let mut i = 0;
    while i + 8 <= n {
        // V's rows too, so that they are in the cache by the time the K pass ends.
        k.prefetch8(base, i + PREFETCH_KEYS, head_dim);
        v.prefetch8(base, i + PREFETCH_KEYS, head_dim);
        if let Some(rows) = f16_rows8::<L>(k, base, i, head_dim) {
            for g in 0..per {
                // SAFETY: the caller guarantees L's instruction set.
                let dots = unsafe { L::dot8_f16(&qs[g * head_dim..(g + 1) * head_dim], rows) };
                for r in 0..8 {
                    scores[g * n + i + r] = cap(dots[r] * params.scale);
                }
            }
            i += 8;
            continue;
        }
        // SAFETY: the caller guarantees L's instruction set.
        let rows = unsafe { k.rows8::<L>(base, i, head_dim, &mut bufs) };
        for g in 0..per {
            // SAFETY: the caller guarantees L's instruction set.
            let dots = unsafe { L::dot8(&qs[g * head_dim..(g + 1) * head_dim], rows) };
            for r in 0..8 {
                scores[g * n + i + r] = cap(dots[r] * params.scale);
            }
        }
        i += 8;
    }
    for i in i..n {
        // SAFETY: as above.
        let kr = unsafe { k.row::<L>(base[i], head_dim, &mut buf) };
        for (g, qv) in qs.chunks_exact(head_dim).enumerate() {
            // SAFETY: the caller guarantees L's instruction set.
            scores[g * n + i] = cap(unsafe { L::dot(qv, kr) } * params.scale);
        }
    }
    let w = 2 + head_dim;
    for (g, sc) in scores.chunks_exact_mut(n).enumerate() {
        let max = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        part[g * w] = max;
        // SAFETY: the caller guarantees L's instruction set.
        part[g * w + 1] = unsafe { L::exp_sum(sc, max) };
    }
    // Eight keys per pass over a head's values (loaded and stored once), then the rest one by one; the
    // same bits as key after key.
    let mut i = 0;
    while i + 8 <= n {
        if let Some(rows) = f16_rows8::<L>(v, base, i, head_dim) {
            for g in 0..per {
                let mut e = [0f32; 8];
                e.copy_from_slice(&scores[g * n + i..g * n + i + 8]);
                // SAFETY: as above.
                unsafe { L::axpy8_f16(&mut part[g * w + 2..(g + 1) * w], e, rows) };
            }
            i += 8;
            continue;
        }
        // SAFETY: as above.
        let rows = unsafe { v.rows8::<L>(base, i, head_dim, &mut bufs) };
        for g in 0..per {
            let mut e = [0f32; 8];
            e.copy_from_slice(&scores[g * n + i..g * n + i + 8]);
            // SAFETY: as above.
            unsafe { L::axpy8(&mut part[g * w + 2..(g + 1) * w], e, rows) };
        }
        i += 8;
    }
    for i in i..n {
        // SAFETY: as above.
        let vr = unsafe { v.row::<L>(base[i], head_dim, &mut buf) };
        for g in 0..per {
            // SAFETY: as above.
            unsafe { L::axpy(&mut part[g * w + 2..(g + 1) * w], scores[g * n + i], vr) };
        }
    }
}

/// The rows at `bases[i..i + 8]` of an f16 cache, for primitives that read them in place
/// ([`Lanes::F16_IN_PLACE`]); `None` where the rows are widened into a buffer first.
#[inline(always)]
fn f16_rows8<'a, L: super::simd::Lanes>(rows: &KvRows<'a>, bases: &[usize], i: usize, n: usize) -> Option<[&'a [half::f16]; 8]> {
    let KvRows::F16(v) = rows else { return None };
    if !L::F16_IN_PLACE {
        return None;
    }
    let mut out: [&[half::f16]; 8] = [&[]; 8];
    for r in 0..8 {
        out[r] = &v[bases[i + r]..bases[i + r] + n];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::paged_attention;
    use crate::attention::{AttentionMetadata, AttnParams, SeqAttention};
    use candle_core::{CpuStorage, Layout, Shape};

    /// One query (position 2) of one head over three keys, with and without a sink: the sink takes its
    /// share of the denominator and adds no value, as transformers' eager gpt-oss attention does.
    #[test]
    fn a_sink_joins_the_denominator_only() {
        let meta = AttentionMetadata {
            slot_mapping: vec![2],
            seqs: vec![SeqAttention { query_start: 0, query_len: 1, context_len: 3, block_table: vec![0] }],
            block_size: 4,
        };
        let q = [1.0f32, 0.5];
        let keys = [[0.2f32, -0.1], [0.7, 0.3], [-0.4, 0.9], [0.0, 0.0]];
        let values = [[1.0f32, 2.0], [-1.0, 0.5], [3.0, -2.0], [0.0, 0.0]];
        let flat = |x: &[[f32; 2]; 4]| CpuStorage::F32(x.iter().flatten().copied().collect());
        let (ql, kl) = (Layout::contiguous(Shape::from((1, 1, 2))), Layout::contiguous(Shape::from((1, 4, 1, 2))));
        let params = AttnParams::causal(0.5);
        let run = |sinks: Option<&[f32]>| {
            let (out, _) = paged_attention(&meta, &params, sinks, None, &CpuStorage::F32(q.to_vec()), &ql, &flat(&keys), &kl, &flat(&values), &kl).unwrap();
            match out {
                CpuStorage::F32(v) => v,
                _ => unreachable!(),
            }
        };
        let sink = 0.3f32;
        let exps: Vec<f32> = keys[..3].iter().map(|k| (0.5 * (q[0] * k[0] + q[1] * k[1])).exp()).collect();
        let expect = |extra: f32| -> Vec<f32> {
            let sum: f32 = exps.iter().sum::<f32>() + extra;
            (0..2).map(|d| exps.iter().zip(&values).map(|(e, v)| e / sum * v[d]).sum()).collect()
        };
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&run(Some(&[sink])), &expect(sink.exp())), "{:?} vs {:?}", run(Some(&[sink])), expect(sink.exp()));
        assert!(close(&run(None), &expect(0.0)));
        // A very negative sink is no sink.
        assert!(close(&run(Some(&[-1e4])), &run(None)));
        // One sink per head, or an error.
        assert!(paged_attention(&meta, &params, Some(&[0.0, 0.0]), None, &CpuStorage::F32(q.to_vec()), &ql, &flat(&keys), &kl, &flat(&values), &kl).is_err());
    }

    /// The table decodes every e4m3 bit pattern as float8 (candle's conversion) does: each finite value
    /// converts back to its own bits, exactly.
    #[test]
    fn the_e4m3_table_is_the_format() {
        use candle_core::{DType, Device, Tensor};
        let table = crate::attention::kv_rows::e4m3_table();
        let finite: Vec<(usize, f32)> = table.iter().copied().enumerate().filter(|(_, x)| !x.is_nan()).collect();
        assert_eq!(finite.len(), 254);
        assert_eq!((table[0x7E], table[0x08], table[0x01]), (448.0, 2f32.powi(-6), 2f32.powi(-9)));
        let xs = Tensor::from_vec(finite.iter().map(|p| p.1).collect::<Vec<_>>(), finite.len(), &Device::Cpu).unwrap();
        let f8 = xs.to_dtype(DType::F8E4M3).unwrap();
        let (storage, _) = f8.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F8E4M3(v)) = &*storage else { panic!() };
        let bits = crate::attention::kv_rows::bytemuck_e4m3(v);
        for (&(b, x), &got) in finite.iter().zip(bits) {
            // 0x00 and 0x80 are +0 and -0: both convert to a zero.
            assert!(got as usize == b || (x == 0.0 && got & 0x7F == 0), "{b:#x} ({x}) converted to {got:#x}");
        }
        assert_eq!(f8.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), finite.iter().map(|p| p.1).collect::<Vec<_>>());
    }

    /// Over 300 keys: a prefill (the query heads of a group sharing each K/V row in one task) and the same
    /// tokens attended one at a time (a task per head) give the same bits, a token's result not depending
    /// on how the step is split into tasks; and both equal a plain softmax attention in f64 within f32
    /// rounding.
    #[test]
    fn heads_sharing_rows_compute_as_heads_alone_and_as_the_plain_attention() {
        use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
        use candle_core::{DType, Device, Tensor};
        let (kvh, heads, d, bs, n) = (2, 6, 16, 8, 300usize);
        let blocks = n.div_ceil(bs);
        let cache = PagedKvCache::new(1, blocks, bs, kvh, d, DType::F32, &Device::Cpu).unwrap();
        let rnd = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap();
        let (k, v, q) = (rnd(&[n, kvh, d]), rnd(&[n, kvh, d]), rnd(&[n, heads, d]));
        let meta = |first: usize, len: usize| AttentionMetadata {
            slot_mapping: (first as u32..(first + len) as u32).collect(),
            seqs: vec![SeqAttention { query_start: 0, query_len: len, context_len: first + len, block_table: (0..blocks as u32).collect() }],
            block_size: bs,
        };
        let step = cache.prepare(meta(0, n)).unwrap();
        cache.write(0, &k, &v, &step).unwrap();
        let whole = cache.attend(0, &q, &step, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (kf, vf, qf) = (k.to_vec3::<f32>().unwrap(), v.to_vec3::<f32>().unwrap(), q.to_vec3::<f32>().unwrap());
        for t in [0, 127, 128, 200, 299] {
            let one = cache.prepare(meta(t, 1)).unwrap();
            let got = cache.attend(0, &q.narrow(0, t, 1).unwrap(), &one, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, whole[t * heads * d..(t + 1) * heads * d], "token {t}");
            for h in 0..heads {
                let g = h / (heads / kvh);
                let scores: Vec<f64> = (0..=t).map(|j| 0.25 * (0..d).map(|x| qf[t][h][x] as f64 * kf[j][g][x] as f64).sum::<f64>()).collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for x in 0..d {
                    let want = (0..=t).map(|j| (scores[j] - m).exp() / z * vf[j][g][x] as f64).sum::<f64>();
                    let err = (got[h * d + x] as f64 - want).abs();
                    assert!(err < 1e-5, "token {t} head {h} dim {x}: {} vs {want}", got[h * d + x]);
                }
            }
        }
    }

    /// Through the cache: an FP8 cache attends within e4m3's relative rounding of the f32 one at any
    /// magnitude (rows scaled to e4m3's range: values of 1e-3, all subnormal or zero unscaled, keep 3
    /// mantissa bits, and values of 1e4, past e4m3's 448, do not saturate).
    #[test]
    fn an_fp8_cache_attends_as_the_f32_one_within_e4m3_rounding() {
        use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
        use candle_core::{DType, Device, Tensor};
        let (kvh, heads, d, bs) = (2, 4, 16, 4);
        let meta = AttentionMetadata {
            slot_mapping: (0..6).collect(),
            seqs: vec![SeqAttention { query_start: 0, query_len: 6, context_len: 6, block_table: vec![0, 1] }],
            block_size: bs,
        };
        let run = |dtype: DType, k: &Tensor, v: &Tensor, q: &Tensor| {
            let cache = PagedKvCache::new(1, 2, bs, kvh, d, dtype, &Device::Cpu).unwrap();
            let step = cache.prepare(meta.clone()).unwrap();
            cache.write(0, k, v, &step).unwrap();
            cache.attend(0, q, &step, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let rnd = |n: &[usize], s: f64| (Tensor::randn(0f32, 1f32, n, &Device::Cpu).unwrap() * s).unwrap();
        let q = rnd(&[6, heads, d], 1.0);
        for magnitude in [1e-3, 1.0, 1e4] {
            // Keys scaled back to unit size for the scores, so that every magnitude tests the same softmax.
            let (k, v) = (rnd(&[6, kvh, d], 1.0), rnd(&[6, kvh, d], magnitude));
            let (k, q) = ((&k * magnitude).unwrap(), (&q / magnitude).unwrap());
            let (fp8, f32s) = (run(DType::F8E4M3, &k, &v, &q), run(DType::F32, &k, &v, &q));
            let err = fp8.iter().zip(&f32s).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / magnitude as f32;
            // e4m3's relative rounding is 2^-4; V rows average to below 1, scores move by about 0.1.
            assert!(err > 0.0 && err < 0.25, "magnitude {magnitude}: largest difference {err} (relative)");
            // Exactly: the f32 cache holding each row rounded as described (scale = row max / 448) attends
            // as the FP8 cache does, so the only difference is e4m3's rounding.
            let rounded = |x: &Tensor| {
                let scale = row_scales(x);
                let q = x.broadcast_div(&scale).unwrap().to_dtype(DType::F8E4M3).unwrap().to_dtype(DType::F32).unwrap();
                q.broadcast_mul(&scale).unwrap()
            };
            assert_eq!(fp8, run(DType::F32, &rounded(&k), &rounded(&v), &q), "magnitude {magnitude}");
        }
    }

    /// `[T, kv_heads, 1]`: each row's largest magnitude / 448 as an f32 division (what kv_write.cu computes).
    fn row_scales(x: &candle_core::Tensor) -> candle_core::Tensor {
        let (t, h, _) = x.dims3().unwrap();
        let rows = x.to_vec3::<f32>().unwrap();
        let s: Vec<f32> = rows.iter().flatten().map(|r| (r.iter().fold(0f32, |m, v| m.max(v.abs())) / 448.0).max(f32::MIN_POSITIVE)).collect();
        candle_core::Tensor::from_vec(s, (t, h, 1), x.device()).unwrap()
    }

    /// The FP8 write keeps each row's scale as max|row| / 448 divided in f32, as the CUDA write does (the
    /// caches of both must hold the same bits: tests/gpu/test_kernels.py), not multiplied by 1/448, which
    /// differs by an ulp for row maxima such as 1.5, 3 and 0.9 (and then moves ties of x / scale).
    #[test]
    fn the_fp8_write_divides_each_row_max_by_448() {
        use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
        use candle_core::{DType, Device, Tensor};
        let (kvh, d, bs) = (2, 4, 4);
        let maxima = [1.5f32, 3.0, 0.9, 0.75, 1.0, 2.5, 1e-3, 0.0];
        assert!(maxima[..4].iter().all(|m| m / 448.0 != m * (1.0 / 448.0)), "the case must tell the two apart");
        let rows: Vec<f32> = maxima.iter().flat_map(|&m| [m * 0.25, -m, m * 0.5, m * 0.125]).collect();
        let x = Tensor::from_vec(rows, (4, kvh, d), &Device::Cpu).unwrap();
        let meta = AttentionMetadata {
            slot_mapping: (0..4).collect(),
            seqs: vec![SeqAttention { query_start: 0, query_len: 4, context_len: 4, block_table: vec![0] }],
            block_size: bs,
        };
        let cache = PagedKvCache::new(1, 1, bs, kvh, d, DType::F8E4M3, &Device::Cpu).unwrap();
        let step = cache.prepare(meta).unwrap();
        cache.write(0, &x, &x, &step).unwrap();
        let got = cache.fp8_scales[0].k.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = maxima.iter().map(|m| (m / 448.0).max(f32::MIN_POSITIVE)).collect();
        assert_eq!(got, want);
    }

    /// An f16 cache (each row rounded to nearest even by the write) attends, on every body this CPU can run
    /// (the portable one, and the AVX2 + F16C one that the avx2 and avx512 levels run), exactly as an f32
    /// cache holding the same rounded rows does, the same bits at every level; and within f16's rounding of
    /// the f32 cache of the unrounded rows. SmolLM2's heads (64 wide, 3 KV heads of 3 query heads) and 20
    /// wide ones (tails past 8 lanes), over 150 keys (two chunks and a part), as a prefill (a task per
    /// (token, KV head)) and as a decode step (chunks as tasks).
    #[test]
    fn an_f16_cache_attends_as_the_f32_one_of_its_rounded_rows_at_every_level() {
        use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
        use crate::quant::cpu::dispatch::Isa;
        use candle_core::{DType, Device, Storage, Tensor};
        let levels = Isa::available();
        eprintln!("levels: {levels:?}");
        for d in [64usize, 20] {
            let (kvh, heads, bs, n) = (3, 9, 16, 150usize);
            let blocks = n.div_ceil(bs);
            let rnd = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap();
            let (k, v, q) = (rnd(&[n, kvh, d]), rnd(&[n, kvh, d]), rnd(&[n, heads, d]));
            let rounded = |x: &Tensor| x.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
            assert_ne!(rounded(&k).flatten_all().unwrap().to_vec1::<f32>().unwrap(), k.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            // Blocks in reverse order, so rows are not where a contiguous cache would hold them.
            let table: Vec<u32> = (0..blocks as u32).rev().collect();
            let slot = |p: usize| table[p / bs] * bs as u32 + (p % bs) as u32;
            let meta = |first: usize, len: usize| AttentionMetadata {
                slot_mapping: (first..first + len).map(slot).collect(),
                seqs: vec![SeqAttention { query_start: 0, query_len: len, context_len: first + len, block_table: table.clone() }],
                block_size: bs,
            };
            let fill = |dtype: DType, k: &Tensor, v: &Tensor| {
                let cache = PagedKvCache::new(1, blocks, bs, kvh, d, dtype, &Device::Cpu).unwrap();
                cache.write(0, k, v, &cache.prepare(meta(0, n)).unwrap()).unwrap();
                assert_eq!(cache.layers[0].k.dtype(), dtype);
                cache
            };
            let (f16s, exact, plain) = (fill(DType::F16, &k, &v), fill(DType::F32, &rounded(&k), &rounded(&v)), fill(DType::F32, &k, &v));
            let run = |cache: &PagedKvCache, avx2: bool, first: usize, len: usize| {
                let m = meta(first, len);
                let qn = q.narrow(0, first, len).unwrap().contiguous().unwrap();
                let (qs, ql) = qn.storage_and_layout();
                let (ks, kl) = cache.layers[0].k.storage_and_layout();
                let (vs, vl) = cache.layers[0].v.storage_and_layout();
                let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*qs, &*ks, &*vs) else { panic!() };
                match super::paged_attention_on(avx2, &m, &AttnParams::causal(0.125), None, None, qs, ql, ks, kl, vs, vl).unwrap().0 {
                    CpuStorage::F32(o) => o,
                    _ => unreachable!(),
                }
            };
            for (first, len) in [(0, n), (n - 1, 1), (70, 1)] {
                let want = run(&exact, false, first, len);
                for &isa in &levels {
                    let got = run(&f16s, isa >= Isa::Avx2, first, len);
                    assert_eq!(got, want, "head_dim {d}, {isa:?}, tokens {first}..{}", first + len);
                }
                let unrounded = run(&plain, false, first, len);
                let err = want.iter().zip(&unrounded).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                // f16 keeps 11 significant bits (relative rounding 2^-12): outputs of unit size move by ~1e-3.
                assert!(err > 0.0 && err < 1e-2, "head_dim {d}, tokens {first}..{}: largest difference {err}", first + len);
            }
        }
    }
}
