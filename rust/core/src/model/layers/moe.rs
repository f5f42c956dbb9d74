//! The mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, gpt-oss): a router scores every expert,
//! each token takes its `top_k` experts, and their outputs are summed weighted by the router's weights.
//!
//! Order of operations, as transformers computes it: router logits `x . gate^T` (+ bias for gpt-oss);
//! [`Routing::SoftmaxTopK`]: softmax over all experts in f32, the top `k` probabilities (ties to the
//! lower expert index), divided by their sum when `norm_topk_prob`; [`Routing::TopKSoftmax`] (gpt-oss):
//! the top `k` logits, softmax over those `k`. Each expert's MLP runs once on all of its tokens
//! (gathered), its outputs are multiplied by their weights and added into the output in increasing
//! expert order. Qwen2-MoE then adds the shared expert times sigmoid(shared_expert_gate(x)).
//!
//! Here the routing (top-k, grouping tokens by expert) runs on the host from one read-back of the
//! probabilities per layer: the reference path, correct on every device. The experts' matmuls run on the
//! tensors' device. On CUDA, bf16 / f16 layers whose experts are dense or Q4_0 (bf16: or gpt-oss's MXFP4)
//! run the fused MoE instead (moe_cuda.rs: routing, sort by expert, grouped GEMMs, combine, all on the
//! device, captured in CUDA graphs); its experts are stacked at load and the per-expert weights dropped.

use super::clamped_swiglu::ClampedSwigluExperts;
use super::mlp::GatedMlp;
use crate::error::{EngineError, Result};
use crate::model::config::{ModelConfig, MoeConfig, MoeNaming, Routing};
use crate::model::linear::Linear;
use crate::model::weights::WeightSource;
use candle_core::{DType, Tensor};

/// `MLC_MOE_FUSED=0` keeps MoE layers on the host-routed path (read once; for comparing the two paths in
/// one build). The loaders read it too: with it, MXFP4 experts on CUDA are read dense, as that path takes
/// them.
pub fn fused_disabled_by_env() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| crate::switches::off("MLC_MOE_FUSED"))
}

pub struct MoeMlp {
    /// `[num_experts, hidden]` (with a `[num_experts]` bias for gpt-oss)
    router: Linear,
    experts: Experts,
    num_experts: usize,
    /// Qwen2-MoE: the shared expert and its `[1, hidden]` gate.
    shared: Option<(GatedMlp, Linear)>,
    top_k: usize,
    norm_topk_prob: bool,
    routing: Routing,
    /// The fused on-device path (CUDA, bf16 / f16, dense, Q4_0 or MXFP4 experts); `experts` is then empty.
    #[cfg(feature = "cuda")]
    fused: Option<super::moe_cuda::FusedMoe>,
}

/// The experts of one layer: separate gated MLPs, or gpt-oss's fused tensors.
enum Experts {
    Gated(Vec<GatedMlp>),
    ClampedSwiglu(ClampedSwigluExperts),
}

impl Experts {
    /// Expert `e` on its tokens: `x: [n, hidden] -> [n, hidden]`.
    fn forward(&self, e: usize, x: &Tensor) -> Result<Tensor> {
        match self {
            Experts::Gated(v) => v[e].forward(x),
            Experts::ClampedSwiglu(f) => f.forward(e, x),
        }
    }
}

impl MoeMlp {
    /// The mixture at `p` (`model.layers.3.block_sparse_moe` for Mixtral, `model.layers.3.mlp` for Qwen
    /// and gpt-oss).
    pub fn load(cfg: &ModelConfig, m: &MoeConfig, w: &dyn WeightSource, p: &str) -> Result<Self> {
        let gated = |load: &dyn Fn(usize) -> Result<GatedMlp>| (0..m.num_experts).map(load).collect::<Result<Vec<_>>>().map(Experts::Gated);
        let (experts, router) = match m.naming {
            MoeNaming::Mixtral => {
                let x = |e: usize, part: &str| format!("{p}.experts.{e}.{part}");
                (gated(&|e| GatedMlp::load_parts(cfg, w, &x(e, "w1"), &x(e, "w3"), &x(e, "w2")))?, w.linear(&format!("{p}.gate"), false)?)
            }
            MoeNaming::Qwen => (gated(&|e| GatedMlp::load(cfg, w, &format!("{p}.experts.{e}")))?, w.linear(&format!("{p}.gate"), false)?),
            MoeNaming::GptOss => {
                let act = m.clamped_swiglu.ok_or_else(|| EngineError::model_load(p, "gpt-oss experts without swiglu_alpha / swiglu_limit"))?;
                (Experts::ClampedSwiglu(ClampedSwigluExperts::load(w, &format!("{p}.experts"), act)?), w.linear(&format!("{p}.router"), true)?)
            }
        };
        let shared = match m.shared_expert_intermediate {
            Some(_) => Some((GatedMlp::load(cfg, w, &format!("{p}.shared_expert"))?, w.linear(&format!("{p}.shared_expert_gate"), false)?)),
            None => None,
        };
        #[allow(unused_mut)]
        let mut moe = MoeMlp {
            router,
            experts,
            num_experts: m.num_experts,
            shared,
            top_k: m.top_k,
            norm_topk_prob: m.norm_topk_prob,
            routing: m.routing,
            #[cfg(feature = "cuda")]
            fused: None,
        };
        #[cfg(feature = "cuda")]
        moe.fuse(m, cfg.hidden_size, w, p)?;
        Ok(moe)
    }

