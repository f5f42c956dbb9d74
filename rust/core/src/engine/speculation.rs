//! Speculative decoding inside the engine step: before scheduling, proposals for the requests that decode
//! next ([`EngineCore::propose_drafts`]); after the target ran, verification of the rows of each sequence
//! that carried a draft ([`EngineCore::verify_seq`]). Requests whose rows depend on tokens emitted within
//! the step (penalties, bias, grammar) never carry drafts, so they decode as without speculation in the
//! same batches.

use super::core::EngineCore;
use crate::request::SamplingParams;
use crate::sampler::{Sampled, SequenceSampler};
use crate::scheduler::{ScheduledSeq, SeqId};
use crate::spec::draft_model::DraftRequest;
use crate::spec::{ngram, verify, DraftLength, SpecMode};
use std::collections::HashMap;
use std::time::Instant;

/// Prompt lookup matches suffixes of this many tokens, longest first.
const NGRAM_MAX: usize = 3;
const NGRAM_MIN: usize = 1;

/// Per-request speculative state.
#[derive(Debug, Default)]
pub struct RequestSpec {
    /// Created at the first proposal, from the engine's `spec_draft_length`.
    pub length: Option<DraftLength>,
    /// The draft model's sampler for this request (its own generator, seeded from the request's seed).
    pub sampler: Option<SequenceSampler>,
    /// The distributions the pending draft tokens were drawn from (`None`: point masses).
    pub probs: Option<Vec<Vec<f64>>>,
    pub proposed: u64,
    pub accepted: u64,
    pub steps: u64,
}

/// The draft's own sampler: the request's parameters with a generator of its own, so that drafting
/// leaves the target's stream alone; seeded requests stay reproducible.
fn draft_sampler(params: &SamplingParams) -> SequenceSampler {
    let params = SamplingParams { seed: params.seed.map(|s| s ^ 0x9e37_79b9_7f4a_7c15), ..params.clone() };
    SequenceSampler::new(&params, &[])
}

impl EngineCore {
    /// Proposes draft tokens for the running requests that decode at the next step.
    pub(super) fn propose_drafts(&mut self) {
        let Some(spec) = self.spec.as_mut() else { return };
        let started = Instant::now();
        let mut wanted: HashMap<SeqId, usize> = HashMap::new();
        for seq in self.scheduler.decoding() {
            let Some(state) = self.requests.get_mut(&seq) else { continue };
            if !state.can_speculate() {
                continue;
            }
            let length = state.spec.length.get_or_insert_with(|| DraftLength::new(spec.draft_length));
            // The target adds one token of its own to every verified draft.
            let room = state.max_new_tokens.saturating_sub(state.num_generated + 1);
            let k = length.get().min(room);
            if k > 0 {
                wanted.insert(seq, k);
            }
        }
        match spec.mode {
            SpecMode::Ngram => {
                for (seq, k) in wanted {
                    let draft = self.scheduler.tokens(seq).map(|t| ngram::propose(t, k, NGRAM_MAX, NGRAM_MIN)).unwrap_or_default();
                    if let Some(state) = self.requests.get_mut(&seq) {
                        state.spec.probs = None;
                    }
                    if !draft.is_empty() {
                        self.scheduler.set_draft(seq, draft);
                    }
                }
            }
            SpecMode::SmallDraft => {
                let Some(draft) = spec.draft.as_mut() else { return };
                let mut reqs = Vec::with_capacity(wanted.len());
                for (&seq, state) in self.requests.iter_mut() {
                    let (Some(&k), Some(tokens)) = (wanted.get(&seq), self.scheduler.tokens(seq)) else { continue };
                    let super::request_state::RequestState { spec: rs, params, .. } = state;
                    let sampler = rs.sampler.get_or_insert_with(|| draft_sampler(params));
                    reqs.push(DraftRequest { seq_id: seq, tokens, k, params, sampler });
                }
                let proposals = match draft.propose(reqs) {
                    Ok(p) => p,
                    Err(e) => {
                        // A failed proposal costs speed, never output: decode without drafts.
                        log::warn!("draft model step failed, decoding without drafts: {e}");
                        Vec::new()
                    }
                };
                for p in proposals {
                    if let Some(state) = self.requests.get_mut(&p.seq_id) {
                        state.spec.probs = p.probs;
                    }
                    if !p.tokens.is_empty() {
                        self.scheduler.set_draft(p.seq_id, p.tokens);
                    }
                }
            }
            SpecMode::Eagle | SpecMode::Disable => {}
        }
        self.metrics.spec_draft_time_s += started.elapsed().as_secs_f64();
    }

    /// The tokens a sequence that carried a draft emits, from its `num_draft + 1` target rows (raw logits,
    /// or the device's argmax per row for plain greedy steps); updates the acceptance counters.
    pub(super) fn verify_seq(&mut self, s: &ScheduledSeq, rows: SeqRows) -> Vec<Sampled> {
        let drafts = &s.token_ids[s.token_ids.len() - s.num_draft..];
        let Some(state) = self.requests.get_mut(&s.seq_id) else { return Vec::new() };
        let emitted = match rows {
            SeqRows::Argmax(best) => {
                let kept = drafts.iter().zip(&best).take_while(|(d, b)| d == b).count();
                best[..=kept.min(best.len() - 1)].iter().map(|&token| Sampled { token, logprob: 0.0, top_logprobs: Vec::new() }).collect()
            }
            SeqRows::Logits(rows) => {
                let probs = state.spec.probs.take();
                let params = state.params.clone();
                verify::verify(&mut state.sampler, &params, rows, drafts, probs.as_deref()).emitted
            }
        };
        let accepted = emitted.len().saturating_sub(1);
        if let Some(length) = state.spec.length.as_mut() {
            length.observe(s.num_draft, accepted);
        }
        state.spec.proposed += s.num_draft as u64;
        state.spec.accepted += accepted as u64;
        state.spec.steps += 1;
        self.metrics.spec_draft_tokens += s.num_draft as u64;
        self.metrics.spec_accepted_tokens += accepted as u64;
        self.metrics.spec_verify_steps += 1;
        emitted
    }

    /// Frees what a finished request held in the draft model's cache.
    pub(super) fn forget_draft(&mut self, seq: SeqId) {
        if let Some(draft) = self.spec.as_mut().and_then(|s| s.draft.as_mut()) {
            draft.forget(seq);
        }
    }
}

/// The target's rows of one sequence that verifies a draft.
pub(super) enum SeqRows {
    /// Argmax per row (plain greedy steps: only ids left the device).
    Argmax(Vec<u32>),
    /// Raw logits per row.
    Logits(Vec<Vec<f32>>),
}
