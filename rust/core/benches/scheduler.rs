//! CPU cost of the plain-data side of a step: one schedule + update over 256 decoding sequences,
//! and block pool / prefix-cache operations. The model step it sits beside takes milliseconds, so
//! these should stay in the microseconds.
//!
//! `cargo bench -p mlc-core --bench scheduler`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mlc_core::kv_cache::{BlockPool, KvCacheManager};
use mlc_core::scheduler::{Scheduler, SchedulerConfig, SeqId};
use std::hint::black_box;

const NUM_SEQS: u64 = 256;
const PROMPT_LEN: u32 = 512;

/// 256 sequences with 512-token prompts, all prefilled, so that every later step decodes one
/// token per sequence.
fn decoding_scheduler(prefix_cache: bool) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig {
        max_num_seqs: NUM_SEQS as usize,
        max_num_batched_tokens: 8192,
        prefill_chunk_size: 2048,
        block_size: 16,
        num_blocks: 16_384,
        enable_prefix_cache: prefix_cache,
        sliding_window: None,
        long_context_from: None,
    });
    for id in 0..NUM_SEQS {
        let first = id as u32 * PROMPT_LEN;
        s.add(id, (first..first + PROMPT_LEN).collect());
    }
    while s.num_waiting() > 0 || s.num_running() < NUM_SEQS as usize {
        step(&mut s);
    }
    step(&mut s); // the last prefill chunks
    s
}

fn step(s: &mut Scheduler) -> usize {
    let out = s.schedule();
    let sampled: Vec<(SeqId, u32)> = out
        .seqs
        .iter()
        .filter(|x| x.sample)
        .map(|x| (x.seq_id, 7))
        .collect();
    s.update(&out, &sampled);
    out.num_batched_tokens
}

fn bench_scheduler(c: &mut Criterion) {
    for (name, prefix_cache) in [
        ("schedule_update_256_decode", false),
        ("schedule_update_256_decode_prefix_cache", true),
    ] {
        let base = decoding_scheduler(prefix_cache);
        // A fresh clone per iteration keeps every measured step identical; returning the state
        // keeps its drop out of the timing.
        c.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut s| {
                    black_box(step(&mut s));
                    s
                },
                BatchSize::LargeInput,
            )
        });
    }
}

fn bench_block_pool(c: &mut Criterion) {
    let mut pool = BlockPool::new(16_384, 16);
    c.bench_function("block_pool_allocate_release_64", |b| {
        b.iter(|| {
            let Some(blocks) = pool.allocate_n(64) else {
                return;
            };
            for &id in blocks.iter().rev() {
                pool.release(id);
            }
            black_box(blocks.len());
        })
    });

    // Admission of a 2048-token prompt whose first 2032 tokens are cached: 127 hashes and lookups.
    let mut kv = KvCacheManager::new(16_384, 16, true);
    let prompt: Vec<u32> = (0..2048).collect();
    kv.ensure_slots(0, prompt.len());
    kv.commit_full_blocks(0, &prompt, prompt.len());
    c.bench_function("prefix_hit_2048_tokens", |b| {
        b.iter(|| {
            let hit = kv.allocate_with_prefix(1, &prompt, 16);
            kv.free(1);
            black_box(hit)
        })
    });
}

criterion_group!(benches, bench_scheduler, bench_block_pool);
criterion_main!(benches);
