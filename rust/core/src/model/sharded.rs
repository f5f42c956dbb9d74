//! One rank's slice of a decoder for tensor parallelism (Megatron-style, see `parallel`'s module doc):
//! which dimensions split over `tensor_parallel_shards` ranks, the rank's own view of the config, and a
//! [`WeightSource`] adapter that narrows each tensor as it loads, so the architecture files and the layer
//! loaders run unchanged on either the whole model or a slice of it.
//!
//! What each rank holds (`world` ranks, rank `r`):
//! - q heads `r * heads / world ..` (q_proj rows, o_proj columns, gpt-oss sinks, OLMo 2's whole q norm);
//! - its KV heads: `kv_heads / world` of them, or, with fewer KV heads than ranks, the one KV head its q
//!   heads read (replicated on `world / kv_heads` ranks; each rank's KV cache holds its own copy);
//! - `1 / world` of every MLP's intermediate rows (gate/up rows, down columns), experts included (each
//!   expert split the same way, so routing stays whole and replicated on every rank);
//! - `ceil(vocab / world)` rows of the embedding and lm_head, zero-padded where the vocabulary does not
//!   split evenly (a padded row is never looked up, and its logits are cut after the all-gather);
//! - everything else whole: norms, routers, the shared expert's gate.
//! A bias after a row-parallel product (o_proj, gpt-oss's expert down bias) stays on rank 0 only, so the
//! all-reduce adds it once.

use super::config::{ModelConfig, QkNormKind};
use super::linear::{Linear, Weight};
use super::weight_shapes::weight_dims;
use super::weights::WeightSource;
use crate::error::{EngineError, Result};
use crate::parallel::Communicator;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// The engine argument (MLC's `tensor_parallel_shards`) every refusal names.
pub const TP_KEY: &str = "tensor_parallel_shards";

fn refuse(message: String) -> EngineError {
    EngineError::bad_request(TP_KEY, message)
}

/// How one model splits over `world` ranks, checked against its config.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    pub rank: usize,
    pub world: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    /// Rows of the embedding and lm_head per rank, padding included.
    vocab_per_rank: usize,
    qk_norm: QkNormKind,
}

