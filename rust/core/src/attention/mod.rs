//! Paged attention: per-layer K/V caches split into fixed-size blocks, the write of new K/V into
//! their slots, and attention of each sequence's new query tokens over its cached context.
//!
//! Every operation takes the same plain metadata ([`AttentionMetadata`]) on every device, so the CUDA
//! kernels and these CPU implementations are interchangeable and the CPU one is their reference.

mod cpu;

use candle_core::{DType, Device, Tensor};

/// One sequence's slice of a step: its new query tokens and the context they attend to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqAttention {
    /// Index of the sequence's first query token in the step's flattened token list.
    pub query_start: usize,
    pub query_len: usize,
    /// Tokens in the cache after this step's write (= position of the last query token + 1).
    pub context_len: usize,
    /// Block ids holding positions `0..context_len`, in order.
    pub block_table: Vec<u32>,
}

/// Metadata for one step, shared by every layer.
#[derive(Debug, Clone, Default)]
pub struct AttentionMetadata {
    /// For each query token, the cache slot (`block * block_size + offset`) its K/V goes to. [num_tokens]
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqAttention>,
    pub block_size: usize,
}

impl AttentionMetadata {
    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }
}

/// K and V caches of one layer: `[num_blocks, block_size, num_kv_heads, head_dim]` each.
pub struct LayerKvCache {
    pub k: Tensor,
    pub v: Tensor,
}

/// The paged KV cache of the whole model.
pub struct PagedKvCache {
    pub layers: Vec<LayerKvCache>,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl PagedKvCache {
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shape = (num_blocks, block_size, num_kv_heads, head_dim);
        let layers = (0..num_layers)
            .map(|_| Ok(LayerKvCache { k: Tensor::zeros(shape, dtype, device)?, v: Tensor::zeros(shape, dtype, device)? }))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(PagedKvCache { layers, num_blocks, block_size, num_kv_heads, head_dim })
    }

    /// Writes the step's new K/V (`[num_tokens, num_kv_heads, head_dim]` each) into their slots.
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor, meta: &AttentionMetadata) -> candle_core::Result<()> {
        let cache = &self.layers[layer];
        let op = cpu::KvWrite { slot_mapping: &meta.slot_mapping };
        cache.k.inplace_op2(k, &op)?;
        cache.v.inplace_op2(v, &op)
    }

    /// Causal attention of the step's queries `[num_tokens, num_heads, head_dim]` over the cached
    /// context of their sequences; returns `[num_tokens, num_heads, head_dim]`.
    pub fn attend(&self, layer: usize, q: &Tensor, meta: &AttentionMetadata, scale: f32) -> candle_core::Result<Tensor> {
        let cache = &self.layers[layer];
        let op = cpu::PagedAttention { meta, scale };
        q.apply_op3_no_bwd(&cache.k, &cache.v, &op)
    }
}
