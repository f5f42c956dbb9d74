//! Temperature, top_k, top_p and min_p as one keep-or-drop rule over a processed logit row.
//!
//! Each filter keeps a prefix of the row ranked best first (larger logit, then lower id), so together
//! they reduce to thresholds checked per token while the draw streams over the row: nothing is
//! sorted unless top_p < 1, and the row itself is never rewritten.

use super::select::{key_id, kth_largest, rank_key};
use crate::request::SamplingParams;

/// The nucleus search sorts this many best candidates first, then blocks four times larger while
/// the nucleus is not complete: nuclei are usually far smaller than the vocabulary.
const NUCLEUS_HEAD: usize = 1024;

/// A token's unnormalised sampling weight: `exp((logit - max) / temperature)` when every filter keeps
/// it, else 0. The best token always has weight exactly 1, so the total is never 0.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Truncation {
    /// The row maximum, subtracted before exponentiating so that weights are at most 1.
    max: f32,
    temperature: f32,
    /// top_k: the k-th largest logit. Ties with it are kept (as in HF and vLLM), so more than k
    /// tokens can survive when logits repeat.
    min_logit: Option<f32>,
    /// top_p: the last token of the nucleus as `(logit, id)`; tokens ranked after it are dropped.
    nucleus_end: Option<(f32, u32)>,
    /// min_p: weights below `min_p` times the best weight (which is 1) are dropped.
    min_weight: f32,
}

impl Truncation {
    /// `max` is the row maximum; `row` holds the processed logits (no NaN); `params` is not
    /// greedy.
    pub(crate) fn new(row: &[f32], max: f32, params: &SamplingParams) -> Self {
        let min_logit = match usize::try_from(params.top_k) {
            Ok(k) if k > 0 => kth_largest(row, k),
            _ => None,
        };
        let mut rule = Truncation {
            max,
            temperature: params.temperature,
            min_logit,
            nucleus_end: None,
            min_weight: 0.0,
        };
        // The nucleus is measured on the distribution after top_k and before min_p (HF order), so
        // min_p is switched on only once it is found.
        if params.top_p < 1.0 {
            rule.nucleus_end = rule.nucleus_end(row, params.top_p);
        }
        rule.min_weight = params.min_p.max(0.0);
        rule
    }

    pub(crate) fn weight(&self, id: usize, x: f32) -> f32 {
        if self.min_logit.is_some_and(|m| x < m) {
            return 0.0;
        }
        if let Some((end_x, end_id)) = self.nucleus_end {
            if x < end_x || (x == end_x && id > end_id as usize) {
                return 0.0;
            }
        }
        let w = ((x - self.max) / self.temperature).exp();
        if w < self.min_weight {
            0.0
        } else {
            w
        }
    }

    /// The smallest best-first prefix whose mass reaches `top_p` of the total (at least one token),
    /// as its last member; `None` when it would keep every candidate.
    fn nucleus_end(&self, row: &[f32], top_p: f32) -> Option<(f32, u32)> {
        let mut ranked: Vec<u64> = Vec::new();
        let mut total = 0.0f64;
        for (i, &x) in row.iter().enumerate() {
            let w = self.weight(i, x);
            if w > 0.0 {
                ranked.push(rank_key(i as u32, x));
                total += f64::from(w);
            }
        }
        let target = f64::from(top_p) * total;
        // Rank block by block, each block the best of what is left, so that only about the
        // nucleus gets sorted.
        let (mut start, mut block, mut mass) = (0, NUCLEUS_HEAD, 0.0f64);
        let kept = loop {
            let end = (start + block).min(ranked.len());
            if end == start {
                return None;
            }
            if end < ranked.len() {
                ranked[start..].select_nth_unstable(end - start - 1);
            }
            ranked[start..end].sort_unstable();
            if let Some(n) = self.count_until(row, &ranked[start..end], &mut mass, target) {
                break start + n;
            }
            start = end;
            block *= 4;
        };
        let id = key_id(ranked[kept.max(1) - 1]);
        Some((row[id as usize], id))
    }

    /// Walks ranked candidates adding their weights to `mass`; returns how many were taken before
    /// `mass` reached `target`, or `None` if it never did within `ranked`.
    fn count_until(
        &self,
        row: &[f32],
        ranked: &[u64],
        mass: &mut f64,
        target: f64,
    ) -> Option<usize> {
        for (n, &key) in ranked.iter().enumerate() {
            if *mass >= target {
                return Some(n);
            }
            let id = key_id(key) as usize;
            *mass += f64::from(self.weight(id, row[id]));
        }
        None
    }
}
