//! The CPU reference (`cpu.rs`, what the CUDA kernels are checked against) against a naive dense
//! implementation written here: every sequence's K/V as plain arrays, a causal mask, the sliding window
//! and the tanh cap computed straightforwardly in f64, as HF transformers does (scale, cap, mask,
//! softmax).

use super::{AttentionMetadata, AttnParams, LayerKvCache, PagedKvCache, SeqAttention};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    /// (query_len, context_len) per sequence.
    seqs: Vec<(usize, usize)>,
}

/// A step over a paged cache whose block 0 is poison (NaN everywhere, used by no sequence), plus the
/// dense data it was built from.
struct Built {
    meta: AttentionMetadata,
    cache: PagedKvCache,
    /// Per sequence: K and V `[context_len][kv_heads * head_dim]`.
    dense_k: Vec<Vec<Vec<f32>>>,
    dense_v: Vec<Vec<Vec<f32>>>,
    q: Vec<f32>, // [num_tokens, heads, head_dim]
}

fn build(c: &Case, seed: u64) -> Built {
    let mut rng = StdRng::seed_from_u64(seed);
    let (bs, row) = (c.block_size, c.kv_heads * c.head_dim);
    let needed: usize = c.seqs.iter().map(|&(_, ctx)| ctx.div_ceil(bs)).sum();
    let num_blocks = needed + 2;
    let mut pool: Vec<u32> = (1..num_blocks as u32).collect(); // block 0 stays the poison block
    pool.shuffle(&mut rng);
    let mut k = vec![f32::NAN; num_blocks * bs * row];
    let mut v = vec![f32::NAN; num_blocks * bs * row];
    let mut meta = AttentionMetadata { slot_mapping: Vec::new(), seqs: Vec::new(), block_size: bs };
    let (mut dense_k, mut dense_v) = (Vec::new(), Vec::new());
    let mut next = 0;
    for &(ql, ctx) in &c.seqs {
        let table = pool[next..next + ctx.div_ceil(bs)].to_vec();
        next += table.len();
        let mut random_rows = || (0..ctx).map(|_| (0..row).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>()).collect::<Vec<_>>();
        let (sk, sv) = (random_rows(), random_rows());
        for pos in 0..ctx {
            let slot = table[pos / bs] as usize * bs + pos % bs;
            k[slot * row..(slot + 1) * row].copy_from_slice(&sk[pos]);
            v[slot * row..(slot + 1) * row].copy_from_slice(&sv[pos]);
        }
        let query_start = meta.slot_mapping.len();
        for pos in ctx - ql..ctx {
            meta.slot_mapping.push(table[pos / bs] * bs as u32 + (pos % bs) as u32);
        }
        meta.seqs.push(SeqAttention { query_start, query_len: ql, context_len: ctx, block_table: table });
        dense_k.push(sk);
        dense_v.push(sv);
    }
    let shape = (num_blocks, bs, c.kv_heads, c.head_dim);
    let layer = LayerKvCache {
        k: Tensor::from_vec(k, shape, &Device::Cpu).unwrap(),
        v: Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
    };
    let cache = PagedKvCache { layers: vec![layer], fp8_scales: Vec::new(), num_blocks, block_size: bs, num_kv_heads: c.kv_heads, head_dim: c.head_dim };
    let num_tokens = meta.num_tokens();
    let q = (0..num_tokens * c.heads * c.head_dim).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Built { meta, cache, dense_k, dense_v, q }
}

