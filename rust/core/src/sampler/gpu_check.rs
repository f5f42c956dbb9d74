//! Test support: the device sampler ([`super::gpu::sample_on_device`]) against the CPU sampler
//! ([`super::sample_batch`]) over random logits, with identically seeded samplers on both sides. The GPU
//! tests drive it through `mlc_llm._core._sampling_check`; on a CPU device the "device" side is
//! `sample_batch` again, which keeps the harness itself testable without a GPU (every difference is 0).
//!
//! Logits are normal draws with, as asked, repeated values (ties, also with the row maximum), NaN, -inf
//! and +inf sprinkled in, or rows with no finite value at all. Sequences start from a random prompt and
//! random earlier outputs (penalty state), and both samplers observe the CPU's token after every step,
//! so they stay in the same state. Logprobs are checked against an independent log-softmax of the row
//! the CPU actually sampled from (the CPU sampler leaves it in place).

use super::{sample_batch, Sampled, SequenceSampler};
use crate::error::{EngineError, Result};
use crate::request::SamplingParams;
use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One batch of random rows sampled for `steps` steps.
#[derive(Debug, Clone, Deserialize)]
pub struct SamplingCase {
    pub batch: usize,
    /// Ignored when `logits` is given.
    #[serde(default)]
    pub vocab: usize,
    /// Row parameters, cycled over the batch.
    pub rows: Vec<RowCase>,
    #[serde(default = "one")]
    pub steps: usize,
    /// Standard deviation of the logits.
    #[serde(default = "two")]
    pub scale: f32,
    /// Logits rounded to multiples of this (0: not rounded): ties everywhere, also at the top_k and
    /// top_p boundaries.
    #[serde(default)]
    pub quantum: f32,
    /// Fraction of entries copied from another entry of the row (ties), entries set to the row maximum
    /// (a tied best token), and fraction of entries made NaN or -inf.
    #[serde(default)]
    pub ties: f32,
    #[serde(default)]
    pub max_ties: usize,
    #[serde(default)]
    pub special: f32,
    /// Histogram mode: every row of every step samples these logits (no penalty state, no observe); the
    /// report then holds how often each token was drawn.
    #[serde(default)]
    pub logits: Option<Vec<f32>>,
}

/// Parameters of a row and the random penalty state it starts with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RowCase {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: i32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logprobs: bool,
    pub top_logprobs: usize,
    /// Random logit_bias entries (some -inf, some large), prompt tokens, earlier outputs.
    pub bias: usize,
    pub prompt: usize,
    pub output: usize,
    /// Entries set to +inf (they share the mass evenly).
    pub pos_inf: usize,
    /// Every logit of the row NaN or -inf (the point-mass fallback).
    pub degenerate: bool,
}

impl Default for RowCase {
    fn default() -> Self {
        let d = SamplingParams::default();
        RowCase {
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k,
            min_p: d.min_p,
            repetition_penalty: d.repetition_penalty,
            frequency_penalty: d.frequency_penalty,
            presence_penalty: d.presence_penalty,
            logprobs: false,
            top_logprobs: 0,
            bias: 0,
            prompt: 0,
            output: 0,
            pos_inf: 0,
            degenerate: false,
        }
    }
}

fn one() -> usize {
    1
}

