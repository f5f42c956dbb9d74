//! Engine-wide counters, snapshotted on request.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    pub num_requests_added: u64,
    pub num_requests_finished: u64,
    pub num_requests_aborted: u64,
    pub num_running: usize,
    pub num_waiting: usize,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    pub prefill_time_s: f64,
    pub decode_time_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub mean_ttft_s: f64,
    pub sum_ttft_s: f64,
    pub max_batch_size_seen: usize,
    /// Blocks no sequence holds: `num_empty_blocks` + `num_cached_blocks`.
    pub num_free_blocks: usize,
    /// Free blocks holding a cached prefix (reusable by a matching prompt, evicted last).
    pub num_cached_blocks: usize,
    /// Free blocks without cached content.
    pub num_empty_blocks: usize,
    /// Blocks held by running or preempted-and-kept sequences.
    pub num_used_blocks: usize,
    pub num_total_blocks: usize,
    pub num_preemptions: u64,
    /// Sequences recomputed from position 0 when they grew past Phi-3's original context (longrope).
    pub num_rope_recomputes: u64,
    pub prefix_cache_hit_tokens: u64,
    pub engine_steps: u64,
    /// Where an open workload's wall time goes: the steps that only decoded, and the steps with prefill
    /// tokens (alone or with decodes), each with its whole wall time (scheduling, forward pass, sampling,
    /// detokenizing). `decode_step_seqs` sums the decode-only steps' batch sizes (their mean batch);
    /// `prefill_step_tokens` / `prefill_step_decodes` are the prefill tokens and decode tokens the other
    /// steps carried. The engine thread's time outside steps is the wall time less both.
    pub decode_steps: u64,
    pub decode_step_time_s: f64,
    pub decode_step_seqs: u64,
    pub prefill_steps: u64,
    pub prefill_step_time_s: f64,
    pub prefill_step_tokens: u64,
    pub prefill_step_decodes: u64,
    /// Decode steps replayed through CUDA graphs, and graphs captured.
    pub cuda_graph_replays: u64,
    pub cuda_graphs_captured: usize,
    /// Speculative decoding: draft tokens proposed and accepted, verification steps (one per sequence
    /// per step that verified drafts), and the time spent proposing.
    pub spec_draft_tokens: u64,
    pub spec_accepted_tokens: u64,
    pub spec_verify_steps: u64,
    pub spec_draft_time_s: f64,
    /// Time of the target steps that verified drafts.
    pub spec_verify_time_s: f64,
    /// Proposal steps that failed (their sequences decoded without drafts).
    pub spec_draft_failures: u64,
    /// accepted / proposed draft tokens.
    pub spec_acceptance_rate: f64,
    /// Tokens emitted per verification step (accepted drafts plus the target's own token).
    pub spec_mean_accepted_length: f64,
}

impl Metrics {
    /// Fills the derived rates from the counters.
    pub fn finalize(&mut self) {
        self.prefill_tokens_per_s = rate(self.prefill_tokens, self.prefill_time_s);
        self.decode_tokens_per_s = rate(self.decode_tokens, self.decode_time_s);
        let n = self.num_requests_finished + self.num_requests_aborted;
        self.mean_ttft_s = if n > 0 { self.sum_ttft_s / n as f64 } else { 0.0 };
        self.spec_acceptance_rate =
            if self.spec_draft_tokens > 0 { self.spec_accepted_tokens as f64 / self.spec_draft_tokens as f64 } else { 0.0 };
        self.spec_mean_accepted_length = if self.spec_verify_steps > 0 {
            (self.spec_accepted_tokens + self.spec_verify_steps) as f64 / self.spec_verify_steps as f64
        } else {
            0.0
        };
    }
}

fn rate(tokens: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    }
}
