//! What a caller asks of the engine: prompt token ids and sampling parameters (owned, plain data).

use crate::grammar::GrammarSpec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Per-request sampling parameters, already validated by the Python layer and again by
/// [`SamplingParams::validate`] (the engine never trusts its caller).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or negative means disabled.
    pub top_k: i32,
    pub min_p: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// 1.0 means disabled; applied to every token in prompt and output (HF semantics).
    pub repetition_penalty: f32,
    /// token id -> bias added to the logit.
    pub logit_bias: HashMap<u32, f32>,
    pub seed: Option<u64>,
    /// None means "until the context window is full".
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub logprobs: bool,
    /// 0..=20; only meaningful with `logprobs`.
    pub top_logprobs: usize,
    /// Output constraint (JSON schema, forced tool call), enforced by masking logits each step.
    pub grammar: Option<GrammarSpec>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            top_logprobs: 0,
            grammar: None,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Greedy with nothing that needs the full logits row (no logprobs, penalties, bias or
    /// grammar), so the device may pick the token by argmax and send back only its id.
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy()
            && self.grammar.is_none()
            && !self.logprobs
            && self.logit_bias.is_empty()
            && self.frequency_penalty == 0.0
            && self.presence_penalty == 0.0
            && self.repetition_penalty == 1.0
    }

    /// Checks ranges that do not depend on the model except `vocab_size`.
    pub fn validate(&self, vocab_size: usize) -> crate::error::Result<()> {
        use crate::error::EngineError as E;
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            return Err(E::bad_request("temperature", "must be between 0 and 2"));
        }
        if !self.top_p.is_finite() || !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(E::bad_request("top_p", "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(E::bad_request("min_p", "must be in [0, 1]"));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(E::bad_request("frequency_penalty", "must be between -2 and 2"));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(E::bad_request("presence_penalty", "must be between -2 and 2"));
        }
        if !(self.repetition_penalty > 0.0) || !self.repetition_penalty.is_finite() {
            return Err(E::bad_request("repetition_penalty", "must be positive"));
        }
        if self.top_logprobs > 20 {
            return Err(E::bad_request("top_logprobs", "must be between 0 and 20"));
        }
        if let Some(&id) = self.logit_bias.keys().find(|&&id| id as usize >= vocab_size) {
            return Err(E::bad_request(
                "logit_bias",
                format!("token id {id} is outside the vocabulary (size {vocab_size})"),
            ));
        }
        if let Some((_, b)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(*b)) {
            return Err(E::bad_request("logit_bias", format!("bias {b} must be between -100 and 100")));
        }
        if self.max_tokens == Some(0) {
            return Err(E::bad_request("max_tokens", "must be at least 1"));
        }
        Ok(())
    }
}
