//! Expected values here are worked out by hand or by brute force (full sorts, f64 softmax), never by
//! calling the code under test a second way.

use super::rng::SeqRng;
use super::select::{kth_largest, top_n};
use super::truncation::Truncation;
use super::*;

const NEG_INF: f32 = f32::NEG_INFINITY;

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..seeded(0)
    }
}

/// Logits uniform in [-scale, scale), rounded to `step` when given so that values repeat. Adding
/// 0.0 turns -0.0 into 0.0, which the sampler ranks as equal but `total_cmp` in the references
/// would not.
fn random_row(seed: u64, len: usize, scale: f64, step: Option<f64>) -> Vec<f32> {
    let mut rng = SeqRng::from_seed(seed);
    (0..len)
        .map(|_| {
            let x = (rng.next_f64() * 2.0 - 1.0) * scale;
            step.map_or(x, |s| (x / s).round() * s) as f32 + 0.0
        })
        .collect()
}

fn sample_once(logits: &[f32], params: &SamplingParams, prompt: &[u32]) -> (Sampled, Vec<f32>) {
    let mut row = logits.to_vec();
    let sampled = SequenceSampler::new(params, prompt).sample(&mut row, params);
    (sampled, row)
}

/// Token counts over `n` draws from one sequence (nothing observed, so the row never changes).
fn histogram(logits: &[f32], params: &SamplingParams, n: usize) -> Vec<usize> {
    let mut seq = SequenceSampler::new(params, &[]);
    let mut counts = vec![0; logits.len()];
    for _ in 0..n {
        let token = seq.sample(&mut logits.to_vec(), params).token as usize;
        counts[token] += 1;
    }
    counts
}

