//! Model definitions: our own forward passes over positions and paged-attention metadata.

pub mod config;
pub mod eagle;
pub mod fused;
pub mod fused_check;
pub mod linear;
pub mod llama;
#[cfg(feature = "cuda")]
pub mod q4;
pub mod q4_check;

pub use config::{Architecture, ModelConfig, RopeStyle};
pub use llama::LlamaModel;
