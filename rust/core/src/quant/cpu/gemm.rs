//! How a quantized matmul is split over threads and tiled for the caches.
//!
//! Work is split over output rows only (every task reads distinct weight rows; weights dominate the bytes
//! moved at decode). Within a task, tiles of [`ROW_TILE`] rows stay in L1/L2 while every group of four
//! tokens passes over them, so at prefill each weight row leaves memory once per call, not once per token.

use super::act::{quantize_row, ActBlock, QK};
use super::{pool, Kernels, QMatrix};
use rayon::prelude::*;

/// Weight rows kept hot while the tokens pass: 16 rows of a 8960-wide Q4 matrix are ~80 KB (L2).
const ROW_TILE: usize = 16;
/// Tasks per thread: more than one, so a core slowed by another process does not hold the others up.
const TASKS_PER_THREAD: usize = 4;
/// Tokens at which quantizing the activations is worth splitting over threads.
const PARALLEL_QUANTIZE_TOKENS: usize = 16;

/// `x: [t, k] -> [t, k / 32]` activation blocks.
pub fn quantize_activations(x: &[f32], k: usize) -> Vec<ActBlock> {
    let mut act = vec![ActBlock::ZERO; x.len() / QK];
    let kb = k / QK;
    if x.len() / k >= PARALLEL_QUANTIZE_TOKENS {
        act.par_chunks_mut(kb).zip(x.par_chunks(k)).for_each(|(a, xr)| quantize_row(xr, a));
    } else {
        act.chunks_mut(kb).zip(x.chunks(k)).for_each(|(a, xr)| quantize_row(xr, a));
    }
    act
}

/// `act: [t, k / 32]` blocks -> `[t, n]`.
pub fn matmul(w: &QMatrix, act: &[ActBlock], t: usize, kern: Kernels) -> Vec<f32> {
    let (n, kb) = (w.n, w.k / QK);
    let rows_per_task = n.div_ceil(pool::threads() * TASKS_PER_THREAD).max(1);
    let token = |i: usize| &act[i * kb..(i + 1) * kb];
    if t == 1 {
        let mut out = vec![0f32; n];
        out.par_chunks_mut(rows_per_task).enumerate().for_each(|(c, ys)| {
            for (i, y) in ys.iter_mut().enumerate() {
                // SAFETY: `kern` comes from `Kernels::for_type`, which checks the CPU's features.
                *y = unsafe { (kern.one)(w.row(c * rows_per_task + i), [token(0)]) }[0];
            }
        });
        return out;
    }
    // [n, t]: each task owns whole rows; transposed once at the end.
    let mut out_nt = vec![0f32; n * t];
    out_nt.par_chunks_mut(rows_per_task * t).enumerate().for_each(|(c, ys)| {
        let first = c * rows_per_task;
        let rows = ys.len() / t;
        for tile in (0..rows).step_by(ROW_TILE) {
            let tile_rows = tile..(tile + ROW_TILE).min(rows);
            let mut g = 0;
            while g + 4 <= t {
                let xs = [token(g), token(g + 1), token(g + 2), token(g + 3)];
                for r in tile_rows.clone() {
                    // SAFETY: as above.
                    let y = unsafe { (kern.four)(w.row(first + r), xs) };
                    ys[r * t + g..r * t + g + 4].copy_from_slice(&y);
                }
                g += 4;
            }
            for g in g..t {
                for r in tile_rows.clone() {
                    // SAFETY: as above.
                    ys[r * t + g] = unsafe { (kern.one)(w.row(first + r), [token(g)]) }[0];
                }
            }
        }
    });
    let mut out = vec![0f32; t * n];
    for (r, col) in out_nt.chunks_exact(t).enumerate() {
        for (g, &v) in col.iter().enumerate() {
            out[g * n + r] = v;
        }
    }
    out
}