fn softmax_f64(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let exps: Vec<f64> = logits.iter().map(|&x| (f64::from(x) - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Token ids the truncation rule keeps for a (sanitized) row.
fn kept(logits: &[f32], params: &SamplingParams) -> Vec<u32> {
    let max = logits.iter().fold(NEG_INF, |m, &x| m.max(x));
    let rule = Truncation::new(logits, max, params);
    (0..logits.len())
        .filter(|&i| rule.weight(i, logits[i]) > 0.0)
        .map(|i| i as u32)
        .collect()
}

fn ln_probs(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

#[test]
fn rng_stream_is_pinned() {
    // First outputs of SplitMix64-seeded xoshiro256++, from an independent big-integer
    // implementation.
    let expected: [(u64, [u64; 4]); 2] = [
        (
            0,
            [
                0x53175d61490b23df,
                0x61da6f3dc380d507,
                0x5c0fdf91ec9a7bfc,
                0x02eebf8c3bbe5e1a,
            ],
        ),
        (
            42,
            [
                0xd0764d4f4476689f,
                0x519e4174576f3791,
                0xfbe07cfb0c24ed8c,
                0xb37d9f600cd835b8,
            ],
        ),
    ];
    for (seed, outputs) in expected {
        let mut rng = SeqRng::from_seed(seed);
        let got: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(got, outputs, "seed {seed}");
    }
}

#[test]
fn greedy_takes_argmax_and_lowest_id_on_ties() {
    assert_eq!(
        sample_once(&[1.0, 3.0, 3.0, 2.0], &greedy(), &[]).0.token,
        1
    );
    assert_eq!(sample_once(&[-5.0, -1.0, -2.0], &greedy(), &[]).0.token, 1);
    assert_eq!(sample_once(&[0.0; 7], &greedy(), &[]).0.token, 0);
}

#[test]
fn logit_bias_forces_a_token() {
    let logits = [5.0, 0.0, 0.0, 4.0];
    let bias = SamplingParams {
        logit_bias: HashMap::from([(2, 100.0)]),
        ..greedy()
    };
    assert_eq!(sample_once(&logits, &bias, &[]).0.token, 2);
    let sampled = SamplingParams {
        temperature: 1.0,
        ..bias
    };
    assert_eq!(histogram(&logits, &sampled, 500)[2], 500);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_other_logits() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        ..greedy()
    };
    // Tokens 0 (positive), 1 (negative) and 3 (zero) are in the prompt; 2 and 4 are not.
    let (_, row) = sample_once(&[2.0, -2.0, 1.0, 0.0, 4.0], &params, &[0, 1, 3]);
    assert_eq!(row, vec![1.0, -4.0, 1.0, 0.0, 4.0]);
    // Output tokens count too.
    let mut seq = SequenceSampler::new(&params, &[]);
    seq.observe(4);
    let mut row = vec![2.0, -2.0, 1.0, 0.0, 4.0];
    // 4 / 2 ties with token 0, and the lower id wins.
    assert_eq!(seq.sample(&mut row, &params).token, 0);
    assert_eq!(row, vec![2.0, -2.0, 1.0, 0.0, 2.0]);
}

#[test]
fn frequency_and_presence_penalties_count_output_tokens_only() {
    let params = SamplingParams {
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        ..greedy()
    };
    let mut seq = SequenceSampler::new(&params, &[2]);
    for token in [3, 3, 1] {
        seq.observe(token);
    }
    let mut row = vec![0.0; 5];
    seq.sample(&mut row, &params);
    // token 1: 1 * 0.5 + 0.25; token 3: 2 * 0.5 + 0.25; token 2 was only in the prompt.
    assert_eq!(row, vec![0.0, -0.75, 0.0, -1.25, 0.0]);
}

#[test]
fn penalties_then_bias_in_documented_order() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 1.0,
        logit_bias: HashMap::from([(0, 0.5)]),
        ..greedy()
    };
    let mut seq = SequenceSampler::new(&params, &[]);
    seq.observe(0);
    let mut row = vec![2.0, 0.0];
    seq.sample(&mut row, &params);
    // (2 / 2 - 1) + 0.5; any other order gives 1.0 or 0.25.
    assert_eq!(row[0], 0.5);
}

#[test]
fn top_k_one_equals_greedy() {
    for seed in 0..200 {
        let logits = random_row(seed, 64, 4.0, None);
        let params = SamplingParams {
            top_k: 1,
            temperature: 1.5,
            ..seeded(seed)
        };
        let want = sample_once(&logits, &greedy(), &[]).0.token;
        assert_eq!(
            sample_once(&logits, &params, &[]).0.token,
            want,
            "seed {seed}"
        );
    }
}

#[test]
fn top_k_keeps_values_tied_with_the_kth() {
    let params = SamplingParams {
        top_k: 1,
        ..seeded(3)
    };
    let counts = histogram(&[3.0, 3.0, 1.0], &params, 400);
    assert!(
        counts[0] > 100 && counts[1] > 100 && counts[2] == 0,
        "{counts:?}"
    );
}

#[test]
fn top_k_matches_a_full_sort() {
    let logits = random_row(11, 500, 3.0, Some(0.25));
    let mut sorted = logits.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    // Both selection strategies: the insertion buffer (small k) and select_nth (large k).
    for k in [1usize, 3, 64, 65, 100, 499, 500, 800] {
        let params = SamplingParams {
            top_k: k as i32,
            ..seeded(0)
        };
        let threshold = sorted.get(k - 1).copied().unwrap_or(NEG_INF);
        let want: Vec<u32> = (0..500)
            .filter(|&i| logits[i] >= threshold)
            .map(|i| i as u32)
            .collect();
        assert_eq!(kept(&logits, &params), want, "k {k}");
        assert_eq!(kth_largest(&logits, k), sorted.get(k - 1).copied(), "k {k}");
    }
}

#[test]
fn top_p_keeps_the_smallest_nucleus() {
    // Probabilities 0.1, 0.4, 0.2, 0.3: ranked 1 (0.4), 3 (0.3), 2 (0.2), 0 (0.1); prefix masses
    // 0.4, 0.7, 0.9, 1.0.
    let logits = ln_probs(&[0.1, 0.4, 0.2, 0.3]);
    for (top_p, want) in [
        (0.35, vec![1]),
        (0.65, vec![1, 3]),
        (0.75, vec![1, 2, 3]),
        (0.95, vec![0, 1, 2, 3]),
    ] {
        let params = SamplingParams { top_p, ..seeded(0) };
        assert_eq!(kept(&logits, &params), want, "top_p {top_p}");
    }
    // Sampling stays inside the nucleus, renormalised: 0.4 / 0.7 and 0.3 / 0.7.
    let counts = histogram(
        &logits,
        &SamplingParams {
            top_p: 0.65,
            ..seeded(5)
        },
        7000,
    );
    assert_eq!(counts[0] + counts[2], 0, "{counts:?}");
    assert!(
        (counts[1] as f64 / 7000.0 - 4.0 / 7.0).abs() < 0.03,
        "{counts:?}"
    );
}

#[test]
fn top_p_matches_a_full_sort_beyond_the_sorted_head() {
    // A nearly flat row over 5000 tokens: the nucleus is larger than the first sorted block.
    let logits = random_row(21, 5000, 0.5, None);
    for top_p in [0.1f32, 0.3, 0.9, 0.999] {
        let params = SamplingParams {
            top_p,
            temperature: 0.8,
            ..seeded(0)
        };
        let max = logits.iter().fold(NEG_INF, |m, &x| m.max(x));
        let mut ranked: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, x))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let weight = |x: f32| f64::from(((x - max) / 0.8).exp());
        let total: f64 = logits.iter().map(|&x| weight(x)).sum();
        let (mut mass, mut want) = (0.0, Vec::new());
        for &(id, x) in &ranked {
            if mass >= f64::from(top_p) * total {
                break;
            }
            mass += weight(x);
            want.push(id);
        }
        want.sort_unstable();
        assert_eq!(kept(&logits, &params), want, "top_p {top_p}");
    }
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    let logits = ln_probs(&[0.5, 0.3, 0.15, 0.05]);
    let with = |min_p, top_p| SamplingParams {
        min_p,
        top_p,
        ..seeded(0)
    };
    // Thresholds 0.1 and 0.25.
    assert_eq!(kept(&logits, &with(0.2, 1.0)), vec![0, 1, 2]);
    assert_eq!(kept(&logits, &with(0.5, 1.0)), vec![0, 1]);
    // top_p measures the nucleus before min_p: 0.82 keeps 0, 1, 2 (prefix mass 0.8 < 0.82), and
    // min_p 0.25 (threshold 0.125) keeps them too. Applying min_p first would have dropped 2.
    assert_eq!(kept(&logits, &with(0.25, 0.82)), vec![0, 1, 2]);
}

