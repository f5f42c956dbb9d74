//! The plain-data side of device sampling: each row's parameters and its few penalised or biased tokens
//! packed as the 32-bit words that kernels/sampling.cu reads (`RowParams [B]`, then `Entry [E]`, one
//! upload), and the kernel's output words unpacked into [`Sampled`] values.
//!
//! Only tokens that step 1 of the CPU sampler touches are listed (seen tokens under a repetition
//! penalty, generated ones under frequency / presence penalties, biased ones), each once per row with
//! flags saying which rules apply, so the kernel reproduces the CPU's per-token arithmetic in the same
//! order. Tokens outside the vocabulary are dropped, as the CPU ignores them.

use super::{Sampled, SequenceSampler};
use crate::error::{EngineError, Result};
use crate::request::SamplingParams;
use mlc_kernels::{SAMPLING_ENTRY_WORDS, SAMPLING_MAX_TOP, SAMPLING_OUT_WORDS, SAMPLING_ROW_WORDS};
use std::collections::BTreeMap;

/// `Entry::flags` in sampling.cu.
const ENTRY_SEEN: u32 = 1;
const ENTRY_COUNTED: u32 = 2;
const ENTRY_BIAS: u32 = 4;

/// Rejects what the kernel cannot do before any generator is advanced.
pub(crate) fn check_params(seqs: &[(&mut SequenceSampler, &SamplingParams)]) -> Result<()> {
    for (_, params) in seqs {
        if params.logprobs && params.top_logprobs > SAMPLING_MAX_TOP {
            return Err(EngineError::bad_request(
                "top_logprobs",
                format!("at most {SAMPLING_MAX_TOP}, got {}", params.top_logprobs),
            ));
        }
    }
    Ok(())
}

