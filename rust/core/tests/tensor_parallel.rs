//! Tensor parallelism on the CPU: every architecture fixture (tests/fixtures/models, the checkpoints
//! hf_parity ties to transformers) sharded over 2 and 4 in-process ranks ([`LocalGroup`], one thread
//! per rank, each with its own KV cache of its KV heads) gives the unsharded model's f32 logits within
//! 1e-5 relative, over a batched prefill and decode steps. The fixtures have 4 query heads and 2 KV
//! heads, so 4 ranks replicate each KV head on 2 ranks; each is also run with its vocabulary cut to 2045
//! rows, which 4 ranks cannot split evenly (padded slices). Shard counts a model cannot split into are
//! refused with an error naming tensor_parallel_shards.

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixtures;
use mlc_core::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
use mlc_core::error::{EngineError, Result};
use mlc_core::loader::{self, QuantMode};
use mlc_core::model::linear::{Linear, Weight};
use mlc_core::model::sharded::ShardPlan;
use mlc_core::model::{CausalLm, DecoderModel, ModelConfig, WeightSource};
use mlc_core::parallel::LocalGroup;
use std::path::Path;
use std::sync::Arc;

const BLOCK: usize = 16;
/// Two sequences' prompt lengths (they cross a KV block and the fixtures' 16-token windows) and the
/// decode steps that follow, both sequences in every step.
const PROMPTS: [usize; 2] = [13, 21];
const DECODE_STEPS: usize = 4;

/// A checkpoint with its vocabulary cut to the first `vocab` rows: another model, but a fine one to
/// compare sharded against unsharded.
struct CutVocab<'a> {
    inner: &'a (dyn WeightSource + Sync),
    vocab: usize,
}

impl WeightSource for CutVocab<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.tensor(name)?;
        Ok(if name == "model.embed_tokens.weight" { t.narrow(0, 0, self.vocab)? } else { t })
    }

    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        let l = self.inner.linear(prefix, bias)?;
        if prefix != "lm_head" && prefix != "model.embed_tokens" {
            return Ok(l);
        }
        let Weight::Dense(w) = &l.weight else { panic!("{prefix}: expected a dense weight") };
        Ok(Linear { weight: Weight::Dense(w.narrow(0, 0, self.vocab)?), bias: l.bias.map(|b| b.narrow(0, 0, self.vocab)).transpose()? })
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
}

/// The token ids of the run: prompts, then one token per sequence per decode step (fixed, not sampled,
/// so every world size sees the same inputs).
fn token(i: usize, vocab: usize) -> u32 {
    ((i * 7919 + 13) % vocab) as u32
}

/// One step: `(seq, first position, count)` runs -> the inputs and metadata of the step; sampled rows
/// are each run's last token.
fn step_inputs(runs: &[(usize, usize, usize)], vocab: usize, device: &Device) -> (Tensor, Tensor, Tensor, AttentionMetadata) {
    let (mut toks, mut pos, mut slots, mut seqs, mut rows) = (vec![], vec![], vec![], vec![], vec![]);
    for &(seq, first, n) in runs {
        let blocks: Vec<u32> = (0..4).map(|b| (seq * 4 + b) as u32).collect();
        seqs.push(SeqAttention { query_start: toks.len(), query_len: n, context_len: first + n, block_table: blocks.clone() });
        for p in first..first + n {
            toks.push(token(seq * 1000 + p, vocab));
            pos.push(p as u32);
            slots.push(blocks[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32);
        }
        rows.push((toks.len() - 1) as u32);
    }
    let t = |v: Vec<u32>| Tensor::new(v.as_slice(), device).unwrap();
    (t(toks), t(pos), t(rows), AttentionMetadata { slot_mapping: slots, seqs, block_size: BLOCK })
}

/// The logits rows (`[rows][vocab]`) of the prefill step and each decode step; `apart`: each sequence
/// in a forward call of its own (the same math, other matmul shapes: the unsharded model's own rounding
/// spread).
fn run(model: &dyn CausalLm, layer_cfg: &ModelConfig, vocab: usize, apart: bool) -> Vec<Vec<f32>> {
    let kv = PagedKvCache::new(layer_cfg.num_hidden_layers, 8, BLOCK, layer_cfg.num_key_value_heads, layer_cfg.head_dim, model.dtype(), model.device()).unwrap();
    let mut steps = vec![PROMPTS.iter().enumerate().map(|(s, &n)| (s, 0, n)).collect::<Vec<_>>()];
    steps.extend((0..DECODE_STEPS).map(|d| PROMPTS.iter().enumerate().map(|(s, &n)| (s, n + d, 1)).collect()));
    let mut rows = Vec::new();
    let calls: Vec<Vec<(usize, usize, usize)>> = match apart {
        true => steps.into_iter().flatten().map(|r| vec![r]).collect(),
        false => steps,
    };
    for runs in calls {
        let (toks, pos, sample, meta) = step_inputs(&runs, vocab, model.device());
        let step = kv.prepare(meta).unwrap();
        let logits = model.forward(&toks, &pos, &sample, &kv, &step).unwrap(); // [sequences, vocab]
        rows.extend(logits.to_vec2::<f32>().unwrap());
    }
    rows
}

/// `world` ranks on threads, each loading its slice of `w` and running the steps; every rank's logits
/// must be the same (the all-gather gives each the whole vocabulary), rank 0's are returned.
fn run_sharded(cfg: &ModelConfig, w: &(dyn WeightSource + Sync), world: usize) -> Result<Vec<Vec<f32>>> {
    let outs: Vec<Result<Vec<Vec<f32>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(world)
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let m = DecoderModel::load_sharded(cfg, w, &Device::Cpu, DType::F32, Arc::new(c))?;
                    Ok(run(&m, m.layer_config(), cfg.vocab_size, false))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut outs = outs.into_iter().collect::<Result<Vec<_>>>()?;
    assert!(outs.iter().all(|o| *o == outs[0]), "the ranks' logits differ");
    Ok(outs.swap_remove(0))
}

/// max |a - b| / max |b| of one row.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn is_tp_refusal(e: &EngineError) -> bool {
    matches!(e, EngineError::BadRequest { field, .. } if field == "tensor_parallel_shards")
}

