//! Verification of proposed tokens against the target's rows (speculative sampling, Leviathan et al. /
//! Chen et al.): draft token `d_i` is kept with probability `min(1, p_i(d_i) / q_i(d_i))`; at the first
//! rejection a token is drawn from `max(0, p_i - q_i)` renormalised, and when every draft is kept one
//! more token is drawn from the last row. Each emitted token is then distributed exactly as the target
//! alone would have drawn it. `p_i` is the request's own sampling distribution (temperature, top_k,
//! top_p, min_p as [`crate::sampler::SequenceSampler::sample`] applies them); proposals without a
//! distribution (prompt lookup, greedy drafts) are point masses, `q_i(d_i) = 1`.
//!
//! Greedy requests keep drafts while they equal the target's argmax, so their output is the
//! non-speculative greedy output token for token.

use crate::request::SamplingParams;
use crate::sampler::{draw_weights, ProcessedRow, Sampled, SequenceSampler};

/// What a verification step emits for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The accepted drafts, then the target's own token; never empty.
    pub emitted: Vec<Sampled>,
    /// How many drafts were accepted (`emitted.len() - 1`).
    pub accepted: usize,
}

/// `rows` are the target's raw logits at the pending token and at each draft (`drafts.len() + 1` rows,
/// `[vocab]` each); `draft_probs[i]` the draft's distribution that `drafts[i]` was drawn from, or `None`
/// for point-mass proposals.
pub fn verify(
    sampler: &mut SequenceSampler,
    params: &SamplingParams,
    rows: Vec<Vec<f32>>,
    drafts: &[u32],
    draft_probs: Option<&[Vec<f64>]>,
) -> Verified {
    debug_assert_eq!(rows.len(), drafts.len() + 1, "one target row per draft plus the bonus row");
    let mut emitted = Vec::with_capacity(rows.len());
    for (i, raw) in rows.into_iter().enumerate() {
        let row = sampler.process_row(raw, params);
        let Some(&draft) = drafts.get(i) else {
            // Every draft was kept: the bonus token from the last row.
            emitted.push(draw(sampler, &row, params));
            break;
        };
        if params.is_greedy() {
            let t = row.argmax();
            emitted.push(row.sampled(t, params));
            if t != draft {
                break;
            }
            continue;
        }
        let p = row.probs(params);
        let q = draft_probs.and_then(|q| q.get(i));
        let q_d = q.map_or(1.0, |q| q.get(draft as usize).copied().unwrap_or(0.0));
        let p_d = p.get(draft as usize).copied().unwrap_or(0.0);
        let u = sampler.draw_uniform();
        if q_d > 0.0 && u * q_d < p_d {
            emitted.push(row.sampled(draft, params));
            continue;
        }
        let residual: Vec<f64> = match q {
            Some(q) => p.iter().zip(q.iter().chain(std::iter::repeat(&0.0))).map(|(a, b)| (a - b).max(0.0)).collect(),
            None => p.iter().enumerate().map(|(j, &a)| if j == draft as usize { 0.0 } else { a }).collect(),
        };
        let u = sampler.draw_uniform();
        // An empty residual means p = q (a rejection of probability 0 that rounding let through): p itself.
        let t = draw_weights(&residual, u).or_else(|| draw_weights(&p, u)).unwrap_or(row.argmax());
        emitted.push(row.sampled(t, params));
        break;
    }
    let accepted = emitted.len() - 1;
    Verified { emitted, accepted }
}

