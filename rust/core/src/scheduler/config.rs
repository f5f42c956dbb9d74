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
    /// Every layer attends only to the last `W` positions (p - W < k <= p): KV blocks wholly before the
    /// window of every running token are released to the pool while the sequence runs. `None`: full attention
    /// somewhere in the model, blocks are kept for the sequence's life.
    pub sliding_window: Option<usize>,
    /// Sequences longer than this run in the long rope regime (Phi-3 longrope): a sequence's regime
    /// is fixed when it is admitted (long iff its known tokens, prompt plus generated, exceed this),
    /// and a short-regime sequence about to hold more tokens is recomputed from position 0 in the
    /// long regime. `None`: one regime.
    pub long_context_from: Option<usize>,
}

impl SchedulerConfig {
    /// Every count must be at least 1 (a zero budget or batch would leave work that never runs; a
    /// long-context threshold of 0 would make every sequence long, which no model means) and
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
        for (field, value) in [
            ("sliding_window", self.sliding_window),
            ("long_context_from", self.long_context_from),
        ] {
            if value == Some(0) {
                return Err(EngineError::bad_request(field, "must be at least 1"));
            }
        }
        if u32::try_from(self.num_blocks).is_err() {
            return Err(EngineError::bad_request("num_blocks", "must be below 2^32"));
        }
        Ok(())
    }

    /// Whether a sequence with `num_tokens` known tokens runs in the long rope regime when admitted
    /// now; always false without [`Self::long_context_from`].
    pub fn is_long_context(&self, num_tokens: usize) -> bool {
        self.long_context_from.is_some_and(|t| num_tokens > t)
    }

    /// Tokens the whole KV cache can hold: without a sliding window, the longest sequence that can
    /// ever run.
    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks.saturating_mul(self.block_size)
    }

    /// Most blocks a sliding-window sequence holds while computing a chunk of `n` tokens (`n >= 1`):
    /// the chunk `[a, a + n)` reads positions from `a - W + 1`, a span of `W - 1 + n` positions,
    /// which touches at most `floor((W + n - 3) / block_size) + 2` blocks: `ceil((W - 1 + n) /
    /// block_size)`, or one more when the span starts mid-block. `None` without a window.
    pub fn window_blocks(&self, n: usize) -> Option<usize> {
        let w = self.sliding_window?;
        let span = (w + n).saturating_sub(1).max(1);
        Some((span + self.block_size).saturating_sub(2) / self.block_size + 1)
    }

    /// Most tokens of one sequence in one step: `prefill_chunk_size`, lowered under a sliding window
    /// where so long a chunk would need more blocks than the whole cache has, so that a sequence
    /// longer than the cache can still be (re)computed alone. Unchanged when not even one token's
    /// window fits: then only sequences that fit whole run, as without a window.
    pub fn max_chunk_tokens(&self) -> usize {
        let Some(w) = self.sliding_window else {
            return self.prefill_chunk_size;
        };
        // window_blocks(n) <= num_blocks  <=>  n <= (num_blocks - 1) * block_size + 2 - W
        let fits = (self.num_blocks.saturating_sub(1))
            .saturating_mul(self.block_size)
            .saturating_add(2)
            .saturating_sub(w);
        match fits {
            0 => self.prefill_chunk_size,
            n => self.prefill_chunk_size.min(n),
        }
    }

    /// Alone in the cache, a sequence of `num_tokens` tokens can be computed: it fits whole, or
    /// under a sliding window every chunk of at most [`Self::max_chunk_tokens`] does (drafts, which
    /// never preempt, need not fit).
    pub fn can_ever_run(&self, num_tokens: usize) -> bool {
        num_tokens <= self.capacity_tokens()
            || self
                .window_blocks(self.max_chunk_tokens())
                .is_some_and(|b| b <= self.num_blocks)
    }
}
