//! A model sharded over `tensor_parallel_shards` in-process ranks ([`LocalGroup`]) as one [`CausalLm`]:
//! rank 0 runs on the caller's thread (the engine thread) with the engine's KV cache, ranks 1.. on a
//! thread each with their slice of the weights and a KV cache of their own over the same blocks. Every
//! call is mirrored to them (same inputs, same step metadata) before rank 0 runs it, since each rank
//! takes part in every all-reduce; rank 0's result is the answer (the ranks' are bit-identical).
//!
//! This is the CPU form of tensor parallelism: it runs the sharded math end to end through the
//! engine (scheduler, sampler, speculative decoding) and is how tests check it; on one host's CPU it
//! brings no speed (the matmuls already use every core). GPUs need NCCL between processes or
//! threads, one per GPU (parallel/nccl.rs), which the engine does not drive yet.
//!
//! A rank that fails in the middle of a step aborts the group, so the ranks waiting for it in a
//! collective return an error rather than wait forever; once every rank has returned, the group is
//! reset for the next step, and the step's first error is the answer.

use super::config::ModelConfig;
use super::{CausalLm, DecoderModel, WeightSource};
use crate::attention::{AttentionMetadata, PagedKvCache, StepAttention};
use crate::error::{EngineError, Result};
use crate::parallel::{LocalComm, LocalGroup};
use candle_core::{DType, Device, Tensor};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One call of [`CausalLm`], as sent to ranks 1..
enum Job {
    Hidden { tokens: Tensor, positions: Tensor, meta: AttentionMetadata },
    Forward { tokens: Tensor, positions: Tensor, sample_rows: Tensor, meta: AttentionMetadata },
    Logits(Tensor),
    Embed(Tensor),
}

struct Rank {
    jobs: Option<Sender<Job>>,
    done: Receiver<Result<()>>,
    thread: Option<JoinHandle<()>>,
}

pub struct ShardedLm {
    rank0: DecoderModel,
    /// Rank 0's handle on the group, to abort it when rank 0 fails and reset it after a failed step.
    group: LocalComm,
    others: Vec<Rank>,
}

impl ShardedLm {
    /// Loads each rank's slice of `w` on this thread (no rank communicates while loading), gives ranks
    /// 1.. their KV caches of `num_blocks` x `block_size` and starts their threads. Rank 0's cache is the
    /// engine's, sized by [`CausalLm::kv_heads`].
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, dtype: DType, world: usize, num_blocks: usize, block_size: usize) -> Result<Self> {
        let mut comms = LocalGroup::new(world).into_iter();
        let first = comms.next().ok_or_else(|| EngineError::bad_request(super::sharded::TP_KEY, "at least one shard"))?;
        let group = first.clone();
        let rank0 = DecoderModel::load_sharded(cfg, w, device, dtype, Arc::new(first))?;
        let mut others = Vec::with_capacity(world - 1);
        for comm in comms {
            let model = DecoderModel::load_sharded(cfg, w, device, dtype, Arc::new(comm.clone()))?;
            let lc = model.layer_config();
            let kv = PagedKvCache::new(lc.num_hidden_layers, num_blocks, block_size, lc.num_key_value_heads, lc.head_dim, dtype, device)?;
            let (jobs, inbox) = channel::<Job>();
            let (report, done) = channel::<Result<()>>();
            let thread = std::thread::Builder::new().name("mlc-tp-rank".into()).spawn(move || {
                for job in inbox {
                    let result = run_job(&model, &kv, job);
                    if result.is_err() {
                        comm.abort();
                    }
                    if report.send(result).is_err() {
                        break;
                    }
                }
            })?;
            others.push(Rank { jobs: Some(jobs), done, thread: Some(thread) });
        }
        Ok(ShardedLm { rank0, group, others })
    }

    /// Sends `job()` to ranks 1.., runs `own` here, then waits for them. The first rank to fail aborts
    /// the group (the others then fail in their next collective); its error is returned, not the
    /// aborted ranks' ("another rank failed"), and the group is reset.
    fn mirrored<T>(&self, job: impl Fn() -> Job, own: impl FnOnce() -> Result<T>) -> Result<T> {
        let stopped = || EngineError::Internal("a tensor-parallel rank has stopped".into());
        for r in &self.others {
            r.jobs.as_ref().and_then(|j| j.send(job()).ok()).ok_or_else(stopped)?;
        }
        let out = own();
        if out.is_err() {
            self.group.abort();
        }
        let mut errors = Vec::new();
        for r in &self.others {
            match r.done.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(stopped()),
            }
        }
        if out.is_ok() && errors.is_empty() {
            return out;
        }
        self.group.reset();
        let aborted = |e: &EngineError| e.to_string().contains(crate::parallel::ABORTED);
        let mut all: Vec<EngineError> = out.err().into_iter().chain(errors).collect();
        let first = all.iter().position(|e| !aborted(e)).unwrap_or(0);
        Err(all.swap_remove(first))
    }
}

/// What a rank other than 0 does with a job (its results are rank 0's, so they are dropped).
fn run_job(model: &DecoderModel, kv: &PagedKvCache, job: Job) -> Result<()> {
    match job {
        Job::Hidden { tokens, positions, meta } => model.forward_hidden(&tokens, &positions, kv, &kv.prepare(meta)?).map(drop),
        Job::Forward { tokens, positions, sample_rows, meta } => model.forward(&tokens, &positions, &sample_rows, kv, &kv.prepare(meta)?).map(drop),
        Job::Logits(h) => model.logits(&h).map(drop),
        Job::Embed(tokens) => model.embed(&tokens).map(drop),
    }
}

impl Drop for ShardedLm {
    fn drop(&mut self) {
        for r in &mut self.others {
            r.jobs.take(); // closes the rank's inbox: its loop ends
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl CausalLm for ShardedLm {
    fn config(&self) -> &ModelConfig {
        self.rank0.config()
    }

    fn device(&self) -> &Device {
        self.rank0.device()
    }

    fn dtype(&self) -> DType {
        self.rank0.dtype()
    }

    fn kv_heads(&self) -> usize {
        self.rank0.layer_config().num_key_value_heads
    }

    fn forward_hidden(&self, tokens: &Tensor, positions: &Tensor, kv: &PagedKvCache, step: &StepAttention) -> Result<Tensor> {
        let job = || Job::Hidden { tokens: tokens.clone(), positions: positions.clone(), meta: step.meta().clone() };
        self.mirrored(job, || self.rank0.forward_hidden(tokens, positions, kv, step))
    }

    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        // Every rank holds the same hidden states, so rank 0's rows stand for each rank's.
        self.mirrored(|| Job::Logits(h.clone()), || self.rank0.logits(h))
    }

    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        self.mirrored(|| Job::Embed(tokens.clone()), || self.rank0.embed(tokens))
    }

    fn forward(&self, tokens: &Tensor, positions: &Tensor, sample_rows: &Tensor, kv: &PagedKvCache, step: &StepAttention) -> Result<Tensor> {
        let job = || Job::Forward { tokens: tokens.clone(), positions: positions.clone(), sample_rows: sample_rows.clone(), meta: step.meta().clone() };
        self.mirrored(job, || self.rank0.forward(tokens, positions, sample_rows, kv, step))
    }
}
