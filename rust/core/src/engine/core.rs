//! The engine core: owns the model runner, KV cache and scheduler; one `step()` schedules a token
//! budget, runs the model, samples, and turns tokens into per-request deltas. Used by exactly one
//! thread (see `handle.rs`), so nothing in here is shared or locked.

use super::config::EngineSizes;
use super::metrics::Metrics;
use super::output::{Delta, FinishReason};
use super::request_state::RequestState;
use super::trace::Tracer;
use crate::error::Result;
use crate::grammar::{GrammarCompiler, GrammarMatcher};
use crate::request::SamplingParams;
use super::speculation::SeqRows;
use crate::spec::Speculation;
use crate::runner::{ModelRunner, SampleOn, SeqLogits, StepLogits};
use crate::sampler::Sampled;
use crate::scheduler::{ScheduledSeq, Scheduler, SchedulerOutput, SeqId};
use crate::tokenizer::Tokenizer;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub struct EngineCore {
    pub(super) runner: ModelRunner,
    pub(super) scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    eos_ids: Vec<u32>,
    pub(super) requests: HashMap<SeqId, RequestState>,
    ids: HashMap<String, SeqId>,
    next_seq: SeqId,
    pub sizes: EngineSizes,
    pub(super) metrics: Metrics,
    tracer: Tracer,
    grammars: Arc<GrammarCompiler>,
    /// Requests that ended while being added (a grammar that does not compile); sent next step.
    ended_at_add: Vec<Delta>,
    /// Tests compare full logits rows against a reference; off in normal use.
    pub capture_logits: bool,
    /// Sample on the device where the logits are (CUDA); `MLC_GPU_SAMPLING=0` keeps sampling on the host.
    pub device_sampling: bool,
    pub captured: Vec<(String, Vec<f32>)>,
    /// Speculative decoding (`speculative_mode`); `None` when disabled.
    pub spec: Option<Speculation>,
    /// Tokens the last step ran (the profile counts one-token steps only; `crate::profile`).
    last_step_tokens: usize,
}

impl EngineCore {
    pub fn new(runner: ModelRunner, scheduler: Scheduler, tokenizer: Arc<Tokenizer>, sizes: EngineSizes, tracing: bool) -> Self {
        // Logit ids beyond the tokenizer's vocabulary are masked anyway (see `GrammarMatcher`).
        let vocab = crate::grammar::Vocab::from_tokenizer(tokenizer.clone(), tokenizer.vocab_size());
        Self::with_grammars(runner, scheduler, tokenizer, sizes, tracing, Arc::new(GrammarCompiler::new(vocab)))
    }

    /// Like `new`, sharing the grammar compiler with the caller's side (see `handle.rs`).
    pub fn with_grammars(
        runner: ModelRunner,
        scheduler: Scheduler,
        tokenizer: Arc<Tokenizer>,
        sizes: EngineSizes,
        tracing: bool,
        grammars: Arc<GrammarCompiler>,
    ) -> Self {
        let eos_ids = tokenizer.eos_token_ids().to_vec();
        EngineCore {
            runner,
            scheduler,
            tokenizer,
            eos_ids,
            requests: HashMap::new(),
            ids: HashMap::new(),
            next_seq: 0,
            sizes,
            metrics: Metrics::default(),
            tracer: Tracer::new(tracing),
            grammars,
            ended_at_add: Vec::new(),
            capture_logits: false,
            device_sampling: !crate::switches::off("MLC_GPU_SAMPLING"),
            captured: Vec::new(),
            spec: None,
            last_step_tokens: 0,
        }
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work() || !self.ended_at_add.is_empty()
    }

    /// Queues a request that the handle has already validated; its grammar, if any, is compiled
    /// here (a grammar that does not compile ends the request with an error at the next step).
    pub fn add(&mut self, request_id: String, prompt: Vec<u32>, params: SamplingParams, max_new_tokens: usize) {
        let grammar = match params.grammar.as_ref().map(|g| self.grammars.compile(g)).transpose() {
            Ok(g) => g,
            Err(e) => {
                let state = RequestState::new(request_id, &prompt, params, max_new_tokens, None);
                self.ended_at_add.push(state.terminal(FinishReason::Error, Some(e.to_string())));
                return;
            }
        };
        self.add_compiled(request_id, prompt, params, max_new_tokens, grammar);
    }

    /// Queues a request whose grammar the caller compiled from `params.grammar`.
    pub fn add_compiled(&mut self, request_id: String, prompt: Vec<u32>, params: SamplingParams, max_new_tokens: usize, grammar: Option<GrammarMatcher>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.tracer.event(seq, &request_id, "queued", json!({"prompt_tokens": prompt.len()}));
        self.metrics.num_requests_added += 1;
        self.ids.insert(request_id.clone(), seq);
        self.requests.insert(seq, RequestState::new(request_id, &prompt, params, max_new_tokens, grammar));
        self.scheduler.add(seq, prompt);
    }

