//! A logits row processed once and then read several ways, for speculative decoding: the token greedy
//! decoding would pick, the full distribution sampling draws from (to accept or reject a draft token and
//! to sample from what remains), and the logprob entry of whichever token is emitted. Processing is that
//! of [`SequenceSampler::sample`] (penalties, bias, sanitizing, degenerate-row fallback), without
//! drawing a number.

use super::truncation::Truncation;
use super::{apply_bias, describe, point_mass_fallback, sanitize_argmax, Peak, Sampled, SequenceSampler};
use crate::request::SamplingParams;

pub(crate) struct ProcessedRow {
    logits: Vec<f32>,
    peak: Peak,
}

impl SequenceSampler {
    /// Processes a raw row as `sample` does before its draw (steps 1-3 of the module docs).
    pub(crate) fn process_row(&self, mut logits: Vec<f32>, params: &SamplingParams) -> ProcessedRow {
        if logits.is_empty() {
            return ProcessedRow { logits: vec![0.0], peak: Peak { id: 0, value: 0.0 } };
        }
        self.apply_penalties(&mut logits, params);
        let unbiased = apply_bias(&mut logits, &params.logit_bias);
        let peak = sanitize_argmax(&mut logits).unwrap_or_else(|| point_mass_fallback(&mut logits, &unbiased));
        ProcessedRow { logits, peak }
    }

    /// The next number of the sequence's own generator (what `sample` would consume).
    pub(crate) fn draw_uniform(&mut self) -> f64 {
        self.next_uniform()
    }
}

impl ProcessedRow {
    /// The greedy token: argmax, lowest id on ties.
    pub(crate) fn argmax(&self) -> u32 {
        self.peak.id
    }

    /// The distribution `sample` draws from: temperature, top_k, top_p and min_p applied and normalised
    /// (a point mass on the argmax for greedy parameters). `[vocab]`, summing to 1.
    pub(crate) fn probs(&self, params: &SamplingParams) -> Vec<f64> {
        let mut p = vec![0.0f64; self.logits.len()];
        if params.is_greedy() {
            p[self.peak.id as usize] = 1.0;
            return p;
        }
        let rule = Truncation::new(&self.logits, self.peak.value, params);
        let mut total = 0.0f64;
        for (i, (&x, w)) in self.logits.iter().zip(p.iter_mut()).enumerate() {
            *w = f64::from(rule.weight(i, x));
            total += *w;
        }
        // The best token has weight 1, so the total is at least 1.
        p.iter_mut().for_each(|w| *w /= total);
        p
    }

    /// `token` with its logprob (and the top logprobs when asked), as `sample` reports a drawn token.
    pub(crate) fn sampled(&self, token: u32, params: &SamplingParams) -> Sampled {
        describe(&self.logits, self.peak, token, params)
    }
}

/// Inverse-CDF draw in id order over non-negative weights (not necessarily normalised); the last
/// token with weight covers `uniform * total` rounding up to the total. `None` if every weight is 0.
pub(crate) fn draw_weights(weights: &[f64], uniform: f64) -> Option<u32> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let target = uniform * total;
    let mut mass = 0.0;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            mass += w;
            last = Some(i as u32);
            if mass > target {
                break;
            }
        }
    }
    last
}
