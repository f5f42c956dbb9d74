//! Tensor parallelism: the pieces a model is sharded with, independent of how ranks talk.
//!
//! - [`Communicator`] (comm.rs): all-reduce and all-gather between the ranks of one model. NCCL between
//!   GPUs is one implementation (nccl.rs, feature `nccl`); [`LocalGroup`] runs N ranks as threads of one process on any
//!   device, which is how CI checks on the CPU that the sharded math equals the unsharded one.
//! - Sharding rules (shard.rs), Megatron-style: a column-parallel linear splits its output rows (q/k/v
//!   by heads, gate/up by intermediate rows, lm_head by vocabulary) and needs no communication; a
//!   row-parallel linear splits its input columns (o_proj, down_proj) and sums the ranks' partial
//!   products with one all-reduce; the embedding splits the vocabulary and all-reduces the looked-up
//!   rows (each token's row lives on exactly one rank).
//!
//! With those, one decoder layer costs two all-reduces (after o_proj and after down_proj), and each rank
//! holds `1 / world` of the weights and of the KV heads.

mod comm;
#[cfg(feature = "nccl")]
mod nccl;
mod shard;
#[cfg(test)]
mod tests;

pub use comm::{Communicator, LocalComm, LocalGroup, ABORTED};
#[cfg(feature = "nccl")]
pub use nccl::{NcclComm, NcclId};
pub use shard::{shard_cols, shard_rows, ColumnParallel, RowParallel, VocabParallelEmbedding};