    /// Ends a request early; returns its final delta if it was known.
    pub fn abort(&mut self, request_id: &str) -> Option<Delta> {
        let seq = self.ids.remove(request_id)?;
        self.scheduler.abort(seq);
        self.forget_draft(seq);
        let state = self.requests.remove(&seq)?;
        self.metrics.num_requests_aborted += 1;
        self.record_ttft(&state);
        self.tracer.event(seq, request_id, "finished", json!({"reason": "abort"}));
        Some(state.terminal(FinishReason::Abort, None))
    }

    pub fn abort_all(&mut self) -> Vec<Delta> {
        let ids: Vec<String> = self.ids.keys().cloned().collect();
        ids.iter().filter_map(|id| self.abort(id)).collect()
    }

    /// The grammar compiler requests of this engine are checked against.
    pub fn grammars(&self) -> &Arc<GrammarCompiler> {
        &self.grammars
    }

    pub fn metrics(&self) -> Metrics {
        let mut m = self.metrics.clone();
        m.num_running = self.scheduler.num_running();
        m.num_waiting = self.scheduler.num_waiting();
        m.num_free_blocks = self.scheduler.num_free_blocks();
        m.num_total_blocks = self.scheduler.num_total_blocks();
        m.num_cached_blocks = self.scheduler.num_cached_blocks();
        m.num_empty_blocks = m.num_free_blocks.saturating_sub(m.num_cached_blocks);
        m.num_used_blocks = m.num_total_blocks.saturating_sub(m.num_free_blocks);
        (m.cuda_graph_replays, m.cuda_graphs_captured) = self.runner.graph_stats();
        m.finalize();
        m
    }

    pub fn trace_json(&self) -> String {
        self.tracer.to_json()
    }

    /// Records prefix-cache events for a router (`EngineArgs::kv_events`).
    pub fn enable_kv_events(&mut self, capacity: usize) {
        self.scheduler.enable_kv_events(capacity);
    }

    /// The prefix cache's findable blocks (external hashes), to check what a router rebuilds from the events.
    pub fn cached_block_hashes(&self) -> Vec<u64> {
        self.scheduler.kv_cache().pool().cached_hashes()
    }

    /// The prefix-cache events since the last call.
    pub fn take_kv_events(&mut self) -> Vec<crate::kv_cache::KvEvent> {
        self.scheduler.take_kv_events()
    }

    fn record_ttft(&mut self, state: &RequestState) {
        if let Some(t) = state.first_token {
            self.metrics.sum_ttft_s += t.duration_since(state.arrival).as_secs_f64();
        }
    }

    /// One engine step. Errors in the model fail only the requests of this step.
    pub fn step(&mut self) -> Vec<Delta> {
        let prof = crate::profile::step_start();
        let deltas = self.step_inner();
        crate::profile::step_end(prof, self.last_step_tokens);
        deltas
    }