fn two() -> f32 {
    2.0
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SamplingReport {
    pub vocab: usize,
    /// Rows times steps, split into greedy (temperature 0) and sampled rows.
    pub rows: usize,
    pub greedy_rows: usize,
    pub greedy_mismatches: usize,
    pub sampled_rows: usize,
    pub sampled_mismatches: usize,
    /// Agreement of sampled rows (1 when there are none).
    pub token_agreement: f64,
    /// Error (see `err`) of the device logprob of its token against the log_softmax of the CPU's
    /// processed row at that token.
    pub max_logprob_err: f64,
    /// Rows with logprobs; those whose top-logprob ids differ from the CPU's; the largest logprob
    /// difference over the entries whose ids agree.
    pub top_rows: usize,
    pub top_id_mismatches: usize,
    pub max_top_logprob_err: f64,
    /// First few disagreements as (row, step, cpu token, device token).
    pub mismatches: Vec<(usize, usize, u32, u32)>,
    /// Histogram mode: draws per token on the device and on the CPU.
    pub device_counts: Vec<u64>,
    pub cpu_counts: Vec<u64>,
}

/// Runs `case` on `device` and on the CPU with the random stream `seed`; see the module docs.
pub fn compare_with_cpu(device: &Device, seed: u64, case: &SamplingCase) -> Result<SamplingReport> {
    if case.rows.is_empty() || case.batch == 0 {
        return Err(EngineError::bad_request("case_json", "needs a batch of at least one row and row parameters"));
    }
    let vocab = case.logits.as_ref().map_or(case.vocab, Vec::len);
    let mut rng = StdRng::seed_from_u64(seed);
    let rows: Vec<&RowCase> = (0..case.batch).map(|i| &case.rows[i % case.rows.len()]).collect();
    let params: Vec<SamplingParams> =
        rows.iter().enumerate().map(|(i, r)| row_params(r, vocab, seed.wrapping_mul(1_000_003).wrapping_add(i as u64), &mut rng)).collect();
    let histogram = case.logits.is_some();
    let mut cpu: Vec<SequenceSampler> = Vec::new();
    for r in &rows {
        let prompt: Vec<u32> = (0..if histogram { 0 } else { r.prompt }).map(|_| token(&mut rng, vocab)).collect();
        let p = &params[cpu.len()];
        let mut seq = SequenceSampler::new(p, &prompt);
        for _ in 0..if histogram { 0 } else { r.output } {
            seq.observe(token(&mut rng, vocab));
        }
        cpu.push(seq);
    }
    let mut dev = cpu.clone();
    let mut report = SamplingReport { vocab, ..Default::default() };
    if histogram {
        report.device_counts = vec![0; vocab];
        report.cpu_counts = vec![0; vocab];
    }
    for step in 0..case.steps {
        let logits: Vec<f32> = match &case.logits {
            Some(row) => row.iter().copied().cycle().take(case.batch * vocab).collect(),
            None => rows.iter().flat_map(|r| random_row(&mut rng, vocab, case, r)).collect(),
        };
        let mut processed = logits.clone();
        let want = {
            let mut seqs: Vec<_> = cpu.iter_mut().zip(&params).collect();
            sample_batch(&mut processed, vocab, &mut seqs)
        };
        let got = {
            let mut seqs: Vec<_> = dev.iter_mut().zip(&params).collect();
            run_device(device, logits, case.batch, vocab, &mut seqs)?
        };
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let row = &processed[i * vocab..(i + 1) * vocab];
            compare_row(&mut report, (i, step), &params[i], row, w, g);
            if histogram {
                report.cpu_counts[w.token as usize] += 1;
                report.device_counts[g.token as usize] += 1;
            } else {
                cpu[i].observe(w.token);
                dev[i].observe(w.token);
            }
        }
    }
    report.token_agreement = if report.sampled_rows == 0 {
        1.0
    } else {
        1.0 - report.sampled_mismatches as f64 / report.sampled_rows as f64
    };
    Ok(report)
}

fn run_device(
    device: &Device,
    logits: Vec<f32>,
    batch: usize,
    vocab: usize,
    seqs: &mut [(&mut SequenceSampler, &SamplingParams)],
) -> Result<Vec<Sampled>> {
    match device {
        Device::Cpu => {
            let mut rows = logits;
            Ok(sample_batch(&mut rows, vocab, seqs))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let t = candle_core::Tensor::from_vec(logits, (batch, vocab), device)?; // [batch, vocab]
            super::gpu::sample_on_device(&t, seqs)
        }
        _ => {
            let _ = batch; // only the CUDA arm builds a tensor
            Err(EngineError::Unsupported(format!("device sampling on {:?}", device.location())))
        }
    }
}

fn compare_row(r: &mut SamplingReport, at: (usize, usize), params: &SamplingParams, row: &[f32], want: &Sampled, got: &Sampled) {
    r.rows += 1;
    let mismatch = want.token != got.token;
    if params.is_greedy() {
        r.greedy_rows += 1;
        r.greedy_mismatches += usize::from(mismatch);
    } else {
        r.sampled_rows += 1;
        r.sampled_mismatches += usize::from(mismatch);
    }
    if mismatch && r.mismatches.len() < 10 {
        r.mismatches.push((at.0, at.1, want.token, got.token));
    }
    let logprob = |id: u32| reference_logprob(row, id);
    if row.is_empty() || got.token as usize >= row.len() {
        r.max_logprob_err = f64::INFINITY;
    } else {
        r.max_logprob_err = r.max_logprob_err.max(err(logprob(got.token), got.logprob));
    }
    if params.logprobs {
        r.top_rows += 1;
        let ids = |s: &Sampled| s.top_logprobs.iter().map(|&(id, _)| id).collect::<Vec<_>>();
        if ids(want) != ids(got) {
            r.top_id_mismatches += 1;
        } else {
            for &(id, lp) in &got.top_logprobs {
                r.max_top_logprob_err = r.max_top_logprob_err.max(err(logprob(id), lp));
            }
        }
    }
}

/// |a - b| / max(1, |a|), with equal infinities counting as 0 (a -inf logprob is exact on both sides):
/// absolute for ordinary logprobs, relative for the huge ones next to a +inf logit (taken as f32::MAX),
/// which an f32 holds only to its precision.
fn err(reference: f64, got: f32) -> f64 {
    let got = f64::from(got);
    if reference == got {
        0.0
    } else {
        (reference - got).abs() / reference.abs().max(1.0)
    }
}

