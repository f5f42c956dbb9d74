//! The decoder every registered architecture runs (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, OLMo 2 and
//! the mixtures of experts Mixtral, Qwen2-MoE, Qwen3-MoE, gpt-oss) over a paged KV cache: what differs between them
//! is plain data in [`ModelConfig`] (norm placement, q/k norms, activation, rope per layer, attention kind
//! per layer, soft-capping, attention sinks, the experts).
//!
//! The forward pass takes a flat list of tokens from any number of sequences (prefill chunks and
//! decode tokens mixed), their positions, and the attention metadata; it returns logits only for the
//! rows the engine samples from, so a long prefill never materializes `[tokens, vocab]`.
//!
//! A residual add is deferred into the next norm wherever one follows (one fused add + RMSNorm kernel
//! on CUDA): with Llama's pre-norms a layer runs 9 launches (RMSNorm fused with the previous residual
//! add, the q/k/v matmul, rope with the KV-cache write, attention, o_proj, add + RMSNorm, gate/up,
//! activation * up, down). The CPU runs the same ops unfused (`fused`'s references).

use super::config::{ModelConfig, MoeNaming, NormPlacement};
use super::fused;
use super::layers::attention::StackStep;
use super::layers::{norm, Attention, GatedMlp, MoeMlp};
use super::linear::Linear;
use super::sharded::{ShardPlan, ShardedWeights, TensorParallel};
use super::weight_shapes::ShapeChecked;
use super::weights::WeightSource;
use super::CausalLm;
use crate::attention::{PagedKvCache, StepAttention};
use crate::error::Result;
use crate::parallel::Communicator;
use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm;
use std::sync::Arc;

pub(crate) struct DecoderLayer {
    /// Before attention; `None` for OLMo 2 and the first layer of an EAGLE head.
    input_norm: Option<Tensor>,
    attn: Attention,
    /// On the attention output, before the residual add (Gemma, OLMo 2).
    post_attn_norm: Option<Tensor>,
    /// Before the MLP (Llama's `post_attention_layernorm`, Gemma's `pre_feedforward_layernorm`).
    pre_mlp_norm: Option<Tensor>,
    /// On the MLP output, before the residual add (Gemma, OLMo 2).
    post_mlp_norm: Option<Tensor>,
    mlp: Mlp,
}

/// A layer's MLP: dense, or a mixture of experts.
enum Mlp {
    Dense(GatedMlp),
    Moe(MoeMlp),
}

impl Mlp {
    /// `x: [T, hidden] -> [T, hidden]`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Dense(m) => m.forward(x),
            Mlp::Moe(m) => m.forward(x),
        }
    }

    /// Layer `li`'s MLP at `p` (`model.layers.3`).
    fn load(cfg: &ModelConfig, w: &dyn WeightSource, p: &str, li: usize) -> Result<Self> {
        match &cfg.moe {
            Some(m) if m.sparse_layers.get(li).copied().unwrap_or(false) => {
                let block = match m.naming {
                    MoeNaming::Mixtral => "block_sparse_moe",
                    MoeNaming::Qwen | MoeNaming::GptOss => "mlp",
                };
                Ok(Mlp::Moe(MoeMlp::load(cfg, m, w, &format!("{p}.{block}"))?))
            }
            _ => Ok(Mlp::Dense(GatedMlp::load(cfg, w, &format!("{p}.mlp"))?)),
        }
    }
}

impl DecoderLayer {
    /// Layer `li` at `p` (`model.layers.3`); `input_norm: false` for a layer without one (EAGLE's first).
    pub(crate) fn load(cfg: &ModelConfig, w: &dyn WeightSource, p: &str, li: usize, input_norm: bool) -> Result<Self> {
        let n = |name: &str| norm::load(cfg, w, &format!("{p}.{name}.weight"));
        let (input, post_attn, pre_mlp, post_mlp) = match cfg.norms {
            NormPlacement::Pre => (input_norm, None, Some("post_attention_layernorm"), None),
            NormPlacement::Sandwich => (input_norm, Some("post_attention_layernorm"), Some("pre_feedforward_layernorm"), Some("post_feedforward_layernorm")),
            NormPlacement::Post => (false, Some("post_attention_layernorm"), None, Some("post_feedforward_layernorm")),
        };
        Ok(DecoderLayer {
            input_norm: if input { Some(n("input_layernorm")?) } else { None },
            attn: Attention::load(cfg, w, &format!("{p}.self_attn"), cfg.layers[li])?,
            post_attn_norm: post_attn.map(n).transpose()?,
            pre_mlp_norm: pre_mlp.map(n).transpose()?,
            post_mlp_norm: post_mlp.map(n).transpose()?,
            mlp: Mlp::load(cfg, w, p, li)?,
        })
    }
}