/// Straightforward attention over the dense K/V: full score row, masks, cap, softmax.
fn naive(c: &Case, b: &Built, p: &AttnParams) -> Vec<f32> {
    let (h, d) = (c.heads, c.head_dim);
    let group = c.heads / c.kv_heads;
    let mut out = vec![0f32; b.q.len()];
    for (s, seq) in b.meta.seqs.iter().enumerate() {
        for i in 0..seq.query_len {
            let t = seq.query_start + i;
            let pos = seq.context_len - seq.query_len + i;
            for head in 0..h {
                let kvh = head / group;
                let qv = &b.q[(t * h + head) * d..(t * h + head + 1) * d];
                let scores: Vec<f64> = (0..seq.context_len)
                    .map(|key| {
                        let kv = &b.dense_k[s][key][kvh * d..(kvh + 1) * d];
                        let mut x = qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * p.scale as f64;
                        if let Some(cap) = p.softcap {
                            x = cap as f64 * (x / cap as f64).tanh();
                        }
                        let causal = key <= pos;
                        let in_window = p.window.is_none_or(|w| pos < key + w); // pos - w < key
                        if causal && in_window { x } else { f64::NEG_INFINITY }
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                for (key, w) in weights.iter().enumerate() {
                    let vv = &b.dense_v[s][key][kvh * d..(kvh + 1) * d];
                    for (o, x) in out[(t * h + head) * d..(t * h + head + 1) * d].iter_mut().zip(vv) {
                        *o += (w / sum * *x as f64) as f32;
                    }
                }
            }
        }
    }
    out
}

fn paged(c: &Case, b: &Built, meta: &AttentionMetadata, p: &AttnParams) -> Vec<f32> {
    let step = b.cache.prepare(meta.clone()).unwrap();
    let q = Tensor::from_vec(b.q.clone(), (meta.num_tokens(), c.heads, c.head_dim), &Device::Cpu).unwrap();
    let out = b.cache.attend_with(0, &q, &step, p).unwrap(); // [num_tokens, heads, head_dim]
    out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) });
    assert!(err < 2e-5, "{what}: max |paged - naive| = {err}");
}

/// The step's block tables with every entry wholly before each sequence's first query's window (so
/// before every query's window) replaced by block 0, the poison block: the placeholder a KV manager
/// may leave there after handing those blocks back.
fn with_placeholders(meta: &AttentionMetadata, p: &AttnParams) -> (AttentionMetadata, usize) {
    let mut m = meta.clone();
    let mut replaced = 0;
    for seq in &mut m.seqs {
        let first_key = p.window_start(seq.context_len - seq.query_len);
        for b in seq.block_table.iter_mut().take(first_key / m.block_size) {
            *b = 0;
            replaced += 1;
        }
    }
    (m, replaced)
}

/// Checks the CPU reference against the naive one for `params` on `case`, with the real block tables
/// and with placeholders before the window; returns how many entries were placeholders.
fn check(c: &Case, params: &[AttnParams], seed: u64) -> usize {
    let b = build(c, seed);
    let mut placeholders = 0;
    for p in params {
        let want = naive(c, &b, p);
        assert_close(&paged(c, &b, &b.meta, p), &want, &format!("{p:?} {:?}", c.seqs));
        let (m, replaced) = with_placeholders(&b.meta, p);
        assert_close(&paged(c, &b, &m, p), &want, &format!("{p:?} {:?} with placeholders", c.seqs));
        placeholders += replaced;
    }
    placeholders
}

fn params(scale: f32, softcap: Option<f32>, window: Option<usize>) -> AttnParams {
    AttnParams { scale, softcap, window }
}

#[test]
fn plain_causal_matches_the_naive_attention() {
    let c = Case { heads: 4, kv_heads: 2, head_dim: 16, block_size: 4, seqs: vec![(1, 9), (5, 5), (3, 11)] };
    check(&c, &[params(0.25, None, None), params(0.25, None, Some(1000))], 1);
}

#[test]
fn a_window_shorter_than_a_block() {
    // Window 5 in blocks of 16: decodes, a fresh prompt and a chunk, each crossing block boundaries.
    let c = Case { heads: 4, kv_heads: 4, head_dim: 8, block_size: 16, seqs: vec![(1, 40), (20, 20), (7, 33), (1, 17)] };
    assert!(0 < check(&c, &[params(0.35, None, Some(5)), params(0.35, None, Some(1)), params(0.35, Some(1.5), Some(5))], 2), "no block lies wholly before a window");
}

#[test]
fn a_window_not_a_multiple_of_the_block_size() {
    let c = Case { heads: 6, kv_heads: 2, head_dim: 8, block_size: 8, seqs: vec![(1, 100), (30, 30), (12, 50), (1, 14), (2, 27)] };
    assert!(0 < check(&c, &[params(0.3, None, Some(13)), params(0.3, Some(2.0), Some(13)), params(0.3, None, Some(20))], 3), "no block lies wholly before a window");
}

