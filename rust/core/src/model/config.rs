//! One configuration for every dense decoder we run: what the architectures share (sizes, norms, rope,
//! attention kinds per layer) as plain values, so the decoder reads only this and never an architecture
//! name. Each architecture's file (`arch/`) fills it from HF `config.json` (transformers 4 and 5 forms),
//! GGUF metadata or MLC's `model_config`.
//!
//! Rule: every key that changes the math is read here or refused at load with an error naming it
//! ([`HfConfig::finish`]); keys that cannot change the math are listed in [`NEUTRAL_KEYS`].

use super::registry::Architecture;
use super::rope::{RopeConfig, RopeContext, RopeScaling, RopeStyle};
use crate::error::{EngineError, Result};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// The largest size or count a configuration may hold (2^24: above the longest context of any real
/// model); beyond it a file is corrupt, and the value would only size an allocation that fails.
pub const MAX_SIZE: usize = 1 << 24;

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact (erf) form.
    Gelu,
}

impl Activation {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::Gelu),
            _ => None,
        }
    }
}

/// Where a layer's RMSNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// Llama: `input_layernorm` before attention, `post_attention_layernorm` before the MLP.
    Pre,
    /// Gemma 2/3: also a norm on each branch's output (`post_attention_layernorm`,
    /// `post_feedforward_layernorm`), the MLP's input norm being `pre_feedforward_layernorm`.
    Sandwich,
    /// OLMo 2: only on the branches' outputs (`post_attention_layernorm`, `post_feedforward_layernorm`).
    Post,
}

/// RMSNorm of q and k before rope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNormKind {
    None,
    /// Per head, weights `[head_dim]` (Qwen3, Gemma 3).
    PerHead,
    /// Over the whole projection, weights `[heads * head_dim]` (OLMo 2).
    Whole,
}

/// Which positions a layer's queries see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Every earlier position.
    Full,
    /// The last `W` positions, itself included (`p - W < k <= p`).
    Sliding(usize),
}

impl AttentionKind {
    pub fn window(&self) -> Option<usize> {
        match self {
            AttentionKind::Full => None,
            AttentionKind::Sliding(w) => Some(*w),
        }
    }
}

/// One decoder layer's attention: its kind and which of [`ModelConfig::ropes`] it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerConfig {
    pub attention: AttentionKind,
    pub rope: usize,
}

/// How a mixture-of-experts checkpoint names its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeNaming {
    /// Mixtral: `block_sparse_moe.gate`, `block_sparse_moe.experts.{e}.w1 / w3 / w2` (gate / up / down).
    Mixtral,
    /// Qwen2-MoE / Qwen3-MoE: `mlp.gate`, `mlp.experts.{e}.gate_proj / up_proj / down_proj`, and Qwen2-MoE's
    /// `mlp.shared_expert.*` with `mlp.shared_expert_gate`.
    Qwen,
    /// gpt-oss: `mlp.router` (weight and bias) and each layer's experts fused into 3D tensors with biases:
    /// `mlp.experts.gate_up_proj [E, hidden, 2I]` (input first; gate and up interleaved along the last
    /// dimension: gate = `[..., ::2]`, up = `[..., 1::2]`), `gate_up_proj_bias [E, 2I]`,
    /// `down_proj [E, I, hidden]`, `down_proj_bias [E, hidden]`.
    GptOss,
}

/// How the router's logits become the chosen experts' weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Softmax over all experts in f32, then the top `k` probabilities (renormalized when
    /// `norm_topk_prob`): Mixtral, Qwen.
    SoftmaxTopK,
    /// The top `k` logits, then a softmax over those `k` only (gpt-oss): the weights sum to 1 by
    /// construction, so `norm_topk_prob` has nothing to do.
    TopKSoftmax,
}

/// gpt-oss's expert activation: `gate.clamp(max = limit)`, `up.clamp(-limit, limit)`,
/// `(up + 1) * gate * sigmoid(alpha * gate)` (transformers' `GptOssExperts._apply_gate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClampedSwiglu {
    /// `swiglu_alpha`
    pub alpha: f64,
    /// `swiglu_limit`
    pub limit: f64,
}

