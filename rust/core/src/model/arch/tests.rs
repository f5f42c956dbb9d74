//! What each architecture reads from an HF config: the keys (listed, so a new key is a visible
//! decision), the values in both the transformers 4 and 5 forms, and refusals that name the key.

use crate::model::config::{Activation, AttentionKind, HfConfig, ModelConfig, NormPlacement, QkNormKind};
use crate::model::registry::{self, config_from_hf};
use crate::model::rope::RopeScaling;
use serde_json::{json, Value};

fn base(model_type: &str) -> Value {
    json!({
        "model_type": model_type, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "bos_token_id": 1, "torch_dtype": "bfloat16", "transformers_version": "5.25.0"
    })
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn parse(v: &Value) -> crate::error::Result<ModelConfig> {
    config_from_hf(&v.to_string(), "config.json")
}

/// The keys the architecture's reader looks at (whether present or not).
fn keys_read(model_type: &str) -> Vec<String> {
    let v = base(model_type);
    let c = HfConfig::new(v.as_object().unwrap().clone(), "config.json");
    let entry = registry::by_hf(Some(model_type), &[], "config.json").unwrap();
    (entry.from_hf)(&c, entry.arch).unwrap();
    c.keys_read()
}

#[test]
fn the_keys_each_architecture_reads() {
    let common = "hidden_act hidden_activation hidden_size intermediate_size max_position_embeddings num_attention_heads \
        num_hidden_layers num_key_value_heads original_max_position_embeddings partial_rotary_factor rms_norm_eps \
        rope_parameters rope_scaling rope_theta tie_word_embeddings vocab_size head_dim";
    let expect = |extra: &str| {
        let mut k: Vec<String> = format!("{common} {extra}").split_whitespace().map(String::from).collect();
        k.sort();
        k.dedup();
        k
    };
    assert_eq!(keys_read("llama"), expect("attention_bias mlp_bias"));
    assert_eq!(keys_read("mistral"), expect("attention_bias mlp_bias sliding_window"));
    assert_eq!(keys_read("qwen2"), expect("use_mrope use_sliding_window sliding_window max_window_layers layer_types"));
    assert_eq!(keys_read("qwen3"), expect("attention_bias use_mrope use_sliding_window sliding_window max_window_layers layer_types"));
    assert_eq!(
        keys_read("gemma2"),
        expect("attention_bias query_pre_attn_scalar sliding_window sliding_window_size use_bidirectional_attention attn_logit_softcapping final_logit_softcapping layer_types")
    );
    assert_eq!(
        keys_read("gemma3_text"),
        expect("attention_bias query_pre_attn_scalar sliding_window use_bidirectional_attention attn_logit_softcapping final_logit_softcapping layer_types sliding_window_size sliding_window_pattern _sliding_window_pattern rope_local_base_freq")
    );
    assert_eq!(keys_read("phi3"), expect("attention_bias sliding_window full_attn_mod interpolate_factor lm_head_bias"));
    assert_eq!(keys_read("olmo2"), expect("attention_bias"));
}

#[test]
fn a_key_nothing_reads_is_refused_by_name_and_neutral_keys_pass() {
    let e = parse(&with(base("llama"), json!({"quantization_config": {"quant_method": "gptq", "bits": 4}}))).unwrap_err().to_string();
    assert!(e.contains("\"quantization_config\""), "{e}");
    let e = parse(&with(base("llama"), json!({"mlp_bias": true}))).unwrap_err().to_string();
    assert!(e.contains("mlp_bias"), "{e}");
    // Gemma's soft-capping means nothing to Llama: refused rather than ignored.
    let e = parse(&with(base("llama"), json!({"attn_logit_softcapping": 50.0}))).unwrap_err().to_string();
    assert!(e.contains("attn_logit_softcapping"), "{e}");
    let e = parse(&with(base("qwen2"), json!({"use_mrope": true}))).unwrap_err().to_string();
    assert!(e.contains("use_mrope"), "{e}");
    // Off values and bookkeeping keys are fine.
    parse(&with(base("llama"), json!({"mlp_bias": false, "use_cache": true, "pretraining_tp": 1, "_name_or_path": "x"}))).unwrap();
}

#[test]
fn rope_theta_from_rope_parameters_or_the_classic_key() {
    // transformers 5 writes the base only under rope_parameters (the Qwen2 case that used to run at 10000).
    let v5 = parse(&with(base("qwen2"), json!({"rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}))).unwrap();
    assert_eq!(v5.ropes[0].theta, 1_000_000.0);
    let v4 = parse(&with(base("qwen2"), json!({"rope_theta": 1000000.0, "rope_scaling": null}))).unwrap();
    assert_eq!(v4.ropes, v5.ropes);
    let e = parse(&with(base("qwen2"), json!({"rope_theta": 10000.0, "rope_parameters": {"rope_theta": 1000000.0}}))).unwrap_err().to_string();
    assert!(e.contains("disagrees"), "{e}");
    let e = parse(&with(base("llama"), json!({"rope_parameters": {"rope_type": "su2", "rope_theta": 1e4}}))).unwrap_err().to_string();
    assert!(e.contains("rope_type \"su2\""), "{e}");
}

#[test]
fn yarn_longrope_and_partial_rotary_are_read() {
    let y = parse(&with(base("llama"), json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_theta": 10000.0}))).unwrap();
    match &y.ropes[0].scaling {
        RopeScaling::Yarn { factor, attention_factor, .. } => {
            assert_eq!(*factor, 4.0);
            assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }
    // transformers 5: an explicit factor wins over max_position_embeddings / original_max_position_embeddings
    // (256 / 32 = 8 here; transformers only warns), and the ratio stands in for a missing factor.
    let factor_of = |rope: Value| match parse(&with(base("llama"), json!({"rope_scaling": rope, "rope_theta": 10000.0}))).unwrap().ropes[0].scaling {
        RopeScaling::Yarn { factor, original_max_position_embeddings, .. } => (factor, original_max_position_embeddings),
        ref other => panic!("{other:?}"),
    };
    assert_eq!(factor_of(json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})), (4.0, 32));
    assert_eq!(factor_of(json!({"rope_type": "yarn", "original_max_position_embeddings": 32})), (8.0, 32));
    let long = json!({"rope_scaling": {"type": "longrope", "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8]},
        "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5, "head_dim": 32});
    let p = parse(&with(base("phi3"), long)).unwrap();
    assert_eq!(p.ropes[0].rotary_dim, 16);
    assert!(matches!(&p.ropes[0].scaling, RopeScaling::LongRope { original_max_position_embeddings: 64, .. }));
    // 8 factors for 8 rotated pairs; a wrong count is refused.
    let bad = json!({"rope_scaling": {"type": "longrope", "short_factor": vec![1.0; 4], "long_factor": vec![2.0; 8]}, "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5, "head_dim": 32});
    assert!(parse(&with(base("phi3"), bad)).unwrap_err().to_string().contains("short_factor"));
}

#[test]
fn gemma_layers_norms_and_caps() {
    let g2 = parse(&with(base("gemma2"), json!({"head_dim": 256, "query_pre_attn_scalar": 64, "sliding_window": 16}))).unwrap();
    assert_eq!(g2.norms, NormPlacement::Sandwich);
    assert!(g2.norm_plus_one && g2.tie_word_embeddings);
    assert_eq!(g2.activation, Activation::GeluTanh);
    assert_eq!((g2.attn_logit_softcap, g2.final_logit_softcap), (Some(50.0), Some(30.0)), "transformers' defaults");
    assert_eq!(g2.attention_scale, 1.0 / 8.0);
    let kinds: Vec<AttentionKind> = g2.layers.iter().map(|l| l.attention).collect();
    assert_eq!(kinds, [AttentionKind::Sliding(16), AttentionKind::Full, AttentionKind::Sliding(16), AttentionKind::Full]);
    assert_eq!(g2.uniform_sliding_window(), None);
    let g3 = parse(&with(
        base("gemma3_text"),
        json!({"layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"], "sliding_window": 8,
               "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
    ))
    .unwrap();
    assert_eq!(g3.qk_norm, QkNormKind::PerHead);
    assert_eq!(g3.ropes[0].scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!((g3.ropes[0].theta, g3.ropes[1].theta), (1e6, 1e4));
    assert_eq!(g3.layers.iter().map(|l| l.rope).collect::<Vec<_>>(), [1, 1, 1, 0]);
    let g3_v4 = parse(&with(
        base("gemma3_text"),
        json!({"sliding_window_pattern": 4, "sliding_window": 8, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
    ))
    .unwrap();
    assert_eq!(g3_v4.ropes, g3.ropes);
    assert_eq!(g3_v4.layers, g3.layers);
}

#[test]
fn sliding_windows_of_mistral_qwen2_phi3() {
    let m = parse(&with(base("mistral"), json!({"sliding_window": 32}))).unwrap();
    assert_eq!(m.uniform_sliding_window(), Some(32));
    // Qwen2 ignores sliding_window unless use_sliding_window, then slides from max_window_layers on.
    let q = parse(&with(base("qwen2"), json!({"sliding_window": 32, "max_window_layers": 2}))).unwrap();
    assert_eq!(q.uniform_sliding_window(), None);
    assert!(q.layers.iter().all(|l| l.attention == AttentionKind::Full));
    let q = parse(&with(base("qwen2"), json!({"sliding_window": 32, "max_window_layers": 2, "use_sliding_window": true}))).unwrap();
    assert_eq!(q.layers.iter().map(|l| l.attention.window()).collect::<Vec<_>>(), [None, None, Some(32), Some(32)]);
    // Phi-4-mini's own config keys at their neutral values load; other values are refused.
    parse(&with(base("phi3"), json!({"full_attn_mod": 1, "interpolate_factor": 1, "lm_head_bias": false}))).unwrap();
    assert!(parse(&with(base("phi3"), json!({"full_attn_mod": 2}))).unwrap_err().to_string().contains("full_attn_mod"));
    // google/gemma-2-9b's config repeats the window.
    parse(&with(base("gemma2"), json!({"sliding_window": 4096, "sliding_window_size": 4096, "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "cache_implementation": "hybrid"}))).unwrap();
    let p = parse(&with(base("phi3"), json!({"sliding_window": 47}))).unwrap();
    assert_eq!(p.uniform_sliding_window(), Some(47));
    assert!(p.fused_projections);
    let o = parse(&base("olmo2")).unwrap();
    assert_eq!((o.norms, o.qk_norm), (NormPlacement::Post, QkNormKind::Whole));
}

fn moe(model_type: &str, extra: Value) -> crate::error::Result<ModelConfig> {
    parse(&with(base(model_type), extra))
}

#[test]
fn qwen_moe_sparse_layers_follow_the_step_and_mlp_only_layers() {
    let extra = json!({"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 2,
                       "mlp_only_layers": [3], "norm_topk_prob": true});
    let m = moe("qwen3_moe", extra).unwrap().moe.unwrap();
    // Sparse iff not in mlp_only_layers and (i + 1) % 2 == 0: layer 1 only (3 is listed dense).
    assert_eq!(m.sparse_layers, vec![false, true, false, false]);
    assert_eq!((m.num_experts, m.top_k, m.expert_intermediate, m.norm_topk_prob), (8, 2, 32, true));
    assert_eq!(m.shared_expert_intermediate, None);
}

#[test]
fn qwen3_moe_takes_either_expert_count_key_but_not_two_that_disagree() {
    let k = |extra: Value| moe("qwen3_moe", with(json!({"num_experts_per_tok": 2, "moe_intermediate_size": 32}), extra));
    assert_eq!(k(json!({"num_local_experts": 8})).unwrap().moe.unwrap().num_experts, 8); // transformers 5
    assert_eq!(k(json!({"num_experts": 8})).unwrap().moe.unwrap().num_experts, 8); // published checkpoints
    assert!(k(json!({"num_experts": 8, "num_local_experts": 4})).unwrap_err().to_string().contains("disagree"));
    assert!(k(json!({})).unwrap_err().to_string().contains("num_experts"));
}

#[test]
fn moe_configs_refuse_impossible_routing_naming_the_key() {
    let e = moe("mixtral", json!({"num_local_experts": 4, "num_experts_per_tok": 5})).unwrap_err().to_string();
    assert!(e.contains("num_experts_per_tok"), "{e}");
    let e = moe("qwen2_moe", json!({"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
                                    "shared_expert_intermediate_size": 16, "decoder_sparse_step": 0})).unwrap_err().to_string();
    assert!(e.contains("decoder_sparse_step"), "{e}");
    // An unknown routing option is refused by name, never ignored.
    let e = moe("mixtral", json!({"num_local_experts": 4, "router_type": "sigmoid"})).unwrap_err().to_string();
    assert!(e.contains("router_type"), "{e}");
}

#[test]
fn mixtral_always_renormalizes_and_qwen2_moe_has_its_shared_expert_and_qkv_bias() {
    let m = moe("mixtral", json!({"num_local_experts": 8, "num_experts_per_tok": 2})).unwrap();
    let x = m.moe.as_ref().unwrap();
    assert!(x.norm_topk_prob && x.sparse_layers.iter().all(|&s| s));
    assert_eq!(x.expert_intermediate, 128);
    let q = moe("qwen2_moe", json!({"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
                                    "shared_expert_intermediate_size": 16, "qkv_bias": false})).unwrap();
    assert_eq!(q.moe.as_ref().unwrap().shared_expert_intermediate, Some(16));
    assert!(!q.attention_bias);
    // Every expert is resident: the weight bytes count all of them.
    let dense = moe("qwen2", json!({})).unwrap().weight_bytes(2);
    assert!(q.weight_bytes(2) > dense - 4 * 3 * 64 * 128 * 2);
    assert!(m.weight_bytes(2) > 8 * 4 * 3 * 64 * 128 * 2);
    // Experts kept at 4.25 bits (MXFP4 on the CPU): only their share shrinks; at the element size, nothing.
    let experts = m.moe.as_ref().unwrap().sparse_layers.len() as u64 * 8 * 3 * m.hidden_size as u64 * 128;
    assert_eq!(m.weight_bytes_with_experts(4, 4.25), m.weight_bytes(4) - experts * 4 + experts * 17 / 32);
    assert_eq!(m.weight_bytes_with_experts(4, 32.0), m.weight_bytes(4));
}

/// openai/gpt-oss-20b's config.json (transformers 4.55 form: rope_scaling, openai's own keys), shrunk.
fn gpt_oss(extra: Value) -> crate::error::Result<ModelConfig> {
    let published = json!({
        "model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "hidden_size": 64, "intermediate_size": 64,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 100,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "attention_bias": true, "attention_dropout": 0.0,
        "eos_token_id": 200002, "pad_token_id": 199999, "experts_per_token": 4, "num_experts_per_tok": 4,
        "num_local_experts": 32, "hidden_act": "silu", "initial_context_length": 4096, "initializer_range": 0.02,
        "output_router_logits": false, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": false, "use_cache": true, "rope_theta": 150000,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                         "rope_type": "yarn", "truncate": false}
    });
    parse(&with(published, extra))
}

#[test]
fn gpt_oss_reads_sinks_biases_routing_swiglu_and_yarn() {
    use crate::model::config::{ClampedSwiglu, MoeNaming, Routing};
    let c = gpt_oss(json!({})).unwrap();
    assert!(c.attention_sinks && c.attention_bias && c.o_proj_bias);
    let m = c.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.top_k, m.expert_intermediate), (32, 4, 64));
    assert_eq!((m.naming, m.routing), (MoeNaming::GptOss, Routing::TopKSoftmax));
    // swiglu_alpha is absent from the published configs: GptOssConfig's default.
    assert_eq!(m.clamped_swiglu, Some(ClampedSwiglu { alpha: 1.702, limit: 7.0 }));
    match &c.ropes[0].scaling {
        RopeScaling::Yarn { factor, original_max_position_embeddings, truncate, .. } => {
            assert_eq!((*factor, *original_max_position_embeddings, *truncate), (32.0, 4096, false));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.ropes[0].theta, 150000.0);
    // transformers 5's form reads the same.
    let v5 = gpt_oss(json!({"rope_scaling": null, "rope_theta": null, "swiglu_alpha": 1.702,
        "rope_parameters": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": false,
                            "original_max_position_embeddings": 4096, "rope_theta": 150000.0}})).unwrap();
    assert_eq!(v5.ropes, c.ropes);
}

#[test]
fn gpt_oss_layer_types_alternate_from_a_sliding_first_layer() {
    let kinds = |c: ModelConfig| c.layers.iter().map(|l| l.attention).collect::<Vec<_>>();
    let (s, f) = (AttentionKind::Sliding(128), AttentionKind::Full);
    // GptOssConfig's default: layer i slides iff i is even.
    assert_eq!(kinds(gpt_oss(json!({})).unwrap()), [s, f, s, f]);
    let types = json!({"layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"], "sliding_window": 16});
    let w = AttentionKind::Sliding(16);
    assert_eq!(kinds(gpt_oss(types).unwrap()), [f, w, w, f]);
    let e = gpt_oss(json!({"layer_types": ["chunked_attention", "full_attention", "full_attention", "full_attention"]})).unwrap_err().to_string();
    assert!(e.contains("chunked_attention"), "{e}");
}

#[test]
fn gpt_oss_reads_mxfp4_and_refuses_unknown_keys_and_missing_sizes_by_name() {
    let e = gpt_oss(json!({"attention_chunk_size": 8192})).unwrap_err().to_string();
    assert!(e.contains("\"attention_chunk_size\"") && e.contains("gpt_oss"), "{e}");
    // The published checkpoints' config: read (the experts are dequantized by the safetensors reader).
    let mxfp4 = json!({"quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}});
    assert!(gpt_oss(mxfp4).is_ok());
    let e = gpt_oss(json!({"quantization_config": {"quant_method": "mxfp4", "block_size": 64}})).unwrap_err().to_string();
    assert!(e.contains("block_size") && e.contains("quantization_config"), "{e}");
    let e = gpt_oss(json!({"quantization_config": {"quant_method": "gptq", "bits": 4}})).unwrap_err().to_string();
    assert!(e.contains("\"quantization_config\""), "{e}");
    let e = gpt_oss(json!({"head_dim": null})).unwrap_err().to_string();
    assert!(e.contains("head_dim"), "{e}");
    let e = gpt_oss(json!({"rope_scaling": null})).unwrap_err().to_string();
    assert!(e.contains("rope_parameters nor rope_scaling"), "{e}");
    let e = gpt_oss(json!({"num_experts": 16})).unwrap_err().to_string();
    assert!(e.contains("disagree"), "{e}");
    let e = gpt_oss(json!({"swiglu_limit": -1.0})).unwrap_err().to_string();
    assert!(e.contains("swiglu_limit"), "{e}");
    // The keys it reads, so that a new one is a visible decision.
    let v = with(base("gpt_oss"), json!({"head_dim": 16, "num_local_experts": 4, "rope_theta": 150000.0, "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128}}));
    let c = HfConfig::new(v.as_object().unwrap().clone(), "config.json");
    (registry::by_hf(Some("gpt_oss"), &[], "config.json").unwrap().from_hf)(&c, registry::Architecture::GptOss).unwrap();
    let mut want: Vec<&str> = "attention_bias experts_per_token head_dim hidden_act hidden_activation hidden_size initial_context_length \
        intermediate_size layer_types max_position_embeddings num_attention_heads num_experts num_experts_per_tok num_hidden_layers \
        num_key_value_heads num_local_experts original_max_position_embeddings partial_rotary_factor quantization_config rms_norm_eps \
        rope_parameters rope_scaling rope_theta sliding_window swiglu_alpha swiglu_limit tie_word_embeddings vocab_size"
        .split_whitespace()
        .collect();
    want.sort();
    assert_eq!(c.keys_read(), want);
}
