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

/// Chunks of a batched decode's keys asked into L2 ahead of the one being attended (see
/// [`Task::prefetch_l2`]).
const L2_CHUNKS_AHEAD: usize = 2;

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
    /// Asks for the K and V rows of token `t`'s `keys` for KV head `kvh` to be brought into L2
    /// (`prefetcht1`). In a batched decode every (token, KV head) task reads its own rows once, and the
    /// step's weights have pushed them out to memory since the last step; the in-loop prefetches
    /// (`PREFETCH_KEYS` ahead, into L1) hide an L2 or L3 latency but not memory's, while a whole chunk
    /// asked ahead keeps many misses in flight. `cargo bench cpu_qmatmul -- attn`, batch 8 at 96
    /// positions: 3.11-3.51 -> 2.62-3.06 ms a step with the weights streamed between layers.
    fn prefetch_l2(&self, t: usize, kvh: usize, keys: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            let table = &self.meta.seqs[self.owner[t].0].block_table;
            let (bs, hd) = (self.block_size, self.head_dim);
            for j in keys {
                let base = (table[j / bs] as usize * bs + j % bs) * self.kv_heads * hd + kvh * hd;
                for rows in [&self.k, &self.v] {
                    let (p, bytes) = match rows {
                        KvRows::F32(v) => (v[base..base + hd].as_ptr() as *const i8, hd * 4),
                        KvRows::F16(v) => (v[base..base + hd].as_ptr() as *const i8, hd * 2),
                        KvRows::E4m3(v, _) => (v[base..base + hd].as_ptr() as *const i8, hd),
                    };
                    for off in (0..bytes).step_by(64) {
                        // SAFETY: within the row (sliced above); a prefetch never faults.
                        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(off)) };
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (t, kvh, keys);
    }

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
    // A decode query's rows are read by this task only: ask for them into L2 a few chunks ahead (a
    // prefill's tokens share their keys, which are in the caches after the first).
    let decode = task.meta.seqs[task.owner[t].0].query_len == 1;
    let ahead = |c: usize| keys.start.max(c * CHUNK)..keys.end.min((c + 1) * CHUNK);
    if decode {
        for c in chunks.clone().take(L2_CHUNKS_AHEAD) {
            task.prefetch_l2(t, kvh, ahead(c));
        }
    }
    for (c, part) in chunks.zip(parts.chunks_exact_mut(stride)) {
        if decode && c + L2_CHUNKS_AHEAD < keys.end.div_ceil(CHUNK) {
            task.prefetch_l2(t, kvh, ahead(c + L2_CHUNKS_AHEAD));
        }
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
#[path = "cpu_tests.rs"]
mod tests;