/// A mixture-of-experts MLP: a router picks `top_k` of `num_experts` gated MLPs per token.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    /// Whether the top-k softmax probabilities are divided by their sum (Mixtral always; Qwen's
    /// `norm_topk_prob`). The softmax is over all experts, before the top-k, in f32.
    pub norm_topk_prob: bool,
    /// Each expert's intermediate size (Qwen's `moe_intermediate_size`; Mixtral's `intermediate_size`).
    pub expert_intermediate: usize,
    /// Qwen2-MoE: an expert every token takes, scaled by sigmoid(shared_expert_gate(x)).
    pub shared_expert_intermediate: Option<usize>,
    /// `[num_hidden_layers]`: true where the layer's MLP is the mixture (Qwen's `mlp_only_layers` and
    /// `decoder_sparse_step` keep some layers dense, with `intermediate_size`).
    pub sparse_layers: Vec<bool>,
    pub naming: MoeNaming,
    pub routing: Routing,
    /// gpt-oss's clamped SwiGLU in every expert (with [`MoeNaming::GptOss`]); `None`: the model's
    /// [`Activation`] gates the experts as it gates a dense MLP.
    pub clamped_swiglu: Option<ClampedSwiglu>,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// o_proj carries a bias (Llama with `attention_bias`).
    pub o_proj_bias: bool,
    /// The checkpoint stores q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    pub qk_norm: QkNormKind,
    pub norms: NormPlacement,
    /// Norm weights are applied as `1 + w` (Gemma); the weights are folded to `1 + w` at load.
    pub norm_plus_one: bool,
    pub activation: Activation,
    /// Multiplies the token embeddings (Gemma: sqrt(hidden_size), rounded to the compute dtype).
    pub embedding_scale: Option<f64>,
    /// Multiplies q·k: `head_dim^-0.5`, or `query_pre_attn_scalar^-0.5` (Gemma).
    pub attention_scale: f64,
    /// Gemma 2: attention scores become `cap * tanh(score / cap)`.
    pub attn_logit_softcap: Option<f64>,
    /// gpt-oss: each head has a learned logit (`self_attn.sinks [heads]`) that joins its softmax's
    /// denominator and attends to nothing.
    pub attention_sinks: bool,
    /// Gemma 2: final logits become `cap * tanh(logits / cap)`.
    pub final_logit_softcap: Option<f64>,
    /// The rotary embeddings the layers use (one, or one per layer kind as in Gemma 3).
    pub ropes: Vec<RopeConfig>,
    /// `[num_hidden_layers]`
    pub layers: Vec<LayerConfig>,
    /// The mixture of experts, for MoE architectures.
    pub moe: Option<MoeConfig>,
    /// FP8 projections (HF `quantization_config`), dequantized at load.
    pub fp8: Option<crate::quant::fp8::Fp8Config>,
}

impl ModelConfig {
    /// Bytes of K and V per token across all layers at `dtype_bytes` per element.
    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> usize {
        // Saturating: an absurd configuration must size as "too large", never wrap to something small.
        [self.num_hidden_layers, self.num_key_value_heads, self.head_dim, dtype_bytes].iter().fold(2usize, |a, &b| a.saturating_mul(b))
    }

    /// Bytes of the weights at `elem_bytes` per element (norms and biases are negligible and left out).
    pub fn weight_bytes(&self, elem_bytes: usize) -> u64 {
        // In u128 (every size is at most 2^24, so nothing overflows), then saturated to u64.
        let h = self.hidden_size as u128;
        let (q, kv) = ((self.num_attention_heads * self.head_dim) as u128, (self.num_key_value_heads * self.head_dim) as u128);
        let attention = h * q * 2 + h * kv * 2;
        let dense_mlp = 3 * h * self.intermediate_size as u128;
        // Every expert is resident, however few a token uses.
        let mlps: u128 = match &self.moe {
            None => dense_mlp * self.num_hidden_layers as u128,
            Some(m) => {
                let moe = m.num_experts as u128 * 3 * h * m.expert_intermediate as u128
                    + m.num_experts as u128 * h
                    + m.shared_expert_intermediate.map_or(0, |s| 3 * h * s as u128 + h);
                m.sparse_layers.iter().map(|&sparse| if sparse { moe } else { dense_mlp }).sum()
            }
        };
        let embed = self.vocab_size as u128 * h * if self.tie_word_embeddings { 1 } else { 2 };
        let bytes = (attention * self.num_hidden_layers as u128 + mlps + embed) * elem_bytes as u128;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }

