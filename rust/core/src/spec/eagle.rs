//! `eagle`: an EAGLE head drafts from the target's own hidden states. Its KV cache holds one entry per
//! position `j` for the pair (target hidden state at `j`, token at `j + 1`). After each target step the
//! new positions' hidden states are known exactly, so a proposal first feeds those pairs (positions
//! `computed..T` for a sequence whose pending token sits at `T`), which predicts the token after the
//! pending one; each further draft token is fed with the head's own output as the estimate of the
//! target's hidden state. Positions from `T` on hold estimates, so the next proposal starts there again.

use super::draft_model::{draw_tokens, DraftRequest, Proposal};
use crate::attention::PagedKvCache;
use crate::error::Result;
use crate::kv_cache::KvCacheManager;
use crate::model::eagle::EagleHead;
use crate::model::CausalLm;
use crate::runner::{argmax_rows, prepare_step, SeqLogits, StepLogits};
use crate::scheduler::{ScheduledSeq, SchedulerOutput, SeqId};
use candle_core::{Device, IndexOp, Tensor};
use std::collections::HashMap;

pub struct EagleModel {
    head: EagleHead,
    kv: PagedKvCache,
    blocks: KvCacheManager,
    /// Per sequence, the positions whose pair in the head's cache used the target's exact hidden state.
    computed: HashMap<SeqId, usize>,
}

/// One sequence to draft for: the request and the target's hidden states at positions
/// `computed(seq)..T` (`[T - computed, hidden]`), `T` being the pending token's position.
pub struct EagleRequest<'a> {
    pub draft: DraftRequest<'a>,
    pub features: Tensor,
}

impl EagleModel {
    pub fn new(head: EagleHead, kv: PagedKvCache, num_blocks: usize, block_size: usize) -> Self {
        EagleModel { head, kv, blocks: KvCacheManager::new(num_blocks, block_size, false), computed: HashMap::new() }
    }

    /// The first position whose target hidden state the head still needs.
    pub fn computed(&self, seq_id: SeqId) -> usize {
        self.computed.get(&seq_id).copied().unwrap_or(0)
    }

    /// Starts the sequence's pairs at `position` (the hidden states before it are not available, e.g.
    /// served from the prefix cache).
    pub fn skip_to(&mut self, seq_id: SeqId, position: usize) {
        self.computed.insert(seq_id, position);
    }

    pub fn forget(&mut self, seq_id: SeqId) {
        self.blocks.free(seq_id);
        self.computed.remove(&seq_id);
    }

    /// Up to `k` tokens per request (none where the head's cache is full).
    pub fn propose(&mut self, reqs: Vec<EagleRequest<'_>>, target: &dyn CausalLm) -> Result<Vec<Proposal>> {
        let mut reqs: Vec<EagleRequest<'_>> =
            reqs.into_iter().filter(|r| r.draft.k > 0 && r.draft.tokens.len() > self.computed(r.draft.seq_id) + 1).collect();
        reqs.retain(|r| self.blocks.ensure_slots(r.draft.seq_id, r.draft.tokens.len() + r.draft.k));
        let mut proposals: Vec<Proposal> =
            reqs.iter().map(|r| Proposal { seq_id: r.draft.seq_id, tokens: Vec::new(), probs: (!r.draft.params.is_greedy()).then(Vec::new) }).collect();
        if reqs.is_empty() {
            return Ok(proposals);
        }
        // Step 0: the exact pairs; tokens at j + 1 for positions computed..T.
        let mut out = SchedulerOutput::default();
        for r in &reqs {
            let (c, t) = (self.computed(r.draft.seq_id), r.draft.tokens.len() - 1);
            out.seqs.push(self.scheduled(r.draft.seq_id, c, r.draft.tokens[c + 1..=t].to_vec()));
        }
        let features = Tensor::cat(&reqs.iter().map(|r| &r.features).collect::<Vec<_>>(), 0)?; // [sum, hidden]
        let mut h = self.run(&out, &features, target)?; // [num_seqs, hidden]: each sequence's last row
        for r in &reqs {
            self.computed.insert(r.draft.seq_id, r.draft.tokens.len() - 1);
        }
        let mut active: Vec<usize> = (0..reqs.len()).collect();
        let mut drafts: Vec<&mut DraftRequest<'_>> = reqs.iter_mut().map(|r| &mut r.draft).collect();
        let mut step = 0;
        loop {
            let greedy = active.iter().all(|&i| drafts[i].params.is_greedy());
            let logits = target.logits(&h)?; // [active, vocab]
            let rows = if greedy {
                StepLogits::Argmax(active.iter().map(|&i| drafts[i].seq_id).zip(argmax_rows(&logits)?).collect())
            } else {
                let rows = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
                StepLogits::Rows(active.iter().zip(rows).map(|(&i, logits)| SeqLogits { seq_id: drafts[i].seq_id, logits }).collect())
            };
            let drawn = draw_tokens(rows, &active, &mut drafts, &mut proposals);
            step += 1;
            let next: Vec<(usize, usize, u32)> =
                active.iter().enumerate().zip(drawn).filter(|((_, &i), _)| step < drafts[i].k).map(|((row, &i), t)| (row, i, t)).collect();
            if next.is_empty() {
                break;
            }
            // Feed each draft token with the head's own output as the next hidden state.
            let mut out = SchedulerOutput::default();
            for &(_, i, token) in &next {
                let pos = drafts[i].tokens.len() - 1 + step;
                out.seqs.push(self.scheduled(drafts[i].seq_id, pos - 1, vec![token]));
            }
            let rows: Vec<Tensor> = next.iter().map(|&(row, _, _)| h.i(row..row + 1)).collect::<candle_core::Result<_>>()?;
            h = self.run(&out, &Tensor::cat(&rows, 0)?, target)?;
            active = next.iter().map(|&(_, i, _)| i).collect();
        }
        Ok(proposals)
    }

    /// One head step over `out` (one row of `features` per fed token); the output row of each
    /// sequence's last token.
    fn run(&mut self, out: &SchedulerOutput, features: &Tensor, target: &dyn CausalLm) -> Result<Tensor> {
        let (tokens, positions, _, meta) = prepare_step(out, self.kv.block_size);
        let dev = target.device();
        let n = tokens.len();
        let tokens = Tensor::from_vec(tokens, n, dev)?; // [n]
        let positions = Tensor::from_vec(positions, n, dev)?; // [n]
        let step = self.kv.prepare(meta)?;
        let embeds = match self.head.embed(&tokens)? {
            Some(e) => e,
            None => target.embed(&tokens)?,
        }; // [n, hidden]
        let h = self.head.forward(&embeds, features, &positions, &self.kv, &step)?; // [n, hidden]
        let mut last = Vec::with_capacity(out.seqs.len());
        let mut end = 0;
        for s in &out.seqs {
            end += s.token_ids.len();
            last.push((end - 1) as u32);
        }
        let last = Tensor::from_vec(last, out.seqs.len(), dev)?;
        Ok(h.index_select(&last, 0)?)
    }

    fn scheduled(&self, seq_id: SeqId, start_pos: usize, token_ids: Vec<u32>) -> ScheduledSeq {
        ScheduledSeq { seq_id, start_pos, token_ids, block_table: self.blocks.block_table(seq_id).to_vec(), sample: true, num_draft: 0, long_rope: false }
    }
}
