//! Sizes that bound one scheduler step and the KV cache it manages.

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running (holding KV blocks) at once.
    pub max_num_seqs: usize,
    /// Token budget of one step: decode tokens and prefill chunks together.
    pub max_num_batched_tokens: usize,
    /// Most prompt tokens of one sequence in one step.
    pub prefill_chunk_size: usize,
    /// Token slots per KV block.
    pub block_size: usize,
    pub num_blocks: usize,
    /// Reuse the KV of full blocks whose whole prefix matches an earlier sequence.
    pub enable_prefix_cache: bool,
}

impl SchedulerConfig {
    /// Every count must be at least 1 (a zero budget or batch would leave work that never runs) and
    /// `num_blocks` must fit a block id.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("prefill_chunk_size", self.prefill_chunk_size),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(EngineError::bad_request(field, "must be at least 1"));
            }
        }
        if u32::try_from(self.num_blocks).is_err() {
            return Err(EngineError::bad_request("num_blocks", "must be below 2^32"));
        }
        Ok(())
    }

    /// Tokens the whole KV cache can hold: the longest sequence that can ever run.
    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks.saturating_mul(self.block_size)
    }
}