/// log_softmax of a processed row (no NaN) at `id`, all in f64.
fn reference_logprob(row: &[f32], id: u32) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let z: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    f64::from(row[id as usize]) - max - z.ln()
}

fn token(rng: &mut StdRng, vocab: usize) -> u32 {
    // A few ids past the vocabulary: both samplers must ignore them.
    rng.random_range(0..vocab as u32 + 2)
}

fn row_params(r: &RowCase, vocab: usize, seed: u64, rng: &mut StdRng) -> SamplingParams {
    let mut p = SamplingParams {
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        min_p: r.min_p,
        repetition_penalty: r.repetition_penalty,
        frequency_penalty: r.frequency_penalty,
        presence_penalty: r.presence_penalty,
        logprobs: r.logprobs,
        top_logprobs: r.top_logprobs,
        seed: Some(seed),
        ..Default::default()
    };
    for _ in 0..r.bias {
        let bias = match rng.random_range(0..8) {
            0 => f32::NEG_INFINITY,
            1 => 100.0,
            _ => rng.random_range(-5.0..5.0),
        };
        p.logit_bias.insert(token(rng, vocab), bias);
    }
    p
}

/// Box-Muller normal draw.
fn normal(rng: &mut StdRng) -> f32 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

fn random_row(rng: &mut StdRng, vocab: usize, case: &SamplingCase, r: &RowCase) -> Vec<f32> {
    if r.degenerate {
        return (0..vocab).map(|_| if rng.random::<bool>() { f32::NAN } else { f32::NEG_INFINITY }).collect();
    }
    let q = case.quantum;
    let mut row: Vec<f32> = (0..vocab)
        .map(|_| normal(rng) * case.scale)
        .map(|x| if q > 0.0 { (x / q).round() * q } else { x })
        .collect();
    for i in 0..vocab {
        let roll: f32 = rng.random();
        if roll < case.ties {
            row[i] = row[rng.random_range(0..vocab)];
        } else if roll < case.ties + case.special {
            row[i] = if rng.random::<bool>() { f32::NAN } else { f32::NEG_INFINITY };
        }
    }
    if vocab > 0 {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for _ in 0..case.max_ties {
            row[rng.random_range(0..vocab)] = max;
        }
        for _ in 0..r.pos_inf {
            row[rng.random_range(0..vocab)] = f32::INFINITY;
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(json: &str) -> SamplingCase {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn cpu_against_itself_agrees_exactly() {
        let c = case(
            r#"{"batch": 6, "vocab": 300, "steps": 3, "ties": 0.05, "max_ties": 2, "special": 0.02, "quantum": 0.25, "rows": [
                {"temperature": 0, "logprobs": true, "top_logprobs": 5, "bias": 3, "repetition_penalty": 1.2, "prompt": 10, "pos_inf": 2},
                {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "frequency_penalty": 0.3, "output": 7},
                {"temperature": 1.0, "degenerate": true, "bias": 2, "logprobs": true, "top_logprobs": 3}]}"#,
        );
        let r = compare_with_cpu(&Device::Cpu, 7, &c).unwrap();
        assert_eq!((r.rows, r.greedy_rows, r.sampled_rows), (18, 6, 12));
        assert_eq!((r.greedy_mismatches, r.sampled_mismatches, r.top_id_mismatches), (0, 0, 0));
        assert_eq!(r.token_agreement, 1.0);
        assert_eq!(r.top_rows, 12);
        assert!(r.max_logprob_err < 1e-5, "{r:?}");
        assert!(r.max_top_logprob_err < 1e-5, "{r:?}");
    }

    #[test]
    fn histogram_mode_counts_every_draw() {
        let c = case(r#"{"batch": 50, "steps": 4, "logits": [0.0, 1.0, -1.0, 2.0], "rows": [{"temperature": 1.0}]}"#);
        let r = compare_with_cpu(&Device::Cpu, 1, &c).unwrap();
        assert_eq!(r.vocab, 4);
        assert_eq!(r.device_counts.iter().sum::<u64>(), 200);
        assert_eq!(r.device_counts, r.cpu_counts);
        // Token 3 (logit 2) is the most likely by far: about 64 % of the draws.
        assert!(r.device_counts[3] > 100, "{:?}", r.device_counts);
    }

    #[test]
    fn reference_logprob_is_a_log_softmax() {
        let lp = reference_logprob(&[0.0, f32::NEG_INFINITY, 0.0], 0);
        assert!((lp - 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(reference_logprob(&[0.0, f32::NEG_INFINITY], 1), f64::NEG_INFINITY);
    }

    #[test]
    fn an_empty_case_is_a_bad_request() {
        let err = compare_with_cpu(&Device::Cpu, 0, &case(r#"{"batch": 0, "vocab": 4, "rows": []}"#)).unwrap_err();
        assert!(matches!(err, EngineError::BadRequest { .. }), "{err}");
    }
}