    fn step_inner(&mut self) -> Vec<Delta> {
        self.last_step_tokens = 0;
        self.propose_drafts();
        let out = self.scheduler.schedule();
        // Sequences that can never fit in the whole cache were dropped by the scheduler: end them
        // with "length" (validation keeps prompts within the window, so this only guards growth).
        let mut dropped = std::mem::take(&mut self.ended_at_add);
        for seq in &out.unschedulable {
            if let Some(state) = self.requests.remove(seq) {
                self.ids.remove(&state.request_id);
                self.metrics.num_requests_finished += 1;
                self.tracer.event(*seq, &state.request_id, "finished", json!({"reason": "length", "unschedulable": true}));
                dropped.push(state.terminal(FinishReason::Length, None));
            }
        }
        if out.seqs.is_empty() {
            return dropped;
        }
        let step_start = Instant::now();
        self.note_schedule(&out);
        self.last_step_tokens = out.seqs.iter().map(|s| s.token_ids.len()).sum();
        let start = Instant::now();
        // A grammar masks the row on the host before sampling, so such a step keeps its rows there.
        let constrained = out.seqs.iter().filter(|s| s.sample).any(|s| self.requests.get(&s.seq_id).is_some_and(|r| r.grammar.is_some()));
        let any_draft = out.seqs.iter().any(|s| s.num_draft > 0);
        let on = if self.capture_logits || constrained {
            SampleOn::Host
        } else if out.seqs.iter().filter(|s| s.sample).all(|s| self.requests.get(&s.seq_id).is_some_and(|r| r.params.is_plain_greedy())) {
            SampleOn::Argmax
        } else if self.device_sampling && !any_draft {
            SampleOn::Device
        } else {
            SampleOn::Host
        };
        let logits = match self.runner.execute(&out, on) {
            Ok(l) => l,
            Err(e) => return self.fail_step(&out, e),
        };
        let (prefill_tokens, decodes) = self.account_time(&out, start.elapsed().as_secs_f64());
        if any_draft {
            self.metrics.spec_verify_time_s += start.elapsed().as_secs_f64();
        }
        let sample_span = crate::profile::span(crate::profile::Part::Sample);
        let emitted = self.emitted_tokens(&out, logits);
        drop(sample_span);
        let emitted = match emitted {
            Ok(e) => e,
            Err(e) => return self.fail_step(&out, e),
        };
        let tokens: Vec<(SeqId, Vec<u32>)> = emitted.iter().map(|(seq, e)| (*seq, e.iter().map(|s| s.token).collect())).collect();
        self.scheduler.update_emitted(&out, &tokens);
        self.keep_features(&out, &tokens);
        let mut deltas = dropped;
        for (seq, sampled) in emitted {
            let Some(state) = self.requests.get_mut(&seq) else { continue };
            let first = state.first_token.is_none();
            let d = state.on_tokens(&self.tokenizer, &self.eos_ids, &sampled);
            if first {
                let id = state.request_id.clone();
                self.tracer.event(seq, &id, "first_token", json!({}));
            }
            if let Some(reason) = &d.finish_reason {
                self.scheduler.finish(seq);
                self.forget_draft(seq);
                if let Some(state) = self.requests.remove(&seq) {
                    self.ids.remove(&state.request_id);
                    self.metrics.num_requests_finished += 1;
                    self.record_ttft(&state);
                    let spec = &state.spec;
                    let detail = json!({"reason": reason, "completion_tokens": state.num_generated,
                        "spec_draft_tokens": spec.proposed, "spec_accepted_tokens": spec.accepted, "spec_verify_steps": spec.steps});
                    self.tracer.event(seq, &state.request_id, "finished", detail);
                }
            }
            deltas.push(d);
        }
        self.account_step(prefill_tokens, decodes, step_start.elapsed().as_secs_f64());
        deltas
    }

    /// The tokens each sampling sequence emits this step, in schedule order: one drawn from its row, or
    /// for a sequence that carried a draft, the accepted drafts and the target's own token.
    fn emitted_tokens(&mut self, out: &SchedulerOutput, logits: StepLogits) -> Result<Vec<(SeqId, Vec<Sampled>)>> {
        let samplers: Vec<&ScheduledSeq> = out.seqs.iter().filter(|s| s.sample).collect();
        let mut emitted = Vec::with_capacity(samplers.len());
        match logits {
            StepLogits::Argmax(tokens) => {
                let mut tokens = tokens.into_iter().map(|(_, t)| t);
                for s in samplers {
                    let best: Vec<u32> = tokens.by_ref().take(s.num_draft + 1).collect();
                    let drawn = if s.num_draft > 0 {
                        self.verify_seq(s, SeqRows::Argmax(best))
                    } else {
                        // Plain greedy requests ask for no logprobs, so none is computed.
                        best.into_iter().map(|token| Sampled { token, logprob: 0.0, top_logprobs: Vec::new() }).collect()
                    };
                    emitted.push((s.seq_id, drawn));
                }
            }
            StepLogits::Device { seq_ids, logits } => {
                let drawn = self.sample_on_device(&seq_ids, &logits)?;
                emitted.extend(seq_ids.into_iter().zip(drawn).map(|(seq, s)| (seq, vec![s])));
            }
            StepLogits::Rows(rows) => {
                let mut rows = rows.into_iter();
                for s in samplers {
                    let mine: Vec<SeqLogits> = rows.by_ref().take(s.num_draft + 1).collect();
                    if self.capture_logits {
                        if let Some(state) = self.requests.get(&s.seq_id) {
                            self.captured.extend(mine.iter().map(|r| (state.request_id.clone(), r.logits.clone())));
                        }
                    }
                    if s.num_draft > 0 {
                        let drawn = self.verify_seq(s, SeqRows::Logits(mine.into_iter().map(|r| r.logits).collect()));
                        emitted.push((s.seq_id, drawn));
                        continue;
                    }
                    let (Some(mut row), Some(state)) = (mine.into_iter().next(), self.requests.get_mut(&s.seq_id)) else { continue };
                    let params = state.params.clone();
                    state.mask_logits(&mut row.logits);
                    let drawn = state.sampler.sample(&mut row.logits, &params);
                    state.commit_grammar(drawn.token);
                    emitted.push((s.seq_id, vec![drawn]));
                }
            }
        }
        Ok(emitted)
    }