    /// Bytes of the weights at `elem_bytes` per element with every expert's projections at `expert_bits`
    /// bits per weight instead (gpt-oss's MXFP4 experts kept in 4 bits: 17 bytes per 32 weights, 4.25).
    pub fn weight_bytes_with_experts(&self, elem_bytes: usize, expert_bits: f64) -> u64 {
        let all = self.weight_bytes(elem_bytes);
        let Some(m) = &self.moe else { return all };
        let sparse = m.sparse_layers.iter().filter(|&&s| s).count() as u128;
        let experts = sparse * m.num_experts as u128 * 3 * self.hidden_size as u128 * m.expert_intermediate as u128; // weights
        let widened = u64::try_from(experts * elem_bytes as u128).unwrap_or(u64::MAX);
        let kept = (experts as f64 * expert_bits / 8.0).ceil() as u64;
        all.saturating_sub(widened).saturating_add(kept)
    }

    /// Phi-3's longrope: sequences longer than this run in the long rope regime (see [`RopeScaling::LongRope`]).
    pub fn long_context_from(&self) -> Option<usize> {
        self.ropes.iter().find_map(|r| r.long_context_from())
    }

    /// The window every layer shares when all layers slide (KV blocks before it can be released);
    /// `None` when any layer attends fully.
    pub fn uniform_sliding_window(&self) -> Option<usize> {
        let windows: Option<Vec<usize>> = self.layers.iter().map(|l| l.attention.window()).collect();
        windows?.into_iter().max()
    }

    /// Checks what the decoder relies on; errors name the `config.json` key.
    pub fn validate(&self, path: &str) -> Result<()> {
        self.validate_named(path, &|k| k.to_string())
    }

    /// As [`Self::validate`] for a GGUF file: errors name llama.cpp's `<arch>.` key.
    pub fn validate_gguf(&self, path: &str, arch: &str) -> Result<()> {
        self.validate_named(path, &|k| match gguf_key(k) {
            Some(g) => format!("{arch}.{g} ({k})"),
            None => k.to_string(),
        })
    }

    fn validate_named(&self, path: &str, key: &dyn Fn(&str) -> String) -> Result<()> {
        let err = |m: String| Err(EngineError::model_load(path, m));
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((k, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return err(format!("{} must be at least 1", key(k)));
        }
        // Sizes beyond these are not models but corrupt files; they would only overflow allocations.
        if let Some((k, v)) = sizes.iter().find(|(_, v)| *v > MAX_SIZE) {
            return err(format!("{} = {v} is out of range", key(k)));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return err(format!("{} must divide {}", key("num_key_value_heads"), key("num_attention_heads")));
        }
        // NaN fails every comparison, so each check is written as "must hold".
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return err(format!("{} = {} must be in (0, 1)", key("rms_norm_eps"), self.rms_norm_eps));
        }
        let positive = [
            ("attention_scale", Some(self.attention_scale)),
            ("embedding_scale", self.embedding_scale),
            ("attn_logit_softcapping", self.attn_logit_softcap),
            ("final_logit_softcapping", self.final_logit_softcap),
        ];
        if let Some((k, Some(v))) = positive.iter().find(|(_, v)| v.is_some_and(|x| !(x > 0.0 && x.is_finite()))) {
            return err(format!("{} = {v} must be positive and finite", key(k)));
        }
        if self.layers.len() != self.num_hidden_layers {
            return err(format!("{} layer types for {} layers", self.layers.len(), self.num_hidden_layers));
        }
        for l in &self.layers {
            if l.rope >= self.ropes.len() {
                return err("a layer names a rope that does not exist".into());
            }
            if l.attention == AttentionKind::Sliding(0) {
                return err(format!("{} must be at least 1", key("sliding_window")));
            }
        }
        if let Some(m) = &self.moe {
            if m.num_experts == 0 || m.num_experts > 4096 {
                return err(format!("{} = {} must be in 1..=4096", key("num_experts"), m.num_experts));
            }
            if m.top_k == 0 || m.top_k > m.num_experts {
                return err(format!("{} = {} must be in 1..={}", key("num_experts_per_tok"), m.top_k, m.num_experts));
            }
            if m.expert_intermediate == 0 || m.expert_intermediate > MAX_SIZE || m.shared_expert_intermediate.is_some_and(|s| s == 0 || s > MAX_SIZE) {
                return err(format!("{} must be in 1..={MAX_SIZE}", key("moe_intermediate_size")));
            }
            if m.sparse_layers.len() != self.num_hidden_layers {
                return err(format!("{} MoE layer flags for {} layers", m.sparse_layers.len(), self.num_hidden_layers));
            }
            if let Some(s) = m.clamped_swiglu {
                if !s.alpha.is_finite() {
                    return err(format!("{} = {} must be finite", key("swiglu_alpha"), s.alpha));
                }
                // A negative limit would make up's clamp range empty (torch then returns the max bound).
                if !(s.limit > 0.0) {
                    return err(format!("{} = {} must be positive", key("swiglu_limit"), s.limit));
                }
            }
            if (m.naming == MoeNaming::GptOss) != m.clamped_swiglu.is_some() {
                return err("the clamped SwiGLU comes with gpt-oss's fused experts, and only with them".into());
            }
        }
        for r in &self.ropes {
            if r.rotary_dim > self.head_dim {
                return err(format!("rotary dimension {} exceeds {} {}", r.rotary_dim, key("head_dim"), self.head_dim));
            }
            if !(r.theta > 1.0 && r.theta.is_finite()) {
                return err(format!("{} = {} must be greater than 1", key("rope_theta"), r.theta));
            }
            r.validate(path)?;
        }
        Ok(())
    }

