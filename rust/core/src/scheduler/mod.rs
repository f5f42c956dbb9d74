//! The token-budget scheduler: FCFS, continuous batching, chunked prefill, preemption by recompute.
//!
//! There are no prefill and decode phases. Each sequence has its known tokens (prompt + generated)
//! and `num_computed`, the leading tokens whose KV is in the cache; each step hands out "compute
//! tokens `num_computed..num_computed + n` of sequence `s`" under a budget of
//! `max_num_batched_tokens`. A decode is the case `n = 1`; a prompt is computed in chunks of at most
//! `prefill_chunk_size`; a sequence resumed after preemption recomputes prompt + generated tokens.
//!
//! A step serves the running sequences first, oldest admission first, then admits waiting ones in
//! arrival order while the budget, `max_num_seqs` and the free blocks allow. A running sequence that
//! cannot get a block for its tokens preempts the most recently admitted running sequence (itself if
//! it is the newest): that one gives up all its blocks, keeps its tokens and goes back to the front
//! of the waiting queue. Because the oldest running sequence is never preempted by another, and
//! everything up to the whole cache fits once it runs alone, the oldest always makes progress.
//!
//! A sequence whose tokens exceed the whole cache could never run; instead of preempting forever
//! it is dropped and reported in [`SchedulerOutput::unschedulable`] (see [`Scheduler::add`]).
//!
//! # Sliding window
//!
//! With [`SchedulerConfig::sliding_window`] `= Some(W)`, a chunk starting at position `a` reads keys
//! from `a - W + 1` on. Every time `num_computed` advances, the blocks wholly before
//! `num_computed - W + 1` go back to the pool (their table entries become
//! [`crate::kv_cache::PLACEHOLDER_BLOCK`]), and an admission does not take cached blocks before its
//! window. This is sound because `num_computed` never decreases while a sequence holds blocks: a
//! step fed from `start_pos = num_computed` sets it to `start_pos + fed + accepted > start_pos`
//! (rejected drafts sit after it and are recomputed from there), and preemption frees the whole table
//! before resetting it to 0. So a sequence holds at most [`SchedulerConfig::window_blocks`]`(n)`
//! blocks, `n` its longest step (a chunk, or a decode with its draft), and one longer than the whole
//! cache still runs: chunks are capped at [`SchedulerConfig::max_chunk_tokens`] so that theirs fit.
//!
//! # Long rope (Phi-3 longrope)
//!
//! With [`SchedulerConfig::long_context_from`] `= Some(T)` each admission fixes the sequence's
//! regime, [`ScheduledSeq::long_rope`]: long iff its known tokens exceed `T`. That is HF
//! transformers' rule: a prompt of at most `T` tokens runs with the short factors, and at the step
//! where the sequence grows past `T` tokens HF drops its cache and recomputes all of it with the long
//! factors. Here a running short-regime sequence whose known tokens exceed `T` (its next step would
//! compute position `T`) gives up its blocks and goes to the front of the waiting queue as a
//! preempted one does; its readmission, in the same step when the budget and blocks allow, is long.
//! It is reported in [`SchedulerOutput::rope_recomputes`], not as a preemption. So a short-regime
//! step only computes positions below `T`, `long_rope` is "known tokens > T" at every step, and the
//! logits at position `p` come from the long factors iff `p >= T`, as in HF. A short-regime draft is
//! cut to stay below `T` for the same reason: switching early for it would take the pending token's
//! logits from the long factors where HF uses the short ones.
//!
//! KV of the two regimes never mixes: each hashes its blocks on its own chain
//! ([`crate::kv_cache::KvRegime`]), so prefix hits stay within one regime. Under a sliding window the
//! switch frees the whole table before `num_computed` goes back to 0, as preemption does.

mod config;
mod output;
#[cfg(test)]
mod rope_tests;
#[cfg(test)]
mod stress_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;

pub use crate::kv_cache::SeqId;
pub use config::SchedulerConfig;
pub use output::{ScheduledSeq, SchedulerOutput};

use crate::kv_cache::{KvCacheManager, KvRegime};
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone)]
struct Sequence {
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    /// Leading tokens of `tokens` whose KV is in the cache; 0 while waiting.
    num_computed: usize,
    /// Proposed continuation (speculative decoding), fed after the pending token at the next step and
    /// verified there; not part of `tokens` until accepted.
    draft: Vec<u32>,
    /// The rope regime of the KV in the cache, fixed at admission; meaningless while waiting.
    long_rope: bool,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvCacheManager,
    seqs: HashMap<SeqId, Sequence>,
    /// Arrival order, except that preempted sequences return to the front.
    waiting: VecDeque<SeqId>,
    /// Admission order: the back is the newest, the first to be preempted.
    running: Vec<SeqId>,
}