#[test]
fn same_seed_same_stream_and_different_seeds_differ() {
    let logits = random_row(1, 100, 1.0, None);
    let stream = |params: &SamplingParams| {
        let mut seq = SequenceSampler::new(params, &[]);
        (0..64)
            .map(|_| {
                let token = seq.sample(&mut logits.clone(), params).token;
                seq.observe(token);
                token
            })
            .collect::<Vec<u32>>()
    };
    let penalised = |seed| SamplingParams {
        presence_penalty: 0.5,
        ..seeded(seed)
    };
    assert_eq!(stream(&penalised(7)), stream(&penalised(7)));
    assert_ne!(stream(&penalised(7)), stream(&penalised(8)));
    let unseeded = SamplingParams {
        seed: None,
        ..penalised(0)
    };
    assert_ne!(stream(&unseeded), stream(&unseeded));
}

/// Pearson's chi-square of `counts` against `probs` (every expected count is well above 5 here).
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &p)| (c as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum()
}

#[test]
fn draws_follow_softmax() {
    let logits = [0.5f32, -1.0, 2.0, 0.0, 1.0, -0.5];
    let n = 20_000;
    // 5 degrees of freedom: 20.52 is the 0.999 quantile.
    let counts = histogram(&logits, &seeded(2024), n);
    let probs = softmax_f64(&logits);
    assert!(
        chi_square(&counts, &probs) < 20.52,
        "{counts:?} vs {probs:?}"
    );
    for (c, p) in counts.iter().zip(&probs) {
        assert!(
            (*c as f64 / n as f64 - p).abs() < 0.015,
            "{counts:?} vs {probs:?}"
        );
    }
    // Temperature 0.7 with top_k 4: softmax of logits / 0.7 over the 4 best (ids 0, 2, 3, 4).
    let params = SamplingParams {
        temperature: 0.7,
        top_k: 4,
        ..seeded(99)
    };
    let counts = histogram(&logits, &params, n);
    assert_eq!(counts[1] + counts[5], 0);
    let best: Vec<f32> = [0, 2, 3, 4].iter().map(|&i| logits[i] / 0.7).collect();
    let kept_counts: Vec<usize> = [0, 2, 3, 4].iter().map(|&i| counts[i]).collect();
    // 3 degrees of freedom: 16.27 is the 0.999 quantile.
    assert!(
        chi_square(&kept_counts, &softmax_f64(&best)) < 16.27,
        "{counts:?}"
    );
}

