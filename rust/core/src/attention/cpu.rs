//! CPU implementations of the KV write and paged attention (also the reference for the CUDA kernels).
//!
//! The cache holds f32, or FP8 e4m3 (`kv_cache_dtype = "fp8_e4m3"`, about a quarter of the memory): each
//! new K/V row (one token's head) is divided by its own scale and rounded to e4m3 before the write
//! (`PagedKvCache::write`), and attention widens it through a 256-entry table times that scale.

use super::{AttentionMetadata, AttnParams};
use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use crate::quant::cpu::pool;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{what} must be contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("{what} must be f32 on cpu"),
    }
}

/// e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, S.1111.111 is NaN) by
/// bit pattern.
fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|b| {
            let (sign, exp, mant) = (if b & 0x80 != 0 { -1.0f32 } else { 1.0 }, (b >> 3) & 0xF, (b & 7) as f32);
            match (exp, b & 0x7F) {
                (_, 0x7F) => f32::NAN,
                (0, _) => sign * mant * 2f32.powi(-9),
                _ => sign * (1.0 + mant / 8.0) * 2f32.powi(exp as i32 - 7),
            }
        })
    })
}

/// A layer's K or V cache as the attention reads it.
enum KvRows<'a> {
    F32(&'a [f32]),
    /// e4m3 bit patterns, and one scale per row of `head_dim` values.
    E4m3(&'a [u8], &'a [f32]),
}

impl<'a> KvRows<'a> {
    /// `scales` (`[num_blocks, block_size, num_kv_heads]`) must come with an e4m3 cache and only with it.
    fn of(s: &'a CpuStorage, l: &Layout, scales: Option<&'a [f32]>, what: &str) -> Result<Self> {
        let Some((start, end)) = l.contiguous_offsets() else { bail!("{what} must be contiguous") };
        let dims = l.shape().dims();
        match (s, scales) {
            (CpuStorage::F32(v), None) => Ok(KvRows::F32(&v[start..end])),
            (CpuStorage::F8E4M3(v), Some(sc)) if sc.len() * dims[dims.len() - 1] == end - start => {
                Ok(KvRows::E4m3(bytemuck_e4m3(&v[start..end]), sc))
            }
            _ => bail!("{what} must be f32, or f8e4m3 with one scale per row, on cpu"),
        }
    }

    /// `n` values from `base`, widened into `buf` where the cache is FP8.
    #[inline(always)]
    fn row<'b>(&'b self, base: usize, n: usize, buf: &'b mut [f32]) -> &'b [f32] {
        match self {
            KvRows::F32(v) => &v[base..base + n],
            KvRows::E4m3(v, scales) => {
                let (table, scale) = (e4m3_table(), scales[base / n]);
                for (o, &b) in buf[..n].iter_mut().zip(&v[base..base + n]) {
                    *o = table[b as usize] * scale;
                }
                &buf[..n]
            }
        }
    }
}