#[test]
fn prefill_chunks_crossing_the_window() {
    // A 25-query chunk at positions 15..40 with a window of 10: its first query sees keys 6..=15,
    // its last 30..=39; blocks 0 and 1 (positions 0..8) lie before every query's window.
    let c = Case { heads: 4, kv_heads: 1, head_dim: 8, block_size: 4, seqs: vec![(25, 40), (40, 40), (9, 23)] };
    assert!(0 < check(&c, &[params(0.4, None, Some(10)), params(0.4, Some(3.0), Some(10)), params(0.4, None, Some(7))], 4), "no block lies wholly before a window");
}

#[test]
fn softcap_alone_and_with_gqa() {
    // Scores up to ~|2 * 1 * 16| * 0.5: a cap of 2 changes them a lot, Gemma 2's 50 a little.
    let c = Case { heads: 8, kv_heads: 2, head_dim: 16, block_size: 8, seqs: vec![(1, 70), (17, 17), (4, 40)] };
    assert!(0 < check(&c, &[params(0.5, Some(2.0), None), params(0.5, Some(50.0), None), params(0.5, Some(2.0), Some(9))], 5), "no block lies wholly before a window");
}

#[test]
fn one_step_serves_full_and_sliding_layers() {
    // Gemma 2 alternates full and sliding layers over the same step: one prepared step, two params.
    let c = Case { heads: 4, kv_heads: 2, head_dim: 8, block_size: 4, seqs: vec![(1, 30), (12, 12), (6, 19)] };
    let b = build(&c, 6);
    let step = b.cache.prepare(b.meta.clone()).unwrap();
    let q = Tensor::from_vec(b.q.clone(), (b.meta.num_tokens(), 4, 8), &Device::Cpu).unwrap();
    for p in [params(0.3, Some(5.0), None), params(0.3, Some(5.0), Some(6)), AttnParams::causal(0.3)] {
        let got = b.cache.attend_with(0, &q, &step, &p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&got, &naive(&c, &b, &p), &format!("{p:?}"));
    }
    // `attend` is the plain causal call.
    let old = b.cache.attend(0, &q, &step, 0.3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close(&old, &naive(&c, &b, &AttnParams::causal(0.3)), "attend");
}

#[test]
fn placeholders_must_only_be_valid_block_ids() {
    // Validation accepts any id below num_blocks before the window (here the poison block 0) and
    // still rejects ids outside the cache there.
    let c = Case { heads: 2, kv_heads: 1, head_dim: 8, block_size: 4, seqs: vec![(1, 30)] };
    let b = build(&c, 7);
    let p = params(0.3, None, Some(5));
    let (mut m, replaced) = with_placeholders(&b.meta, &p);
    assert_eq!(replaced, 6, "positions 0..24 lie before the window 25..=29");
    assert!(b.cache.prepare(m.clone()).is_ok());
    m.seqs[0].block_table[0] = b.cache.num_blocks as u32;
    assert!(b.cache.prepare(m).is_err());
}

#[test]
fn invalid_params_are_errors() {
    let c = Case { heads: 2, kv_heads: 1, head_dim: 8, block_size: 4, seqs: vec![(2, 6)] };
    let b = build(&c, 8);
    let step = b.cache.prepare(b.meta.clone()).unwrap();
    let q = Tensor::zeros((2, 2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    for p in [
        params(0.0, None, None),
        params(f32::NAN, None, None),
        params(-1.0, None, None),
        params(0.3, Some(0.0), None),
        params(0.3, Some(-2.0), None),
        params(0.3, Some(f32::INFINITY), None),
        params(0.3, None, Some(0)),
    ] {
        assert!(b.cache.attend_with(0, &q, &step, &p).is_err(), "{p:?} accepted");
    }
    assert_eq!(params(1.0, None, Some(3)).window_start(1), 0);
    assert_eq!(params(1.0, None, Some(3)).window_start(2), 0);
    assert_eq!(params(1.0, None, Some(3)).window_start(3), 1);
    assert_eq!(AttnParams::causal(1.0).window_start(99), 0);
}