impl Scheduler {
    /// # Panics
    /// If `cfg` fails [`SchedulerConfig::validate`]; the engine validates its settings first.
    pub fn new(cfg: SchedulerConfig) -> Self {
        if let Err(e) = cfg.validate() {
            panic!("invalid scheduler configuration: {e}");
        }
        let kv = KvCacheManager::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_cache)
            .with_sliding_window(cfg.sliding_window);
        Scheduler {
            cfg,
            kv,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Queues a new sequence behind every waiting one. The engine rejects prompts longer than the
    /// KV cache before this; one that slips through (or an empty one) is reported in the
    /// `unschedulable` list of the step that reaches it. An id already known is ignored.
    pub fn add(&mut self, seq_id: SeqId, prompt: Vec<u32>) {
        if self.seqs.contains_key(&seq_id) {
            debug_assert!(false, "sequence {seq_id} added twice");
            log::warn!("scheduler: sequence {seq_id} added twice; the second one is ignored");
            return;
        }
        self.seqs.insert(
            seq_id,
            Sequence {
                tokens: prompt,
                num_computed: 0,
                draft: Vec::new(),
                long_rope: false,
            },
        );
        self.waiting.push_back(seq_id);
    }

    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        self.schedule_running(&mut out, &mut budget);
        // Drafts are for one step: a sequence not scheduled now drafts afresh later.
        self.seqs.values_mut().for_each(|s| s.draft.clear());
        // Blocks just ran out: admitting now would only take blocks back from running sequences
        // (or readmit the ones just preempted).
        if out.preempted.is_empty() {
            self.schedule_waiting(&mut out, &mut budget);
        }
        out.num_batched_tokens = self.cfg.max_num_batched_tokens - budget;
        out
    }

    /// Advances each scheduled sequence by the tokens it was fed and appends the tokens sampled for
    /// the sequences scheduled with `sample`. Entries for sequences finished or aborted since
    /// [`Self::schedule`], and sampled tokens for sequences that did not sample, are ignored.
    pub fn update(&mut self, out: &SchedulerOutput, sampled: &[(SeqId, u32)]) {
        let emitted: Vec<(SeqId, Vec<u32>)> = sampled.iter().map(|&(s, t)| (s, vec![t])).collect();
        self.update_emitted(out, &emitted);
    }

    /// [`Self::update`] for steps that verified drafts: each sampling sequence emits the drafts the
    /// target accepted (a prefix of its draft) and one token of its own. The KV of the accepted drafts
    /// stays; the slots of rejected ones are overwritten later.
    pub fn update_emitted(&mut self, out: &SchedulerOutput, emitted: &[(SeqId, Vec<u32>)]) {
        let emitted: HashMap<SeqId, &Vec<u32>> = emitted.iter().map(|(s, t)| (*s, t)).collect();
        for s in &out.seqs {
            let Some(seq) = self.seqs.get_mut(&s.seq_id) else {
                continue;
            };
            if seq.num_computed != s.start_pos {
                continue; // not the state this output was scheduled from
            }
            let fed = s.token_ids.len() - s.num_draft;
            let tokens = emitted.get(&s.seq_id).filter(|_| s.sample);
            // Accepted drafts were computed in this step too (as positions after the pending token).
            let accepted = tokens.map_or(0, |t| t.len().saturating_sub(1).min(s.num_draft));
            seq.num_computed = (s.start_pos + fed + accepted).min(seq.tokens.len() + accepted);
            if let Some(tokens) = tokens {
                seq.tokens.extend_from_slice(tokens);
            }
            // Hash before releasing, so that released full blocks stay findable in the prefix cache.
            self.kv
                .commit_full_blocks(s.seq_id, &seq.tokens, seq.num_computed);
            self.kv.release_out_of_window(s.seq_id, seq.num_computed);
        }
    }

    /// Proposes `draft` to follow `seq_id`'s tokens at its next step. Only a running sequence with
    /// exactly one token to compute (a decode) takes a draft; anything else is ignored.
    pub fn set_draft(&mut self, seq_id: SeqId, draft: Vec<u32>) {
        if let Some(seq) = self.seqs.get_mut(&seq_id) {
            if seq.num_computed + 1 == seq.tokens.len() && self.running.contains(&seq_id) {
                seq.draft = draft;
            }
        }
    }

