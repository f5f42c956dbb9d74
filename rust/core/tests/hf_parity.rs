//! Logit parity with HF transformers (fp32) on tiny random checkpoints, through the full engine core
//! (scheduler, paged KV cache, runner, sampler): prompts in one piece, chunked, and batched together.
//! Fixtures: tests/fixtures/models/*/reference.json, made by tests/fixtures/gen_hf_fixtures.py.

use mlc_core::engine::{build, EngineArgs, Mode};
use mlc_core::request::SamplingParams;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

struct Reference {
    prompts: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    /// [num_prompts][33][vocab]
    logits: Vec<Vec<Vec<f32>>>,
}

fn load_reference(dir: &PathBuf) -> Reference {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<u32>> { serde_json::from_value(v[k].clone()).unwrap() };
    let shape: Vec<usize> = serde_json::from_value(v["logits_shape"].clone()).unwrap();
    let bytes = std::fs::read(dir.join(v["logits_file"].as_str().unwrap())).unwrap();
    let flat: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(flat.len(), shape.iter().product::<usize>());
    let (p, r, vocab) = (shape[0], shape[1], shape[2]);
    let logits = (0..p).map(|i| (0..r).map(|j| flat[(i * r + j) * vocab..(i * r + j + 1) * vocab].to_vec()).collect()).collect();
    Reference { prompts: ids("prompts"), greedy: ids("greedy"), logits }
}

/// Runs the prompts through one engine core; `together` batches them in the same steps.
fn run(dir: &PathBuf, chunk: usize, together: bool, r: &Reference) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let args = EngineArgs {
        mode: Mode::Local,
        prefill_chunk_size: Some(chunk),
        max_total_sequence_length: Some(512),
        verbose: false,
        ..Default::default()
    };
    let (mut core, info, _) = build(dir.to_str().unwrap(), "cpu", &args).unwrap();
    core.capture_logits = true;
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(32), ignore_eos: true, ..Default::default() };
    let mut deltas = Vec::new();
    for (i, p) in r.prompts.iter().enumerate() {
        let max_new = info.validate(p, &params).unwrap();
        core.add(format!("r{i}"), p.clone(), params.clone(), max_new);
        if !together {
            deltas.extend(core.run_to_completion().unwrap());
        }
    }
    deltas.extend(core.run_to_completion().unwrap());
    (0..r.prompts.len())
        .map(|i| {
            let id = format!("r{i}");
            let toks: Vec<u32> = deltas.iter().filter(|d| d.request_id == id).flat_map(|d| d.token_ids.clone()).collect();
            let rows: Vec<Vec<f32>> = core.captured.iter().filter(|(rid, _)| *rid == id).map(|(_, l)| l.clone()).collect();
            (toks, rows)
        })
        .collect()
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn check_model(name: &str) {
    let dir = fixtures().join(name);
    let r = load_reference(&dir);
    for (chunk, together) in [(512, false), (5, false), (16, true)] {
        let results = run(&dir, chunk, together, &r);
        for (i, (toks, rows)) in results.iter().enumerate() {
            assert_eq!(toks, &r.greedy[i], "{name}: greedy tokens differ for prompt {i} (chunk {chunk}, batched {together})");
            assert_eq!(rows.len(), 32);
            let worst = rows.iter().zip(&r.logits[i]).map(|(g, w)| max_rel_err(g, w)).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{name}: prompt {i} max relative logit error {worst:e} (chunk {chunk}, batched {together})");
        }
    }
}

#[test]
fn llama_matches_transformers() {
    check_model("llama");
}

#[test]
fn llama3_rope_scaling_bf16_matches_transformers() {
    check_model("llama3");
}

#[test]
fn mistral_f16_matches_transformers() {
    check_model("mistral");
}

#[test]
fn qwen2_sharded_with_bias_matches_transformers() {
    check_model("qwen2");
}

#[test]
fn qwen3_qk_norm_matches_transformers() {
    check_model("qwen3");
}
