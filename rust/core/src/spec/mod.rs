//! Speculative decoding: a proposer guesses the next tokens of a sequence, the target model computes
//! all of them in one step (the same paged KV cache and token budget as any chunk), and verification
//! keeps the longest prefix the target agrees with plus one token of its own. Verification keeps the
//! target's distribution exactly (rejection sampling), so greedy output equals non-speculative output.
//!
//! Proposers: [`ngram`] (prompt lookup: earlier n-grams of the prompt and output, no model) and
//! [`draft_model`] (a small model of the same vocabulary with its own KV cache, `small_draft`).

pub mod draft_model;
pub mod eagle;
pub mod ngram;
mod setup;
pub mod verify;

use crate::error::{EngineError, Result};
pub use setup::build;

/// The engine's speculative decoding setup.
pub struct Speculation {
    pub mode: SpecMode,
    /// `spec_draft_length`: tokens per proposal, 0 = adaptive.
    pub draft_length: usize,
    /// The draft model of `small_draft`.
    pub draft: Option<draft_model::DraftModel>,
    /// The draft head of `eagle`.
    pub eagle: Option<eagle::EagleModel>,
}

/// `speculative_mode` of the engine arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecMode {
    Disable,
    /// A draft model (`additional_models[0]`) proposes tokens.
    SmallDraft,
    /// An EAGLE head over the target's hidden states proposes tokens.
    Eagle,
    /// Prompt lookup: continuations of earlier occurrences of the sequence's last n-gram.
    Ngram,
}

impl SpecMode {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "disable" | "" => SpecMode::Disable,
            "small_draft" => SpecMode::SmallDraft,
            "eagle" => SpecMode::Eagle,
            "ngram" => SpecMode::Ngram,
            other => {
                return Err(EngineError::bad_request(
                    "speculative_mode",
                    format!("{other:?} is not one of disable, small_draft, eagle, ngram"),
                ))
            }
        })
    }
}

/// Most draft tokens per step (also the adaptive length's ceiling).
pub const MAX_DRAFT_LENGTH: usize = 8;
/// Where the adaptive draft length starts.
const ADAPTIVE_START: usize = 4;

/// How many tokens to propose for one sequence: fixed (`spec_draft_length > 0`), or adapted from what
/// the target accepted: one more after a step that accepted everything, one past the accepted run
/// otherwise (MLC's `spec_draft_length = 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftLength {
    fixed: Option<usize>,
    current: usize,
}

impl DraftLength {
    pub fn new(spec_draft_length: usize) -> Self {
        let fixed = (spec_draft_length > 0).then(|| spec_draft_length.min(MAX_DRAFT_LENGTH));
        DraftLength { fixed, current: fixed.unwrap_or(ADAPTIVE_START) }
    }

    pub fn get(&self) -> usize {
        self.current
    }

    /// Records a verification step: `accepted` of `proposed` draft tokens were kept.
    pub fn observe(&mut self, proposed: usize, accepted: usize) {
        if self.fixed.is_some() || proposed == 0 {
            return;
        }
        self.current = if accepted == proposed { (self.current + 1).min(MAX_DRAFT_LENGTH) } else { (accepted + 1).clamp(1, MAX_DRAFT_LENGTH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_unknown_names_are_bad_requests() {
        assert_eq!(SpecMode::parse("ngram").unwrap(), SpecMode::Ngram);
        assert_eq!(SpecMode::parse("small_draft").unwrap(), SpecMode::SmallDraft);
        let e = SpecMode::parse("medusa").unwrap_err();
        assert!(e.to_string().contains("speculative_mode"), "{e}");
    }

    #[test]
    fn adaptive_length_grows_on_full_acceptance_and_shrinks_on_rejection() {
        let mut k = DraftLength::new(0);
        assert_eq!(k.get(), ADAPTIVE_START);
        k.observe(4, 4);
        assert_eq!(k.get(), 5);
        k.observe(5, 1);
        assert_eq!(k.get(), 2);
        for _ in 0..20 {
            k.observe(k.get(), k.get());
        }
        assert_eq!(k.get(), MAX_DRAFT_LENGTH);
        let mut fixed = DraftLength::new(3);
        fixed.observe(3, 0);
        assert_eq!(fixed.get(), 3);
    }
}