impl ShardPlan {
    /// Refuses (a `BadRequest` naming `tensor_parallel_shards`) a shard count the model cannot split into.
    pub fn new(cfg: &ModelConfig, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(refuse(format!("rank {rank} of {world}: the shard count must be at least 1 and the rank below it")));
        }
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        if heads % world != 0 {
            return Err(refuse(format!("{world} shards: num_attention_heads {heads} is not a multiple of {world}")));
        }
        if kv_heads == 0 || (kv_heads % world != 0 && world % kv_heads != 0) {
            return Err(refuse(format!("{world} shards: num_key_value_heads {kv_heads} neither splits over {world} ranks nor divides {world} (to be replicated)")));
        }
        let mut widths: Vec<(&str, usize)> = Vec::new();
        let dense_layers = match &cfg.moe {
            None => true,
            Some(m) => (0..cfg.num_hidden_layers).any(|l| !m.sparse_layers.get(l).copied().unwrap_or(false)),
        };
        if dense_layers {
            widths.push(("intermediate_size", cfg.intermediate_size));
        }
        if let Some(m) = &cfg.moe {
            widths.push(("the experts' intermediate size", m.expert_intermediate));
            if let Some(s) = m.shared_expert_intermediate {
                widths.push(("shared_expert_intermediate_size", s));
            }
        }
        if let Some((name, n)) = widths.iter().find(|(_, n)| n % world != 0) {
            return Err(refuse(format!("{world} shards: {name} {n} is not a multiple of {world}")));
        }
        Ok(ShardPlan {
            rank,
            world,
            heads,
            kv_heads,
            head_dim: cfg.head_dim,
            vocab: cfg.vocab_size,
            vocab_per_rank: cfg.vocab_size.div_ceil(world),
            qk_norm: cfg.qk_norm,
        })
    }

    /// The config of this rank's layers: its heads, its KV heads (what its KV cache is sized by), its
    /// slice of every MLP, and its rows of the vocabulary.
    pub fn local_config(&self, cfg: &ModelConfig) -> ModelConfig {
        let mut c = cfg.clone();
        c.num_attention_heads = self.heads / self.world;
        c.num_key_value_heads = self.local_kv_heads();
        c.intermediate_size = cfg.intermediate_size / self.world;
        if let Some(m) = c.moe.as_mut() {
            m.expert_intermediate /= self.world;
            m.shared_expert_intermediate = m.shared_expert_intermediate.map(|s| s / self.world);
        }
        c.vocab_size = self.vocab_per_rank;
        c
    }

    fn local_kv_heads(&self) -> usize {
        (self.kv_heads / self.world).max(1)
    }

    /// Ranks holding the same KV head (1 when the KV heads split).
    pub fn kv_replicas(&self) -> usize {
        (self.world / self.kv_heads).max(1)
    }

    /// This rank's KV heads, `(first, count)`: with fewer KV heads than ranks, the head of the group its
    /// q heads belong to (q heads `r * h / w ..` use KV head `(r * h / w) / (h / kv)` = `r / (w / kv)`).
    fn kv_range(&self) -> (usize, usize) {
        let n = self.local_kv_heads();
        (self.rank / self.kv_replicas() * n, n)
    }

    /// This rank's even share of `n` (`n % world == 0`, checked by [`ShardPlan::new`]).
    fn even(&self, n: usize) -> (usize, usize) {
        (self.rank * n / self.world, n / self.world)
    }

    /// This rank's vocabulary rows `(first, real rows)`; the slice is padded to `vocab_per_rank`.
    fn vocab_range(&self) -> (usize, usize) {
        let start = (self.rank * self.vocab_per_rank).min(self.vocab);
        (start, self.vocab_per_rank.min(self.vocab - start))
    }

    /// Which rows of the linear layer at `prefix` this rank keeps, as `(first, count)` runs of its
    /// `[out, in]` weight, or the column run for a row-parallel layer; `None`: kept whole.
    fn linear_split(&self, prefix: &str, out: usize, inp: usize) -> Result<Split> {
        let hd = self.head_dim;
        let last = prefix.rsplit('.').next().unwrap_or(prefix);
        let scale = |(s, n): (usize, usize), k: usize| (s * k, n * k);
        let off = |(s, n): (usize, usize), o: usize| (s + o, n);
        Ok(match last {
            "q_proj" => Split::Rows(vec![scale(self.even(self.heads), hd)]),
            "k_proj" | "v_proj" => Split::Rows(vec![scale(self.kv_range(), hd)]),
            "qkv_proj" => {
                let (q, kv) = (self.heads * hd, self.kv_heads * hd);
                Split::Rows(vec![scale(self.even(self.heads), hd), off(scale(self.kv_range(), hd), q), off(scale(self.kv_range(), hd), q + kv)])
            }
            "gate_proj" | "up_proj" | "w1" | "w3" => Split::Rows(vec![self.even(out)]),
            // Phi-3's gate and up stacked: each half split alike.
            "gate_up_proj" => Split::Rows(vec![self.even(out / 2), off(self.even(out / 2), out / 2)]),
            "o_proj" | "down_proj" | "w2" => Split::Cols(self.even(inp)),
            "lm_head" | "embed_tokens" => Split::Vocab,
            "gate" | "router" | "shared_expert_gate" => Split::Whole,
            _ => return Err(refuse(format!("no sharding rule for the linear layer {prefix}"))),
        })
    }

    /// The dimension of the tensor `name` this rank narrows and its run, or how else it is held.
    fn tensor_split(&self, name: &str, dims: &[usize]) -> Result<TensorSplit> {
        let hd = self.head_dim;
        let last = name.rsplit('.').next().unwrap_or(name);
        let whole_qk = self.qk_norm == QkNormKind::Whole;
        Ok(match last {
            _ if name == "model.embed_tokens.weight" => TensorSplit::Vocab,
            "sinks" => TensorSplit::Narrow(0, self.even(self.heads)),
            _ if whole_qk && name.ends_with(".q_norm.weight") => TensorSplit::Narrow(0, (self.even(self.heads).0 * hd, self.heads / self.world * hd)),
            _ if whole_qk && name.ends_with(".k_norm.weight") => TensorSplit::Narrow(0, (self.kv_range().0 * hd, self.kv_range().1 * hd)),
            _ if name.ends_with("norm.weight") => TensorSplit::Whole,
            // gpt-oss's fused experts: `[E, hidden, 2I]` gate/up interleaved in pairs, so an even run of
            // the last dimension is whole (gate, up) pairs of this rank's intermediate rows.
            "gate_up_proj" if dims.len() == 3 => TensorSplit::Narrow(2, self.even(dims[2])),
            "gate_up_proj_bias" if dims.len() == 2 => TensorSplit::Narrow(1, self.even(dims[1])),
            "down_proj" if dims.len() == 3 => TensorSplit::Narrow(1, self.even(dims[1])),
            "down_proj_bias" if dims.len() == 2 => TensorSplit::RankZero,
            _ => return Err(refuse(format!("no sharding rule for the tensor {name}"))),
        })
    }
}