/// A token drawn from a processed row as `sample` would (argmax for greedy parameters).
fn draw(sampler: &mut SequenceSampler, row: &ProcessedRow, params: &SamplingParams) -> Sampled {
    if params.is_greedy() {
        return row.sampled(row.argmax(), params);
    }
    let u = sampler.draw_uniform();
    let t = draw_weights(&row.probs(params), u).unwrap_or(row.argmax());
    row.sampled(t, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_p: 1.0, seed: Some(seed), ..Default::default() }
    }

    const ROWS: [[f32; 5]; 3] = [[1.0, 2.0, 0.5, -1.0, 1.5], [0.0, 0.3, 2.5, 0.1, -0.4], [1.2, 1.1, 0.0, 2.0, 0.2]];

    fn rows() -> Vec<Vec<f32>> {
        ROWS.iter().map(|r| r.to_vec()).collect()
    }

    fn softmax(r: &[f32], t: f32) -> Vec<f64> {
        let m = r.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f64> = r.iter().map(|&x| f64::from(((x - m) / t).exp())).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn greedy_keeps_drafts_while_they_are_the_argmax() {
        let p = params(0.0, 1);
        let mut s = SequenceSampler::new(&p, &[]);
        // Argmaxes of the rows: 1, 2, 3.
        let v = verify(&mut s, &p, rows(), &[1, 2], None);
        assert_eq!(v.emitted.iter().map(|t| t.token).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(v.accepted, 2);
        let v = verify(&mut s, &p, rows(), &[1, 4], None);
        assert_eq!(v.emitted.iter().map(|t| t.token).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(v.accepted, 1);
        let v = verify(&mut s, &p, rows(), &[0, 2], None);
        assert_eq!(v.emitted.iter().map(|t| t.token).collect::<Vec<_>>(), vec![1]);
    }

    /// Pearson's chi-square statistic of `counts` against `probs` (cells with expected count >= 5).
    fn chi_square(counts: &[u64], probs: &[f64]) -> (f64, usize) {
        let n: u64 = counts.iter().sum();
        let mut stat = 0.0;
        let mut cells = 0;
        for (&c, &p) in counts.iter().zip(probs) {
            let e = p * n as f64;
            if e >= 5.0 {
                stat += (c as f64 - e).powi(2) / e;
                cells += 1;
            }
        }
        (stat, cells)
    }

    /// The first two emitted tokens over many seeds follow the target's distributions: token 1 ~ p_0, and
    /// token 2 (emitted after an accepted draft) ~ p_1, the rows being fixed. 99.9th percentile of
    /// chi-square with df 4: 18.47.
    fn check_distribution(draft_probs: Option<Vec<Vec<f64>>>, drafts: [u32; 2], temperature: f32) {
        let n = 40_000u64;
        let mut first = [0u64; 5];
        let mut second = [0u64; 5];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for seed in 0..n {
            let p = params(temperature, seed);
            let mut s = SequenceSampler::new(&p, &[]);
            // Drafts from a distribution are drawn from it (the draft model's job), point masses are fixed.
            let d: Vec<u32> = match &draft_probs {
                Some(q) => q.iter().map(|q| draw_weights(q, uniform()).unwrap()).collect(),
                None => drafts.to_vec(),
            };
            let v = verify(&mut s, &p, rows(), &d, draft_probs.as_deref());
            first[v.emitted[0].token as usize] += 1;
            if v.emitted.len() > 1 {
                second[v.emitted[1].token as usize] += 1;
            }
        }
        let (s1, c1) = chi_square(&first, &softmax(&ROWS[0], temperature));
        let (s2, c2) = chi_square(&second, &softmax(&ROWS[1], temperature));
        assert!(c1 == 5 && s1 < 18.47, "first token: chi-square {s1} over {c1} cells, counts {first:?}");
        assert!(c2 >= 4 && s2 < 18.47, "second token: chi-square {s2} over {c2} cells, counts {second:?}");
    }

    #[test]
    fn point_mass_proposals_keep_the_target_distribution() {
        check_distribution(None, [1, 2], 1.0);
        check_distribution(None, [3, 0], 0.7);
    }

    #[test]
    fn drafts_from_a_distribution_keep_the_target_distribution() {
        let q0 = vec![0.1, 0.5, 0.1, 0.2, 0.1];
        let q1 = vec![0.3, 0.1, 0.2, 0.2, 0.2];
        check_distribution(Some(vec![q0.clone(), q1.clone()]), [0, 0], 1.0);
        check_distribution(Some(vec![q1, q0]), [0, 0], 1.3);
    }

    #[test]
    fn a_wrong_guess_is_not_chi_square_neutral() {
        // The test can fail: emitting drafts unconditionally skews token 1 towards the draft.
        let n = 20_000u64;
        let mut first = [0u64; 5];
        for seed in 0..n {
            let p = params(1.0, seed);
            let mut s = SequenceSampler::new(&p, &[]);
            let v = verify(&mut s, &p, rows(), &[3, 0], None);
            let t = if seed % 2 == 0 { 3 } else { v.emitted[0].token };
            first[t as usize] += 1;
        }
        let (stat, _) = chi_square(&first, &softmax(&ROWS[0], 1.0));
        assert!(stat > 18.47, "a biased sampler must fail the check, got {stat}");
    }
}
