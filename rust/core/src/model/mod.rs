//! Models: our own forward passes over positions and paged-attention metadata. The engine sees a model
//! only through [`CausalLm`]; architectures are rows of [`registry`] and files of `arch/`.

pub mod arch;
pub mod config;
pub mod decoder;
#[cfg(feature = "cuda")]
pub mod dense_gemv;
pub mod eagle;
pub mod fused;
pub mod fused_check;
mod fused_cpu;
pub mod gguf_meta;
pub mod layers;
pub mod linear;
#[cfg(feature = "cuda")]
pub mod q4;
pub mod q4_check;
pub mod registry;
pub mod rope;
pub mod sharded;
pub mod sharded_lm;
pub mod weight_shapes;
pub mod weights;

pub use config::ModelConfig;
pub use decoder::DecoderModel;
pub use registry::Architecture;
pub use rope::RopeStyle;
pub use weights::WeightSource;

use crate::attention::{PagedKvCache, StepAttention};
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// A causal language model over the paged KV cache: what the runner, CUDA graphs, speculative decoding
/// and memory sizing use.
pub trait CausalLm: Send {
    fn config(&self) -> &ModelConfig;
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;

    /// The KV heads per layer of the engine's KV cache: the model's, or a sharded model's rank 0's.
    fn kv_heads(&self) -> usize {
        self.config().num_key_value_heads
    }

    /// The decoder stack and the final norm: `[num_tokens]` ids and positions -> `[num_tokens, hidden]`.
    /// On CUDA this launches only kernels (no host copies or synchronisation), so a decode step of
    /// fixed shape can be captured into a CUDA graph.
    fn forward_hidden(&self, tokens: &Tensor, positions: &Tensor, kv: &PagedKvCache, step: &StepAttention) -> Result<Tensor>;

    /// `h: [num_samples, hidden]` (final-normed hidden states) -> f32 logits `[num_samples, vocab]`.
    fn logits(&self, h: &Tensor) -> Result<Tensor>;

    /// The token embedding rows, unscaled: `[num_tokens] -> [num_tokens, hidden]` (EAGLE heads draft
    /// from them).
    fn embed(&self, tokens: &Tensor) -> Result<Tensor>;

    /// Runs one step. `tokens`, `positions`: `[num_tokens]` u32; `sample_rows`: `[num_samples]` u32
    /// indices into the token list. Returns f32 logits `[num_samples, vocab]`.
    fn forward(&self, tokens: &Tensor, positions: &Tensor, sample_rows: &Tensor, kv: &PagedKvCache, step: &StepAttention) -> Result<Tensor> {
        let h = self.forward_hidden(tokens, positions, kv, step)?;
        self.logits(&h.index_select(sample_rows, 0)?)
    }
}
