//! MLC model directories made by our converter from the tiny HF fixtures: q0f32 must reproduce HF
//! transformers' logits (relative error < 1e-5), 4-bit ones must run and stay near them, and every damaged
//! or unsupported directory must fail with an error naming the file or field.
//! Fixtures: tests/fixtures/models/*/ (tests/fixtures/gen_hf_fixtures.py).

mod common;

use common::{fixtures, load_reference, max_rel_err, parity_args, run_greedy};
use mlc_core::convert::convert_weight;
use mlc_core::engine::build;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlc-roundtrip-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Converts fixture `model` and writes a minimal mlc-chat-config.json beside the weights (the full one is
/// `mlc_llm gen_config`'s job, tested from Python).
fn convert(model: &str, quantization: &str) -> PathBuf {
    let src = fixtures().join("models").join(model);
    let out = scratch(&format!("{model}-{quantization}"));
    let mut calls = 0;
    let report = convert_weight(&src, quantization, &out, &mut |done, total, _| {
        calls += 1;
        assert!(done <= total);
        Ok(())
    })
    .unwrap();
    assert_eq!(calls as u64, report.num_tensors - count_matrices(&report));
    let hf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let chat = serde_json::json!({
        "model_type": hf["model_type"],
        "quantization": quantization,
        "model_config": hf,
        "context_window_size": 512,
        "conv_template": "chatml",
    });
    std::fs::write(out.join("mlc-chat-config.json"), chat.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    out
}

/// Quantized matrices (each stored as q_weight + q_scale but converted, and reported, once).
fn count_matrices(r: &mlc_core::convert::ConvertReport) -> u64 {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&r.output).join("tensor-cache.json")).unwrap()).unwrap();
    index["records"].as_array().unwrap().iter().flat_map(|s| s["records"].as_array().unwrap()).filter(|p| p["name"].as_str().unwrap().ends_with(".q_scale")).count() as u64
}

fn check_q0f32(model: &str) {
    let out = convert(model, "q0f32");
    let r = load_reference(&fixtures().join("models").join(model));
    for (chunk, together) in [(512, false), (16, true)] {
        let results = run_greedy(&out, parity_args(chunk), &r.prompts, 32, together);
        for (i, (toks, rows)) in results.iter().enumerate() {
            assert_eq!(toks, &r.greedy[i], "{model}: greedy tokens differ for prompt {i}");
            let worst = rows.iter().zip(&r.logits[i]).map(|(g, w)| max_rel_err(g, w)).fold(0f32, f32::max);
            eprintln!("{model} q0f32 prompt {i} chunk {chunk}: max relative logit error {worst:e}");
            assert!(worst < 1e-5, "{model}: prompt {i} max relative logit error {worst:e}");
        }
    }
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn q0f32_llama_matches_transformers() {
    check_q0f32("llama");
}

#[test]
fn q0f32_llama3_tied_rope_scaling_matches_transformers() {
    check_q0f32("llama3");
}

#[test]
fn q0f32_mistral_matches_transformers() {
    check_q0f32("mistral");
}

#[test]
fn q0f32_qwen2_fused_bias_matches_transformers() {
    check_q0f32("qwen2");
}

#[test]
fn q0f32_qwen3_qk_norm_matches_transformers() {
    check_q0f32("qwen3");
}

/// 4-bit weights: the first logits row of each prompt (later rows follow each model's own greedy tokens)
/// stays within 4-bit quantization error of the f32 model's; the exact check against an independent numpy
/// dequantization of the same packed weights is tests/test_mlc_convert.py.
#[test]
fn q4_quantizations_stay_near_transformers() {
    let r = load_reference(&fixtures().join("models").join("llama"));
    for q in ["q4f16_1", "q4f32_1", "q4bf16_1"] {
        let out = convert("llama", q);
        let results = run_greedy(&out, parity_args(512), &r.prompts, 1, false);
        let worst = results.iter().zip(&r.logits).map(|((_, rows), want)| max_rel_err(&rows[0], &want[0])).fold(0f32, f32::max);
        eprintln!("llama {q}: max relative first-row logit error vs f32 {worst:e}");
        assert!(worst < 0.6, "{q}: relative logit error {worst:e} is beyond 4-bit quantization error");
        assert!(worst > 1e-3, "{q}: logits equal the f32 model's, the weights were not quantized");
        std::fs::remove_dir_all(out).unwrap();
    }
}

fn load_error(dir: &Path) -> String {
    match build(dir.to_str().unwrap(), "cpu", &parity_args(64)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn damaged_or_unsupported_directories_name_the_file_or_field() {
    let out = convert("llama", "q4f16_1");
    let shard = out.join("params_shard_0.bin");
    let original = std::fs::read(&shard).unwrap();

    std::fs::remove_file(&shard).unwrap();
    let e = load_error(&out);
    assert!(e.contains("params_shard_0.bin") && e.contains("missing"), "{e}");

    let mut flipped = original.clone();
    flipped[7] ^= 0x10;
    std::fs::write(&shard, &flipped).unwrap();
    let e = load_error(&out);
    assert!(e.contains("params_shard_0.bin") && e.contains("md5"), "{e}");

    std::fs::write(&shard, &original[..original.len() / 2]).unwrap();
    let e = load_error(&out);
    assert!(e.contains("params_shard_0.bin") && e.contains("truncated"), "{e}");
    std::fs::write(&shard, &original).unwrap();

    let chat = out.join("mlc-chat-config.json");
    edit_json(&chat, |v| v["quantization"] = "q5f16_9".into());
    let e = load_error(&out);
    assert!(e.contains("mlc-chat-config.json") && e.contains("\"quantization\"") && e.contains("q5f16_9"), "{e}");

    edit_json(&chat, |v| {
        v["quantization"] = "q4f16_1".into();
        v["model_type"] = "gpt2".into();
    });
    let e = load_error(&out);
    assert!(e.contains("mlc-chat-config.json") && e.contains("\"model_type\"") && e.contains("gpt2"), "{e}");

    edit_json(&chat, |v| v["model_type"] = "llama".into());
    std::fs::rename(out.join("tensor-cache.json"), out.join("ndarray-cache.json")).unwrap();
    build(out.to_str().unwrap(), "cpu", &parity_args(64)).expect("the older ndarray-cache.json name loads");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn unknown_quantization_is_refused_before_writing() {
    let out = scratch("refused");
    let e = convert_weight(&fixtures().join("models/llama"), "q3f16_7", &out, &mut |_, _, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("quantization") && e.to_string().contains("q4f16_1"), "{e}");
    assert!(!out.exists());
}