    /// Running sequences that decode at their next step (one token to compute), in admission order:
    /// the ones a proposer may draft for. A sequence about to be recomputed in the long rope regime
    /// does not decode.
    pub fn decoding(&self) -> Vec<SeqId> {
        self.running
            .iter()
            .copied()
            .filter(|id| {
                self.seqs.get(id).is_some_and(|s| {
                    s.num_computed + 1 == s.tokens.len() && !self.outgrew_short_rope(s)
                })
            })
            .collect()
    }

    /// The sequence is done (stop or length): frees its blocks and forgets it.
    pub fn finish(&mut self, seq_id: SeqId) {
        self.remove(seq_id);
    }

    /// Like [`Self::finish`] for a waiting or running sequence; false if `seq_id` is unknown.
    pub fn abort(&mut self, seq_id: SeqId) -> bool {
        self.remove(seq_id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.kv.num_free()
    }

    pub fn num_total_blocks(&self) -> usize {
        self.kv.num_total()
    }

    /// Free blocks that still hold a cached prefix (included in [`Self::num_free_blocks`]).
    pub fn num_cached_blocks(&self) -> usize {
        self.kv.num_free_cached()
    }

    /// Prompt followed by generated tokens.
    pub fn tokens(&self, seq_id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq_id).map(|s| s.tokens.as_slice())
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The block tables and the prefix cache, for metrics and inspection.
    pub fn kv_cache(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Records prefix-cache events for a router (at most `capacity` between two drains).
    pub fn enable_kv_events(&mut self, capacity: usize) {
        self.kv.enable_events(capacity);
    }

    /// The prefix-cache events since the last call.
    pub fn take_kv_events(&mut self) -> Vec<crate::kv_cache::KvEvent> {
        self.kv.take_events()
    }

    /// Running sequences in admission order: decode tokens or the next prefill chunk.
    fn schedule_running(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                self.running.remove(i);
                continue;
            };
            if !self.can_ever_run(seq) {
                self.running.remove(i);
                self.drop_unschedulable(id, out);
                continue;
            }
            if self.outgrew_short_rope(seq) {
                self.running.remove(i);
                self.forget_kv(id);
                out.rope_recomputes.push(id); // queued after the loop, ahead of this step's victims
                continue;
            }
            // 0 only if the engine did not deliver a sampled token; nothing to compute until it does.
            let n = seq
                .tokens
                .len()
                .saturating_sub(seq.num_computed)
                .min(self.cfg.max_chunk_tokens())
                .min(*budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let start = seq.num_computed;
            if !self.holds_window(id, start) {
                // Unreachable (see the module docs); recomputing is right where stale KV is not.
                debug_assert!(false, "sequence {id} lost KV inside its window");
                self.running.remove(i);
                self.preempt(id);
                out.preempted.push(id);
                continue;
            }
            let draft = self.take_draft(id, start, n, *budget);
            if draft.is_empty() && !self.reserve_or_preempt(i, start + n, out) {
                continue; // preempted itself: running[i] is now the next sequence, if any
            }
            let mut scheduled = self.scheduled(id, start, n);
            scheduled.token_ids.extend_from_slice(&draft);
            scheduled.num_draft = draft.len();
            *budget -= scheduled.token_ids.len();
            out.seqs.push(scheduled);
            i += 1;
        }
        // Every sequence preempted in this step was admitted after the ones that switched regime
        // (victims come from the back of `running`): the switched ones go first, in admission order.
        for &id in out.rope_recomputes.iter().rev() {
            self.waiting.push_front(id);
        }
    }

    /// The draft of `id` to verify after its `n` tokens from `start`, when it fits in the budget
    /// and in free blocks (a draft never preempts); cut, for a short-regime sequence, to the
    /// positions below `long_context_from` (see the module docs). Empty when none rides along.
    fn take_draft(&mut self, id: SeqId, start: usize, n: usize, budget: usize) -> Vec<u32> {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return Vec::new();
        };
        let mut draft = std::mem::take(&mut seq.draft);
        if let Some(t) = self.cfg.long_context_from.filter(|_| !seq.long_rope) {
            draft.truncate(t.saturating_sub(start + n));
        }
        let fits = n == 1
            && !draft.is_empty()
            && n + draft.len() <= budget
            && self.kv.ensure_slots(id, start + n + draft.len());
        if fits {
            draft
        } else {
            Vec::new()
        }
    }