#[test]
fn logprobs_are_log_softmax_of_the_processed_row() {
    let logits = random_row(5, 1000, 6.0, None);
    let want: Vec<f64> = softmax_f64(&logits).iter().map(|p| p.ln()).collect();
    // Temperature and truncation must not change logprobs.
    for params in [
        greedy(),
        SamplingParams {
            temperature: 0.5,
            top_k: 3,
            top_p: 0.5,
            ..seeded(1)
        },
    ] {
        let params = SamplingParams {
            logprobs: true,
            top_logprobs: 20,
            ..params
        };
        let (sampled, _) = sample_once(&logits, &params, &[]);
        assert!((f64::from(sampled.logprob) - want[sampled.token as usize]).abs() < 1e-4);
        assert_eq!(sampled.top_logprobs.len(), 20);
        for &(id, lp) in &sampled.top_logprobs {
            assert!(
                (f64::from(lp) - want[id as usize]).abs() < 1e-4,
                "token {id}"
            );
        }
    }
    // Without `logprobs` the list stays empty but the sampled token's logprob is still reported.
    let (sampled, _) = sample_once(&logits, &greedy(), &[]);
    assert!(sampled.top_logprobs.is_empty());
    assert!((f64::from(sampled.logprob) - want[sampled.token as usize]).abs() < 1e-4);
}

#[test]
fn top_logprobs_are_ordered_by_logprob_then_id() {
    let params = SamplingParams {
        logprobs: true,
        top_logprobs: 4,
        ..greedy()
    };
    let (sampled, _) = sample_once(&[1.0, 5.0, 3.0, 5.0, 3.0, 0.0], &params, &[]);
    let ids: Vec<u32> = sampled.top_logprobs.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, vec![1, 3, 2, 4]);
    assert_eq!(sampled.top_logprobs[0].1, sampled.top_logprobs[1].1);
    assert!(sampled.top_logprobs[1].1 > sampled.top_logprobs[2].1);
    // A vocabulary smaller than the request returns all of it.
    let params = SamplingParams {
        top_logprobs: 20,
        ..params
    };
    assert_eq!(
        sample_once(&[0.0, 1.0], &params, &[]).0.top_logprobs.len(),
        2
    );
}

#[test]
fn top_n_matches_a_full_sort() {
    let row = random_row(8, 3000, 2.0, Some(0.125));
    let mut ranked: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for n in [0, 1, 5, 20, 64, 65, 200, 3000, 4000] {
        assert_eq!(top_n(&row, n), ranked[..n.min(3000)].to_vec(), "n {n}");
    }
}

