//! What one scheduler step hands to the runner: plain data, no tensors.

use crate::kv_cache::{BlockId, SeqId};

/// "Compute these tokens of this sequence": a prefill chunk, a decode token, or a recompute after
/// preemption are all the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq_id: SeqId,
    /// Tokens already in the KV cache; `token_ids[i]` sits at position `start_pos + i`.
    pub start_pos: usize,
    /// Tokens fed this step.
    pub token_ids: Vec<u32>,
    /// Blocks covering positions `0 .. start_pos + token_ids.len()` (at least): entry `i` holds
    /// positions `i * block_size ..`. Under a sliding window of `W`, entries of blocks wholly before
    /// `start_pos - W + 1` (never read by this step) hold [`crate::kv_cache::PLACEHOLDER_BLOCK`].
    pub block_table: Vec<BlockId>,
    /// This chunk reaches the end of the known tokens, so the engine samples a token from its last
    /// position.
    pub sample: bool,
    /// The last `num_draft` of `token_ids` are proposed tokens to verify (speculative decoding): the
    /// engine samples from each of the last `num_draft + 1` positions.
    pub num_draft: usize,
    /// Rotate every position of this step with the long rope factors (Phi-3 longrope); the KV in
    /// the cache was computed in the same regime. Always false without
    /// [`super::SchedulerConfig::long_context_from`].
    pub long_rope: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// At most one entry per sequence, running sequences first, each group in its queue's order.
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted this step: their blocks were freed and they wait to be recomputed. None
    /// of them is in `seqs`.
    pub preempted: Vec<SeqId>,
    /// Sequences that outgrew the short rope regime this step: their blocks were freed and they
    /// are recomputed from position 0 in the long regime, first in the waiting queue (already in
    /// `seqs`, from position 0 or a long-regime prefix hit, when admitted in this same step). Not
    /// preemptions: none of them is in `preempted`. At most once per sequence.
    pub rope_recomputes: Vec<SeqId>,
    /// Sequences dropped because they can never run: their tokens (prompt + generated) no longer
    /// fit in the whole KV cache, or they have no token at all. Their blocks are freed and the
    /// scheduler has forgotten them; the engine finishes them (finish reason "length").
    pub unschedulable: Vec<SeqId>,
    /// Sum of `token_ids.len()` over `seqs`.
    pub num_batched_tokens: usize,
    /// Tokens of this step's admissions whose KV came from the prefix cache.
    pub prefix_hit_tokens: usize,
}

impl SchedulerOutput {
    /// Nothing to run this step.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}
