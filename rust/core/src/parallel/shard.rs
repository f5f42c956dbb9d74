//! Megatron-style sharding of the linear layers and the embedding (see the module doc in mod.rs).

use super::Communicator;
use crate::model::linear::Linear;
use candle_core::{bail, DType, Result, Tensor};
use std::sync::Arc;

/// Rows `rank * n / world .. (rank + 1) * n / world` of `w` (`[n, ...]`): this rank's part of a
/// column-parallel weight (its output features). `n` must split evenly.
pub fn shard_rows(w: &Tensor, rank: usize, world: usize) -> Result<Tensor> {
    let n = w.dim(0)?;
    if world == 0 || n % world != 0 {
        bail!("shard: {n} rows do not split over {world} ranks");
    }
    w.narrow(0, rank * n / world, n / world)?.contiguous()
}

/// Columns of `w` (`[n, k]`) for a row-parallel weight (this rank's input features); `k` must split
/// evenly.
pub fn shard_cols(w: &Tensor, rank: usize, world: usize) -> Result<Tensor> {
    let k = w.dim(1)?;
    if world == 0 || k % world != 0 {
        bail!("shard: {k} columns do not split over {world} ranks");
    }
    w.narrow(1, rank * k / world, k / world)?.contiguous()
}

/// A linear layer whose output features are split over the ranks: `x: [T, in]` (the whole input on
/// every rank) -> this rank's `[T, out / world]`. No communication.
pub struct ColumnParallel {
    pub local: Linear,
}

impl ColumnParallel {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.local.forward(x)
    }
}

/// A linear layer whose input features are split over the ranks: this rank's `x: [T, in / world]` ->
/// the whole `[T, out]` on every rank, the partial products summed by one all-reduce. The bias is added
/// once, after the sum.
pub struct RowParallel {
    /// This rank's columns of the weight, without bias.
    pub local: Linear,
    pub bias: Option<Tensor>,
    pub comm: Arc<dyn Communicator>,
}

impl RowParallel {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.comm.all_reduce_sum(&self.local.forward(x)?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The token embedding with its vocabulary split over the ranks: each rank looks up the tokens in its
/// range (zeros for the others) and one all-reduce assembles every row.
pub struct VocabParallelEmbedding {
    /// `[vocab / world, hidden]`: rows `start .. start + len` of the table.
    pub local: Tensor,
    pub start: usize,
    pub comm: Arc<dyn Communicator>,
}

impl VocabParallelEmbedding {
    /// `tokens: [T]` u32 -> `[T, hidden]`
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let len = self.local.dim(0)?;
        let ids = tokens.to_dtype(DType::I64)?;
        let local_ids = (ids.clone() - self.start as f64)?;
        // In range: 0 <= id - start < len; the others look up row 0 and are zeroed.
        let inside = local_ids.ge(0i64)?.mul(&local_ids.lt(len as i64)?)?; // [T] u8
        let safe = inside.where_cond(&local_ids, &local_ids.zeros_like()?)?.to_dtype(DType::U32)?;
        let rows = self.local.index_select(&safe, 0)?; // [T, hidden]
        let mask = inside.to_dtype(rows.dtype())?.unsqueeze(1)?;
        self.comm.all_reduce_sum(&rows.broadcast_mul(&mask)?)
    }
}
