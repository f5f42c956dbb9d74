//! Paged KV-cache bookkeeping: which cache blocks each sequence owns, and the prefix cache that lets
//! sequences share full blocks with equal content.
//!
//! Plain data only. A block is `block_size` token slots of K and V in every layer; here it is just an
//! id with a reference count and, once full and computed, a content hash. The runner turns block
//! tables into tensors; nothing in this module touches the device.
//!
//! - [`BlockPool`]: the blocks, their reference counts, the free list in eviction order and the
//!   hash -> block map of the prefix cache.
//! - [`KvCacheManager`]: the pool plus one block table per sequence, with the blocks that fell out of
//!   a sliding window given back while the sequence runs.
//! - [`KvRegime`]: what a sequence's KV was computed with beyond its tokens (Phi-3's long rope);
//!   each regime has its own hash chain, so prefix hits never cross regimes.
//! - [`KvEvent`]: blocks stored in and removed from the prefix cache, for routers (when enabled).

mod block_hash;
mod block_pool;
mod events;
mod free_queue;
mod manager;
#[cfg(test)]
mod regime_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;

pub use block_hash::{BlockHash, KvRegime};
pub use block_pool::{BlockId, BlockPool};
pub use events::{KvEvent, KvEventLog};
pub use manager::{KvCacheManager, PLACEHOLDER_BLOCK};

/// Identifies one sequence (one request's generation) to the KV cache and the scheduler.
pub type SeqId = u64;
