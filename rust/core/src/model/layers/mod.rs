//! The pieces every decoder layer is made of: attention with its per-layer kind, the gated MLP with its
//! activation (or a mixture of such MLPs, or of gpt-oss's clamped SwiGLU experts), and RMSNorm weights as the architecture applies them.

pub mod attention;
pub mod clamped_swiglu;
pub mod mlp;
pub mod moe;
#[cfg(feature = "cuda")]
pub mod moe_cuda;
pub mod norm;

pub use attention::Attention;
pub use mlp::GatedMlp;
pub use moe::MoeMlp;
