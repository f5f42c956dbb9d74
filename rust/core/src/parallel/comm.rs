//! How the ranks of a tensor-parallel model exchange activations.

use candle_core::{bail, DType, Result, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The message of a collective that ended because another rank aborted the group.
pub const ABORTED: &str = "collective: another rank of the group failed";

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
///
/// A rank that fails between collectives [aborts](LocalComm::abort) the group: the ranks waiting in a
/// collective, and any that enter one, get an error instead of waiting forever for it.
pub struct LocalGroup {
    state: Mutex<Rendezvous>,
    turn: Condvar,
    world: usize,
}

struct Rendezvous {
    slots: Vec<Option<Tensor>>,
    /// Ranks waiting at the current barrier.
    arrived: usize,
    /// Barriers passed: a waiting rank leaves when this moves.
    generation: u64,
    aborted: bool,
}

/// One rank's handle on a [`LocalGroup`].
#[derive(Clone)]
pub struct LocalComm {
    group: Arc<LocalGroup>,
    rank: usize,
}

impl LocalGroup {
    /// The handles of ranks `0..world`, to be moved to one thread each.
    pub fn new(world: usize) -> Vec<LocalComm> {
        assert!(world > 0, "a group has at least one rank");
        let state = Rendezvous { slots: vec![None; world], arrived: 0, generation: 0, aborted: false };
        let group = Arc::new(LocalGroup { state: Mutex::new(state), turn: Condvar::new(), world });
        (0..world).map(|rank| LocalComm { group: group.clone(), rank }).collect()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Rendezvous>> {
        self.state.lock().map_err(|_| candle_core::Error::Msg("communicator lock poisoned".into()))
    }

    /// Waits until every rank has arrived (or the group is aborted).
    fn barrier<'a>(&'a self, mut st: MutexGuard<'a, Rendezvous>) -> Result<MutexGuard<'a, Rendezvous>> {
        if st.aborted {
            bail!("{ABORTED}");
        }
        st.arrived += 1;
        if st.arrived == self.world {
            st.arrived = 0;
            st.generation += 1;
            self.turn.notify_all();
            return Ok(st);
        }
        let generation = st.generation;
        while st.generation == generation && !st.aborted {
            st = self.turn.wait(st).map_err(|_| candle_core::Error::Msg("communicator lock poisoned".into()))?;
        }
        if st.aborted {
            bail!("{ABORTED}");
        }
        Ok(st)
    }
}

impl LocalComm {
    /// Publishes `x` in this rank's slot, waits for every rank, and returns all slots in rank order.
    /// The second barrier keeps a fast rank from overwriting its slot (next call) while others read.
    fn exchange(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let g = &self.group;
        let mut st = g.lock()?;
        st.slots[self.rank] = Some(x.clone());
        let st = g.barrier(st)?;
        let all: Option<Vec<Tensor>> = st.slots.iter().cloned().collect();
        drop(g.barrier(st)?);
        match all {
            Some(all) => Ok(all),
            None => bail!("all-reduce: a rank contributed nothing"),
        }
    }

    /// Wakes every rank waiting in a collective, and fails every later one, with an error: called by a
    /// rank that failed and will not reach the collective the others wait in.
    pub fn abort(&self) {
        if let Ok(mut st) = self.group.lock() {
            st.aborted = true;
            self.group.turn.notify_all();
        }
    }

    /// Makes an aborted group usable again. Only once no rank is inside a collective (every rank has
    /// returned from the step that failed).
    pub fn reset(&self) {
        if let Ok(mut st) = self.group.lock() {
            *st = Rendezvous { slots: vec![None; self.group.world], arrived: 0, generation: st.generation + 1, aborted: false };
        }
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world
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