    /// Waiting sequences in queue order (no skipping, so a long prompt is not starved by short ones).
    fn schedule_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        while let Some(&id) = self.waiting.front() {
            if *budget == 0 || self.running.len() >= self.cfg.max_num_seqs {
                break;
            }
            let Some(seq) = self.seqs.get(&id) else {
                self.waiting.pop_front();
                continue;
            };
            if !self.can_ever_run(seq) {
                self.waiting.pop_front();
                self.drop_unschedulable(id, out);
                continue;
            }
            let max_new = self.cfg.max_chunk_tokens().min(*budget);
            let long_rope = self.cfg.is_long_context(seq.tokens.len());
            let regime = if long_rope {
                KvRegime::LongRope
            } else {
                KvRegime::Base
            };
            // Prefix hits are taken here, on every admission: a resumed sequence finds its own
            // blocks again if nothing reused them meanwhile (and they are of its regime).
            let Some(cached) = self
                .kv
                .allocate_with_prefix_in(regime, id, &seq.tokens, max_new)
            else {
                break;
            };
            let n = (seq.tokens.len() - cached).min(max_new);
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.num_computed = cached;
                seq.long_rope = long_rope;
            }
            self.waiting.pop_front();
            self.running.push(id);
            out.prefix_hit_tokens += cached;
            out.seqs.push(self.scheduled(id, cached, n));
            *budget -= n;
        }
    }

    /// Grows the block table of `running[i]` to `num_tokens` slots, preempting from the back of
    /// `running` (never a sequence before `i`, which were scheduled already) until it fits. Returns
    /// false when `running[i]` had to preempt itself.
    fn reserve_or_preempt(
        &mut self,
        i: usize,
        num_tokens: usize,
        out: &mut SchedulerOutput,
    ) -> bool {
        let id = self.running[i];
        while !self.kv.ensure_slots(id, num_tokens) {
            let Some(victim) = self.running.pop() else {
                return false;
            };
            self.preempt(victim);
            out.preempted.push(victim);
            if victim == id {
                return false;
            }
        }
        true
    }

    /// Frees the blocks of a sequence already taken out of `running` and queues it to be
    /// recomputed first. Preempting newest first and pushing to the front keeps several victims of
    /// one step in admission order.
    fn preempt(&mut self, id: SeqId) {
        self.forget_kv(id);
        self.waiting.push_front(id);
    }

    /// Frees the blocks of `id`, which is to be recomputed from position 0.
    fn forget_kv(&mut self, id: SeqId) {
        self.kv.free(id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.num_computed = 0;
            seq.draft.clear();
        }
    }

    /// A running short-regime sequence whose known tokens passed `long_context_from`: its next step
    /// would compute a position of the long regime.
    fn outgrew_short_rope(&self, seq: &Sequence) -> bool {
        !seq.long_rope && self.cfg.is_long_context(seq.tokens.len())
    }

    /// A sequence already taken out of its queue that can never run (see the module docs).
    fn drop_unschedulable(&mut self, id: SeqId, out: &mut SchedulerOutput) {
        self.kv.free(id);
        self.seqs.remove(&id);
        out.unschedulable.push(id);
    }

    /// Alone in the cache, a sequence can hold every block it needs at once.
    fn can_ever_run(&self, seq: &Sequence) -> bool {
        !seq.tokens.is_empty() && self.cfg.can_ever_run(seq.tokens.len())
    }

    /// Every block that a chunk starting at `start` reads is still in the table of `id`.
    fn holds_window(&self, id: SeqId, start: usize) -> bool {
        self.kv.num_released(id) * self.cfg.block_size <= self.kv.window_start(start)
    }

    fn scheduled(&self, id: SeqId, start: usize, n: usize) -> ScheduledSeq {
        let (tokens, long_rope) = self
            .seqs
            .get(&id)
            .map_or((&[][..], false), |s| (&s.tokens[..], s.long_rope));
        ScheduledSeq {
            seq_id: id,
            start_pos: start,
            token_ids: tokens.get(start..start + n).unwrap_or_default().to_vec(),
            block_table: self.kv.block_table(id).to_vec(),
            sample: start + n == tokens.len(),
            num_draft: 0,
            long_rope,
        }
    }

    fn remove(&mut self, id: SeqId) -> bool {
        if self.seqs.remove(&id).is_none() {
            return false;
        }
        if let Some(i) = self.running.iter().position(|&r| r == id) {
            self.running.remove(i);
        } else if let Some(i) = self.waiting.iter().position(|&w| w == id) {
            self.waiting.remove(i);
        }
        self.kv.free(id);
        true
    }
}
