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
/// Longest pause of an adaptive request whose drafts keep failing (decode steps without a draft).
pub const MAX_BACKOFF: usize = 16;

/// How many tokens to propose for one sequence: fixed (`spec_draft_length > 0`), or adapted from what
/// the target accepted: one more after a step that accepted everything, one past the accepted run
/// otherwise (MLC's `spec_draft_length = 0`). An adaptive request whose single-token draft is rejected
/// pauses drafting for 1, 2, 4 .. [`MAX_BACKOFF`] steps (doubling while its probes keep failing,
/// cleared by any acceptance): where the draft never matches, speculation then costs one probe in
/// `MAX_BACKOFF + 1` steps instead of a draft and a wider verification at every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftLength {
    fixed: Option<usize>,
    current: usize,
    /// Steps left without drafting, and the pause the next failed probe starts.
    pause: usize,
    backoff: usize,
}

impl DraftLength {
    pub fn new(spec_draft_length: usize) -> Self {
        let fixed = (spec_draft_length > 0).then(|| spec_draft_length.min(MAX_DRAFT_LENGTH));
        DraftLength { fixed, current: fixed.unwrap_or(ADAPTIVE_START), pause: 0, backoff: 0 }
    }

    /// The length to propose at this decode step (0: decode without a draft); call once per step.
    pub fn next(&mut self) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        self.current
    }

    /// Records a verification step: `accepted` of `proposed` draft tokens were kept.
    pub fn observe(&mut self, proposed: usize, accepted: usize) {
        if self.fixed.is_some() || proposed == 0 {
            return;
        }
        if accepted > 0 {
            self.backoff = 0;
        } else if self.current == 1 {
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.pause = self.backoff;
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
        assert_eq!(k.next(), ADAPTIVE_START);
        k.observe(4, 4);
        assert_eq!(k.next(), 5);
        k.observe(5, 1);
        assert_eq!(k.next(), 2);
        for _ in 0..20 {
            let n = k.next();
            k.observe(n, n);
        }
        assert_eq!(k.next(), MAX_DRAFT_LENGTH);
        let mut fixed = DraftLength::new(3);
        for _ in 0..5 {
            assert_eq!(fixed.next(), 3);
            fixed.observe(3, 0);
        }
    }

    /// The steps (out of `steps`) at which an adaptive request whose drafts are never accepted drafts.
    fn drafting_steps(steps: usize, accept_at: Option<usize>) -> Vec<usize> {
        let mut k = DraftLength::new(0);
        let mut drafted = Vec::new();
        for step in 0..steps {
            let n = k.next();
            if n > 0 {
                drafted.push(step);
                k.observe(n, if Some(step) == accept_at { 1 } else { 0 });
            }
        }
        drafted
    }

    #[test]
    fn adaptive_length_backs_off_while_drafts_fail_and_recovers_on_acceptance() {
        // 4 -> 1 (rejected), then probes at length 1 with pauses 1, 2, 4, 8, 16, 16 ..
        let d = drafting_steps(80, None);
        assert_eq!(&d[..7], &[0, 1, 3, 6, 11, 20, 37]);
        assert_eq!(d[7], 37 + MAX_BACKOFF + 1);
        assert!(d.len() < 80 / 8, "{d:?}");
        // An accepted probe clears the back-off: the next failure pauses one step again.
        let d = drafting_steps(40, Some(11));
        assert_eq!(&d[..8], &[0, 1, 3, 6, 11, 12, 13, 15], "{d:?}");
    }
}
