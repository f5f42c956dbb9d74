//! Speculative decoding through the whole engine core on the CPU: greedy output is token for token the
//! output without speculation (one request and 16 together, whole and chunked prefill) for prompt lookup,
//! draft models (the target itself: every draft accepted; another model: real rejections) and an EAGLE
//! head over the target's hidden states, and
//! with temperature > 0 the tokens drawn by verification steps follow the same distribution as without
//! speculation (two-sample chi-square over many seeds on a model with an 8-token vocabulary).
//! Fixtures: tests/fixtures/models/* (tiny random HF checkpoints, tests/fixtures/gen_hf_fixtures.py).

mod common;

use common::{fixtures, load_reference, parity_args};
use mlc_core::engine::{build, EngineArgs};
use mlc_core::request::SamplingParams;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn spec_args(chunk: usize, mode: &str, k: usize, draft: Option<&Path>) -> EngineArgs {
    EngineArgs {
        speculative_mode: mode.to_string(),
        spec_draft_length: k,
        additional_models: draft.map(|d| d.to_string_lossy().into_owned()).into_iter().collect(),
        max_num_sequence: Some(16),
        max_total_sequence_length: Some(4096),
        ..parity_args(chunk)
    }
}

/// Every request's tokens (by prompt index) and the engine's metrics after the run.
fn run(path: &Path, args: &EngineArgs, prompts: &[Vec<u32>], params: &SamplingParams, together: bool) -> (Vec<Vec<u32>>, mlc_core::engine::metrics::Metrics) {
    let (mut core, info, _) = build(path.to_str().unwrap(), "cpu", args).unwrap();
    let mut tokens: HashMap<String, Vec<u32>> = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut params = params.clone();
        params.seed = params.seed.map(|s| s + i as u64);
        let max_new = info.validate(p, &params).unwrap();
        core.add(format!("r{i}"), p.clone(), params, max_new);
        if !together {
            for d in core.run_to_completion().unwrap() {
                tokens.entry(d.request_id).or_default().extend(d.token_ids);
            }
        }
    }
    for d in core.run_to_completion().unwrap() {
        tokens.entry(d.request_id).or_default().extend(d.token_ids);
    }
    let out = (0..prompts.len()).map(|i| tokens.remove(&format!("r{i}")).unwrap_or_default()).collect();
    (out, core.metrics())
}

/// The fixture's prompts plus 13 of pseudo-random ids that repeat themselves (so prompt lookup finds
/// n-grams to propose).
fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    let mut out = load_reference(&model("llama")).prompts;
    let mut x = 12345u64;
    while out.len() < 16 {
        let len = 6 + out.len() * 3;
        let head: Vec<u32> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) % u64::from(vocab)) as u32
            })
            .collect();
        out.push([head.clone(), head[..len / 2].to_vec()].concat());
    }
    out
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }
}

fn check_greedy_identity(target: &str, mode: &str, draft: Option<&Path>) -> Vec<mlc_core::engine::metrics::Metrics> {
    let path = model(target);
    let prompts = prompts(2048);
    let params = greedy(24);
    let mut metrics = Vec::new();
    for (chunk, together) in [(512, false), (512, true), (5, true)] {
        let (want, _) = run(&path, &spec_args(chunk, "disable", 0, None), &prompts, &params, together);
        for k in [0, 3] {
            let (got, m) = run(&path, &spec_args(chunk, mode, k, draft), &prompts, &params, together);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{target} {mode} k={k}: prompt {i} differs (chunk {chunk}, together {together})");
            }
            assert!(m.spec_verify_steps > 0, "{mode}: no step verified drafts");
            eprintln!(
                "{target} {mode} k={k} chunk={chunk} together={together}: acceptance {:.3}, mean accepted length {:.2}, {} verify steps",
                m.spec_acceptance_rate, m.spec_mean_accepted_length, m.spec_verify_steps
            );
            metrics.push(m);
        }
    }
    metrics
}

#[test]
fn prompt_lookup_greedy_equals_plain_greedy() {
    check_greedy_identity("llama", "ngram", None);
}

