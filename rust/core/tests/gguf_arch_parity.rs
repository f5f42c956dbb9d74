//! The new architectures from GGUF files written the way llama.cpp's converter writes them
//! (tests/fixtures/gen_gguf_arch_fixtures.py: llama.cpp's tensor names and metadata, Gemma's norms stored
//! as 1 + w, Phi-3's fused projections and rope-factor tensors, Llama's permuted Q/K) give the logits of the
//! same weights in HF transformers, teacher-forced on the reference continuation.
//!
//! Gemma's GGUF has no `query_pre_attn_scalar` (llama.cpp scales queries by 1/sqrt(head_dim)), so the
//! Gemma files are compared with transformers run that way (`<name>.llamacpp_logits.bin`); likewise
//! gpt-oss, whose SwiGLU limit (7.0) and YaRN rounding llama.cpp builds in while the fixture's config
//! says otherwise (limit 1.2, truncate false). Every other file with `reference_logits.bin`, the
//! safetensors path's reference. Every row's argmax must be the reference's (up to a tie within the
//! tolerance): greedy decoding picks the same tokens.

mod common;

use common::{fixtures, load_reference, max_rel_err, parity_args};
use mlc_core::engine::build;
use mlc_core::request::SamplingParams;
use std::path::Path;

/// Per prompt, the logits rows of prompt + continuation[..k] for k in 0..rows, each its own request (so a
/// row is one forward pass over its prefix, as the references are), all in one engine.
fn teacher_forced(model: &Path, prompts: &[Vec<u32>], continuations: &[Vec<u32>], rows: usize) -> Vec<Vec<Vec<f32>>> {
    let (mut core, info, _) = build(model.to_str().unwrap(), "cpu", &parity_args(64)).unwrap();
    core.capture_logits = true;
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(1), ignore_eos: true, ..Default::default() };
    for (i, (p, c)) in prompts.iter().zip(continuations).enumerate() {
        for k in 0..rows {
            let ids: Vec<u32> = p.iter().chain(&c[..k]).copied().collect();
            let max_new = info.validate(&ids, &params).unwrap();
            core.add(format!("p{i}-{k}"), ids, params.clone(), max_new);
        }
    }
    core.run_to_completion().unwrap();
    (0..prompts.len())
        .map(|i| {
            (0..rows)
                .map(|k| {
                    let id = format!("p{i}-{k}");
                    core.captured.iter().find(|(rid, _)| *rid == id).map(|(_, l)| l.clone()).expect("one row per request")
                })
                .collect()
        })
        .collect()
}

fn check_gguf(name: &str, logits_file: Option<&str>) {
    let dir = fixtures().join("models").join(name);
    let mut r = load_reference(&dir);
    if let Some(f) = logits_file {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let flat: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let (rows, vocab) = (r.logits[0].len(), r.logits[0][0].len());
        assert_eq!(flat.len(), r.prompts.len() * rows * vocab);
        r.logits = (0..r.prompts.len()).map(|i| (0..rows).map(|j| flat[(i * rows + j) * vocab..(i * rows + j + 1) * vocab].to_vec()).collect()).collect();
    }
    let got = teacher_forced(&dir.join(format!("{name}.gguf")), &r.prompts, &r.greedy, 32);
    let mut worst = 0f32;
    for (i, rows) in got.iter().enumerate() {
        let errs: Vec<f32> = rows.iter().zip(&r.logits[i]).map(|(g, w)| max_rel_err(g, w)).collect();
        if let Some(row) = errs.iter().position(|e| *e >= 1e-4) {
            panic!("{name}.gguf: prompt {i} row {row} relative logit error {:e}; all rows: {errs:?}", errs[row]);
        }
        worst = errs.iter().fold(worst, |a, &e| a.max(e));
        for (row, (g, w)) in rows.iter().zip(&r.logits[i]).enumerate() {
            let top = w.iter().fold(f32::MIN, |a, &x| a.max(x));
            let scale = w.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let pick = g.iter().enumerate().fold(0, |b, (j, &x)| if x > g[b] { j } else { b });
            assert!(w[pick] >= top - 1e-4 * scale, "{name}.gguf: prompt {i} row {row}: argmax {pick} is not the reference's");
        }
    }
    eprintln!("{name}.gguf: max relative logit error {worst:e} over {} prompts x 32 rows", got.len());
}

#[test]
fn olmo2_gguf_matches_transformers() {
    check_gguf("olmo2", None);
}

#[test]
fn llama_yarn_gguf_with_permuted_qk_matches_transformers() {
    check_gguf("llama_yarn", None);
}

#[test]
fn phi3_gguf_fused_longrope_window_matches_transformers() {
    check_gguf("phi3", None);
}

#[test]
fn gemma2_gguf_matches_transformers_at_llama_cpp_scale() {
    check_gguf("gemma2", Some("gemma2.llamacpp_logits.bin"));
}

#[test]
fn gemma3_gguf_matches_transformers_at_llama_cpp_scale() {
    check_gguf("gemma3", Some("gemma3.llamacpp_logits.bin"));
}

#[test]
fn mixtral_gguf_stacked_experts_matches_transformers() {
    // A llama GGUF with expert_count: experts read one by one out of llama.cpp's [E, out, in] tensors.
    check_gguf("mixtral", None);
}

#[test]
fn qwen3_moe_gguf_matches_transformers() {
    check_gguf("qwen3_moe", None);
}

#[test]
fn gpt_oss_gguf_split_experts_sinks_and_windows_match_transformers_at_llama_cpp_settings() {
    // ffn_gate_exps / ffn_up_exps (HF's interleaved gate_up_proj split), post_attention_norm as the MoE's
    // input norm, attn_sinks; prompts of 7, 23 and 61 tokens against a window of 16.
    check_gguf("gpt_oss", Some("gpt_oss.llamacpp_logits.bin"));
}

#[test]
fn gpt_oss_gguf_mxfp4_experts_match_transformers_at_llama_cpp_settings() {
    // The experts as ggml MXFP4 (type 39), dequantized at load.
    check_gguf("gpt_oss_mxfp4", Some("gpt_oss_mxfp4.llamacpp_logits.bin"));
}