/// The penalty / bias entries of one row, by token: `(count, bias, flags)`.
fn row_entries(seq: &SequenceSampler, params: &SamplingParams, vocab: usize) -> BTreeMap<u32, (u32, f32, u32)> {
    let mut entries: BTreeMap<u32, (u32, f32, u32)> = BTreeMap::new();
    let in_vocab = |token: u32| (token as usize) < vocab;
    if params.repetition_penalty != 1.0 {
        for token in seq.seen_tokens().filter(|&t| in_vocab(t)) {
            entries.entry(token).or_insert((0, 0.0, 0)).2 |= ENTRY_SEEN;
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        for (token, count) in seq.output_counts().filter(|&(t, _)| in_vocab(t)) {
            let e = entries.entry(token).or_insert((0, 0.0, 0));
            e.0 = count;
            e.2 |= ENTRY_COUNTED;
        }
    }
    for (&token, &bias) in params.logit_bias.iter().filter(|(&t, _)| in_vocab(t)) {
        let e = entries.entry(token).or_insert((0, 0.0, 0));
        e.1 = bias;
        e.2 |= ENTRY_BIAS;
    }
    entries
}

/// The packed parameters of a batch and how many rows of `vocab` floats the kernel's work buffer needs
/// (one per row that lists tokens; the others are read straight from the logits).
pub(crate) struct Packed {
    pub words: Vec<u32>,
    pub work_rows: usize,
}

/// `RowParams::work_row` of a row that lists no tokens (never read by the kernel).
const NO_WORK_ROW: u32 = u32::MAX;

/// Packs every row's parameters (with `uniforms[i]`, the number row `i` draws with) and entries for a
/// `[seqs.len(), vocab]` batch.
pub(crate) fn pack(vocab: usize, seqs: &[(&mut SequenceSampler, &SamplingParams)], uniforms: &[f64]) -> Result<Packed> {
    let rows: Vec<_> = seqs.iter().map(|(seq, params)| row_entries(seq, params, vocab)).collect();
    let num_entries: usize = rows.iter().map(BTreeMap::len).sum();
    u32::try_from(num_entries)
        .map_err(|_| EngineError::Unsupported(format!("{num_entries} penalty and bias entries in one batch")))?;
    let mut words = Vec::with_capacity(seqs.len() * SAMPLING_ROW_WORDS + num_entries * SAMPLING_ENTRY_WORDS);
    let (mut start, mut work_rows) = (0u32, 0u32);
    for (((_, params), entries), &uniform) in seqs.iter().zip(&rows).zip(uniforms) {
        let end = start + entries.len() as u32;
        let num_top = if params.logprobs { params.top_logprobs.min(SAMPLING_MAX_TOP) as u32 } else { 0 };
        let u = uniform.to_bits();
        let work_row = if entries.is_empty() {
            NO_WORK_ROW
        } else {
            work_rows += 1;
            work_rows - 1
        };
        words.extend_from_slice(&[
            u as u32,
            (u >> 32) as u32,
            params.temperature.to_bits(),
            params.top_p.to_bits(),
            params.min_p.to_bits(),
            params.repetition_penalty.to_bits(),
            params.frequency_penalty.to_bits(),
            params.presence_penalty.to_bits(),
            params.top_k as u32,
            num_top,
            start,
            end,
            work_row,
            0,
            0,
            0,
        ]);
        start = end;
    }
    for entries in &rows {
        for (&token, &(count, bias, flags)) in entries {
            words.extend_from_slice(&[token, count, bias.to_bits(), flags]);
        }
    }
    Ok(Packed { words, work_rows: work_rows as usize })
}

/// One [`Sampled`] per row from the kernel's `[batch, SAMPLING_OUT_WORDS]` output.
pub(crate) fn unpack(words: &[u32], params: &[&SamplingParams]) -> Vec<Sampled> {
    words
        .chunks_exact(SAMPLING_OUT_WORDS)
        .zip(params)
        .map(|(w, params)| {
            let top_logprobs = if params.logprobs {
                let n = (w[2] as usize).min(SAMPLING_MAX_TOP);
                w[4..4 + 2 * n].chunks_exact(2).map(|p| (p[0], f32::from_bits(p[1]))).collect()
            } else {
                Vec::new()
            };
            Sampled { token: w[0], logprob: f32::from_bits(w[1]), top_logprobs }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_entries_follow_the_kernel_layout() {
        let mut params = SamplingParams {
            temperature: 0.7,
            top_k: 5,
            repetition_penalty: 1.3,
            frequency_penalty: 0.5,
            logprobs: true,
            top_logprobs: 3,
            seed: Some(1),
            ..Default::default()
        };
        params.logit_bias.insert(2, -1.5);
        params.logit_bias.insert(99, 4.0); // outside the vocabulary: dropped
        let mut seq = SequenceSampler::new(&params, &[4, 1, 50]);
        seq.observe(2);
        seq.observe(2);
        let other = SamplingParams::default();
        let mut plain = SequenceSampler::new(&other, &[3]);
        let seqs = [(&mut seq, &params), (&mut plain, &other)];
        let Packed { words, work_rows } = pack(10, &seqs, &[0.25, 0.5]).unwrap();
        assert_eq!(work_rows, 1);
        assert_eq!(words.len(), 2 * SAMPLING_ROW_WORDS + 3 * SAMPLING_ENTRY_WORDS);
        let row0 = &words[..SAMPLING_ROW_WORDS];
        assert_eq!(f64::from_bits(u64::from(row0[0]) | (u64::from(row0[1]) << 32)), 0.25);
        assert_eq!(f32::from_bits(row0[2]), 0.7);
        assert_eq!(row0[8], 5);
        assert_eq!((row0[9], row0[10], row0[11], row0[12]), (3, 0, 3, 0));
        let row1 = &words[SAMPLING_ROW_WORDS..2 * SAMPLING_ROW_WORDS];
        assert_eq!((row1[9], row1[10], row1[11], row1[12]), (0, 3, 3, NO_WORK_ROW)); // no entries, no copy
        let entries: Vec<&[u32]> = words[2 * SAMPLING_ROW_WORDS..].chunks(4).collect();
        assert_eq!(entries[0], &[1, 0, 0f32.to_bits(), ENTRY_SEEN]);
        assert_eq!(entries[1], &[2, 2, (-1.5f32).to_bits(), ENTRY_SEEN | ENTRY_COUNTED | ENTRY_BIAS]);
        assert_eq!(entries[2], &[4, 0, 0f32.to_bits(), ENTRY_SEEN]);
    }

    #[test]
    fn unpack_reads_tokens_and_requested_top_logprobs() {
        let mut words = vec![0u32; 2 * SAMPLING_OUT_WORDS];
        words[..6].copy_from_slice(&[7, (-0.5f32).to_bits(), 1, 0, 7, (-0.5f32).to_bits()]);
        words[SAMPLING_OUT_WORDS] = 3;
        words[SAMPLING_OUT_WORDS + 1] = (-2.0f32).to_bits();
        let with = SamplingParams { logprobs: true, top_logprobs: 1, ..Default::default() };
        let without = SamplingParams::default();
        let out = unpack(&words, &[&with, &without]);
        assert_eq!(out[0], Sampled { token: 7, logprob: -0.5, top_logprobs: vec![(7, -0.5)] });
        assert_eq!(out[1], Sampled { token: 3, logprob: -2.0, top_logprobs: vec![] });
    }

    #[test]
    fn too_many_top_logprobs_is_a_bad_request() {
        let params = SamplingParams { logprobs: true, top_logprobs: SAMPLING_MAX_TOP + 1, ..Default::default() };
        let mut seq = SequenceSampler::new(&params, &[]);
        let err = check_params(&[(&mut seq, &params)]).unwrap_err();
        assert!(matches!(err, EngineError::BadRequest { ref field, .. } if field == "top_logprobs"), "{err}");
    }
}
