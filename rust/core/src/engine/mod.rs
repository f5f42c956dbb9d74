//! The engine: a core that steps (scheduler -> runner -> sampler -> deltas) owned by one thread,
//! and a handle that callers use to reach it.

pub mod config;
pub mod core;
pub mod handle;
mod host_memory;
mod kv_dtype;
pub mod metrics;
pub mod output;
mod request_state;
pub mod speculation;
pub mod stop;
pub mod trace;

pub use config::{EngineArgs, EngineSizes, Mode};
pub use handle::{build, EngineHandle, EngineInfo};
pub use kv_dtype::default_kv_cache_dtype;
pub use output::{Delta, FinishReason};