    /// Runs the device sampler over `logits` (`[seq_ids.len(), vocab]` on the device), each row with its
    /// request's sampler and parameters.
    fn sample_on_device(&mut self, seq_ids: &[SeqId], logits: &candle_core::Tensor) -> Result<Vec<Sampled>> {
        #[cfg(feature = "cuda")]
        {
            let row_of: HashMap<SeqId, usize> = seq_ids.iter().enumerate().map(|(i, &s)| (s, i)).collect();
            let mut states: Vec<(usize, &mut RequestState)> =
                self.requests.iter_mut().filter_map(|(seq, st)| row_of.get(seq).map(|&i| (i, st))).collect();
            if states.len() != seq_ids.len() {
                return Err(crate::error::EngineError::Unsupported("device sampling: a sampled sequence has no request".into()));
            }
            states.sort_by_key(|(i, _)| *i);
            let mut seqs: Vec<(&mut crate::sampler::SequenceSampler, &SamplingParams)> =
                states.iter_mut().map(|(_, st)| { let RequestState { sampler, params, .. } = &mut **st; (sampler, &*params) }).collect();
            crate::sampler::gpu::sample_on_device(logits, &mut seqs)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (seq_ids, logits);
            Err(crate::error::EngineError::Unsupported("device sampling needs a CUDA build".into()))
        }
    }

    fn note_schedule(&mut self, out: &SchedulerOutput) {
        self.metrics.engine_steps += 1;
        self.metrics.max_batch_size_seen = self.metrics.max_batch_size_seen.max(out.seqs.len());
        self.metrics.num_preemptions += out.preempted.len() as u64;
        self.metrics.num_rope_recomputes += out.rope_recomputes.len() as u64;
        self.metrics.prefix_cache_hit_tokens += out.prefix_hit_tokens as u64;
        for s in &out.seqs {
            let Some(state) = self.requests.get_mut(&s.seq_id) else { continue };
            let id = state.request_id.clone();
            if !state.scheduled_once {
                state.scheduled_once = true;
                self.tracer.event(s.seq_id, &id, "scheduled", json!({"cached_tokens": s.start_pos}));
            }
            if s.start_pos < state.prompt_len {
                let n = s.token_ids.len().min(state.prompt_len - s.start_pos);
                state.prefill_tokens += n;
                self.tracer.event(s.seq_id, &id, "prefill_chunk", json!({"start": s.start_pos, "tokens": s.token_ids.len()}));
            }
        }
        for &p in &out.preempted {
            if let Some(state) = self.requests.get(&p) {
                let id = state.request_id.clone();
                self.tracer.event(p, &id, "preempted", json!({}));
            }
        }
    }

    /// Splits the step's time between prefill and decode in proportion to their tokens; returns the
    /// step's prefill tokens and decode tokens.
    fn account_time(&mut self, out: &SchedulerOutput, secs: f64) -> (usize, usize) {
        let mut prefill = 0usize;
        let mut decode = 0usize;
        for s in &out.seqs {
            let prompt_len = self.requests.get(&s.seq_id).map(|r| r.prompt_len).unwrap_or(0);
            if s.start_pos >= prompt_len && s.token_ids.len() == 1 {
                decode += 1;
            } else {
                prefill += s.token_ids.len();
            }
        }
        let total = (prefill + decode).max(1) as f64;
        self.metrics.prefill_tokens += prefill as u64;
        self.metrics.decode_tokens += decode as u64;
        self.metrics.prefill_time_s += secs * prefill as f64 / total;
        self.metrics.decode_time_s += secs * decode as f64 / total;
        (prefill, decode)
    }

    /// Counts a finished step's whole wall time as a decode-only step or a step with prefill.
    fn account_step(&mut self, prefill_tokens: usize, decodes: usize, secs: f64) {
        let m = &mut self.metrics;
        if prefill_tokens == 0 {
            m.decode_steps += 1;
            m.decode_step_time_s += secs;
            m.decode_step_seqs += decodes as u64;
        } else {
            m.prefill_steps += 1;
            m.prefill_step_time_s += secs;
            m.prefill_step_tokens += prefill_tokens as u64;
            m.prefill_step_decodes += decodes as u64;
        }
    }

    fn fail_step(&mut self, out: &SchedulerOutput, err: crate::error::EngineError) -> Vec<Delta> {
        log::error!("engine step failed: {err}");
        let msg = err.to_string();
        let mut deltas = Vec::new();
        for s in &out.seqs {
            self.scheduler.abort(s.seq_id);
            self.forget_draft(s.seq_id);
            if let Some(state) = self.requests.remove(&s.seq_id) {
                self.ids.remove(&state.request_id);
                self.metrics.num_requests_aborted += 1;
                deltas.push(state.terminal(FinishReason::Error, Some(msg.clone())));
            }
        }
        deltas
    }

    /// Test hook: runs steps until no work remains and returns every delta.
    pub fn run_to_completion(&mut self) -> Result<Vec<Delta>> {
        let mut all = Vec::new();
        while self.has_work() {
            all.extend(self.step());
        }
        Ok(all)
    }
}