enum Split {
    /// Column-parallel: these runs of output rows (and of the bias), concatenated.
    Rows(Vec<(usize, usize)>),
    /// Row-parallel: this run of input columns; the bias on rank 0 only.
    Cols((usize, usize)),
    /// Vocabulary-parallel, padded.
    Vocab,
    Whole,
}

enum TensorSplit {
    Narrow(usize, (usize, usize)),
    Vocab,
    /// Kept on rank 0, zeros elsewhere (a bias added after a sum over ranks).
    RankZero,
    Whole,
}

/// The runs `(first, count)` of `t` along `dim`, concatenated, contiguous.
fn take(t: &Tensor, dim: usize, runs: &[(usize, usize)]) -> Result<Tensor> {
    let parts = runs.iter().map(|&(s, n)| t.narrow(dim, s, n)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, dim)?.contiguous()?)
}

/// Rows `first .. first + count` of `t` (`[rows, ...]`) followed by zero rows up to `len`.
fn take_padded(t: &Tensor, (first, count): (usize, usize), len: usize) -> Result<Tensor> {
    let rows = t.narrow(0, first, count)?;
    if count == len {
        return Ok(rows.contiguous()?);
    }
    let mut pad_shape = t.dims().to_vec();
    pad_shape[0] = len - count;
    Ok(Tensor::cat(&[rows, Tensor::zeros(pad_shape, t.dtype(), t.device())?], 0)?)
}

/// A [`WeightSource`] giving one rank's slice of every tensor of `inner` (the whole checkpoint), by the
/// plan's rules; a tensor without a rule is refused by name rather than silently replicated.
pub struct ShardedWeights<'a> {
    inner: &'a dyn WeightSource,
    plan: &'a ShardPlan,
}

impl<'a> ShardedWeights<'a> {
    pub fn new(inner: &'a dyn WeightSource, plan: &'a ShardPlan) -> Self {
        ShardedWeights { inner, plan }
    }

    /// The dense `[out, in]` matrix of a linear weight; a quantized one is refused (its blocks run along
    /// the input dimension, so a column split would cut through them).
    fn dense(&self, prefix: &str, w: &Weight) -> Result<Tensor> {
        match w {
            Weight::Dense(t) | Weight::Quantized(QMatMul::Tensor(t)) | Weight::Quantized(QMatMul::TensorF16(t)) => Ok(t.clone()),
            _ => Err(EngineError::Unsupported(format!("{TP_KEY} > 1 with quantized weights ({prefix}): load the model unquantized (quantized_matmul=False or a q0 checkpoint)"))),
        }
    }
}