#[test]
fn draft_equal_to_target_accepts_everything_and_changes_nothing() {
    for m in check_greedy_identity("llama", "small_draft", Some(&model("llama"))) {
        assert_eq!(m.spec_acceptance_rate, 1.0);
    }
}

#[test]
fn another_draft_model_is_verified_exactly() {
    // The Mistral fixture shares the word-level vocabulary but not the weights: most drafts are rejected.
    let m = check_greedy_identity("llama", "small_draft", Some(&model("mistral")));
    assert!(m.iter().all(|m| m.spec_acceptance_rate < 1.0));
}

/// Deterministic weights for the test models: uniform in `[-scale, scale)` from a 64-bit LCG.
struct Lcg(u64);

impl Lcg {
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// Writes `tensors` (name, shape, values) as `dir/model.safetensors` and `config` as `dir/config.json`.
fn save_model(dir: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>, config: serde_json::Value) {
    use candle_core::{Device, Tensor};
    std::fs::create_dir_all(dir).unwrap();
    let w: HashMap<String, Tensor> =
        tensors.into_iter().map(|(name, shape, v)| (name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap())).collect();
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// A random one-layer EAGLE head for the llama fixture (hidden 64) in the layout of EAGLE checkpoints.
fn eagle_head(dir: &Path) {
    let (hidden, inter, heads, kv, hd) = (64usize, 160usize, 4usize, 2usize, 16usize);
    let mut r = Lcg(4242);
    let t = |name: &str, shape: &[usize], v: Vec<f32>| (name.to_string(), shape.to_vec(), v);
    let tensors = vec![
        t("fc.weight", &[hidden, 2 * hidden], r.take(hidden * 2 * hidden, 0.1)),
        t("fc.bias", &[hidden], r.take(hidden, 0.01)),
        t("layers.0.post_attention_layernorm.weight", &[hidden], vec![1.0; hidden]),
        t("layers.0.self_attn.q_proj.weight", &[heads * hd, hidden], r.take(heads * hd * hidden, 0.1)),
        t("layers.0.self_attn.k_proj.weight", &[kv * hd, hidden], r.take(kv * hd * hidden, 0.1)),
        t("layers.0.self_attn.v_proj.weight", &[kv * hd, hidden], r.take(kv * hd * hidden, 0.1)),
        t("layers.0.self_attn.o_proj.weight", &[hidden, heads * hd], r.take(hidden * heads * hd, 0.1)),
        t("layers.0.mlp.gate_proj.weight", &[inter, hidden], r.take(inter * hidden, 0.1)),
        t("layers.0.mlp.up_proj.weight", &[inter, hidden], r.take(inter * hidden, 0.1)),
        t("layers.0.mlp.down_proj.weight", &[hidden, inter], r.take(hidden * inter, 0.1)),
    ];
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "vocab_size": 2048, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "bias": true
    });
    save_model(dir, tensors, config);
}

