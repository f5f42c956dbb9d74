//! Token sampling over f32 logit rows on the CPU: the reference that the device sampler is checked
//! against, and the sampler of CPU runs. With feature `cuda`, [`gpu::sample_on_device`] samples a batch
//! with the same semantics on the device.
//!
//! One row is processed in this order (that of vLLM and HF transformers):
//! 1. repetition penalty on every token seen in the prompt or the output (HF semantics: a positive
//!    logit is divided by the penalty, any other multiplied by it);
//! 2. frequency and presence penalties over output tokens only (OpenAI semantics:
//!    `logit -= count * frequency_penalty + (count > 0) * presence_penalty`);
//! 3. `logit_bias` added;
//! 4. logprobs: `log_softmax` of this processed row, taken *before* temperature and truncation, so
//!    they describe the model under the request's penalties and biases, not the sampling knobs;
//! 5. greedy (temperature 0): argmax, lowest id on ties. Otherwise logits are divided by the
//!    temperature, then top_k, top_p (nucleus over the renormalised top_k survivors) and min_p drop
//!    tokens, and one uniform number from the sequence's own generator picks a token by inverse CDF
//!    over the renormalised survivors in id order (see [`truncation`]).
//!
//! Non-finite logits: NaN counts as -inf, and +inf as the largest finite f32, so that several +inf
//! tokens share the mass evenly. A row with no finite logit left after step 3 is degenerate; it is
//! replaced by a point mass (logprob 0) on the argmax of the row before `logit_bias` (lowest id on
//! ties), or on token 0 when that row has no finite logit either.
//!
//! After [`SequenceSampler::sample`] the row holds the processed logits of step 3 (sanitized as
//! above, or the point mass), so that callers and tests can inspect exactly what was sampled from.

mod batch;
// Used by the device sampler only (and its tests).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod device_rows;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod gpu_check;
mod processed;
mod rng;
mod select;
#[cfg(test)]
mod tests;
mod truncation;

pub use batch::sample_batch;
pub(crate) use processed::{draw_weights, ProcessedRow};

use crate::request::SamplingParams;
use rng::SeqRng;
use std::collections::{HashMap, HashSet};
use truncation::Truncation;

/// The token drawn for one sequence in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Log-probability of `token` under the processed row (step 4 of the module docs).
    pub logprob: f32,
    /// Empty unless `params.logprobs`; otherwise the `params.top_logprobs` most likely tokens (fewer
    /// only if the vocabulary is smaller), by logprob descending, then id ascending.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Per-sequence sampling state: the generator, the counts of generated tokens (frequency and
/// presence penalties) and the set of prompt and generated tokens (repetition penalty).
///
/// Keep one per request for its whole life (also across preemption): recreating it restarts the
/// seeded stream and forgets the output counts.
#[derive(Debug, Clone)]
pub struct SequenceSampler {
    rng: SeqRng,
    seen: HashSet<u32>,
    counts: HashMap<u32, u32>,
}

/// The best entry of a sanitized row.
#[derive(Debug, Clone, Copy)]
struct Peak {
    id: u32,
    value: f32,
}

impl SequenceSampler {
    /// With `params.seed` the token stream is reproducible on any platform; without it the generator
    /// is seeded from operating-system entropy.
    pub fn new(params: &SamplingParams, prompt_ids: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => SeqRng::from_seed(seed),
            None => SeqRng::from_entropy(),
        };
        SequenceSampler {
            rng,
            seen: prompt_ids.iter().copied().collect(),
            counts: HashMap::new(),
        }
    }

    /// Records a token that was emitted (updates penalty counts).
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
    }

    /// The number [`sample`](Self::sample) would draw next, for samplers that process the row elsewhere
    /// (the device sampler): one per row and call, as `sample` consumes.
    pub(crate) fn next_uniform(&mut self) -> f64 {
        self.rng.next_f64()
    }

    /// Prompt and generated tokens (repetition penalty), in no particular order.
    pub(crate) fn seen_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.seen.iter().copied()
    }

    /// Generated tokens with their counts (frequency and presence penalties), in no particular order.
    pub(crate) fn output_counts(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.counts.iter().map(|(&t, &c)| (t, c))
    }

    /// Processes one row of raw logits in place and draws a token. Token ids outside the row (in the
    /// prompt, the output or `logit_bias`) are ignored; an empty row yields token 0.
    pub fn sample(&mut self, logits: &mut [f32], params: &SamplingParams) -> Sampled {
        // One number per call on every path (greedy included), so step n always consumes the n-th
        // number of the stream whatever happened before.
        let uniform = self.next_uniform();
        if logits.is_empty() {
            return Sampled {
                token: 0,
                logprob: 0.0,
                top_logprobs: Vec::new(),
            };
        }
        self.apply_penalties(logits, params);
        let unbiased = apply_bias(logits, &params.logit_bias);
        let peak =
            sanitize_argmax(logits).unwrap_or_else(|| point_mass_fallback(logits, &unbiased));

        let token = if params.is_greedy() {
            peak.id
        } else {
            draw(
                logits,
                &Truncation::new(logits, peak.value, params),
                peak.id,
                uniform,
            )
        };

        describe(logits, peak, token, params)
    }

    fn apply_penalties(&self, row: &mut [f32], params: &SamplingParams) {
        let rep = params.repetition_penalty;
        if rep != 1.0 {
            for &token in &self.seen {
                if let Some(x) = row.get_mut(token as usize) {
                    *x = if *x > 0.0 { *x / rep } else { *x * rep };
                }
            }
        }
        let (freq, presence) = (params.frequency_penalty, params.presence_penalty);
        if freq != 0.0 || presence != 0.0 {
            // Every token in `counts` was emitted at least once, so presence applies to each.
            for (&token, &count) in &self.counts {
                if let Some(x) = row.get_mut(token as usize) {
                    *x -= count as f32 * freq + presence;
                }
            }
        }
    }
}

