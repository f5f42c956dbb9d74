//! Sampling a batch of rows, in parallel when the batch is large enough to pay for the threads.
//!
//! Rows share nothing (each sequence has its own generator and counts), so the result for a row is
//! the same whether it is sampled alone, in any batch, on any number of threads.

use super::{Sampled, SequenceSampler};
use crate::request::SamplingParams;
use std::thread;

/// Below this many logits in the batch, spawning threads costs more than it saves (a thread costs
/// tens of microseconds; a 150k row takes a few hundred).
const PARALLEL_MIN_LOGITS: usize = 1 << 18;

/// Samples `rows` (`[batch, vocab]`, row-major) in place, row `i` with `seqs[i]`; returns one
/// [`Sampled`] per row, in order.
///
/// # Panics
/// If `rows.len() != seqs.len() * vocab`: the runner and the scheduler disagree on the batch, which
/// is a bug in the engine, not a property of a request.
pub fn sample_batch(
    rows: &mut [f32],
    vocab: usize,
    seqs: &mut [(&mut SequenceSampler, &SamplingParams)],
) -> Vec<Sampled> {
    assert_eq!(
        rows.len(),
        seqs.len() * vocab,
        "logits hold {} values, expected [batch {}, vocab {vocab}]",
        rows.len(),
        seqs.len()
    );
    if vocab == 0 {
        return seqs
            .iter_mut()
            .map(|(seq, params)| seq.sample(&mut [], params))
            .collect();
    }
    let threads = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seqs.len());
    if threads <= 1 || rows.len() < PARALLEL_MIN_LOGITS {
        return sample_rows(rows, vocab, seqs);
    }
    let per_thread = seqs.len().div_ceil(threads);
    thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks_mut(per_thread * vocab)
            .zip(seqs.chunks_mut(per_thread))
            .map(|(rows, seqs)| scope.spawn(move || sample_rows(rows, vocab, seqs)))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn sample_rows(
    rows: &mut [f32],
    vocab: usize,
    seqs: &mut [(&mut SequenceSampler, &SamplingParams)],
) -> Vec<Sampled> {
    rows.chunks_mut(vocab)
        .zip(seqs.iter_mut())
        .map(|(row, (seq, params))| seq.sample(row, params))
        .collect()
}