/// Every fixture over 1, 2 and 4 ranks, with its own vocabulary and with 2045 rows; returns the worst
/// relative error seen and the unsharded model's own spread (`run`'s `apart`). The bound is 1e-5, or
/// four times that spread where the fixture itself amplifies f32 rounding beyond it (gemma2: built so that
/// both soft-caps bite, see hf_parity; its spread is 1.8e-5, and the sharded runs' reduction order, which
/// the spread does not exercise, reaches 2.5x it on one row since the CPU attention merges 64-key chunks:
/// a slicing error would show at 1e-2 and beyond). A world the model's heads cannot split into must be
/// refused.
fn check_fixture(dir: &Path) -> (f32, f32) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let loaded = loader::load(dir.to_str().unwrap(), &Device::Cpu, DType::F32, QuantMode::Dequantize).unwrap();
    let (mut worst, mut spread) = (0f32, 0f32);
    for cut in [None, Some(2045)] {
        let mut cfg = loaded.config.clone();
        let cut_w;
        let w: &(dyn WeightSource + Sync) = match cut {
            Some(v) => {
                cfg.vocab_size = v;
                cut_w = CutVocab { inner: &loaded.weights, vocab: v };
                &cut_w
            }
            None => &loaded.weights,
        };
        let whole = DecoderModel::load(&cfg, w, &Device::Cpu, DType::F32).unwrap();
        let want = run(&whole, &cfg, cfg.vocab_size, false);
        let apart = run(&whole, &cfg, cfg.vocab_size, true);
        spread = spread.max(apart.iter().zip(&want).map(|(a, w)| rel(a, w)).fold(0f32, f32::max));
        let bound = 1e-5f32.max(4.0 * spread);
        for world in [2, 4] {
            if cfg.num_attention_heads % world != 0 {
                let e = run_sharded(&cfg, w, world).unwrap_err();
                assert!(is_tp_refusal(&e) && e.to_string().contains("num_attention_heads"), "{name} over {world}: {e}");
                continue;
            }
            let got = run_sharded(&cfg, w, world).unwrap_or_else(|e| panic!("{name} over {world} ranks: {e}"));
            assert_eq!(got.len(), want.len());
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.len(), cfg.vocab_size);
                let e = rel(g, r);
                assert!(e < bound, "{name} (vocab {}) over {world} ranks: row {i} relative error {e:e} (bound {bound:e})", cfg.vocab_size);
                worst = worst.max(e);
            }
        }
    }
    (worst, spread)
}

#[test]
fn every_architecture_sharded_over_2_and_4_ranks_gives_the_unsharded_logits() {
    let mut dirs: Vec<_> = std::fs::read_dir(fixtures().join("models")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("config.json").exists()).collect();
    dirs.sort();
    assert!(dirs.len() >= 19, "fixtures missing: {dirs:?}");
    let mut report = Vec::new();
    for dir in &dirs {
        let (worst, spread) = check_fixture(dir);
        report.push(format!("{}: {worst:.1e} ({spread:.1e})", dir.file_name().unwrap().to_string_lossy()));
    }
    eprintln!("worst relative logit error per fixture, sharded vs unsharded (unsharded's own spread): {}", report.join(", "));
}

