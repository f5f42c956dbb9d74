//! The pieces every decoder layer is made of: attention with its per-layer kind, the gated MLP with its
//! activation (or a mixture of such MLPs), and RMSNorm weights as the architecture applies them.

pub mod attention;
pub mod mlp;
pub mod moe;
pub mod norm;

pub use attention::Attention;
pub use mlp::GatedMlp;
pub use moe::MoeMlp;