    /// On CUDA, stacks the experts for the fused path where it applies (else says why, once per layer).
    /// The compute dtype is the experts' (dense), else the router's or, where the router is quantized too
    /// (MLC's q4f16_1), that of the layer's post-attention norm, as the loader gives it.
    #[cfg(feature = "cuda")]
    fn fuse(&mut self, m: &MoeConfig, hidden: usize, w: &dyn WeightSource, p: &str) -> Result<()> {
        use super::moe_cuda::FusedMoe;
        use crate::model::linear::Weight;
        let on_cuda = |t: &Tensor| t.device().is_cuda().then(|| t.dtype());
        let router_dtype = match &self.router.weight {
            Weight::Dense(t) => on_cuda(t),
            Weight::Q4Cuda(_) => {
                let layer = p.rsplit_once('.').map_or(p, |(layer, _)| layer);
                w.tensor(&format!("{layer}.post_attention_layernorm.weight")).ok().and_then(|t| on_cuda(&t))
            }
            Weight::Quantized(_) => None,
        };
        let built = match &self.experts {
            Experts::Gated(v) => {
                let Some(first) = v.first() else { return Ok(()) };
                let dense = match first.parts().0 {
                    crate::model::linear::StackedLinear::Stacked(l) => l.weight.clone(),
                    crate::model::linear::StackedLinear::Separate(parts) => parts[0].weight.clone(),
                };
                let dtype = match &dense {
                    Weight::Dense(t) if t.device().is_cuda() => t.dtype(),
                    Weight::Q4Cuda(_) => match router_dtype {
                        Some(d) => d,
                        None => {
                            super::moe_cuda::note_host_routed();
                            return Ok(());
                        }
                    },
                    _ => {
                        // Other quantizations on CUDA (a dense router there says the device).
                        if router_dtype.is_some() {
                            super::moe_cuda::note_host_routed();
                        }
                        return Ok(());
                    }
                };
                FusedMoe::from_gated(v, m, dtype, hidden)?
            }
            Experts::ClampedSwiglu(f) => {
                let (device, dtype) = f.device_dtype();
                if !device.is_cuda() {
                    return Ok(());
                }
                FusedMoe::from_clamped_swiglu(f, m, dtype, hidden)?
            }
        };
        match built {
            Ok(fused) => {
                self.fused = Some(fused);
                self.experts = Experts::Gated(Vec::new());
            }
            Err(why) => {
                super::moe_cuda::note_host_routed();
                log::info!("{p}: mixture of experts on the host-routed path ({why})");
                // MXFP4 experts the fused kernels do not take: dense on the device, as the loaders read them
                // where they do not keep them (the CPU's MXFP4 kernels are no path for a GPU model).
                if let Experts::ClampedSwiglu(f) = &mut self.experts {
                    f.densify()?;
                }
            }
        }
        Ok(())
    }

