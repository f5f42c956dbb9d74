//! `small_draft`: a second, smaller model of the same vocabulary proposes tokens. It has its own paged KV
//! cache and block tables; per sequence it remembers which tokens its cache holds, so after a
//! verification it only recomputes from the first token that differs (a rejected draft is rolled back
//! by forgetting it, the next step overwrites its slots). Proposals for all sequences of a step run
//! batched: one step that catches each sequence up and drafts its first token, then one single-token
//! step per further draft token.

use crate::error::Result;
use crate::kv_cache::KvCacheManager;
use crate::request::SamplingParams;
use crate::runner::{ModelRunner, SampleOn, StepLogits};
use crate::sampler::{draw_weights, SequenceSampler};
use crate::scheduler::{ScheduledSeq, SchedulerOutput, SeqId};
use std::collections::HashMap;

pub struct DraftModel {
    runner: ModelRunner,
    blocks: KvCacheManager,
    /// Per sequence, the tokens whose KV the draft cache holds, in order.
    cached: HashMap<SeqId, Vec<u32>>,
}

/// One sequence to draft for.
pub struct DraftRequest<'a> {
    pub seq_id: SeqId,
    /// Prompt and output so far (the last one not yet in either cache).
    pub tokens: &'a [u32],
    pub k: usize,
    pub params: &'a SamplingParams,
    /// The draft's own generator and state (not the request's: the target's stream stays its own).
    pub sampler: &'a mut SequenceSampler,
}

/// Draft tokens for one sequence and, for sampled requests, the distributions they were drawn from.
pub struct Proposal {
    pub seq_id: SeqId,
    pub tokens: Vec<u32>,
    pub probs: Option<Vec<Vec<f64>>>,
}

impl DraftModel {
    pub fn new(runner: ModelRunner, num_blocks: usize, block_size: usize) -> Self {
        DraftModel { runner, blocks: KvCacheManager::new(num_blocks, block_size, false), cached: HashMap::new() }
    }

    /// The sequence ended: its draft cache blocks are freed.
    pub fn forget(&mut self, seq_id: SeqId) {
        self.blocks.free(seq_id);
        self.cached.remove(&seq_id);
    }

    /// Up to `k` tokens for each request (fewer where the draft cache is full).
    pub fn propose(&mut self, mut reqs: Vec<DraftRequest<'_>>) -> Result<Vec<Proposal>> {
        reqs.retain(|r| r.k > 0 && !r.tokens.is_empty() && self.blocks.ensure_slots(r.seq_id, r.tokens.len() + r.k));
        let mut proposals: Vec<Proposal> =
            reqs.iter().map(|r| Proposal { seq_id: r.seq_id, tokens: Vec::new(), probs: (!r.params.is_greedy()).then(Vec::new) }).collect();
        // Step 0: everything the draft cache lacks, ending with the pending token.
        let mut out = SchedulerOutput::default();
        for r in &reqs {
            let cached = self.cached.entry(r.seq_id).or_default();
            let same = cached.iter().zip(r.tokens).take_while(|(a, b)| a == b).count();
            let start = same.min(r.tokens.len() - 1);
            cached.truncate(start);
            cached.extend_from_slice(&r.tokens[start..]);
            out.seqs.push(self.scheduled(r.seq_id, start, r.tokens[start..].to_vec()));
        }
        let mut active: Vec<usize> = (0..reqs.len()).collect();
        let mut step = 0;
        while !active.is_empty() {
            out.num_batched_tokens = out.seqs.iter().map(|s| s.token_ids.len()).sum();
            let greedy = active.iter().all(|&i| reqs[i].params.is_greedy());
            let rows = self.runner.execute(&out, if greedy { SampleOn::Argmax } else { SampleOn::Host })?;
            let drawn = draw_tokens(rows, &active, &mut reqs, &mut proposals);
            step += 1;
            out = SchedulerOutput::default();
            let mut next = Vec::new();
            for (&i, token) in active.iter().zip(drawn) {
                if step < reqs[i].k {
                    // Feed the draft token to get the next one.
                    let cached = self.cached.entry(reqs[i].seq_id).or_default();
                    let pos = cached.len();
                    cached.push(token);
                    out.seqs.push(self.scheduled(reqs[i].seq_id, pos, vec![token]));
                    next.push(i);
                }
            }
            active = next;
        }
        Ok(proposals)
    }

    fn scheduled(&self, seq_id: SeqId, start_pos: usize, token_ids: Vec<u32>) -> ScheduledSeq {
        ScheduledSeq { seq_id, start_pos, token_ids, block_table: self.blocks.block_table(seq_id).to_vec(), sample: true, num_draft: 0, long_rope: false }
    }
}

/// The next draft token of each active request from its row: the argmax for greedy requests, else a
/// draw from the request's distribution with the draft's generator (the distribution is kept for
/// verification).
pub(super) fn draw_tokens<'a, R: std::borrow::BorrowMut<DraftRequest<'a>>>(rows: StepLogits, active: &[usize], reqs: &mut [R], proposals: &mut [Proposal]) -> Vec<u32> {
    let mut drawn = Vec::with_capacity(active.len());
    match rows {
        StepLogits::Argmax(tokens) => {
            for (&i, (_, t)) in active.iter().zip(tokens) {
                proposals[i].tokens.push(t);
                drawn.push(t);
            }
        }
        StepLogits::Rows(rows) => {
            for (&i, row) in active.iter().zip(rows) {
                let r: &mut DraftRequest<'a> = reqs[i].borrow_mut();
                let processed = r.sampler.process_row(row.logits, r.params);
                let t = if r.params.is_greedy() {
                    processed.argmax()
                } else {
                    let q = processed.probs(r.params);
                    let t = draw_weights(&q, r.sampler.draw_uniform()).unwrap_or(processed.argmax());
                    if let Some(p) = proposals[i].probs.as_mut() {
                        p.push(q);
                    }
                    t
                };
                proposals[i].tokens.push(t);
                drawn.push(t);
            }
        }
        // Never asked for (see `propose`): no tokens, so the proposals end here.
        StepLogits::Device { .. } => {}
    }
    drawn
}