#[test]
fn shard_counts_that_cannot_work_are_refused_by_name() {
    let loaded = loader::load(fixtures().join("models/qwen2_moe").to_str().unwrap(), &Device::Cpu, DType::F32, QuantMode::Dequantize).unwrap();
    let base = loaded.config.clone(); // 4 heads, 2 KV heads, intermediate 160, experts 48, shared 96
    let refused = |cfg: &ModelConfig, world: usize, why: &str| {
        let e = ShardPlan::new(cfg, 0, world).unwrap_err();
        assert!(is_tp_refusal(&e) && e.to_string().contains(why), "{world}: {e}");
    };
    refused(&base, 3, "num_attention_heads 4");
    refused(&base, 8, "num_attention_heads 4");
    refused(&base, 0, "at least 1");
    let mut c = base.clone();
    (c.num_attention_heads, c.num_key_value_heads) = (6, 3);
    refused(&c, 2, "num_key_value_heads 3");
    c = base.clone();
    c.moe.as_mut().unwrap().shared_expert_intermediate = Some(90);
    refused(&c, 4, "shared_expert_intermediate_size 90");
    c = base.clone();
    c.moe.as_mut().unwrap().expert_intermediate = 50;
    refused(&c, 4, "experts' intermediate size 50");
    c = base.clone();
    c.intermediate_size = 162;
    refused(&c, 4, "intermediate_size 162");
    assert!(ShardPlan::new(&base, 3, 4).is_ok());
    // Refused at load, before any rank waits on another: one rank alone returns the error.
    let lone = LocalGroup::new(3).remove(0);
    let e = DecoderModel::load_sharded(&base, &loaded.weights, &Device::Cpu, DType::F32, Arc::new(lone)).err().unwrap();
    assert!(is_tp_refusal(&e), "{e}");
}

#[test]
fn quantized_weights_are_refused_by_name() {
    let gguf = fixtures().join("gguf_quant/tiny-llama-q5_0.gguf");
    let loaded = loader::load(gguf.to_str().unwrap(), &Device::Cpu, DType::F32, QuantMode::Quantized).unwrap();
    let lone = LocalGroup::new(2).remove(0);
    let e = DecoderModel::load_sharded(&loaded.config, &loaded.weights, &Device::Cpu, DType::F32, Arc::new(lone)).err().unwrap();
    assert!(matches!(&e, EngineError::Unsupported(m) if m.contains("tensor_parallel_shards")), "{e}");
}

/// Through the whole engine (scheduler, paged KV cache, sampler) with `tensor_parallel_shards`: the
/// greedy tokens are transformers' own and the logits the unsharded engine's, prompts alone and batched.
#[test]
fn the_engine_with_tensor_parallel_shards_gives_the_unsharded_results() {
    use common::{load_reference, parity_args, run_greedy};
    for (name, shards) in [("llama", 2), ("qwen3_moe", 4), ("gpt_oss", 2)] {
        let dir = fixtures().join("models").join(name);
        let r = load_reference(&dir);
        for together in [false, true] {
            let whole = run_greedy(&dir, parity_args(16), &r.prompts, 8, together);
            let args = mlc_core::engine::EngineArgs { tensor_parallel_shards: shards, ..parity_args(16) };
            let sharded = run_greedy(&dir, args, &r.prompts, 8, together);
            for (i, ((toks, rows), (want_toks, want_rows))) in sharded.iter().zip(&whole).enumerate() {
                assert_eq!(toks, want_toks, "{name} over {shards}: prompt {i} (batched {together})");
                assert_eq!(&toks[..], &r.greedy[i][..toks.len()], "{name}: transformers' greedy tokens");
                for (g, w) in rows.iter().zip(want_rows) {
                    assert!(rel(g, w) < 1e-5, "{name} over {shards}: prompt {i} relative error {:e}", rel(g, w));
                }
            }
        }
    }
    // Speculative decoding verifies drafts through the sharded target (several sampled rows per step).
    let dir = fixtures().join("models").join("qwen3_moe");
    let r = load_reference(&dir);
    let args = mlc_core::engine::EngineArgs { tensor_parallel_shards: 2, speculative_mode: "ngram".into(), spec_draft_length: 3, ..parity_args(16) };
    for (i, (toks, _)) in run_greedy(&dir, args, &r.prompts, 16, true).iter().enumerate() {
        assert_eq!(&toks[..], &r.greedy[i][..16], "qwen3_moe over 2 with ngram drafts: prompt {i}");
    }
    let err = |shards: usize| mlc_core::engine::build(fixtures().join("models/llama").to_str().unwrap(), "cpu", &mlc_core::engine::EngineArgs { tensor_parallel_shards: shards, ..parity_args(16) }).err().unwrap();
    assert!(is_tp_refusal(&err(3)), "{}", err(3));
    assert!(is_tp_refusal(&err(0)), "{}", err(0));
}

