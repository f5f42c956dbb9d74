//! The [`Communicator`] between GPUs of one host: NCCL (through cudarc, as candle's `nccl` feature
//! builds it), enqueued on the stream candle runs every op of the device on, so a collective is ordered
//! with the kernels around it and a decode step that contains them can still be captured into a CUDA
//! graph (NCCL collectives are capturable).
//!
//! One rank per GPU, each rank its own thread or process: a thread per GPU would share one process's
//! weights loader and engine thread, but every rank then needs its own host thread anyway (a blocking
//! collective on one thread would wait for ranks it has not launched yet), and a process per GPU keeps a
//! CUDA fault on one card from taking down the others; NCCL serves both, the ranks meeting through the
//! [`Id`] rank 0 creates and hands to the others.
//!
//! Sums are taken by NCCL in the tensors' dtype (a 16-bit activation is summed in 16 bits; LocalGroup
//! sums in f32).
//!
//! Behind the `nccl` feature: candle links cudarc against libnccl at build time. Compile-checked only
//! so far; no multi-GPU host has run it.

use super::Communicator;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

pub use candle_core::cuda_backend::cudarc::nccl::Id as NcclId;

/// cudarc's communicator holds NCCL's raw handle, which NCCL lets any one thread use at a time: the
/// mutex below makes it one at a time.
struct SendComm(Comm);
// SAFETY: an ncclComm_t is not tied to the thread that created it; every use goes through the Mutex.
unsafe impl Send for SendComm {}

pub struct NcclComm {
    comm: Mutex<SendComm>,
    rank: usize,
    world: usize,
}

impl NcclComm {
    /// A fresh id for a group, made by rank 0 and passed to every rank (a channel between threads, or
    /// its 128 bytes ([`Id::internal`]) between processes).
    pub fn unique_id() -> Result<Id> {
        Id::new().map_err(|e| candle_core::Error::Msg(format!("nccl: {e:?}")))
    }

    /// Rank `rank` of `world` on `device` (one GPU per rank), joining the group of `id`. Blocks until
    /// every rank has joined.
    pub fn new(device: &CudaDevice, rank: usize, world: usize, id: Id) -> Result<Self> {
        if rank >= world {
            bail!("nccl: rank {rank} of a group of {world}");
        }
        let comm = Comm::from_rank(device.cuda_stream(), rank, world, id).map_err(|e| candle_core::Error::Msg(format!("nccl: {e:?}")))?;
        Ok(NcclComm { comm: Mutex::new(SendComm(comm)), rank, world })
    }

    fn run(&self, x: &Tensor, op: Collective) -> Result<Tensor> {
        let comm = self.comm.lock().map_err(|_| candle_core::Error::Msg("nccl: communicator lock poisoned".into()))?;
        x.contiguous()?.apply_op1_no_bwd(&NcclOp { comm: &comm.0, op, world: self.world })
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Collective::AllReduceSum)
    }

    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        // NCCL gathers whole buffers rank after rank: `[world, ...x]`, then the ranks' parts are laid
        // side by side along `dim`.
        let g = self.run(x, Collective::AllGather)?;
        let parts = (0..self.world).map(|r| g.get(r)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, dim)
    }
}

#[derive(Clone, Copy)]
enum Collective {
    AllReduceSum,
    /// Output `[world, ...input]`.
    AllGather,
}

struct NcclOp<'a> {
    comm: &'a Comm,
    op: Collective,
    world: usize,
}

impl NcclOp<'_> {
    fn launch<T: CudaDType + DeviceRepr + NcclType>(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((o1, o2)) = l.contiguous_offsets() else { bail!("nccl: input must be contiguous") };
        let src = s.as_cuda_slice::<T>()?.slice(o1..o2);
        let dev = s.device().clone();
        let (len, shape) = match self.op {
            Collective::AllReduceSum => (o2 - o1, l.shape().clone()),
            Collective::AllGather => {
                let mut dims = vec![self.world];
                dims.extend_from_slice(l.dims());
                ((o2 - o1) * self.world, Shape::from(dims))
            }
        };
        // SAFETY: NCCL writes every element of `dst` before any kernel on this stream reads it.
        let mut dst = unsafe { dev.alloc::<T>(len) }?;
        let status = match self.op {
            Collective::AllReduceSum => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Collective::AllGather => self.comm.all_gather(&src, &mut dst),
        };
        status.map_err(|e| candle_core::Error::Msg(format!("nccl: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), shape))
    }
}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("nccl: collectives run on CUDA tensors (the CPU's ranks use LocalGroup)")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.launch::<f32>(s, l),
            DType::BF16 => self.launch::<half::bf16>(s, l),
            DType::F16 => self.launch::<half::f16>(s, l),
            other => bail!("nccl: {other:?} tensors are not exchanged"),
        }
    }
}