/// `branch + residual` and, when a norm follows, its RMSNorm (fused on CUDA); without a norm the
/// sum itself is the next input.
fn add_then_norm(branch: &Tensor, residual: &Tensor, norm: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)> {
    let _s = crate::profile::span(crate::profile::Part::Norm);
    Ok(match norm {
        Some(w) => fused::add_rms_norm(branch, residual, w, eps)?,
        None => {
            let r = (branch + residual)?;
            (r.clone(), r)
        }
    })
}

/// Runs `layers` over `residual` (`[num_tokens, hidden]`, the stack's input), layer `i`'s KV going to
/// cache layer `i`. Returns the residual stream and the last layer's MLP output, not yet added (the
/// caller fuses that add with its final norm, or adds it).
pub(crate) fn run_layers(layers: &[DecoderLayer], s: &StackStep<'_>, mut residual: Tensor) -> Result<(Tensor, Option<Tensor>)> {
    let eps = s.cfg.rms_norm_eps as f32;
    let mut h = match layers.first().and_then(|l| l.input_norm.as_ref()) {
        Some(norm) => rms_norm(&residual, norm, eps)?,
        None => residual.clone(),
    };
    let mut mlp_out: Option<Tensor> = None; // the last layer's MLP output, not yet added to `residual`
    for (li, layer) in layers.iter().enumerate() {
        if let Some(m) = mlp_out.take() {
            (residual, h) = add_then_norm(&m, &residual, layer.input_norm.as_ref(), eps)?;
        }
        let mut attn = layer.attn.forward(&h, s, li)?; // [num_tokens, hidden]
        if let Some(w) = &layer.post_attn_norm {
            attn = rms_norm(&attn, w, eps)?;
        }
        (residual, h) = add_then_norm(&attn, &residual, layer.pre_mlp_norm.as_ref(), eps)?;
        let mut m = layer.mlp.forward(&h)?; // [num_tokens, hidden] (this rank's partial sum when sharded)
        if let Some(tp) = s.tp {
            m = tp.all_reduce(&m)?;
        }
        if let Some(w) = &layer.post_mlp_norm {
            m = rms_norm(&m, w, eps)?;
        }
        mlp_out = Some(m);
    }
    Ok((residual, mlp_out))
}