    /// This configuration with rope tables for `max_positions` positions at most: the tables are
    /// built for the engine's context window, not for what the file claims the model supports.
    pub fn with_max_positions(&self, max_positions: usize) -> ModelConfig {
        let mut cfg = self.clone();
        cfg.max_position_embeddings = cfg.max_position_embeddings.min(max_positions.max(1));
        cfg
    }
}

/// llama.cpp's GGUF key (after `<arch>.`) for a `config.json` key, where the two differ.
fn gguf_key(k: &str) -> Option<&'static str> {
    Some(match k {
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        "vocab_size" => "vocab_size",
        "max_position_embeddings" => "context_length",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "sliding_window" => "attention.sliding_window",
        "attn_logit_softcapping" => "attn_logit_softcapping",
        "final_logit_softcapping" => "final_logit_softcapping",
        _ => return None,
    })
}

/// Keys of an HF config that never change the math of inference (bookkeeping, training, generation).
pub const NEUTRAL_KEYS: &[&str] = &[
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "auto_map",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache",
    "initializer_range", "initializer_factor", "attention_dropout", "hidden_dropout", "embd_pdrop", "resid_pdrop",
    "attn_pdrop", "dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "tie_encoder_decoder",
    "pretraining_tp", "cache_implementation", "id2label", "label2id", "problem_type", "output_attentions",
    "output_hidden_states", "return_dict", "torchscript", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "chunk_size_feed_forward", "task_specific_params", "tokenizer_class", "prefix", "finetuning_task",
    "use_return_dict", "pruned_heads", "tf_legacy_loss", "use_bfloat16", "cross_attention_hidden_size",
    "bad_words_ids", "begin_suppress_tokens", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "forced_bos_token_id",
    "forced_eos_token_id", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups",
    "num_beams", "num_return_sequences", "output_scores", "remove_invalid_values", "repetition_penalty",
    "return_dict_in_generate", "suppress_tokens", "temperature", "top_k", "top_p", "typical_p", "model_name",
    "use_flash_attn", "_attn_implementation", "_attn_implementation_autoset", "attn_implementation",
    "gradient_checkpointing", "router_aux_loss_coef", "output_router_logits", "chat_template",
    // Mixtral adds noise to the router logits in training only.
    "router_jitter_noise",
];

/// An HF `config.json` as an object whose reads are recorded, so that [`HfConfig::finish`] can tell
/// which keys nothing read.
pub struct HfConfig<'a> {
    obj: Map<String, Value>,
    read: RefCell<BTreeSet<String>>,
    pub path: &'a str,
}