/// The bit patterns of e4m3 values (one byte each).
fn bytemuck_e4m3<T>(v: &[T]) -> &[u8] {
    assert_eq!(std::mem::size_of::<T>(), 1, "e4m3 values are one byte");
    // SAFETY: a one-byte plain value (float8's F8E4M3 is a u8 newtype); same length, same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
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
/// scales) or both e4m3.
pub fn kv_write(slot_mapping: &[u32], cache: &mut CpuStorage, cl: &Layout, new: &CpuStorage, nl: &Layout) -> Result<()> {
    // cache: [num_blocks, block_size, kv_heads, head_dim]; new: [num_tokens, kv_heads, head_dim]
    let (start, end) = cl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("cache must be contiguous".into()))?;
    let Some((ns, ne)) = nl.contiguous_offsets() else { bail!("new k/v must be contiguous") };
    let dims = cl.shape().dims();
    let row = dims[2] * dims[3];
    match (cache, new) {
        (CpuStorage::F32(c), CpuStorage::F32(n)) => copy_rows(slot_mapping, &mut c[start..end], &n[ns..ne], row),
        (CpuStorage::F8E4M3(c), CpuStorage::F8E4M3(n)) => copy_rows(slot_mapping, &mut c[start..end], &n[ns..ne], row),
        _ => bail!("kv-write: the cache and the new k/v must be both f32 or both f8e4m3 on cpu"),
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
    // Each (token, KV head) attends its keys in chunks of KEY_CHUNK positions (chunk c: keys c * KEY_CHUNK
    // ..(c + 1) * KEY_CHUNK, cut to the window), all `group` query heads together, so each K and V row is
    // read (and, FP8, widened) once for the group; every chunk leaves a partial softmax (max, sum, unscaled
    // value sum) and a second pass combines a head's chunks in order. Chunks are fixed by key position,
    // so a token's result does not depend on the step around it. A step with few (token, KV head) pairs
    // (a decode of one sequence) runs one task per chunk to keep the threads busy; otherwise one task per
    // pair, which holds only its own partials (a long prefill's would not fit in memory at once). The
    // tasks run on the CPU kernels' threads (no wake-ups between a step's matmuls and this).
    let chunks_of = |pos: usize| (params.window_start(pos) / KEY_CHUNK, pos / KEY_CHUNK + 1);
    let entry = group * (head_dim + 2); // one chunk's partials: [group, (max, sum, value sum [head_dim])]
    let task = Task { meta, params, q, k, v, owner: &owner, num_heads, kv_heads, head_dim, block_size };
    let avx2 = super::simd::avx2_active();
    // The chunks `range` of (token t, KV head kvh) into `region`, at the CPU's level.
    let run_chunks = |t: usize, kvh: usize, range: std::ops::Range<usize>, region: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2 is there (dispatch).
            return unsafe { chunks_avx2(&task, t, kvh, range, region) };
        }
        let _ = avx2;
        // SAFETY: portable code.
        unsafe { chunks::<super::simd::Portable>(&task, t, kvh, range, region) }
    };
    let group_sinks = |kvh: usize| sinks.map(|s| &s[kvh * group..(kvh + 1) * group]);
    let mut out = vec![0f32; num_tokens * num_heads * head_dim];
    if num_tokens * kv_heads >= 4 * pool::threads() {
        // One task per (token, KV head), its chunks' partials in a buffer of its own.
        pool::for_each_chunk_mut(&mut out, group * head_dim, |item, o| {
            let (t, kvh) = (item / kv_heads, item % kv_heads);
            let (c0, c1) = chunks_of(owner[t].1);
            let mut partials = vec![0f32; (c1 - c0) * entry];
            run_chunks(t, kvh, c0..c1, &mut partials);
            combine(&partials, entry, head_dim, group_sinks(kvh), o);
        });
        return Ok((CpuStorage::F32(out), Shape::from((num_tokens, num_heads, head_dim))));
    }
    // Few (token, KV head) pairs: one task per chunk, then one per pair to combine. Partials laid out
    // [token][KV head][chunk].
    let mut first_entry = Vec::with_capacity(num_tokens); // per token, in entries
    let mut tasks = Vec::new(); // (token, KV head, chunk)
    for (t, &(_, pos)) in owner.iter().enumerate() {
        let (c0, c1) = chunks_of(pos);
        first_entry.push(tasks.len());
        for kvh in 0..kv_heads {
            tasks.extend((c0..c1).map(|c| (t, kvh, c)));
        }
    }
    let mut partials = vec![0f32; tasks.len() * entry];
    pool::for_each_chunk_mut(&mut partials, entry, |i, region| {
        let (t, kvh, c) = tasks[i];
        run_chunks(t, kvh, c..c + 1, region);
    });
    pool::for_each_chunk_mut(&mut out, group * head_dim, |item, o| {
        let (t, kvh) = (item / kv_heads, item % kv_heads);
        let (c0, c1) = chunks_of(owner[t].1);
        let first = first_entry[t] + kvh * (c1 - c0);
        combine(&partials[first * entry..(first + c1 - c0) * entry], entry, head_dim, group_sinks(kvh), o);
    });
    Ok((CpuStorage::F32(out), Shape::from((num_tokens, num_heads, head_dim))))
}

