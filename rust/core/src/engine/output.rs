//! What flows back from the engine thread: one delta per request per step.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens actually computed (the rest came from the prefix cache).
    pub prefill_tokens: usize,
    pub ttft_s: f64,
    pub end_to_end_latency_s: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    pub request_id: String,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<String>,
    pub usage: Option<Usage>,
}

impl Delta {
    pub fn empty(request_id: &str) -> Self {
        Delta {
            request_id: request_id.to_string(),
            token_ids: Vec::new(),
            text: String::new(),
            logprobs: None,
            finish_reason: None,
            error: None,
            usage: None,
        }
    }
}