impl<'a> HfConfig<'a> {
    pub fn new(obj: Map<String, Value>, path: &'a str) -> Self {
        HfConfig { obj, read: RefCell::new(BTreeSet::new()), path }
    }

    pub fn err(&self, m: impl Into<String>) -> EngineError {
        EngineError::model_load(self.path, m)
    }

    /// The value of `k` unless absent or null; marks `k` read.
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(k.to_string());
        self.obj.get(k).filter(|v| !v.is_null())
    }

    /// `k` as a number; `default` when the config does not have the key at all (an explicit null is
    /// `None`, as transformers reads it).
    pub fn f64_or(&self, k: &str, default: Option<f64>) -> Result<Option<f64>> {
        if self.obj.contains_key(k) {
            self.f64(k)
        } else {
            self.read.borrow_mut().insert(k.to_string());
            Ok(default)
        }
    }

    pub fn usize(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                // Checked on reading: sizes become allocations (one entry per layer) before validation.
                Some(x) if x > MAX_SIZE as u64 => Err(self.err(format!("{k} = {x} is out of range (at most {MAX_SIZE})"))),
                Some(x) => Ok(Some(x as usize)),
                None => Err(self.err(format!("{k} must be a non-negative integer, found {v}"))),
            },
        }
    }

    pub fn need_usize(&self, k: &str) -> Result<usize> {
        self.usize(k)?.ok_or_else(|| self.err(format!("config.json has no {k}")))
    }

    pub fn f64(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(format!("{k} must be a number, found {v}"))),
        }
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(format!("{k} must be true or false, found {v}"))),
        }
    }

    pub fn str(&self, k: &str) -> Result<Option<&str>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(format!("{k} must be a string, found {v}"))),
        }
    }

    /// Refuses `k` when it is set to anything but `allowed` (or null): a math-changing option we do not
    /// implement.
    pub fn refuse_unless(&self, k: &str, allowed: &Value) -> Result<()> {
        match self.get(k) {
            Some(v) if v != allowed => Err(self.err(format!("{k} = {v} is not supported"))),
            _ => Ok(()),
        }
    }

    /// The MLP activation from `hidden_act` (or `hidden_activation`, Gemma's key, which wins).
    pub fn activation(&self, default: Activation) -> Result<Activation> {
        // Both are read: Gemma's configs carry both and transformers uses hidden_activation.
        let (activation, act) = (self.str("hidden_activation")?, self.str("hidden_act")?);
        let name = match activation {
            Some(n) => Some(("hidden_activation", n)),
            None => act.map(|n| ("hidden_act", n)),
        };
        match name {
            None => Ok(default),
            Some((k, n)) => Activation::from_name(n).ok_or_else(|| self.err(format!("{k} {n:?} is not supported; supported: silu, gelu, gelu_pytorch_tanh"))),
        }
    }

    /// The rope of one layer type: transformers 5's `rope_parameters` (flat, or keyed by layer type as
    /// `{"full_attention": {...}, "sliding_attention": {...}}`), else transformers 4's `rope_theta` /
    /// `rope_scaling`. `theta_key` / `default_theta`: where the classic form keeps this kind's base
    /// (Gemma 3's local base is `rope_local_base_freq`) and its default; `scaled`: whether the classic
    /// `rope_scaling` applies to this kind.
    pub fn rope(&self, layer_type: Option<&str>, theta_key: &str, default_theta: f64, scaled: bool, head_dim: usize, style: RopeStyle) -> Result<RopeConfig> {
        let max_pos = self.usize("max_position_embeddings")?.unwrap_or(4096);
        let top_partial = self.f64("partial_rotary_factor")?;
        let top_original = self.usize("original_max_position_embeddings")?;
        let params = match (self.get("rope_parameters").cloned(), layer_type) {
            (Some(Value::Object(p)), Some(kind)) if p.contains_key(kind) => match &p[kind] {
                Value::Object(o) => Some((o.clone(), format!("rope_parameters.{kind}"))),
                _ => return Err(self.err(format!("rope_parameters.{kind} must be an object"))),
            },
            (Some(Value::Object(p)), _) if p.keys().any(|k| k.ends_with("_attention")) => {
                let kind = layer_type.unwrap_or("full_attention");
                return Err(self.err(format!("rope_parameters has no entry for layer type {kind:?}")));
            }
            (Some(Value::Object(p)), _) => Some((p, "rope_parameters".to_string())),
            (Some(other), _) => return Err(self.err(format!("rope_parameters must be an object, found {other}"))),
            (None, _) => None,
        };
        let (obj, key, theta) = match params {
            Some((obj, key)) => {
                let theta = obj.get("rope_theta").and_then(|v| v.as_f64());
                (obj, key, theta)
            }
            None => {
                let scaling = if scaled { self.get("rope_scaling").cloned() } else { None };
                let obj = match scaling {
                    Some(Value::Object(o)) => o,
                    Some(other) => return Err(self.err(format!("rope_scaling must be an object, found {other}"))),
                    None => Map::new(),
                };
                (obj, "rope_scaling".to_string(), self.f64(theta_key)?)
            }
        };
        // A config may carry both forms (transformers 5 keeps the classic keys of checkpoints it
        // converted); they must agree.
        let classic_theta = self.f64(theta_key)?;
        if scaled {
            self.get("rope_scaling");
        }
        let theta = match (theta, classic_theta) {
            (Some(t), Some(c)) if (t - c).abs() > 1e-9 * t.abs() => {
                return Err(self.err(format!("{key}.rope_theta {t} disagrees with {theta_key} {c}")));
            }
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => default_theta,
        };
        if !(theta > 1.0 && theta.is_finite()) {
            return Err(self.err(format!("{key}: rope_theta {theta} must be greater than 1")));
        }
        let partial = obj.get("partial_rotary_factor").and_then(|v| v.as_f64()).or(top_partial).unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(self.err(format!("partial_rotary_factor {partial} must be in (0, 1]")));
        }
        let ctx = RopeContext { head_dim, max_position_embeddings: max_pos, path: self.path, key: &key };
        let scaling = RopeScaling::parse(&obj, top_original, &ctx)?;
        Ok(RopeConfig { theta, scaling, rotary_dim: (head_dim as f64 * partial) as usize, style })
    }

    /// Per-layer kinds from transformers' `layer_types` (`"full_attention"` / `"sliding_attention"`), or
    /// `fallback(i)` when the config has none.
    pub fn layer_types(&self, num_layers: usize, fallback: impl Fn(usize) -> &'static str) -> Result<Vec<String>> {
        match self.get("layer_types") {
            None => Ok((0..num_layers).map(|i| fallback(i).to_string()).collect()),
            Some(Value::Array(a)) => {
                let types: Vec<String> = a.iter().filter_map(|v| v.as_str().map(String::from)).collect();
                if types.len() != num_layers || types.len() != a.len() {
                    return Err(self.err(format!("layer_types must list {num_layers} strings")));
                }
                if let Some(t) = types.iter().find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention")) {
                    return Err(self.err(format!("layer_types: {t:?} is not supported; supported: full_attention, sliding_attention")));
                }
                Ok(types)
            }
            Some(other) => Err(self.err(format!("layer_types must be a list, found {other}"))),
        }
    }

    /// Every key read so far (the ones the architecture implements, present or not).
    pub fn keys_read(&self) -> Vec<String> {
        self.read.borrow().iter().cloned().collect()
    }

    /// The keys nothing read: a key that is not known to leave the math unchanged is refused, naming it.
    pub fn finish(&self) -> Result<()> {
        let read = self.read.borrow();
        let unknown: Vec<&String> = self
            .obj
            .iter()
            .filter(|(k, v)| !read.contains(*k) && !NEUTRAL_KEYS.contains(&k.as_str()) && !is_unset(v))
            .map(|(k, _)| k)
            .collect();
        match unknown.first() {
            None => Ok(()),
            Some(k) => Err(self.err(format!(
                "config key {k:?} is not supported by this engine's {} implementation (it may change the model's math){}",
                self.obj.get("model_type").and_then(|v| v.as_str()).unwrap_or("model"),
                if unknown.len() > 1 { format!("; also unsupported: {:?}", &unknown[1..]) } else { String::new() }
            ))),
        }
    }
}

/// Values that mean "off" for an option we do not implement.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}