impl WeightSource for ShardedWeights<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.tensor(name)?;
        let p = self.plan;
        match p.tensor_split(name, t.dims())? {
            TensorSplit::Whole => Ok(t),
            TensorSplit::Narrow(dim, run) => take(&t, dim, &[run]),
            TensorSplit::Vocab => take_padded(&t, p.vocab_range(), p.vocab_per_rank),
            TensorSplit::RankZero if p.rank == 0 => Ok(t),
            TensorSplit::RankZero => Ok(t.zeros_like()?),
        }
    }

    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        let l = self.inner.linear(prefix, bias)?;
        let p = self.plan;
        let (out, inp) = match weight_dims(&l.weight)[..] {
            [out, inp] => (out, inp),
            ref dims => return Err(EngineError::model_load("the checkpoint", format!("{prefix}.weight has shape {dims:?}, not [out, in]"))),
        };
        let split = p.linear_split(prefix, out, inp)?;
        if matches!(split, Split::Whole) {
            return Ok(l);
        }
        let w = self.dense(prefix, &l.weight)?;
        let (weight, bias) = match split {
            Split::Whole => return Ok(l),
            Split::Rows(runs) => (take(&w, 0, &runs)?, l.bias.as_ref().map(|b| take(b, 0, &runs)).transpose()?),
            Split::Cols(run) => (take(&w, 1, &[run])?, l.bias.filter(|_| p.rank == 0)),
            Split::Vocab => {
                let (range, len) = (p.vocab_range(), p.vocab_per_rank);
                (take_padded(&w, range, len)?, l.bias.as_ref().map(|b| take_padded(b, range, len)).transpose()?)
            }
        };
        Ok(Linear { weight: Weight::Dense(weight), bias })
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
}

/// The config the engine sizes its memory by with `shards` ranks in this process, once the shard count
/// is checked: the KV heads of all the ranks' caches together (a replicated KV head counts once per
/// rank that holds it). CUDA devices refuse more than one shard: they need NCCL ranks, one per GPU, which
/// the engine does not run yet.
pub fn sizing_config(cfg: &ModelConfig, shards: usize, on_cuda: bool) -> Result<ModelConfig> {
    if shards == 1 {
        return Ok(cfg.clone());
    }
    let plan = ShardPlan::new(cfg, 0, shards)?;
    if on_cuda {
        return Err(EngineError::Unsupported(format!(
            "{TP_KEY}={shards} on CUDA: multi-GPU ranks (NCCL, one per GPU) are not run by this engine yet; one GPU holds the whole model, and {TP_KEY} > 1 runs on the CPU only"
        )));
    }
    let mut c = cfg.clone();
    c.num_key_value_heads = plan.local_kv_heads() * shards;
    Ok(c)
}

/// What a sharded model's forward pass needs beyond its weights: the rank's group, how many ranks share
/// each KV head, and the true vocabulary size (the gathered logits are cut to it).
pub struct TensorParallel {
    pub comm: Arc<dyn Communicator>,
    pub plan: ShardPlan,
}

impl TensorParallel {
    /// The embedding rows of `tokens` (`[T]` u32) from this rank's vocabulary slice `table`
    /// (`[vocab_per_rank, hidden]`): each rank contributes the rows it holds (zeros for the others) and
    /// one all-reduce assembles them. -> `[T, hidden]`. Ids are checked against the vocabulary where
    /// requests enter the engine; here one outside it would get a zero row, not an error.
    pub fn embed(&self, table: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let start = self.plan.vocab_range().0;
        let emb = crate::parallel::VocabParallelEmbedding { local: table.clone(), start, comm: self.comm.clone() };
        Ok(emb.forward(tokens)?)
    }

    /// This rank's logits `[n, vocab_per_rank]` -> every rank's, in vocabulary order, `[n, vocab]`.
    pub fn gather_logits(&self, local: &Tensor) -> Result<Tensor> {
        Ok(self.comm.all_gather(local, 1)?.narrow(1, 0, self.plan.vocab)?)
    }

    /// A row-parallel output (`[T, hidden]`, this rank's partial sum) summed over the ranks.
    pub fn all_reduce(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.comm.all_reduce_sum(x)?)
    }

    /// RMSNorm over a projection whose heads are split over the ranks (OLMo 2's whole q / k norm):
    /// `x: [T, local width]`, `w`: this rank's part of the weight. The sum of squares is all-reduced; a
    /// KV head replicated on `r` ranks is counted `r` times, and its width too, so the mean is the sum
    /// over the ranks divided by `local width * world` either way. Computed in f32.
    pub fn rms_norm_split(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        let width = x.dim(1)? * self.plan.world;
        let x32 = x.to_dtype(DType::F32)?;
        let ss = self.comm.all_reduce_sum(&x32.sqr()?.sum_keepdim(1)?)?; // [T, 1]
        let rms = ((ss / width as f64)? + eps as f64)?.sqrt()?;
        Ok(x32.broadcast_div(&rms)?.broadcast_mul(&w.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
    }
}