/// Keys per chunk of [`paged_attention`]: a decode at a few hundred positions splits into enough tasks
/// for the threads; short enough that a chunk's scores stay in L1.
const KEY_CHUNK: usize = 128;

/// What every task of one [`paged_attention`] call reads.
struct Task<'a> {
    meta: &'a AttentionMetadata,
    params: &'a AttnParams,
    q: &'a [f32],
    k: KvRows<'a>,
    v: KvRows<'a>,
    /// token -> (sequence, position)
    owner: &'a [(usize, usize)],
    num_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
}

/// [`chunks`] compiled for AVX2, its primitives inlined.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn chunks_avx2(task: &Task, t: usize, kvh: usize, range: std::ops::Range<usize>, out: &mut [f32]) {
    // SAFETY: the caller guarantees AVX2.
    unsafe { chunks::<super::simd::Avx2>(task, t, kvh, range, out) }
}

/// The partial softmax of token `t`'s query heads of KV head `kvh` over each key chunk in `range`, into
/// `out` (`[range, group, (max, sum, value sum [head_dim])]`): max = the chunk's largest score, sum =
/// sum exp(score - max), value sum = sum exp(score - max) * v.
///
/// # Safety
/// The CPU has `L`'s instruction set.
#[inline(always)]
unsafe fn chunks<L: super::simd::Lanes>(task: &Task, t: usize, kvh: usize, range: std::ops::Range<usize>, out: &mut [f32]) {
    let Task { meta, params, q, k, v, owner, num_heads, kv_heads, head_dim, block_size } = task;
    let (kv_heads, head_dim, block_size) = (*kv_heads, *head_dim, *block_size);
    let (group, row, kv_row) = (num_heads / kv_heads, num_heads * head_dim, kv_heads * head_dim);
    let (s, pos) = owner[t];
    let table = &meta.seqs[s].block_table;
    let slot = |j: usize| table[j / block_size] as usize * block_size + j % block_size;
    let cap = |x: f32| params.softcap.map_or(x, |c| c * (x / c).tanh());
    let qs = &q[t * row + kvh * group * head_dim..t * row + (kvh + 1) * group * head_dim]; // [group, head_dim]
    let mut scores = vec![0f32; group * KEY_CHUNK]; // [group, keys of the chunk]
    let mut buf = vec![0f32; head_dim]; // an FP8 row, widened
    for (c, part) in range.zip(out.chunks_exact_mut(group * (head_dim + 2))) {
        // causal, within the window
        let keys = (c * KEY_CHUNK).max(params.window_start(pos))..((c + 1) * KEY_CHUNK).min(pos + 1);
        let n = keys.len();
        for (i, j) in keys.clone().enumerate() {
            let kr = k.row(slot(j) * kv_row + kvh * head_dim, head_dim, &mut buf);
            for (g, qv) in qs.chunks_exact(head_dim).enumerate() {
                // SAFETY: the caller guarantees L's instruction set.
                scores[g * KEY_CHUNK + i] = cap(unsafe { L::dot(qv, kr) } * params.scale);
            }
        }
        for (g, p) in part.chunks_exact_mut(head_dim + 2).enumerate() {
            let sc = &mut scores[g * KEY_CHUNK..g * KEY_CHUNK + n];
            let max = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0.0;
            for x in sc.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            p[0] = max;
            p[1] = sum;
        }
        for (i, j) in keys.enumerate() {
            let vr = v.row(slot(j) * kv_row + kvh * head_dim, head_dim, &mut buf);
            for (g, p) in part.chunks_exact_mut(head_dim + 2).enumerate() {
                // SAFETY: as above.
                unsafe { L::axpy(&mut p[2..], scores[g * KEY_CHUNK + i], vr) };
            }
        }
    }
}

