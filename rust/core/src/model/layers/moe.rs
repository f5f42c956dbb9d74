//! The mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE): a router scores every expert, each token
//! takes its `top_k` experts, and their outputs are summed weighted by the router's probabilities.
//!
//! Order of operations, as transformers computes it: router logits `x . gate^T`, softmax over all experts
//! in f32, the top `k` probabilities (ties to the lower expert index), divided by their sum when
//! `norm_topk_prob`; each expert's MLP runs once on all of its tokens (gathered), its outputs are
//! multiplied by their weights and added into the output in increasing expert order. Qwen2-MoE then adds
//! the shared expert times sigmoid(shared_expert_gate(x)).
//!
//! The routing (top-k, grouping tokens by expert) runs on the host from one read-back of the
//! probabilities per layer: the reference path, correct on every device. The experts' matmuls run on the
//! tensors' device. A fused on-device MoE (tokens sorted by expert, one grouped GEMM) is the fast path to
//! come; until then MoE models do not capture CUDA graphs (runner.rs).

use super::mlp::GatedMlp;
use crate::error::Result;
use crate::model::config::{ModelConfig, MoeConfig, MoeNaming};
use crate::model::linear::Linear;
use crate::model::weights::WeightSource;
use candle_core::{DType, Tensor};

pub struct MoeMlp {
    /// `[num_experts, hidden]`
    router: Linear,
    experts: Vec<GatedMlp>,
    /// Qwen2-MoE: the shared expert and its `[1, hidden]` gate.
    shared: Option<(GatedMlp, Linear)>,
    top_k: usize,
    norm_topk_prob: bool,
}

impl MoeMlp {
    /// The mixture at `p` (`model.layers.3.block_sparse_moe` for Mixtral, `model.layers.3.mlp` for Qwen).
    pub fn load(cfg: &ModelConfig, m: &MoeConfig, w: &dyn WeightSource, p: &str) -> Result<Self> {
        let experts = (0..m.num_experts)
            .map(|e| match m.naming {
                MoeNaming::Mixtral => {
                    let x = format!("{p}.experts.{e}");
                    GatedMlp::load_parts(cfg, w, &format!("{x}.w1"), &format!("{x}.w3"), &format!("{x}.w2"))
                }
                MoeNaming::Qwen => GatedMlp::load(cfg, w, &format!("{p}.experts.{e}")),
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = match m.shared_expert_intermediate {
            Some(_) => Some((GatedMlp::load(cfg, w, &format!("{p}.shared_expert"))?, w.linear(&format!("{p}.shared_expert_gate"), false)?)),
            None => None,
        };
        Ok(MoeMlp { router: w.linear(&format!("{p}.gate"), false)?, experts, shared, top_k: m.top_k, norm_topk_prob: m.norm_topk_prob })
    }

    /// `x: [T, hidden] -> [T, hidden]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.router.forward(x)?.to_dtype(DType::F32)?; // [T, num_experts]
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        let routes = route(&probs, self.top_k, self.norm_topk_prob, self.experts.len());
        let mut out = x.zeros_like()?; // [T, hidden]
        for (expert, tokens) in self.experts.iter().zip(&routes) {
            if tokens.is_empty() {
                continue;
            }
            let idx = Tensor::from_iter(tokens.iter().map(|&(t, _)| t as u32), x.device())?; // [n]
            let weights = Tensor::from_iter(tokens.iter().map(|&(_, w)| w), x.device())?.unsqueeze(1)?; // [n, 1] f32
            let y = expert.forward(&x.index_select(&idx, 0)?)?; // [n, hidden]
            let y = y.to_dtype(DType::F32)?.broadcast_mul(&weights)?.to_dtype(x.dtype())?;
            out = out.index_add(&idx, &y, 0)?;
        }
        if let Some((mlp, gate)) = &self.shared {
            let g = candle_nn::ops::sigmoid(&gate.forward(x)?)?; // [T, 1]
            out = (out + mlp.forward(x)?.broadcast_mul(&g)?)?;
        }
        Ok(out)
    }
}

/// Per expert, its `(token, weight)` pairs in token order: each token's `top_k` most probable experts
/// (ties to the lower index), weights renormalized to sum to 1 when `norm`.
pub fn route(probs: &[Vec<f32>], top_k: usize, norm: bool, num_experts: usize) -> Vec<Vec<(usize, f32)>> {
    let mut routes = vec![Vec::new(); num_experts];
    let mut order: Vec<usize> = Vec::with_capacity(num_experts);
    for (t, p) in probs.iter().enumerate() {
        order.clear();
        order.extend(0..p.len());
        // NaN probabilities (a broken model) sort last rather than panic.
        order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Less).then(a.cmp(&b)));
        let chosen = &order[..top_k.min(order.len())];
        let sum: f32 = chosen.iter().map(|&e| p[e]).sum();
        for &e in chosen {
            routes[e].push((t, if norm { p[e] / sum } else { p[e] }));
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn top_k_picks_the_largest_and_renormalizes() {
        let probs = vec![vec![0.1, 0.5, 0.3, 0.1], vec![0.25, 0.25, 0.4, 0.1]];
        let r = route(&probs, 2, true, 4);
        assert_eq!(r[1], vec![(0, 0.5 / 0.8)]);
        assert_eq!(r[2], vec![(0, 0.3 / 0.8), (1, 0.4 / 0.65)]);
        // The tie between experts 0 and 1 of token 1 goes to the lower index.
        assert_eq!(r[0], vec![(1, 0.25 / 0.65)]);
        assert!(r[3].is_empty());
    }

    #[test]
    fn without_norm_the_probabilities_are_kept() {
        let r = route(&[vec![0.2, 0.7, 0.1]], 1, false, 3);
        assert_eq!(r[1], vec![(0, 0.7)]);
        assert!(r[0].is_empty() && r[2].is_empty());
    }
}
