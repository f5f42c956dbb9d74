//! CPU implementations of the KV write and paged attention (also the reference for the CUDA kernels).

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

/// Copies token rows into cache slots: `cache[slot_mapping[t]] = new[t]`.
pub fn kv_write(slot_mapping: &[u32], cache: &mut CpuStorage, cl: &Layout, new: &CpuStorage, nl: &Layout) -> Result<()> {
    // cache: [num_blocks, block_size, kv_heads, head_dim]; new: [num_tokens, kv_heads, head_dim]
    let new = contiguous_f32(new, nl, "new k/v")?;
    let (start, end) = cl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("cache must be contiguous".into()))?;
    let CpuStorage::F32(cache) = cache else { bail!("cache must be f32 on cpu") };
    let cache = &mut cache[start..end];
    let dims = cl.shape().dims();
    let row = dims[2] * dims[3];
    let num_slots = dims[0] * dims[1];
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

/// Paged attention of `q` `[num_tokens, num_heads, head_dim]` over the caches
/// `[num_blocks, block_size, num_kv_heads, head_dim]`, in f32: a query at position `pos` attends the keys
/// `params.window_start(pos)..=pos` of its sequence with scores `cap(scale * q·k)`, where
/// `cap(x) = softcap * tanh(x / softcap)` when the layer has a cap (as HF transformers computes Gemma 2:
/// scale, cap, mask, softmax). Block-table entries of keys before the window are never looked at.
/// `sinks` (`[num_heads]`, gpt-oss): head `h`'s softmax also takes the logit `sinks[h]` (unscaled,
/// uncapped) in its max and denominator, with no value: transformers' eager attention concatenates it as
/// an extra score column, subtracts the row max, takes the softmax and drops the column.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    meta: &AttentionMetadata,
    params: &AttnParams,
    sinks: Option<&[f32]>,
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
    let k = contiguous_f32(k, kl, "k cache")?;
    let v = contiguous_f32(v, vl, "v cache")?;
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
    let row = num_heads * head_dim;
    let kv_row = kv_heads * head_dim;
    let cap = |x: f32| params.softcap.map_or(x, |c| c * (x / c).tanh());
    let mut out = vec![0f32; num_tokens * row];
    // One task per (token, head): a decode step has one token, and its heads are what there is to
    // split over the cores (the CPU kernels' threads: no wake-ups between a step's matmuls and this).
    pool::for_each_chunk_mut(&mut out, head_dim, |item, o| {
        let (t, h) = (item / num_heads, item % num_heads);
        let (s, pos) = owner[t];
        let table = &meta.seqs[s].block_table;
        let keys = params.window_start(pos)..pos + 1; // causal, within the window
        let slot = |j: usize| table[j / block_size] as usize * block_size + j % block_size;
        let kvh = h / group;
        let qv = &q[t * row + h * head_dim..t * row + (h + 1) * head_dim];
        let mut scores = vec![0f32; keys.len()];
        let sink = sinks.map(|s| s[h]);
        let mut max = sink.unwrap_or(f32::NEG_INFINITY);
        for (sc, j) in scores.iter_mut().zip(keys.clone()) {
            let base = slot(j) * kv_row + kvh * head_dim;
            *sc = cap(dot(qv, &k[base..base + head_dim]) * params.scale);
            max = max.max(*sc);
        }
        // The sink's share of the denominator (its column is then dropped).
        let mut sum = sink.map_or(0.0, |s| (s - max).exp());
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        for (&p, j) in scores.iter().zip(keys.clone()) {
            let base = slot(j) * kv_row + kvh * head_dim;
            let w = p / sum;
            for (od, vd) in o.iter_mut().zip(&v[base..base + head_dim]) {
                *od += w * vd;
            }
        }
    });
    Ok((CpuStorage::F32(out), Shape::from((num_tokens, num_heads, head_dim))))
}

/// `a . b` over 8 partial sums (a fixed order, independent of the batch), which the compiler keeps in
/// vector registers; a single running sum would serialize on the add latency.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += xa[i] * xb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
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
            let (out, _) = paged_attention(&meta, &params, sinks, &CpuStorage::F32(q.to_vec()), &ql, &flat(&keys), &kl, &flat(&values), &kl).unwrap();
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
        assert!(paged_attention(&meta, &params, Some(&[0.0, 0.0]), &CpuStorage::F32(q.to_vec()), &ql, &flat(&keys), &kl, &flat(&values), &kl).is_err());
    }
}
