//! How a quantized matmul is split over threads and tiled for the caches.
//!
//! Work is split over output rows only (every task reads distinct weight rows; weights dominate the bytes
//! moved at decode). Within a task, 4-row tiles run over the tokens in groups of 4, so each weight row
//! leaves memory once per call, not once per token, and each unpacked weight block serves 4 tokens.

use super::act::{quantize_row, ActBlock, QK};
use super::{pool, Kernels, QMatrix};

/// Tasks per thread: more than one, so a core slowed by another process does not hold the others up.
const TASKS_PER_THREAD: usize = 4;
/// Tokens at which quantizing the activations is worth splitting over threads.
const PARALLEL_QUANTIZE_TOKENS: usize = 16;

/// `x: [t, k] -> [t, k / 32]` activation blocks.
pub fn quantize_activations(x: &[f32], k: usize) -> Vec<ActBlock> {
    let mut act = vec![ActBlock::ZERO; x.len() / QK];
    let kb = k / QK;
    if x.len() / k >= PARALLEL_QUANTIZE_TOKENS {
        pool::for_each_chunk_mut(&mut act, kb, |i, a| quantize_row(&x[i * k..(i + 1) * k], a));
    } else {
        act.chunks_mut(kb).zip(x.chunks(k)).for_each(|(a, xr)| quantize_row(xr, a));
    }
    act
}

/// `act: [t, k / 32]` blocks -> `[t, n]`.
pub fn matmul(w: &QMatrix, act: &[ActBlock], t: usize, kern: Kernels) -> Vec<f32> {
    let n = w.n;
    let kb = w.k / QK;
    // Multiples of 4 rows, so only the last task has a partial tile.
    let rows_per_task = n.div_ceil(pool::threads() * TASKS_PER_THREAD).next_multiple_of(4);
    let token = |i: usize| &act[i * kb..(i + 1) * kb];
    // [n, t]: each task owns whole rows; transposed at the end (a no-op copy for t = 1).
    let mut out_nt = vec![0f32; n * t];
    pool::for_each_chunk_mut(&mut out_nt, rows_per_task * t, |c, ys| {
        let first = c * rows_per_task;
        let rows = ys.len() / t;
        let row = |r: usize| w.row(first + r);
        let mut r = 0;
        while r + 4 <= rows {
            let wr = [row(r), row(r + 1), row(r + 2), row(r + 3)];
            let mut g = 0;
            while g + 4 <= t {
                // SAFETY: `kern` comes from `quant::cpu::kernels`, which checks the CPU's features.
                let y = unsafe { (kern.t4x4)(wr, [token(g), token(g + 1), token(g + 2), token(g + 3)]) };
                for (i, yr) in y.iter().enumerate() {
                    ys[(r + i) * t + g..(r + i) * t + g + 4].copy_from_slice(yr);
                }
                g += 4;
            }
            for g in g..t {
                // SAFETY: as above.
                let y = unsafe { (kern.t4x1)(wr, [token(g)]) };
                for (i, yr) in y.iter().enumerate() {
                    ys[(r + i) * t + g] = yr[0];
                }
            }
            r += 4;
        }
        for r in r..rows {
            let mut g = 0;
            while g + 4 <= t {
                // SAFETY: as above.
                let y = unsafe { (kern.t1x4)([row(r)], [token(g), token(g + 1), token(g + 2), token(g + 3)]) };
                ys[r * t + g..r * t + g + 4].copy_from_slice(&y[0]);
                g += 4;
            }
            for g in g..t {
                // SAFETY: as above.
                ys[r * t + g] = unsafe { (kern.t1x1)([row(r)], [token(g)]) }[0][0];
            }
        }
    });
    if t == 1 {
        return out_nt;
    }
    let mut out = vec![0f32; t * n];
    for (r, col) in out_nt.chunks_exact(t).enumerate() {
        for (g, &v) in col.iter().enumerate() {
            out[g * n + r] = v;
        }
    }
    out
}