    /// `x: [T, hidden] -> [T, hidden]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.router.forward(x)?; // [T, num_experts]
        #[cfg(feature = "cuda")]
        if let Some(fused) = &self.fused {
            let out = fused.forward(x, &logits)?;
            return self.add_shared(x, out);
        }
        let logits = logits.to_dtype(DType::F32)?;
        let scores = match self.routing {
            Routing::SoftmaxTopK => candle_nn::ops::softmax_last_dim(&logits)?,
            Routing::TopKSoftmax => logits,
        };
        let routes = route(&scores.to_vec2::<f32>()?, self.top_k, self.routing, self.norm_topk_prob, self.num_experts);
        let mut out = x.zeros_like()?; // [T, hidden]
        for (e, tokens) in routes.iter().enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let idx = Tensor::from_iter(tokens.iter().map(|&(t, _)| t as u32), x.device())?; // [n]
            let weights = Tensor::from_iter(tokens.iter().map(|&(_, w)| w), x.device())?.unsqueeze(1)?; // [n, 1] f32
            let y = self.experts.forward(e, &x.index_select(&idx, 0)?)?; // [n, hidden]
            let y = y.to_dtype(DType::F32)?.broadcast_mul(&weights)?.to_dtype(x.dtype())?;
            out = out.index_add(&idx, &y, 0)?;
        }
        self.add_shared(x, out)
    }

    /// Qwen2-MoE: `out` plus the shared expert times sigmoid(its gate); else `out`.
    fn add_shared(&self, x: &Tensor, out: Tensor) -> Result<Tensor> {
        match &self.shared {
            Some((mlp, gate)) => {
                let g = candle_nn::ops::sigmoid(&gate.forward(x)?)?; // [T, 1]
                Ok((out + mlp.forward(x)?.broadcast_mul(&g)?)?)
            }
            None => Ok(out),
        }
    }
}

/// Per expert, its `(token, weight)` pairs in token order: each token's `top_k` highest-scoring experts
/// (ties to the lower index). `scores` are probabilities for [`Routing::SoftmaxTopK`] (weights
/// renormalized to sum to 1 when `norm`), logits for [`Routing::TopKSoftmax`] (weights: the softmax of
/// the chosen logits, in descending order as torch.topk returns them).
pub fn route(scores: &[Vec<f32>], top_k: usize, routing: Routing, norm: bool, num_experts: usize) -> Vec<Vec<(usize, f32)>> {
    let mut routes = vec![Vec::new(); num_experts];
    let mut order: Vec<usize> = Vec::with_capacity(num_experts);
    for (t, p) in scores.iter().enumerate() {
        order.clear();
        order.extend(0..p.len());
        // NaN scores (a broken model) sort last rather than panic.
        order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Less).then(a.cmp(&b)));
        let chosen = &order[..top_k.min(order.len())];
        let weights: Vec<f32> = match routing {
            Routing::SoftmaxTopK => {
                let sum: f32 = chosen.iter().map(|&e| p[e]).sum();
                chosen.iter().map(|&e| if norm { p[e] / sum } else { p[e] }).collect()
            }
            Routing::TopKSoftmax => {
                let max = chosen.first().map_or(0.0, |&e| p[e]);
                let exps: Vec<f32> = chosen.iter().map(|&e| (p[e] - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                exps.iter().map(|x| x / sum).collect()
            }
        };
        for (&e, w) in chosen.iter().zip(weights) {
            routes[e].push((t, w));
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::route;
    use crate::model::config::Routing::{SoftmaxTopK, TopKSoftmax};

    #[test]
    fn top_k_picks_the_largest_and_renormalizes() {
        let probs = vec![vec![0.1, 0.5, 0.3, 0.1], vec![0.25, 0.25, 0.4, 0.1]];
        let r = route(&probs, 2, SoftmaxTopK, true, 4);
        assert_eq!(r[1], vec![(0, 0.5 / 0.8)]);
        assert_eq!(r[2], vec![(0, 0.3 / 0.8), (1, 0.4 / 0.65)]);
        // The tie between experts 0 and 1 of token 1 goes to the lower index.
        assert_eq!(r[0], vec![(1, 0.25 / 0.65)]);
        assert!(r[3].is_empty());
    }

    #[test]
    fn without_norm_the_probabilities_are_kept() {
        let r = route(&[vec![0.2, 0.7, 0.1]], 1, SoftmaxTopK, false, 3);
        assert_eq!(r[1], vec![(0, 0.7)]);
        assert!(r[0].is_empty() && r[2].is_empty());
    }

    #[test]
    fn top_k_then_softmax_weighs_the_chosen_logits_only() {
        // Logits 2 and 1 chosen of 4: weights e^2 / (e^2 + e^1) and e^1 / (e^2 + e^1), whatever the rest.
        let r = route(&[vec![1.0, -3.0, 2.0, 0.5]], 2, TopKSoftmax, false, 4);
        let (a, b) = (1f32.exp() / (1.0 + 1f32.exp()), 1.0 / (1.0 + 1f32.exp()));
        assert_eq!(r[2].len(), 1);
        assert!((r[2][0].1 - a).abs() < 1e-6 && (r[0][0].1 - b).abs() < 1e-6, "{r:?}");
        assert!(r[1].is_empty() && r[3].is_empty());
    }
}
