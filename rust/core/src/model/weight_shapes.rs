//! Weight shapes checked at load against the configuration, so that a checkpoint whose tensors do not
//! match its config (a corrupt header, a transposed or truncated tensor, a config edited by hand) fails
//! with a `ModelLoad` error naming the tensor, not with a shape error at the first request.

use super::config::ModelConfig;
use super::linear::{Linear, Weight};
use super::weights::WeightSource;
use crate::error::{EngineError, Result};
use candle_core::quantized::QMatMul;
use candle_core::Tensor;

/// A [`WeightSource`] that checks every tensor and linear weight whose shape the configuration fixes.
pub struct ShapeChecked<'a> {
    inner: &'a dyn WeightSource,
    cfg: &'a ModelConfig,
}

impl<'a> ShapeChecked<'a> {
    pub fn new(cfg: &'a ModelConfig, inner: &'a dyn WeightSource) -> Self {
        ShapeChecked { inner, cfg }
    }

    /// `[out, in]` of the linear layer at `prefix`, where the configuration fixes it.
    fn linear_shape(&self, prefix: &str) -> Option<[usize; 2]> {
        let c = self.cfg;
        let (h, hd, q, kv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let last = prefix.rsplit('.').next().unwrap_or(prefix);
        // An MLP's width: an expert's, the shared expert's, or the dense one.
        let inter = match &c.moe {
            Some(m) if prefix.contains(".experts.") => m.expert_intermediate,
            Some(m) if prefix.contains(".shared_expert.") => m.shared_expert_intermediate.unwrap_or(c.intermediate_size),
            _ => c.intermediate_size,
        };
        if let Some(m) = &c.moe {
            match last {
                "gate" | "router" => return Some([m.num_experts, h]),
                "shared_expert_gate" => return Some([1, h]),
                "w1" | "w3" => return Some([inter, h]),
                "w2" => return Some([h, inter]),
                _ => {}
            }
        }
        Some(match last {
            "q_proj" => [q * hd, h],
            "k_proj" | "v_proj" => [kv * hd, h],
            "qkv_proj" => [(q + 2 * kv) * hd, h],
            "o_proj" => [h, q * hd],
            "gate_proj" | "up_proj" => [inter, h],
            "gate_up_proj" => [2 * inter, h],
            "down_proj" => [h, inter],
            "lm_head" | "embed_tokens" => [c.vocab_size, h],
            _ => return None,
        })
    }

    /// The shape of the tensor `name`, where the configuration fixes it.
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = self.cfg;
        if name == "model.embed_tokens.weight" {
            return Some(vec![c.vocab_size, c.hidden_size]);
        }
        if name.ends_with(".self_attn.sinks") {
            return Some(vec![c.num_attention_heads]);
        }
        // gpt-oss's fused experts, input dimension first.
        if let Some(m) = c.moe.as_ref().filter(|_| name.contains(".experts.")) {
            let (e, i) = (m.num_experts, m.expert_intermediate);
            let last = name.rsplit('.').next().unwrap_or(name);
            match last {
                "gate_up_proj" => return Some(vec![e, c.hidden_size, 2 * i]),
                "gate_up_proj_bias" => return Some(vec![e, 2 * i]),
                "down_proj" => return Some(vec![e, i, c.hidden_size]),
                "down_proj_bias" => return Some(vec![e, c.hidden_size]),
                _ => {}
            }
        }
        let norms = ["model.norm.weight", "input_layernorm.weight", "post_attention_layernorm.weight", "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"];
        norms.iter().any(|n| name == *n || name.ends_with(&format!(".{n}"))).then(|| vec![c.hidden_size])
    }
}

fn mismatch(name: &str, found: &[usize], want: &[usize]) -> EngineError {
    EngineError::model_load("the checkpoint", format!("tensor {name} has shape {found:?}; the configuration needs {want:?}"))
}

/// `[out, in]` of a linear weight, whatever its storage.
pub(crate) fn weight_dims(w: &Weight) -> Vec<usize> {
    match w {
        Weight::Dense(t) => t.dims().to_vec(),
        Weight::Quantized(QMatMul::QTensor(q)) => q.shape().dims().to_vec(),
        Weight::Quantized(QMatMul::Tensor(t)) | Weight::Quantized(QMatMul::TensorF16(t)) => t.dims().to_vec(),
        #[cfg(feature = "cuda")]
        Weight::Q4Cuda(q) => {
            let (n, k) = q.dims();
            vec![n, k]
        }
    }
}

impl WeightSource for ShapeChecked<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.tensor(name)?;
        match self.tensor_shape(name) {
            Some(want) if t.dims() != want.as_slice() => Err(mismatch(name, t.dims(), &want)),
            _ => Ok(t),
        }
    }

    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        let l = self.inner.linear(prefix, bias)?;
        if let Some(want) = self.linear_shape(prefix) {
            let found = weight_dims(&l.weight);
            if found != want {
                return Err(mismatch(&format!("{prefix}.weight"), &found, &want));
            }
        }
        if let Some(b) = &l.bias {
            if b.dims().len() != 1 || weight_dims(&l.weight).first() != b.dims().first() {
                return Err(mismatch(&format!("{prefix}.bias"), b.dims(), &weight_dims(&l.weight)[..1]));
            }
        }
        Ok(l)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn mxfp4_experts(&self, prefix: &str) -> Result<Option<crate::model::weights::Mxfp4Experts>> {
        let Some(m) = self.inner.mxfp4_experts(prefix)? else { return Ok(None) };
        // The dense form's shape (gate_up_proj [E, hidden, 2I]) says what these must hold.
        if let Some(want) = self.tensor_shape(&format!("{prefix}.gate_up_proj")) {
            let found = [m.experts, m.hidden, 2 * m.inter];
            if want.as_slice() != found {
                return Err(mismatch(&format!("{prefix}.gate_up_proj"), &found, &want));
            }
        }
        Ok(Some(m))
    }
}
