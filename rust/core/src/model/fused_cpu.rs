//! The CPU forward of [`fused`](super::fused)'s ops where candle's composition of them is slow: candle's
//! element-wise ops run on one thread, over strided views, while the kernels' other threads wait. These
//! do the reference's arithmetic element for element (the same bits), split over rows on the CPU
//! kernels' threads.

use crate::quant::cpu::pool;

/// Rows of a [`silu_mul`] call per task: enough work to pay a task's hand-out.
const MIN_VALUES_PER_TASK: usize = 16 * 1024;

/// `gate_up: [t, 2f]` (gate columns, then up columns) -> `[t, f]`: `silu(gate) * up`, with candle's
/// `silu(v) = v / (1 + exp(-v))`.
pub fn silu_mul(gate_up: &[f32], t: usize, f: usize) -> Vec<f32> {
    assert_eq!(gate_up.len(), t * 2 * f, "silu-mul: input is not [t, 2f]");
    let mut out = vec![0f32; t * f];
    let rows_per_task = MIN_VALUES_PER_TASK.div_ceil(f.max(1)).max(1);
    pool::for_each_chunk_mut(&mut out, rows_per_task * f.max(1), |c, chunk| {
        for (i, o) in chunk.chunks_exact_mut(f).enumerate() {
            let row = &gate_up[(c * rows_per_task + i) * 2 * f..][..2 * f];
            let (gate, up) = row.split_at(f);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// The same bits as candle's `silu(gate) * up` (the reference), at row counts around a task's share.
    #[test]
    fn silu_mul_gives_the_reference_bits() {
        for (t, f) in [(1, 64), (3, 576), (40, 1536)] {
            let x: Vec<f32> = (0..t * 2 * f).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.013).collect();
            let got = super::silu_mul(&x, t, f);
            let xt = Tensor::from_vec(x, (t, 2 * f), &Device::Cpu).unwrap();
            let want = crate::model::fused::silu_mul_reference(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{t} x {f}");
        }
    }
}
