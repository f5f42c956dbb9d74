//! MLC model directories made by our converter from the tiny HF fixtures: q0f32 must reproduce HF
//! transformers' logits (relative error < 1e-5; 1e-4 for Gemma 2/3, Phi-3 and OLMo 2, as their HF parity
//! tests), 4-bit ones must run and stay near them, parameters carry MLC's names and layouts, and every
//! damaged or unsupported directory must fail with an error naming the file or field.
//! Fixtures: tests/fixtures/models/*/ (tests/fixtures/gen_hf_fixtures.py; `FIXTURE_MODELS_DIR` reads them
//! from elsewhere, as the generator writes them).

mod common;

use common::{fixtures, load_reference, max_rel_err, parity_args, run_greedy};
use mlc_core::convert::convert_weight;
use candle_core::{DType, Device, Tensor};
use mlc_core::engine::build;
use mlc_core::quant::group4::{self, ScaleType};
use std::path::{Path, PathBuf};

fn model_dir(name: &str) -> PathBuf {
    match std::env::var_os("FIXTURE_MODELS_DIR") {
        Some(d) => PathBuf::from(d).join(name),
        None => fixtures().join("models").join(name),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlc-roundtrip-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Converts fixture `model` and writes a minimal mlc-chat-config.json beside the weights (the full one is
/// `mlc_llm gen_config`'s job, tested from Python).
fn convert(model: &str, quantization: &str) -> PathBuf {
    let src = model_dir(model);
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
    check_q0f32_within(model, 1e-5, |_| 32);
}

/// The q0f32 directory of `model` against transformers' logits (`bound`, on the first `rows(prompt)` rows
/// of each prompt) and against the HF checkpoint loaded directly by this engine (the same model: equal).
fn check_q0f32_within(model: &str, bound: f32, rows: impl Fn(&[u32]) -> usize) {
    let out = convert(model, "q0f32");
    let r = load_reference(&model_dir(model));
    let mut failures = Vec::new();
    for (chunk, together) in [(512, false), (16, true)] {
        let results = run_greedy(&out, parity_args(chunk), &r.prompts, 32, together);
        let direct = run_greedy(&model_dir(model), parity_args(chunk), &r.prompts, 32, together);
        for (i, ((toks, got), (hf_toks, hf_rows))) in results.iter().zip(&direct).enumerate() {
            assert_eq!(toks, hf_toks, "{model}: greedy tokens differ from the HF directory's for prompt {i}");
            let vs_hf = got.iter().zip(hf_rows).map(|(g, w)| max_rel_err(g, w)).fold(0f32, f32::max);
            assert!(vs_hf < 1e-6, "{model}: prompt {i} differs from the HF directory by {vs_hf:e}");
            let n = rows(&r.prompts[i]);
            assert_eq!(toks[..n], r.greedy[i][..n], "{model}: greedy tokens differ from transformers' for prompt {i}");
            let worst = got[..n].iter().zip(&r.logits[i]).map(|(g, w)| max_rel_err(g, w)).fold(0f32, f32::max);
            eprintln!("{model} q0f32 prompt {i} chunk {chunk}: max relative logit error {worst:e} over {n} rows (vs the HF directory: {vs_hf:e})");
            failures.extend((worst >= bound).then(|| format!("prompt {i} chunk {chunk}: {worst:e}")));
        }
    }
    assert!(failures.is_empty(), "{model}: max relative logit errors beyond {bound:e}: {failures:?}");
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

/// Soft-capped scores up to 63 (head_dim 256) make this fixture the most sensitive to float reassociation:
/// the engine's own HF directory gives the same logits, 1.02e-4 from transformers' on prompt 0.
#[test]
fn q0f32_gemma2_softcap_sliding_matches_transformers() {
    check_q0f32_within("gemma2", 1.5e-4, |_| 32);
}

#[test]
fn q0f32_gemma3_two_ropes_qk_norm_matches_transformers() {
    check_q0f32_within("gemma3_v4cfg", 1e-4, |_| 32);
}

/// The same checkpoint with transformers 5's config.json (rope_parameters per layer type, layer_types,
/// `_sliding_window_pattern`).
#[test]
fn q0f32_gemma3_transformers5_config_matches_transformers() {
    check_q0f32_within("gemma3", 1e-4, |_| 32);
}

/// Every row, also past original_max_position_embeddings (32), where transformers and this engine
/// recompute the sequence with the long factors.
#[test]
fn q0f32_phi3_longrope_partial_rotary_matches_transformers() {
    check_q0f32_within("phi3", 1e-4, |_| 32);
}

#[test]
fn q0f32_olmo2_post_norms_matches_transformers() {
    check_q0f32_within("olmo2", 1e-4, |_| 32);
}

/// The tensor-cache names of a converted fixture.
fn stored_names(dir: &Path) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tensor-cache.json")).unwrap()).unwrap();
    index["records"].as_array().unwrap().iter().flat_map(|s| s["records"].as_array().unwrap()).map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// (fixture, layer 0's names in order, the last names, names that must not exist)
type NameCase = (&'static str, &'static [&'static str], &'static [&'static str], &'static [&'static str]);

/// Layer 0's parameters as MLC's model of each architecture names them (python/mlc_llm/model/<arch>/), the
/// whole list in MLC's declaration order, and Gemma's norms stored as `1 + w`.
#[test]
fn new_architectures_carry_mlc_names_and_gemma_norms_plus_one() {
    let cases: [NameCase; 4] = [
        (
            "gemma2",
            &["model.embed_tokens.weight", "model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight",
              "model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
              "model.layers.0.post_attention_layernorm.weight", "model.layers.0.pre_feedforward_layernorm.weight",
              "model.layers.0.post_feedforward_layernorm.weight"],
            &["model.norm.weight"],
            &["lm_head.weight"],
        ),
        (
            "gemma3_v4cfg",
            &["language_model.model.embed_tokens.weight", "language_model.model.layers.0.self_attn.q_proj.weight",
              "language_model.model.layers.0.self_attn.k_proj.weight", "language_model.model.layers.0.self_attn.v_proj.weight",
              "language_model.model.layers.0.self_attn.o_proj.weight", "language_model.model.layers.0.self_attn.q_norm.weight",
              "language_model.model.layers.0.self_attn.k_norm.weight", "language_model.model.layers.0.mlp.gate_up_proj.weight",
              "language_model.model.layers.0.mlp.down_proj.weight", "language_model.model.layers.0.input_layernorm.weight",
              "language_model.model.layers.0.post_attention_layernorm.weight", "language_model.model.layers.0.pre_feedforward_layernorm.weight",
              "language_model.model.layers.0.post_feedforward_layernorm.weight"],
            &["language_model.model.norm.weight"],
            &["lm_head.weight", "language_model.model.layers.0.self_attn.qkv_proj.weight"],
        ),
        (
            "phi3",
            &["transformer.embd.weight", "transformer.h.0.ln.weight", "transformer.h.0.mixer.qkv_proj.weight",
              "transformer.h.0.mixer.out_proj.weight", "transformer.h.0.mlp.gate_up_proj.weight", "transformer.h.0.mlp.down_proj.weight",
              "transformer.h.0.post_attention_layernorm.weight"],
            &["transformer.norm.weight", "lm_head.weight"],
            &["model.norm.weight"],
        ),
        (
            "olmo2",
            &["model.embed_tokens.weight", "model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight",
              "model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight", "model.layers.0.mlp.gate_up_proj.weight",
              "model.layers.0.mlp.down_proj.weight", "model.layers.0.post_attention_layernorm.weight",
              "model.layers.0.post_feedforward_layernorm.weight"],
            &["model.norm.weight", "lm_head.weight"],
            &["model.layers.0.input_layernorm.weight"],
        ),
    ];
    for (model, layer0, tail, absent) in cases {
        let out = convert(model, "q0f32");
        let names = stored_names(&out);
        let first: Vec<&str> = names.iter().take(layer0.len()).map(String::as_str).collect();
        assert_eq!(first, layer0, "{model}: MLC's names in declaration order");
        let last: Vec<&str> = names[names.len() - tail.len()..].iter().map(String::as_str).collect();
        assert_eq!(last, tail, "{model}: the last parameters");
        for a in absent {
            assert!(!names.iter().any(|n| n == a), "{model}: {a} must not be stored");
        }
        let stored = mlc_core::loader::tensor_cache::read_params(&out).unwrap();
        let hf = candle_core::safetensors::load(model_dir(model).join("model.safetensors"), &Device::Cpu).unwrap();
        let plus = if model.starts_with("gemma") { 1.0 } else { 0.0 };
        let prefix = if model.starts_with("gemma3") { "language_model." } else { "" };
        let norm_name = if model == "phi3" { "transformer.h.0.post_attention_layernorm.weight".to_string() } else { format!("{prefix}model.layers.0.post_attention_layernorm.weight") };
        let got: Vec<f32> = stored[&norm_name].bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let want: Vec<f32> = hf["model.layers.0.post_attention_layernorm.weight"].to_vec1::<f32>().unwrap().iter().map(|w| w + plus).collect();
        assert_eq!(got, want, "{model}: norm weights as MLC stores them");
        std::fs::remove_dir_all(out).unwrap();
    }
}

/// HF fixture `model` with the values an MLC directory of quantization `q` stores, as an HF directory
/// (made without the MLC layout): matrices (linear weights, the embedding) through MLC's 4-bit groups and
/// back, everything else rounded to the model dtype (Gemma's norms as `1 + w`, rounded, minus the 1).
fn as_stored_hf(model: &str, q: &str) -> PathBuf {
    let (src, out) = (model_dir(model), scratch(&format!("{model}-as-{q}")));
    std::fs::create_dir_all(&out).unwrap();
    let (scale, dtype) = match q {
        "q0f32" => (None, DType::F32),
        "q0f16" => (None, DType::F16),
        "q0bf16" => (None, DType::BF16),
        "q4f32_1" => (Some(ScaleType::F32), DType::F32),
        "q4f16_1" => (Some(ScaleType::F16), DType::F16),
        "q4bf16_1" => (Some(ScaleType::BF16), DType::BF16),
        other => panic!("{other}"),
    };
    let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        *t = match (t.dims2(), scale) {
            (Ok((rows, cols)), Some(scale)) => {
                let p = group4::quantize(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), rows, cols, scale);
                Tensor::from_vec(group4::dequantize(&p.q_weight, &p.q_scale, rows, cols, scale), (rows, cols), &Device::Cpu).unwrap()
            }
            _ if model.starts_with("gemma") && name.ends_with("norm.weight") => (round(&(&*t + 1.0).unwrap()) - 1.0).unwrap(),
            _ => round(t),
        };
    }
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    out
}

/// Every quantization of the new architectures gives the logits of the HF checkpoint holding the values it
/// stores: exactly where the weights are widened at load (16-bit, q4f32_1, q4bf16_1); q4f16_1 runs as Q4_0
/// blocks through candle's CPU matmul, which rounds activations to 8 bits (3e-2 on most fixtures, 0.53 on
/// Gemma 2's, whose soft-capped attention scores reach 63); 4-bit logits are not the f32 model's.
#[test]
fn new_architectures_compute_with_the_values_they_store() {
    for model in ["gemma2", "gemma3_v4cfg", "phi3", "olmo2"] {
        let r = load_reference(&model_dir(model));
        for q in ["q0f16", "q0bf16", "q4f32_1", "q4bf16_1", "q4f16_1"] {
            let (out, stored) = (convert(model, q), as_stored_hf(model, q));
            let got = run_greedy(&out, parity_args(512), &r.prompts, 1, false);
            let want = run_greedy(&stored, parity_args(512), &r.prompts, 1, false);
            let worst = got.iter().zip(&want).map(|((_, g), (_, w))| max_rel_err(&g[0], &w[0])).fold(0f32, f32::max);
            let vs_f32 = got.iter().zip(&r.logits).map(|((_, g), w)| max_rel_err(&g[0], &w[0])).fold(0f32, f32::max);
            eprintln!("{model} {q}: first-row relative logit error vs the stored values {worst:e}, vs f32 {vs_f32:e}");
            let bound = match (q, model) {
                ("q4f16_1", "gemma2") => 0.6,
                ("q4f16_1", _) => 0.1,
                _ => 1e-6,
            };
            assert!(worst < bound, "{model} {q}: {worst:e} from the stored values");
            if q.starts_with("q4") {
                assert!(vs_f32 > 1e-3, "{model} {q}: logits equal the f32 model's, the weights were not quantized");
            }
            std::fs::remove_dir_all(out).unwrap();
            std::fs::remove_dir_all(stored).unwrap();
        }
    }
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

/// Mixtures in MLC's layout: transformers' logits from the q0f32 directory; the router and the stacked
/// experts with their leading expert dimension (`e1_e3` / `moe_gate_up_proj` `[E, 2I, H]`, per expert gate
/// rows then up rows), in MLC's declaration order; 4-bit experts compute with the values they store; a
/// checkpoint with dense layers is refused. (One test: the conversions share scratch directory names.)
#[test]
fn moe_directories_match_transformers_with_mlc_names_and_shapes() {
    check_q0f32("mixtral");
    check_q0f32("qwen3_moe");
    let cases: [(&str, &[&str], &str, [usize; 3]); 2] = [
        ("mixtral", &["model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight", "model.layers.0.moe.gate.weight",
                      "model.layers.0.moe.e1_e3.weight", "model.layers.0.moe.e2.weight", "model.layers.0.input_layernorm.weight"],
         "model.layers.0.moe.e1_e3.weight", [4, 192, 64]),
        ("qwen3_moe", &["model.layers.0.self_attn.c_attn.weight", "model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.q_norm.weight",
                        "model.layers.0.self_attn.k_norm.weight", "model.layers.0.mlp.gate.weight", "model.layers.0.mlp.moe_gate_up_proj.weight",
                        "model.layers.0.mlp.moe_down_proj.weight", "model.layers.0.input_layernorm.weight"],
         "model.layers.0.mlp.moe_gate_up_proj.weight", [16, 64, 64]),
    ];
    for (model, layer0, stacked, shape) in cases {
        let out = convert(model, "q0f32");
        let names = stored_names(&out);
        let first: Vec<&str> = names.iter().skip(1).take(layer0.len()).map(String::as_str).collect();
        assert_eq!(first, layer0, "{model}: MLC's names in declaration order");
        let stored = mlc_core::loader::tensor_cache::read_params(&out).unwrap();
        assert_eq!(stored[stacked].shape, shape.to_vec(), "{model}: {stacked}");
        // Expert 1's up rows: rows I..2I of expert 1 in the stacked parameter.
        let hf = candle_core::safetensors::load(model_dir(model).join("model.safetensors"), &Device::Cpu).unwrap();
        let up = if model == "mixtral" { "model.layers.0.block_sparse_moe.experts.1.w3.weight" } else { "model.layers.0.mlp.experts.1.up_proj.weight" };
        let (i, h) = (shape[1] / 2, shape[2]);
        let all: Vec<f32> = stored[stacked].bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let start = (2 * i + i) * h; // expert 1 begins after expert 0's 2I rows; its up rows after its I gate rows
        assert_eq!(all[start..start + i * h].to_vec(), hf[up].flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{model}: {up}");
        std::fs::remove_dir_all(out).unwrap();
        let r = load_reference(&model_dir(model));
        let (out, values) = (convert(model, "q4f32_1"), as_stored_hf(model, "q4f32_1"));
        let got = run_greedy(&out, parity_args(512), &r.prompts, 1, false);
        let want = run_greedy(&values, parity_args(512), &r.prompts, 1, false);
        let worst = got.iter().zip(&want).map(|((_, g), (_, w))| max_rel_err(&g[0], &w[0])).fold(0f32, f32::max);
        assert!(worst < 1e-6, "{model} q4f32_1: {worst:e} from the stored values");
        std::fs::remove_dir_all(out).unwrap();
        std::fs::remove_dir_all(values).unwrap();
    }
    let e = convert_weight(&model_dir("qwen2_moe"), "q0f32", &scratch("qwen2_moe-refused"), &mut |_, _, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains("dense layers"), "{e}");
}
