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
fn teacher_forced(model: &Path, prompts: &[Vec<u32>], continuations: &[Vec<u32>], rows: usize, quantized: Option<bool>) -> Vec<Vec<Vec<f32>>> {
    let args = mlc_core::engine::EngineArgs { quantized_matmul: quantized, ..parity_args(64) };
    let (mut core, info, _) = build(model.to_str().unwrap(), "cpu", &args).unwrap();
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

/// `name`.gguf's logits against the reference within `tol` relative per row, argmaxes the reference's;
/// the engine's default weights path (GGUF blocks kept quantized on the CPU) unless `quantized` says.
fn check_gguf(name: &str, logits_file: Option<&str>) {
    check_gguf_with(name, logits_file, None, 1e-4)
}

fn check_gguf_with(name: &str, logits_file: Option<&str>, quantized: Option<bool>, tol: f32) {
    let dir = fixtures().join("models").join(name);
    let mut r = load_reference(&dir);
    if let Some(f) = logits_file {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let flat: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let (rows, vocab) = (r.logits[0].len(), r.logits[0][0].len());
        assert_eq!(flat.len(), r.prompts.len() * rows * vocab);
        r.logits = (0..r.prompts.len()).map(|i| (0..rows).map(|j| flat[(i * rows + j) * vocab..(i * rows + j + 1) * vocab].to_vec()).collect()).collect();
    }
    let got = teacher_forced(&dir.join(format!("{name}.gguf")), &r.prompts, &r.greedy, 32, quantized);
    let mut worst = 0f32;
    for (i, rows) in got.iter().enumerate() {
        let errs: Vec<f32> = rows.iter().zip(&r.logits[i]).map(|(g, w)| max_rel_err(g, w)).collect();
        if let Some(row) = errs.iter().position(|e| *e >= tol) {
            panic!("{name}.gguf: prompt {i} row {row} relative logit error {:e}; all rows: {errs:?}", errs[row]);
        }
        worst = errs.iter().fold(worst, |a, &e| a.max(e));
        for (row, (g, w)) in rows.iter().zip(&r.logits[i]).enumerate() {
            let top = w.iter().fold(f32::MIN, |a, &x| a.max(x));
            let scale = w.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let pick = g.iter().enumerate().fold(0, |b, (j, &x)| if x > g[b] { j } else { b });
            assert!(w[pick] >= top - tol * scale, "{name}.gguf: prompt {i} row {row}: argmax {pick} is not the reference's");
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
    // The experts as ggml MXFP4 (type 39), dequantized at load (quantized_matmul off: the exact path).
    check_gguf_with("gpt_oss_mxfp4", Some("gpt_oss_mxfp4.llamacpp_logits.bin"), Some(false), 1e-4);
}

#[test]
fn gpt_oss_gguf_mxfp4_experts_kept_in_4_bits_on_the_cpu() {
    // The default CPU path: the MXFP4 experts stay in 4 bits and the CPU's MXFP4 kernels multiply them
    // with activations quantized to ~15 bits (quant::cpu::act; the experts alone agree with their dense
    // form to 1e-3, clamped_swiglu's test). Through the whole model a router near-tie can send a token to
    // another expert, which moves that row and the later ones of its prompt by far more than the
    // quantization itself, so the bound is on the whole: the median row's relative error, and the
    // greedy choice row by row.
    let name = "gpt_oss_mxfp4";
    let dir = fixtures().join("models").join(name);
    let exact = teacher_forced_rows(name, Some(false));
    let quant = teacher_forced_rows(name, None);
    let mut errs = Vec::new();
    let mut same = 0;
    for (q, x) in quant.iter().zip(&exact) {
        errs.push(max_rel_err(q, x));
        let (aq, ax) = (argmax(q), argmax(x));
        let scale = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
        same += usize::from(aq == ax || x[aq] >= x[ax] - 1e-3 * scale);
    }
    errs.sort_by(f32::total_cmp);
    let (median, rows) = (errs[errs.len() / 2], errs.len());
    eprintln!("{name}: MXFP4 kept vs dequantized: median row error {median:e}, worst {:e}, greedy agreement {same}/{rows} ({})", errs[rows - 1], dir.display());
    // Every other weight of this file is F32, read dense on either path: equal rows would mean the experts
    // were dequantized at load, not kept.
    assert!(errs[rows - 1] > 0.0, "the default path gave the dequantized path's logits: experts not kept as MXFP4");
    assert!(median <= 1e-3, "median relative logit error {median:e}");
    assert!(same * 10 >= rows * 9, "greedy choice agrees on {same} of {rows} rows");
}

/// Every teacher-forced row of `name`.gguf's reference prompts and continuations, flattened.
fn teacher_forced_rows(name: &str, quantized: Option<bool>) -> Vec<Vec<f32>> {
    let dir = fixtures().join("models").join(name);
    let r = load_reference(&dir);
    teacher_forced(&dir.join(format!("{name}.gguf")), &r.prompts, &r.greedy, 32, quantized).into_iter().flatten().collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (j, &x)| if x > v[b] { j } else { b })
}
