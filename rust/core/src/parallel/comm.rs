//! How the ranks of a tensor-parallel model exchange activations.

use candle_core::{bail, DType, Result, Tensor};
use std::sync::{Arc, Barrier, Mutex};

/// The collective operations a sharded model needs. Every rank calls each operation in the same order
/// with tensors of the same shape; each call returns once every rank has contributed.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The element-wise sum of `x` over all ranks, on every rank (same shape and dtype as `x`).
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// The ranks' tensors concatenated along `dim` in rank order, on every rank.
    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor>;
}

/// `world` ranks in one process (one thread each): a test and development stand-in for NCCL. Sums are
/// taken in rank order in f32, so every rank gets bit-identical results and runs are reproducible.
pub struct LocalGroup {
    slots: Mutex<Vec<Option<Tensor>>>,
    barrier: Barrier,
}

/// One rank's handle on a [`LocalGroup`].
#[derive(Clone)]
pub struct LocalComm {
    group: Arc<LocalGroup>,
    rank: usize,
    world: usize,
}

impl LocalGroup {
    /// The handles of ranks `0..world`, to be moved to one thread each.
    pub fn new(world: usize) -> Vec<LocalComm> {
        assert!(world > 0, "a group has at least one rank");
        let group = Arc::new(LocalGroup { slots: Mutex::new(vec![None; world]), barrier: Barrier::new(world) });
        (0..world).map(|rank| LocalComm { group: group.clone(), rank, world }).collect()
    }
}

impl LocalComm {
    /// Publishes `x` in this rank's slot, waits for every rank, and returns all slots in rank order.
    /// The second barrier keeps a fast rank from overwriting its slot (next call) while others read.
    fn exchange(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let g = &self.group;
        g.slots.lock().map_err(|_| candle_core::Error::Msg("communicator lock poisoned".into()))?[self.rank] = Some(x.clone());
        g.barrier.wait();
        let all: Option<Vec<Tensor>> = g.slots.lock().map_err(|_| candle_core::Error::Msg("communicator lock poisoned".into()))?.iter().cloned().collect();
        g.barrier.wait();
        match all {
            Some(all) => Ok(all),
            None => bail!("all-reduce: a rank contributed nothing"),
        }
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let parts = self.exchange(x)?;
        if parts.iter().any(|p| p.shape() != x.shape()) {
            bail!("all-reduce: ranks contributed different shapes");
        }
        let mut sum = parts[0].to_dtype(DType::F32)?;
        for p in &parts[1..] {
            sum = (sum + p.to_dtype(DType::F32)?)?;
        }
        sum.to_dtype(x.dtype())
    }

    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let parts = self.exchange(x)?;
        Tensor::cat(&parts, dim)
    }
}