/// One (token, KV head)'s output `o` (`[group, head_dim]`) from its chunks' partials (`[chunks, group,
/// (max, sum, value sum)]`, in key order): per head, m = the largest chunk max (and the sink's logit),
/// o = sum over chunks of value sum * exp(max - m) / (sum over chunks of sum * exp(max - m) + exp(sink - m)).
/// `sinks` (gpt-oss): the group's sink logits; a sink joins the max and the denominator and adds no value,
/// as transformers' eager attention does with its extra score column.
fn combine(partials: &[f32], entry: usize, head_dim: usize, sinks: Option<&[f32]>, o: &mut [f32]) {
    // head g's (max, sum, value sum) in one chunk's partials
    fn head(c: &[f32], g: usize, d: usize) -> &[f32] {
        &c[g * (d + 2)..(g + 1) * (d + 2)]
    }
    for (g, og) in o.chunks_exact_mut(head_dim).enumerate() {
        let sink = sinks.map(|s| s[g]);
        let m = partials.chunks_exact(entry).fold(sink.unwrap_or(f32::NEG_INFINITY), |m, c| m.max(head(c, g, head_dim)[0]));
        let denom = partials.chunks_exact(entry).fold(sink.map_or(0.0, |s| (s - m).exp()), |d, c| d + head(c, g, head_dim)[1] * (head(c, g, head_dim)[0] - m).exp());
        for c in partials.chunks_exact(entry) {
            let w = (head(c, g, head_dim)[0] - m).exp() / denom;
            for (od, vd) in og.iter_mut().zip(&head(c, g, head_dim)[2..]) {
                *od += w * vd;
            }
        }
    }
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
        let table = super::e4m3_table();
        let finite: Vec<(usize, f32)> = table.iter().copied().enumerate().filter(|(_, x)| !x.is_nan()).collect();
        assert_eq!(finite.len(), 254);
        assert_eq!((table[0x7E], table[0x08], table[0x01]), (448.0, 2f32.powi(-6), 2f32.powi(-9)));
        let xs = Tensor::from_vec(finite.iter().map(|p| p.1).collect::<Vec<_>>(), finite.len(), &Device::Cpu).unwrap();
        let f8 = xs.to_dtype(DType::F8E4M3).unwrap();
        let (storage, _) = f8.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F8E4M3(v)) = &*storage else { panic!() };
        let bits = super::bytemuck_e4m3(v);
        for (&(b, x), &got) in finite.iter().zip(bits) {
            // 0x00 and 0x80 are +0 and -0: both convert to a zero.
            assert!(got as usize == b || (x == 0.0 && got & 0x7F == 0), "{b:#x} ({x}) converted to {got:#x}");
        }
        assert_eq!(f8.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), finite.iter().map(|p| p.1).collect::<Vec<_>>());
    }

    /// Over 300 keys (3 chunks of KEY_CHUNK): a prefill (one task per token and KV head) and the same tokens
    /// attended one at a time (one task per chunk) give the same bits, a token's result not depending on
    /// the step around it; and both equal a plain softmax attention in f64 within f32 rounding.
    #[test]
    fn chunked_keys_give_one_result_per_token_and_the_plain_attention() {
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
                let scale = (x.abs().unwrap().max_keepdim(2).unwrap() / 448.0).unwrap();
                let q = x.broadcast_div(&scale).unwrap().to_dtype(DType::F8E4M3).unwrap().to_dtype(DType::F32).unwrap();
                q.broadcast_mul(&scale).unwrap()
            };
            assert_eq!(fp8, run(DType::F32, &rounded(&k), &rounded(&v), &q), "magnitude {magnitude}");
        }
    }
}