#[test]
fn degenerate_rows_fall_back_without_panicking() {
    let with_logprobs = |params: SamplingParams| SamplingParams {
        logprobs: true,
        top_logprobs: 3,
        ..params
    };
    for params in [with_logprobs(greedy()), with_logprobs(seeded(4))] {
        for row in [
            vec![NEG_INF; 5],
            vec![f32::NAN; 5],
            vec![NEG_INF, f32::NAN, NEG_INF],
        ] {
            let (sampled, _) = sample_once(&row, &params, &[]);
            assert_eq!(sampled.token, 0);
            assert_eq!(sampled.logprob, 0.0);
            assert_eq!(
                sampled.top_logprobs,
                vec![(0, 0.0), (1, NEG_INF), (2, NEG_INF)]
            );
        }
        // A bias that removes every token: the argmax of the unbiased row.
        let all_banned = SamplingParams {
            logit_bias: HashMap::from([(0, NEG_INF), (1, NEG_INF)]),
            ..params.clone()
        };
        assert_eq!(sample_once(&[1.0, 2.0], &all_banned, &[]).0.token, 1);
        // Non-finite entries next to finite ones are ordinary.
        assert_eq!(
            sample_once(&[NEG_INF, f32::NAN, 3.0], &params, &[]).0.token,
            2
        );
        assert_eq!(sample_once(&[], &params, &[]).0.token, 0);
    }
}

#[test]
fn positive_infinity_takes_all_mass_shared_evenly() {
    let logits = [0.0, f32::INFINITY, 1.0, f32::INFINITY];
    assert_eq!(sample_once(&logits, &greedy(), &[]).0.token, 1);
    let counts = histogram(&logits, &seeded(6), 1000);
    assert!(
        counts[0] + counts[2] == 0 && counts[1] > 400 && counts[3] > 400,
        "{counts:?}"
    );
    let (sampled, _) = sample_once(&logits, &seeded(6), &[]);
    assert!((sampled.logprob + std::f32::consts::LN_2).abs() < 1e-6);
}

#[test]
fn out_of_vocabulary_ids_are_ignored() {
    let params = SamplingParams {
        logit_bias: HashMap::from([(50, 1.0)]),
        repetition_penalty: 1.3,
        frequency_penalty: 1.0,
        ..greedy()
    };
    let mut seq = SequenceSampler::new(&params, &[99]);
    seq.observe(1000);
    let mut row = vec![0.0, 1.0, 0.5];
    assert_eq!(seq.sample(&mut row, &params).token, 1);
    assert_eq!(row, vec![0.0, 1.0, 0.5]);
}

#[test]
fn batch_equals_rows_sampled_alone() {
    // 12 x 30000 logits is above the parallel threshold.
    let (batch, vocab) = (12usize, 30_000usize);
    let logits: Vec<f32> = (0..batch as u64)
        .flat_map(|i| random_row(100 + i, vocab, 3.0, None))
        .collect();
    let params: Vec<SamplingParams> = (0..batch as u64)
        .map(|i| SamplingParams {
            temperature: if i % 3 == 0 { 0.0 } else { 0.9 },
            top_p: 0.9,
            repetition_penalty: 1.1,
            logprobs: true,
            top_logprobs: 2,
            ..seeded(i)
        })
        .collect();
    let prompt: Vec<u32> = (0..50).collect();
    let mut samplers: Vec<SequenceSampler> = params
        .iter()
        .map(|p| SequenceSampler::new(p, &prompt))
        .collect();
    let mut rows = logits.clone();
    let mut seqs: Vec<(&mut SequenceSampler, &SamplingParams)> =
        samplers.iter_mut().zip(&params).collect();
    let got = sample_batch(&mut rows, vocab, &mut seqs);
    assert_eq!(got.len(), batch);
    for (i, p) in params.iter().enumerate() {
        let (alone, row) = sample_once(&logits[i * vocab..(i + 1) * vocab], p, &prompt);
        assert_eq!(got[i], alone, "row {i}");
        assert_eq!(&rows[i * vocab..(i + 1) * vocab], row.as_slice(), "row {i}");
    }
}
