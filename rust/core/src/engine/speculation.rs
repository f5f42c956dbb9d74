//! Speculative decoding inside the engine step: before scheduling, proposals for the requests that decode
//! next ([`EngineCore::propose_drafts`]); after the target ran, verification of the rows of each sequence
//! that carried a draft ([`EngineCore::verify_seq`]). Requests whose rows depend on tokens emitted within
//! the step (penalties, bias, grammar) never carry drafts, so they decode as without speculation in the
//! same batches.

use super::core::EngineCore;
use crate::request::SamplingParams;
use crate::sampler::{Sampled, SequenceSampler};
use crate::scheduler::{ScheduledSeq, SeqId};
use crate::spec::draft_model::{DraftRequest, Proposal};
use crate::spec::eagle::EagleRequest;
use candle_core::Tensor;
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
    /// `eagle`: the target's hidden states of positions computed since the last proposal, as
    /// (first position, `[rows, hidden]`), oldest first.
    pub features: Vec<(usize, Tensor)>,
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
            let k = length.next().min(room);
            if k > 0 {
                wanted.insert(seq, k);
            }
        }
        let proposals: Vec<Proposal> = match spec.mode {
            SpecMode::Ngram => wanted
                .into_iter()
                .map(|(seq, k)| {
                    let tokens = self.scheduler.tokens(seq).map(|t| ngram::propose(t, k, NGRAM_MAX, NGRAM_MIN)).unwrap_or_default();
                    Proposal { seq_id: seq, tokens, probs: None }
                })
                .collect(),
            SpecMode::SmallDraft => {
                let Some(draft) = spec.draft.as_mut() else { return };
                let mut reqs = Vec::with_capacity(wanted.len());
                for (&seq, state) in self.requests.iter_mut() {
                    let (Some(&k), Some(tokens)) = (wanted.get(&seq), self.scheduler.tokens(seq)) else { continue };
                    let super::request_state::RequestState { spec: rs, params, .. } = state;
                    let sampler = rs.sampler.get_or_insert_with(|| draft_sampler(params));
                    reqs.push(DraftRequest { seq_id: seq, tokens, k, params, sampler });
                }
                // A failed proposal costs speed, never output: those steps decode without drafts.
                draft.propose(reqs).unwrap_or_else(|e| {
                    log::warn!("draft model step failed, decoding without drafts: {e}");
                    self.metrics.spec_draft_failures += 1;
                    Vec::new()
                })
            }
            SpecMode::Eagle => {
                let Some(eagle) = spec.eagle.as_mut() else { return };
                let mut reqs = Vec::with_capacity(wanted.len());
                for (&seq, state) in self.requests.iter_mut() {
                    let (Some(&k), Some(tokens)) = (wanted.get(&seq), self.scheduler.tokens(seq)) else { continue };
                    let t = tokens.len() - 1;
                    let mut features = gather_features(&state.spec.features, eagle.computed(seq), t);
                    if features.is_none() {
                        // Positions served from the prefix cache never had their hidden states computed
                        // here: the head starts at the first position it has (its attention then lacks
                        // the skipped context, which costs acceptance, never correctness).
                        if let Some(first) = state.spec.features.iter().map(|(p, _)| *p).filter(|&p| p > eagle.computed(seq) && p < t).min() {
                            features = gather_features(&state.spec.features, first, t);
                            if features.is_some() {
                                eagle.skip_to(seq, first);
                            }
                        }
                    }
                    let Some(features) = features else { continue };
                    state.spec.features.clear();
                    let super::request_state::RequestState { spec: rs, params, .. } = state;
                    let sampler = rs.sampler.get_or_insert_with(|| draft_sampler(params));
                    reqs.push(EagleRequest { draft: DraftRequest { seq_id: seq, tokens, k, params, sampler }, features });
                }
                eagle.propose(reqs, self.runner.model.as_ref()).unwrap_or_else(|e| {
                    log::warn!("EAGLE head step failed, decoding without drafts: {e}");
                    self.metrics.spec_draft_failures += 1;
                    Vec::new()
                })
            }
            SpecMode::Disable => Vec::new(),
        };
        for p in proposals {
            if let Some(state) = self.requests.get_mut(&p.seq_id) {
                state.spec.probs = p.probs;
            }
            if !p.tokens.is_empty() {
                self.scheduler.set_draft(p.seq_id, p.tokens);
            }
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

    /// Frees what a finished request held in the draft model's or the EAGLE head's cache.
    pub(super) fn forget_draft(&mut self, seq: SeqId) {
        if let Some(spec) = self.spec.as_mut() {
            if let Some(draft) = spec.draft.as_mut() {
                draft.forget(seq);
            }
            if let Some(eagle) = spec.eagle.as_mut() {
                eagle.forget(seq);
            }
        }
    }

    /// `eagle`: keeps the target's hidden states of the positions this step computed for good (the fed
    /// tokens and the accepted drafts) for the requests that speculate.
    pub(super) fn keep_features(&mut self, out: &crate::scheduler::SchedulerOutput, emitted: &[(SeqId, Vec<u32>)]) {
        if !self.spec.as_ref().is_some_and(|s| s.eagle.is_some()) {
            return;
        }
        let Some(h) = self.runner.last_hidden.take() else { return };
        let accepted: HashMap<SeqId, usize> = emitted.iter().map(|(s, t)| (*s, t.len().saturating_sub(1))).collect();
        let mut offset = 0;
        for s in &out.seqs {
            let n = s.token_ids.len();
            let valid = n - s.num_draft + accepted.get(&s.seq_id).copied().unwrap_or(0).min(s.num_draft);
            if let Some(state) = self.requests.get_mut(&s.seq_id).filter(|st| st.can_speculate()) {
                match h.narrow(0, offset, valid) {
                    Ok(rows) => state.spec.features.push((s.start_pos, rows)),
                    Err(e) => log::warn!("EAGLE features of a step are unusable: {e}"),
                }
            }
            offset += n;
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

/// The hidden states of positions `from..to` out of stored chunks (a later chunk wins where they
/// overlap, as after a recompute); `None` if a position is missing or the range is empty.
fn gather_features(chunks: &[(usize, Tensor)], from: usize, to: usize) -> Option<Tensor> {
    let mut pieces = Vec::new();
    let mut p = from;
    while p < to {
        let (start, rows) = chunks.iter().rev().find(|(start, rows)| *start <= p && p < start + rows.dim(0).unwrap_or(0))?;
        let end = (start + rows.dim(0).ok()?).min(to);
        pieces.push(rows.narrow(0, p - start, end - p).ok()?);
        p = end;
    }
    if pieces.is_empty() {
        return None;
    }
    Tensor::cat(&pieces, 0).ok()
}
