//! Logit parity with HF transformers (fp32) on tiny random checkpoints, through the full engine core
//! (scheduler, paged KV cache, runner, sampler): prompts in one piece, chunked, and batched together.
//! Fixtures: tests/fixtures/models/*/reference.json, made by tests/fixtures/gen_hf_fixtures.py.

mod common;

use common::{fixtures, load_reference, max_rel_err, parity_args, run_greedy};

fn check_model(name: &str) {
    let dir = fixtures().join("models").join(name);
    let r = load_reference(&dir);
    for (chunk, together) in [(512, false), (5, false), (16, true)] {
        let results = run_greedy(&dir, parity_args(chunk), &r.prompts, 32, together);
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