/// `token` of a processed row (maximum `peak`) with its logprob, and the top logprobs when asked.
fn describe(logits: &[f32], peak: Peak, token: u32, params: &SamplingParams) -> Sampled {
    let ln_total = ln_sum_exp(logits, peak.value);
    let logprob_of = |x: f32| (f64::from(x - peak.value) - ln_total) as f32;
    let logprob = logits.get(token as usize).map_or(0.0, |&x| logprob_of(x));
    let top_logprobs = if params.logprobs {
        select::top_n(logits, params.top_logprobs).into_iter().map(|(id, x)| (id, logprob_of(x))).collect()
    } else {
        Vec::new()
    };
    Sampled { token, logprob, top_logprobs }
}

/// Adds the biases and returns the logits they replaced, for the degenerate-row fallback.
fn apply_bias(row: &mut [f32], bias: &HashMap<u32, f32>) -> Vec<(usize, f32)> {
    bias.iter()
        .filter_map(|(&token, &b)| {
            let x = row.get_mut(token as usize)?;
            let before = *x;
            *x += b;
            Some((token as usize, before))
        })
        .collect()
}

/// Replaces NaN by -inf and +inf by `f32::MAX` in place and returns the argmax (lowest id on ties),
/// or `None` when no finite value is left.
fn sanitize_argmax(row: &mut [f32]) -> Option<Peak> {
    let mut best = Peak {
        id: 0,
        value: f32::NEG_INFINITY,
    };
    for (i, x) in row.iter_mut().enumerate() {
        if x.is_nan() {
            *x = f32::NEG_INFINITY;
        } else if *x == f32::INFINITY {
            *x = f32::MAX;
        }
        if *x > best.value {
            best = Peak {
                id: i as u32,
                value: *x,
            };
        }
    }
    (best.value > f32::NEG_INFINITY).then_some(best)
}

/// Turns a degenerate row into a point mass on the argmax of the row before `logit_bias` (token 0
/// when that has no finite value either); see the module docs. `row` is not empty.
fn point_mass_fallback(row: &mut [f32], unbiased: &[(usize, f32)]) -> Peak {
    for &(i, x) in unbiased {
        row[i] = x;
    }
    let id = sanitize_argmax(row).map_or(0, |p| p.id);
    row.fill(f32::NEG_INFINITY);
    row[id as usize] = 0.0;
    Peak { id, value: 0.0 }
}

/// `ln(sum(exp(x - max)))` over the row, accumulated in f64 so that a 150k vocabulary loses nothing.
fn ln_sum_exp(row: &[f32], max: f32) -> f64 {
    row.iter()
        .map(|&x| f64::from((x - max).exp()))
        .sum::<f64>()
        .ln()
}

/// Inverse-CDF draw in id order: the first token whose cumulative weight exceeds `uniform` times the
/// total. Both passes add the same f32 weights in the same order, so the running sum ends exactly at
/// the total; `last` covers `uniform * total` rounding up to the total.
fn draw(row: &[f32], rule: &Truncation, best: u32, uniform: f64) -> u32 {
    let total: f64 = row
        .iter()
        .enumerate()
        .map(|(i, &x)| f64::from(rule.weight(i, x)))
        .sum();
    let target = uniform * total;
    let mut mass = 0.0f64;
    let mut last = best;
    for (i, &x) in row.iter().enumerate() {
        let w = rule.weight(i, x);
        if w > 0.0 {
            mass += f64::from(w);
            last = i as u32;
            if mass > target {
                return last;
            }
        }
    }
    last
}
