//! What the engine thread keeps per request between steps, and how a sampled token becomes a delta.

use super::output::{Delta, FinishReason, TokenLogprob, TopLogprob, Usage};
use super::stop::{StopMatcher, StopResult};
use crate::grammar::GrammarMatcher;
use crate::request::SamplingParams;
use crate::sampler::{Sampled, SequenceSampler};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};
use std::time::Instant;

pub struct RequestState {
    pub request_id: String,
    pub params: SamplingParams,
    pub sampler: SequenceSampler,
    /// The output constraint of `params.grammar`, compiled; masks every row before sampling.
    pub grammar: Option<GrammarMatcher>,
    detok: IncrementalDetokenizer,
    stop: StopMatcher,
    pub prompt_len: usize,
    pub num_generated: usize,
    /// Generated tokens allowed: max_tokens capped by the context window.
    pub max_new_tokens: usize,
    pub arrival: Instant,
    pub first_token: Option<Instant>,
    pub scheduled_once: bool,
    /// Prompt tokens computed by this request (not served from the prefix cache).
    pub prefill_tokens: usize,
    /// Speculative decoding state (draft length, the draft's generator, the last proposal's
    /// distributions, counters).
    pub spec: super::speculation::RequestSpec,
}

impl RequestState {
    pub fn new(request_id: String, prompt: &[u32], params: SamplingParams, max_new_tokens: usize, grammar: Option<GrammarMatcher>) -> Self {
        let sampler = SequenceSampler::new(&params, prompt);
        let stop = StopMatcher::new(&params.stop);
        RequestState {
            request_id,
            sampler,
            grammar,
            detok: IncrementalDetokenizer::new(true),
            stop,
            prompt_len: prompt.len(),
            num_generated: 0,
            max_new_tokens,
            arrival: Instant::now(),
            first_token: None,
            scheduled_once: false,
            prefill_tokens: 0,
            spec: super::speculation::RequestSpec::default(),
            params,
        }
    }

    fn logprob_entry(tok: &Tokenizer, s: &Sampled) -> TokenLogprob {
        let text = |id: u32| String::from_utf8_lossy(&tok.token_bytes(id)).into_owned();
        TokenLogprob {
            token: text(s.token),
            logprob: s.logprob,
            bytes: tok.token_bytes(s.token),
            top_logprobs: s
                .top_logprobs
                .iter()
                .map(|&(id, lp)| TopLogprob { token: text(id), logprob: lp, bytes: tok.token_bytes(id) })
                .collect(),
        }
    }

    /// Restricts a logits row (`[vocab_size]`) to the tokens the grammar allows; no-op without one.
    pub fn mask_logits(&mut self, row: &mut [f32]) {
        if let Some(g) = self.grammar.as_mut() {
            g.mask_logits(row);
        }
    }

    /// Advances the grammar by the sampled token (before `on_token` turns it into text).
    pub fn commit_grammar(&mut self, token: u32) {
        if let Some(g) = self.grammar.as_mut() {
            if let Err(e) = g.commit(token) {
                // Only a token outside the mask gets here; the next mask then allows only EOS.
                log::warn!("request {}: token {token} rejected by its grammar: {e}", self.request_id);
            }
        }
    }

    /// Applies one sampled token: text, stop conditions, logprobs. Returns the delta to send.
    pub fn on_token(&mut self, tok: &Tokenizer, eos_ids: &[u32], s: &Sampled) -> Delta {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.num_generated += 1;
        self.sampler.observe(s.token);
        let mut d = Delta::empty(&self.request_id);
        d.token_ids.push(s.token);
        if self.params.logprobs {
            d.logprobs = Some(vec![Self::logprob_entry(tok, s)]);
        }
        // A grammar allows EOS only where the output is complete, so there it always ends the
        // sequence (ignore_eos included).
        let is_eos = (!self.params.ignore_eos || self.grammar.is_some()) && eos_ids.contains(&s.token);
        if is_eos || self.params.stop_token_ids.contains(&s.token) {
            d.text = self.stop.flush();
            d.finish_reason = Some(FinishReason::Stop);
        } else {
            let piece = self.detok.push(tok, s.token);
            match self.stop.push(&piece) {
                StopResult::Stopped(t) => {
                    d.text = t;
                    d.finish_reason = Some(FinishReason::Stop);
                }
                StopResult::Continue(t) => d.text = t,
            }
        }
        if d.finish_reason.is_none() && self.num_generated >= self.max_new_tokens {
            let tail = self.detok.finish();
            match self.stop.push(&tail) {
                StopResult::Stopped(t) => {
                    d.text.push_str(&t);
                    d.finish_reason = Some(FinishReason::Stop);
                }
                StopResult::Continue(t) => {
                    d.text.push_str(&t);
                    d.text.push_str(&self.stop.flush());
                    d.finish_reason = Some(FinishReason::Length);
                }
            }
        }
        if d.finish_reason.is_some() {
            d.usage = Some(self.usage(now));
        }
        d
    }

    /// Applies several tokens emitted in one step (accepted drafts, then the target's token) as one
    /// delta; tokens after one that finishes the request are dropped.
    pub fn on_tokens(&mut self, tok: &Tokenizer, eos_ids: &[u32], tokens: &[Sampled]) -> Delta {
        let mut merged: Option<Delta> = None;
        for s in tokens {
            let d = self.on_token(tok, eos_ids, s);
            let done = d.finish_reason.is_some();
            merged = Some(match merged {
                None => d,
                Some(mut m) => {
                    m.token_ids.extend(d.token_ids);
                    m.text.push_str(&d.text);
                    if let (Some(all), Some(more)) = (m.logprobs.as_mut(), d.logprobs) {
                        all.extend(more);
                    }
                    m.finish_reason = d.finish_reason;
                    m.usage = d.usage;
                    m
                }
            });
            if done {
                break;
            }
        }
        merged.unwrap_or_else(|| Delta::empty(&self.request_id))
    }

    /// Whether proposals may be verified for this request exactly: its rows must not depend on the
    /// tokens emitted within a step (penalties, bias) nor on a grammar's state.
    pub fn can_speculate(&self) -> bool {
        let p = &self.params;
        self.grammar.is_none()
            && p.logit_bias.is_empty()
            && p.frequency_penalty == 0.0
            && p.presence_penalty == 0.0
            && p.repetition_penalty == 1.0
    }

    pub fn usage(&self, now: Instant) -> Usage {
        let e2e = now.duration_since(self.arrival).as_secs_f64();
        let ttft = self.first_token.map(|t| t.duration_since(self.arrival).as_secs_f64()).unwrap_or(e2e);
        let decode_time = e2e - ttft;
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.num_generated,
            prefill_tokens: self.prefill_tokens,
            ttft_s: ttft,
            end_to_end_latency_s: e2e,
            decode_tokens_per_s: if decode_time > 0.0 && self.num_generated > 1 {
                (self.num_generated - 1) as f64 / decode_time
            } else {
                0.0
            },
        }
    }

    /// The final delta of a request that ends without a token (abort or error).
    pub fn terminal(&self, reason: FinishReason, error: Option<String>) -> Delta {
        let mut d = Delta::empty(&self.request_id);
        d.finish_reason = Some(reason);
        d.error = error;
        d.usage = Some(self.usage(Instant::now()));
        d
    }
}