#[test]
fn eagle_head_drafts_are_verified_exactly() {
    let dir = std::env::temp_dir().join(format!("mlc-spec-eagle-{}", std::process::id()));
    eagle_head(&dir);
    for m in check_greedy_identity("llama", "eagle", Some(&dir)) {
        assert!(m.spec_draft_tokens > 0);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// The same head converted to an MLC eagle directory (q0f32: exact) drafts exactly as the original: same
/// tokens and the same proposals and acceptances.
#[test]
fn eagle_head_from_an_mlc_directory_drafts_like_the_checkpoint() {
    let root = std::env::temp_dir().join(format!("mlc-spec-eagle-mlc-{}", std::process::id()));
    let (hf, mlc) = (root.join("hf"), root.join("mlc"));
    eagle_head(&hf);
    mlc_core::convert::convert_weight(&hf, "q0f32", &mlc, &mut |_, _, _| Ok(())).unwrap();
    let mut model_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    model_config["model_type"] = "eagle".into();
    let chat = serde_json::json!({"model_type": "eagle", "quantization": "q0f32", "model_config": model_config});
    std::fs::write(mlc.join("mlc-chat-config.json"), chat.to_string()).unwrap();
    let index = std::fs::read_to_string(mlc.join("tensor-cache.json")).unwrap();
    assert!(index.contains("layers.0.self_attn.qkv_proj.weight") && index.contains("\"fc.bias\""), "MLC's eagle names");
    let prompts = prompts(2048);
    let params = greedy(24);
    let (want, m_hf) = run(&model("llama"), &spec_args(512, "eagle", 3, Some(&hf)), &prompts, &params, true);
    let (got, m_mlc) = run(&model("llama"), &spec_args(512, "eagle", 3, Some(&mlc)), &prompts, &params, true);
    assert_eq!(got, want);
    assert!(m_hf.spec_draft_tokens > 0);
    assert_eq!((m_mlc.spec_draft_tokens, m_mlc.spec_accepted_tokens), (m_hf.spec_draft_tokens, m_hf.spec_accepted_tokens));
    std::fs::remove_dir_all(root).unwrap();
}

/// A prompt served from the prefix cache has no hidden states for its cached positions: the head
/// starts after them and still drafts.
#[test]
fn eagle_drafts_after_a_prefix_cache_hit() {
    let dir = std::env::temp_dir().join(format!("mlc-spec-eagle-prefix-{}", std::process::id()));
    eagle_head(&dir);
    let prompt = load_reference(&model("llama")).prompts[2].clone(); // 61 tokens: 3 full blocks reusable
    let args = spec_args(512, "eagle", 3, Some(&dir));
    let (mut core, info, _) = build(model("llama").to_str().unwrap(), "cpu", &args).unwrap();
    let params = greedy(16);
    let mut outs = Vec::new();
    let mut drafted = Vec::new();
    for i in 0..2 {
        let max_new = info.validate(&prompt, &params).unwrap();
        core.add(format!("r{i}"), prompt.clone(), params.clone(), max_new);
        outs.push(core.run_to_completion().unwrap().into_iter().flat_map(|d| d.token_ids).collect::<Vec<_>>());
        drafted.push(core.metrics().spec_draft_tokens);
    }
    assert!(core.metrics().prefix_cache_hit_tokens > 0, "the second request should reuse the first's blocks");
    assert_eq!(outs[0], outs[1]);
    assert!(drafted[1] > drafted[0], "no drafts after the prefix-cache hit: {drafted:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn draft_models_must_share_the_vocabulary_and_modes_must_be_known() {
    let err = |args: EngineArgs| build(model("llama").to_str().unwrap(), "cpu", &args).err().expect("refused").to_string();
    let e = err(spec_args(64, "small_draft", 0, None));
    assert!(e.contains("additional_models"), "{e}");
    let e = err(spec_args(64, "medusa", 0, None));
    assert!(e.contains("speculative_mode"), "{e}");
    let e = err(spec_args(64, "eagle", 0, None));
    assert!(e.contains("eagle"), "{e}");
}

// ---- distributions with temperature > 0 on an 8-token vocabulary

const VOCAB: usize = 8;

/// A random one-layer Llama with an 8-word vocabulary ("t0".."t7"), weights from a fixed-seed generator.
fn tiny_model(dir: &Path, seed: u64) {
    let (hidden, inter, heads, kv, hd) = (32usize, 64usize, 2usize, 1usize, 16usize);
    let mut r = Lcg(seed);
    let p = "model.layers.0";
    let t = |name: &str, shape: &[usize], v: Vec<f32>| (name.to_string(), shape.to_vec(), v);
    let tensors = vec![
        t("model.embed_tokens.weight", &[VOCAB, hidden], r.take(VOCAB * hidden, 1.0)),
        t("lm_head.weight", &[VOCAB, hidden], r.take(VOCAB * hidden, 0.4)),
        t("model.norm.weight", &[hidden], vec![1.0; hidden]),
        t(&format!("{p}.input_layernorm.weight"), &[hidden], vec![1.0; hidden]),
        t(&format!("{p}.post_attention_layernorm.weight"), &[hidden], vec![1.0; hidden]),
        t(&format!("{p}.self_attn.q_proj.weight"), &[heads * hd, hidden], r.take(heads * hd * hidden, 0.3)),
        t(&format!("{p}.self_attn.k_proj.weight"), &[kv * hd, hidden], r.take(kv * hd * hidden, 0.3)),
        t(&format!("{p}.self_attn.v_proj.weight"), &[kv * hd, hidden], r.take(kv * hd * hidden, 0.3)),
        t(&format!("{p}.self_attn.o_proj.weight"), &[hidden, heads * hd], r.take(hidden * heads * hd, 0.3)),
        t(&format!("{p}.mlp.gate_proj.weight"), &[inter, hidden], r.take(inter * hidden, 0.3)),
        t(&format!("{p}.mlp.up_proj.weight"), &[inter, hidden], r.take(inter * hidden, 0.3)),
        t(&format!("{p}.mlp.down_proj.weight"), &[hidden, inter], r.take(hidden * inter, 0.3)),
    ];
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "vocab_size": VOCAB, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": false
    });
    save_model(dir, tensors, config);
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB).map(|i| (format!("t{i}"), (i as u64).into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

/// Pearson's chi-square for two samples over the same cells (cells empty in both are skipped) and its
/// degrees of freedom.
fn two_sample_chi_square(a: &[u64], b: &[u64]) -> (f64, usize) {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    let mut stat = 0.0;
    let mut cells = 0usize;
    for (&x, &y) in a.iter().zip(b) {
        let total = (x + y) as f64;
        if total == 0.0 {
            continue;
        }
        let (ea, eb) = (total * na / (na + nb), total * nb / (na + nb));
        stat += (x as f64 - ea).powi(2) / ea + (y as f64 - eb).powi(2) / eb;
        cells += 1;
    }
    (stat, cells.saturating_sub(1))
}

/// 99.9th percentile of chi-square with 1..=7 degrees of freedom.
const CHI2_999: [f64; 8] = [0.0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32];

#[test]
fn sampling_through_verification_keeps_the_distribution() {
    let dir = std::env::temp_dir().join(format!("mlc-spec-tiny-{}", std::process::id()));
    let (target, other) = (dir.join("target"), dir.join("draft"));
    tiny_model(&target, 7);
    tiny_model(&other, 99);
    let n = 3000;
    // The prompt repeats, so prompt lookup proposes; three new tokens: positions 2 and 3 come from
    // verification steps whenever a draft was proposed.
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4, 1, 2, 3, 4, 1, 2]; n];
    let params = SamplingParams { temperature: 1.0, top_p: 0.9, max_tokens: Some(3), ignore_eos: true, seed: Some(1_000_000), ..Default::default() };
    let args = |mode: &str, draft: Option<&Path>| EngineArgs { max_num_sequence: Some(256), ..spec_args(64, mode, 3, draft) };
    let histogram = |outs: &[Vec<u32>], pos: usize| {
        let mut h = [0u64; VOCAB];
        outs.iter().for_each(|o| h[o[pos] as usize] += 1);
        h
    };
    let (plain, _) = run(&target, &args("disable", None), &prompts, &params, true);
    for (mode, draft) in [("ngram", None), ("small_draft", Some(other.as_path())), ("small_draft", Some(target.as_path()))] {
        let (spec, m) = run(&target, &args(mode, draft), &prompts, &params, true);
        assert!(m.spec_verify_steps > n as u64 / 4, "{mode}: only {} verification steps", m.spec_verify_steps);
        for pos in [1, 2] {
            let (a, b) = (histogram(&plain, pos), histogram(&spec, pos));
            let (stat, df) = two_sample_chi_square(&a, &b);
            eprintln!("{mode} {draft:?} token {pos}: chi-square {stat:.2} (df {df}), plain {a:?}, speculative {b:?}, acceptance {:.3}", m.spec_acceptance_rate);
            assert!(df >= 2 && stat < CHI2_999[df], "{mode}: token {pos} distribution differs: chi-square {stat:.2} df {df}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
