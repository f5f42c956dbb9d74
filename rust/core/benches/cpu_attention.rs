//! Time of the CPU paged attention over a decode step's layers at SmolLM2-135M's shape (30 layers, 9
//! query heads, 3 KV heads of 64, f16 cache in blocks of 16 whose ids are shuffled as a running engine's
//! free list hands them out): batch 1 at 288 positions and batch 8 at 96, the positions of
//! `benches/bench_cpu.py`'s decodes. "warm" repeats the layers back to back (the cache rows stay in L2 /
//! L3); "cold" reads 112 MB between layers as a decode step's weights do, so each layer's rows come from
//! memory as they do in the engine. Only the attention calls are timed. `ATTN_LAYERS=1` keeps one layer
//! (its rows then stay in L2 even "cold": the arithmetic alone). Part of the `cpu_qmatmul` bench (its
//! `attn` filter), which has the harness entry:
//!
//!     cargo bench -p mlc-core --bench cpu_qmatmul -- attn

use candle_core::{DType, Device, Tensor};
use mlc_core::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
use std::time::Instant;

const LAYERS_DEFAULT: usize = 30;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const BLOCK: usize = 16;

/// Layers per step (`ATTN_LAYERS`, 30 by default).
fn layers() -> usize {
    std::env::var("ATTN_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(LAYERS_DEFAULT)
}

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

fn random(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n).map(|_| (lcg(seed) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0).collect()
}

/// The metadata of `seqs` sequences each writing (or attending with) positions `first..ctx`.
fn meta(tables: &[Vec<u32>], first: usize, ctx: usize) -> AttentionMetadata {
    let n = ctx - first;
    let mut slot_mapping = Vec::new();
    let mut seqs = Vec::new();
    for (s, table) in tables.iter().enumerate() {
        slot_mapping.extend((first..ctx).map(|p| table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32));
        seqs.push(SeqAttention { query_start: s * n, query_len: n, context_len: ctx, block_table: table.clone() });
    }
    AttentionMetadata { slot_mapping, seqs, block_size: BLOCK }
}

/// ms per decode step (all layers) at `seqs` sequences of `ctx` positions: (warm, cold).
fn time_case(seqs: usize, ctx: usize, evict: &[u8]) -> candle_core::Result<(f64, f64)> {
    let mut seed = 11u64;
    let per_seq = ctx.div_ceil(BLOCK);
    let mut ids: Vec<u32> = (0..(seqs * per_seq) as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, lcg(&mut seed) as usize % (i + 1));
    }
    let tables: Vec<Vec<u32>> = ids.chunks(per_seq).map(|c| c.to_vec()).collect();
    let cpu = Device::Cpu;
    let cache = PagedKvCache::new(layers(), ids.len(), BLOCK, KV_HEADS, HEAD_DIM, DType::F16, &cpu)?;
    let fill = cache.prepare(meta(&tables, 0, ctx))?;
    for l in 0..layers() {
        let rows = seqs * ctx;
        let k = Tensor::from_vec(random(&mut seed, rows * KV_HEADS * HEAD_DIM), (rows, KV_HEADS, HEAD_DIM), &cpu)?;
        let v = Tensor::from_vec(random(&mut seed, rows * KV_HEADS * HEAD_DIM), (rows, KV_HEADS, HEAD_DIM), &cpu)?;
        cache.write(l, &k, &v, &fill)?;
    }
    let step = cache.prepare(meta(&tables, ctx - 1, ctx))?;
    let q = Tensor::from_vec(random(&mut seed, seqs * HEADS * HEAD_DIM), (seqs, HEADS, HEAD_DIM), &cpu)?;
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut best = [f64::INFINITY; 2];
    for rep in 0..12 {
        for (mode, cold) in [false, true].into_iter().enumerate() {
            let mut total = 0.0;
            for l in 0..layers() {
                if cold {
                    // This layer's share of the step's weights passes through the caches.
                    let part = evict.len() / layers();
                    let sum = evict[l * part..(l + 1) * part].iter().step_by(64).fold(0u8, |a, &b| a.wrapping_add(b));
                    std::hint::black_box(sum);
                }
                let start = Instant::now();
                std::hint::black_box(cache.attend(l, &q, &step, scale)?);
                total += start.elapsed().as_secs_f64();
            }
            if rep > 0 {
                best[mode] = best[mode].min(total);
            }
        }
    }
    Ok((best[0] * 1e3, best[1] * 1e3))
}

pub fn run(filter: &str) {
    let evict: Vec<u8> = (0..112usize << 20).map(|i| i as u8).collect();
    println!("{:<14} {:>5} {:>5} {:>10} {:>10}", "attention", "seqs", "ctx", "warm ms", "cold ms");
    for (name, seqs, ctx) in [("attn b1", 1, 288), ("attn b8", 8, 96)] {
        if !name.contains(filter) {
            continue;
        }
        match time_case(seqs, ctx, &evict) {
            Ok((warm, cold)) => println!("{name:<14} {seqs:>5} {ctx:>5} {warm:>10.3} {cold:>10.3}"),
            Err(e) => println!("{name:<14} failed: {e}"),
        }
    }
}
