//! How a quantized matmul is split over threads and tiled for the caches.
//!
//! Work is split over output rows only (every task reads distinct weight rows; weights dominate the bytes
//! moved at decode). Within a task, 4-row tiles run over the tokens in groups of 8 (where the level has
//! such a tile) and 4, so each weight row
//! leaves memory once per call, not once per token, and each unpacked weight block serves 4 tokens.
//! Tiles write straight into the `[t, n]` output (a transpose afterwards cost 2-4 ms at a 256-token
//! prefill of a 1536-row matrix, in strided writes).

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

/// `[t, n]` output shared by the tasks of one matmul, each writing only the columns (output rows of the
/// weight) it owns.
pub(super) struct Out {
    pub ptr: *mut f32,
    pub t: usize,
    pub n: usize,
}

// SAFETY: tasks write disjoint elements (their own columns) and the pool joins them before the buffer is
// read or dropped.
unsafe impl Sync for Out {}

impl Out {
    /// Writes `y[i][j]` to token `g + j`, column `r + i`.
    fn put<const R: usize, const N: usize>(&self, r: usize, g: usize, y: [[f32; N]; R]) {
        assert!(r + R <= self.n && g + N <= self.t, "tile outside the output");
        for (i, yr) in y.iter().enumerate() {
            for (j, &v) in yr.iter().enumerate() {
                // SAFETY: in bounds (asserted above); column r + i belongs to the calling task only.
                unsafe { *self.ptr.add((g + j) * self.n + r + i) = v };
            }
        }
    }

    /// Writes `y[j]` to token `t0 + j`, columns `c0 .. c0 + R` (those below `n`).
    pub fn put_rows<const R: usize, const N: usize>(&self, c0: usize, t0: usize, y: [[f32; R]; N]) {
        assert!(t0 + N <= self.t && c0 < self.n, "tile outside the output");
        let cols = R.min(self.n - c0);
        for (j, yr) in y.iter().enumerate() {
            // SAFETY: in bounds (asserted above); these columns belong to the calling task only.
            unsafe { std::ptr::copy_nonoverlapping(yr.as_ptr(), self.ptr.add((t0 + j) * self.n + c0), cols) };
        }
    }
}

/// `act: [t, k / 32]` blocks -> `[t, n]`.
pub fn matmul(w: &QMatrix, act: &[ActBlock], t: usize, kern: Kernels) -> Vec<f32> {
    let n = w.n;
    let kb = w.k / QK;
    // Multiples of 4 rows, so only the last task has a partial tile.
    let rows_per_task = n.div_ceil(pool::threads() * TASKS_PER_THREAD).next_multiple_of(4);
    let token = |i: usize| &act[i * kb..(i + 1) * kb];
    let mut out = vec![0f32; t * n];
    let shared = Out { ptr: out.as_mut_ptr(), t, n };
    pool::run(n.div_ceil(rows_per_task), |c| {
        let rows = c * rows_per_task..((c + 1) * rows_per_task).min(n);
        let mut r = rows.start;
        // SAFETY (every kernel call): `kern` comes from `quant::cpu::kernels`, which checks the CPU's
        // features.
        while r + 4 <= rows.end {
            let wr = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
            let mut g = 0;
            if let Some(t4x8) = kern.t4x8 {
                while g + 8 <= t {
                    shared.put(r, g, unsafe { t4x8(wr, std::array::from_fn(|j| token(g + j))) });
                    g += 8;
                }
            }
            while g + 4 <= t {
                shared.put(r, g, unsafe { (kern.t4x4)(wr, [token(g), token(g + 1), token(g + 2), token(g + 3)]) });
                g += 4;
            }
            for g in g..t {
                shared.put(r, g, unsafe { (kern.t4x1)(wr, [token(g)]) });
            }
            r += 4;
        }
        for r in r..rows.end {
            let mut g = 0;
            while g + 4 <= t {
                shared.put(r, g, unsafe { (kern.t1x4)([w.row(r)], [token(g), token(g + 1), token(g + 2), token(g + 3)]) });
                g += 4;
            }
            for g in g..t {
                shared.put(r, g, unsafe { (kern.t1x1)([w.row(r)], [token(g)]) });
            }
        }
    });
    out
}