#[test]
fn cuda_refuses_more_than_one_shard_by_name() {
    let loaded = loader::load(fixtures().join("models/llama").to_str().unwrap(), &Device::Cpu, DType::F32, QuantMode::Dequantize).unwrap();
    let e = mlc_core::model::sharded::sizing_config(&loaded.config, 2, true).unwrap_err();
    assert!(matches!(&e, EngineError::Unsupported(m) if m.contains("tensor_parallel_shards")), "{e}");
    // On the CPU, 4 ranks keep a copy of each of the 2 KV heads on 2 ranks: the caches hold 4 in all.
    assert_eq!(mlc_core::model::sharded::sizing_config(&loaded.config, 4, false).unwrap().num_key_value_heads, 4);
    assert_eq!(mlc_core::model::sharded::sizing_config(&loaded.config, 1, true).unwrap().num_key_value_heads, 2);
}

/// NCCL between two GPUs (feature `nccl`, run on a host with at least 2): the collectives, and the
/// llama and Qwen3 fixtures sharded over 2 GPUs against the unsharded model on the first, in f32.
#[cfg(feature = "nccl")]
mod nccl {
    use super::*;
    use mlc_core::parallel::{Communicator, NcclComm};

    const WORLD: usize = 2;

    /// Runs `f(rank, device, communicator)` on one thread per GPU; rank 0's result first.
    fn on_gpus<T: Send>(f: impl Fn(usize, Device, Arc<dyn Communicator>) -> T + Sync) -> Vec<T> {
        let id = NcclComm::unique_id().unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..WORLD)
                .map(|rank| {
                    let f = &f;
                    s.spawn(move || {
                        let device = Device::new_cuda(rank).expect("this test needs 2 CUDA devices");
                        let comm = NcclComm::new(device.as_cuda_device().unwrap(), rank, WORLD, id).unwrap();
                        f(rank, device, Arc::new(comm))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn nccl_all_reduce_and_all_gather() {
        let outs = on_gpus(|rank, device, comm| {
            let x = Tensor::new(&[[rank as f32, 1.0], [2.0, 10.0 * rank as f32]], &device).unwrap(); // [2, 2]
            let sum = comm.all_reduce_sum(&x).unwrap().to_vec2::<f32>().unwrap();
            let g1 = comm.all_gather(&x, 1).unwrap().to_vec2::<f32>().unwrap();
            let bf = comm.all_reduce_sum(&x.to_dtype(DType::BF16).unwrap()).unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            (sum, g1, bf)
        });
        for (sum, g1, bf) in outs {
            assert_eq!(sum, vec![vec![1.0, 2.0], vec![4.0, 10.0]]);
            assert_eq!(bf, sum);
            assert_eq!(g1, vec![vec![0.0, 1.0, 1.0, 1.0], vec![2.0, 0.0, 2.0, 10.0]]);
        }
    }

    #[test]
    fn fixtures_sharded_over_2_gpus_give_the_unsharded_logits() {
        for name in ["llama", "qwen3", "gemma3"] {
            let dir = fixtures().join("models").join(name);
            let gpu0 = Device::new_cuda(0).unwrap();
            let loaded = loader::load(dir.to_str().unwrap(), &gpu0, DType::F32, QuantMode::Dequantize).unwrap();
            let cfg = loaded.config.clone();
            let whole = DecoderModel::load(&cfg, &loaded.weights, &gpu0, DType::F32).unwrap();
            let want = run(&whole, &cfg, cfg.vocab_size, false);
            let outs = on_gpus(|_, device, comm| {
                let l = loader::load(dir.to_str().unwrap(), &device, DType::F32, QuantMode::Dequantize).unwrap();
                let m = DecoderModel::load_sharded(&cfg, &l.weights, &device, DType::F32, comm).unwrap();
                run(&m, m.layer_config(), cfg.vocab_size, false)
            });
            assert!(outs.iter().all(|o| *o == outs[0]), "{name}: the ranks' logits differ");
            let worst = outs[0].iter().zip(&want).map(|(g, w)| rel(g, w)).fold(0f32, f32::max);
            eprintln!("{name}: 2 GPUs vs 1, worst relative logit error {worst:e}");
            assert!(worst < 1e-4, "{name}: {worst:e}");
        }
    }
}