/// The rope tables of every rope in `cfg`, `[max_positions, rotary_dim / 2]` each.
pub(crate) fn rope_tables(cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<Vec<(Tensor, Tensor)>> {
    cfg.ropes.iter().map(|r| r.tables(cfg.max_position_embeddings, device, dtype)).collect()
}

/// Per rope: on the CPU, the table rows at `positions` (`[T, 1, rotary_dim / 2]`); on CUDA `None`
/// (the rope kernel reads the tables itself) unless the rope rotates only part of each head or the
/// head is wider than the kernel takes, which the reference ops handle.
pub(crate) fn gather_ropes(cfg: &ModelConfig, ropes: &[(Tensor, Tensor)], positions: &Tensor) -> Result<Vec<Option<(Tensor, Tensor)>>> {
    ropes
        .iter()
        .zip(&cfg.ropes)
        .map(|((cos, sin), r)| {
            if positions.device().is_cuda() && fused::rope_kernel_fits(cfg.head_dim, r.rotary_dim) {
                Ok(None)
            } else {
                Ok(Some(fused::gather_rope(cos, sin, positions)?))
            }
        })
        .collect()
}

pub struct DecoderModel {
    cfg: ModelConfig,
    /// `[vocab, hidden]` (sharded: this rank's `[vocab_per_rank, hidden]`)
    embed: Tensor,
    /// `[1]` in the compute dtype: Gemma multiplies embeddings by sqrt(hidden) rounded to it.
    embed_scale: Option<Tensor>,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Linear,
    ropes: Vec<(Tensor, Tensor)>,
    device: Device,
    dtype: DType,
    /// Tensor parallelism: the rank's group and the config of its slice of the layers; `None` unsharded.
    tp: Option<(TensorParallel, ModelConfig)>,
}

impl DecoderModel {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_slice(cfg, cfg, w, device, dtype)
    }

    /// This rank's slice of the model over `comm`'s ranks (`tensor_parallel_shards` = its world size):
    /// `w` is the whole checkpoint, narrowed as it loads. Every rank runs `forward` on the same inputs
    /// with its own KV cache, sized by [`DecoderModel::layer_config`]; all get the whole logits.
    pub fn load_sharded(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, dtype: DType, comm: Arc<dyn Communicator>) -> Result<Self> {
        let plan = ShardPlan::new(cfg, comm.rank(), comm.world_size())?;
        let local = plan.local_config(cfg);
        let mut model = Self::load_slice(cfg, &local, &ShardedWeights::new(w, &plan), device, dtype)?;
        model.tp = Some((TensorParallel { comm, plan }, local));
        Ok(model)
    }

    /// The config this rank's layers run with: the model's own, or its slice's (heads, KV heads, MLP
    /// widths, vocabulary rows) when sharded; its KV cache is sized by it.
    pub fn layer_config(&self) -> &ModelConfig {
        self.tp.as_ref().map_or(&self.cfg, |(_, local)| local)
    }

    /// The token embedding rows `[num_tokens, hidden]`, assembled over the ranks when sharded.
    fn lookup(&self, tokens: &Tensor) -> Result<Tensor> {
        match &self.tp {
            Some((tp, _)) => tp.embed(&self.embed, tokens),
            None => Ok(self.embed.index_select(tokens, 0)?),
        }
    }

    /// `cfg`: the model's; `layer_cfg`: the one its (possibly sharded) weights `w` have.
    fn load_slice(cfg: &ModelConfig, layer_cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = device {
            // SAFETY: candle runs every op of a device on its one stream, so the per-buffer CUDA events
            // cudarc creates for cross-stream ordering are never waited on (it orders streams only in
            // multi-stream mode); without tracking, an allocation skips creating and destroying them.
            unsafe { d.disable_event_tracking() };
        }
        let checked = ShapeChecked::new(layer_cfg, w);
        let w: &dyn WeightSource = &checked;
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::load(layer_cfg, w, &format!("model.layers.{i}"), i, true)).collect::<Result<Vec<_>>>()?;
        let embed = w.tensor("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            w.linear("model.embed_tokens", false)?
        } else {
            w.linear("lm_head", false)?
        };
        let embed_scale = match cfg.embedding_scale {
            Some(s) => Some(Tensor::new(&[s as f32], device)?.to_dtype(dtype)?),
            None => None,
        };
        Ok(DecoderModel {
            cfg: cfg.clone(),
            embed,
            embed_scale,
            layers,
            norm: norm::load(cfg, w, "model.norm.weight")?,
            lm_head,
            ropes: rope_tables(cfg, device, dtype)?,
            device: device.clone(),
            dtype,
            tp: None,
        })
    }
}

impl CausalLm for DecoderModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn kv_heads(&self) -> usize {
        self.layer_config().num_key_value_heads
    }

    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let _s = crate::profile::span(crate::profile::Part::LmHead);
        let mut logits = self.lm_head.forward(h)?.to_dtype(DType::F32)?; // [num_samples, vocab] ([.., vocab_per_rank] sharded)
        if let Some((tp, _)) = &self.tp {
            logits = tp.gather_logits(&logits)?;
        }
        Ok(match self.cfg.final_logit_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    fn forward_hidden(&self, tokens: &Tensor, positions: &Tensor, kv: &PagedKvCache, step: &StepAttention) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let _s = crate::profile::span(crate::profile::Part::Forward);
        let mut residual = self.lookup(tokens)?; // [num_tokens, hidden]
        if let Some(scale) = &self.embed_scale {
            residual = residual.broadcast_mul(scale)?;
        }
        let gathered = gather_ropes(&self.cfg, &self.ropes, positions)?;
        let (cfg, tp) = match &self.tp {
            Some((tp, local)) => (local, Some(tp)),
            None => (&self.cfg, None),
        };
        let s = StackStep { cfg, ropes: &self.ropes, gathered: &gathered, positions, kv, step, tp };
        let (residual, mlp_out) = run_layers(&self.layers, &s, residual)?;
        // The final norm over every row (row-wise, so the sampled rows are exactly as if selected first).
        Ok(match mlp_out {
            Some(m) => fused::add_rms_norm(&m, &residual, &self.norm, eps)?.1,
            None => rms_norm(&residual, &self.norm, eps)?,
        })
    }

    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        self.lookup(tokens)
    }
}
