//! Logit parity with HF transformers (fp32) on tiny random checkpoints, through the full engine core
//! (scheduler, paged KV cache, runner, sampler): prompts in one piece, chunked, and batched together.
//! Fixtures: tests/fixtures/models/*/reference.json, made by tests/fixtures/gen_hf_fixtures.py.

mod common;

use common::{fixtures, load_reference, max_rel_err, parity_args, run_greedy};

fn check_model(name: &str) {
    check_model_within(name, 1e-4);
}

/// `bound`: the largest relative logit error allowed on any row.
fn check_model_within(name: &str, bound: f32) {
    let dir = fixtures().join("models").join(name);
    let r = load_reference(&dir);
    for (chunk, together) in [(512, false), (5, false), (16, true)] {
        let results = run_greedy(&dir, parity_args(chunk), &r.prompts, 32, together);
        for (i, (toks, rows)) in results.iter().enumerate() {
            // Rows first: the first row off the reference says where a divergence starts.
            let errs: Vec<f32> = rows.iter().zip(&r.logits[i]).map(|(g, w)| max_rel_err(g, w)).collect();
            if let Some(row) = errs.iter().position(|e| *e >= bound) {
                panic!("{name}: prompt {i} row {row} relative logit error {:e} (chunk {chunk}, batched {together}); all rows: {errs:?}", errs[row]);
            }
            assert_eq!(toks, &r.greedy[i], "{name}: greedy tokens differ for prompt {i} (chunk {chunk}, batched {together})");
            assert_eq!(rows.len(), 32);
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

#[test]
fn qwen2_transformers5_config_matches_transformers() {
    check_model("qwen2_v5cfg");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check_model("mistral_swa");
}

#[test]
fn llama_yarn_matches_transformers() {
    check_model("llama_yarn");
}

#[test]
fn llama_linear_rope_matches_transformers() {
    check_model("llama_linear");
}

#[test]
fn llama_dynamic_ntk_matches_transformers_incremental_decoding() {
    check_model("llama_dynamic");
}

#[test]
fn gemma2_softcaps_window_head_dim_256_matches_transformers() {
    // Built so that both caps bite (scores up to 64 before the attention cap, logits up to 53 before the
    // final one): the softmax over such scores amplifies f32 rounding, rows agree to 1e-5 typically and
    // 1.02e-4 at worst.
    check_model_within("gemma2", 2e-4);
}

#[test]
fn gemma3_local_global_ropes_matches_transformers() {
    check_model("gemma3");
}

#[test]
fn gemma3_transformers4_config_matches_transformers() {
    check_model("gemma3_v4cfg");
}

#[test]
fn phi3_longrope_partial_rotary_window_matches_transformers() {
    check_model("phi3");
}

#[test]
fn olmo2_post_norms_whole_qk_norm_matches_transformers() {
    check_model("olmo2");
}

#[test]
fn mixtral_top2_of_4_experts_matches_transformers() {
    check_model("mixtral");
}

#[test]
fn qwen2_moe_shared_expert_dense_layer_matches_transformers() {
    check_model("qwen2_moe");
}

#[test]
fn qwen3_moe_top4_of_16_matches_transformers() {
    check_model("qwen3_moe");
}

#[test]
fn gpt_oss_sinks_window_moe_matches_transformers() {
    // Per-head attention sinks, window 16 on even layers (the 61-token prompt crosses it), q/k/v/o
    // biases, yarn without truncation, router bias with the softmax over the top 2 of 8, fused experts
    // with biases and a clamped SwiGLU whose limit bites.
    check_model("gpt_oss");
}

/// Speculative decoding with a mixture-of-experts target: the greedy tokens are transformers' own, with
/// prompt-lookup drafts and with a small dense draft model (the qwen3 fixture: same vocabulary).
#[test]
fn moe_targets_keep_their_greedy_tokens_under_speculative_decoding() {
    let models = fixtures().join("models");
    for (target, mode, draft) in [("qwen3_moe", "ngram", None), ("mixtral", "ngram", None), ("qwen3_moe", "small_draft", Some("qwen3"))] {
        let dir = models.join(target);
        let r = load_reference(&dir);
        let mut args = parity_args(16);
        args.speculative_mode = mode.to_string();
        args.spec_draft_length = 3;
        args.additional_models = draft.map(|d| vec![models.join(d).to_string_lossy().into_owned()]).unwrap_or_default();
        for (together, runs) in [(false, run_greedy(&dir, args.clone(), &r.prompts, 32, false)), (true, run_greedy(&dir, args, &r.prompts, 32, true))] {
            for (i, (toks, _)) in runs.iter().enumerate() {
                assert_eq!(toks, &r.greedy[i], "{target} with {mode}: prompt {i} (batched {together})");
            }
        }
    }
}
