//! Paged attention: per-layer K/V caches split into fixed-size blocks, the write of new K/V into
//! their slots, and attention of each sequence's new query tokens over its cached context.
//!
//! A step's plain metadata ([`AttentionMetadata`]) is prepared once per step ([`PagedKvCache::prepare`]):
//! validated, and on CUDA planned and uploaded in one copy, so every layer's write and attend read the
//! same device arrays. The CPU implementations (`cpu.rs`) are the reference for the CUDA kernels
//! (`cuda.rs`, launching `mlc_kernels`' PTX on candle's stream).
//!
//! How a layer attends ([`AttnParams`]: scale, soft-cap, sliding window; gpt-oss's per-head sinks beside
//! it) is an argument of each attend call, not of the step: one step serves full and sliding layers alike (Gemma 2 alternates them), and
//! keys before a layer's window are skipped inside the kernels, never read.

pub mod check;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod kv_rows;
mod ops;
pub mod plan;
mod simd;
#[cfg(test)]
mod reference_tests;

use candle_core::{DType, Device, Tensor};

/// How one layer's queries attend. The step's plan is shared by every layer, so a layer's window and
/// cap are applied inside the kernels: nothing of them is planned or uploaded per layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnParams {
    /// Multiplies q·k (1/sqrt(head_dim), or query_pre_attn_scalar^-0.5 for Gemma).
    pub scale: f32,
    /// Gemma 2: score = softcap * tanh(score / softcap), applied after scaling, before the softmax.
    pub softcap: Option<f32>,
    /// Sliding window W: a query at position p attends keys at positions k with p - W < k <= p
    /// (W keys, itself included; this is HF transformers' sliding_window semantics). None = full causal.
    /// Keys before a query's window are never read, so their block-table entries may hold any valid
    /// block id (the KV manager may hand such blocks back to the pool while the sequence runs).
    pub window: Option<usize>,
}

impl AttnParams {
    /// Plain causal attention.
    pub fn causal(scale: f32) -> Self {
        AttnParams { scale, softcap: None, window: None }
    }

    /// The kernels need a positive finite scale (they take maxima of unscaled scores), a positive
    /// finite cap and a window of at least one key (the query itself).
    pub fn validate(&self) -> candle_core::Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            candle_core::bail!("attention: scale {} must be positive and finite", self.scale);
        }
        if let Some(c) = self.softcap.filter(|c| !(c.is_finite() && *c > 0.0)) {
            candle_core::bail!("attention: softcap {c} must be positive and finite");
        }
        if self.window == Some(0) {
            candle_core::bail!("attention: a sliding window holds at least one key");
        }
        Ok(())
    }

    /// First key position a query at `pos` attends (0 without a window).
    pub fn window_start(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

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

/// A step's metadata in the form the cache's device reads: the plain metadata (CPU) and, on CUDA, the
/// plan with its arrays uploaded once for all layers.
pub struct StepAttention {
    meta: AttentionMetadata,
    device: Option<DeviceStep>,
}

/// The device side of a step: spans of `packed` (`[plan.packed.len()]` u32 on the cache's device).
/// `num_blocks` and `block_size` are those of the cache it was validated against.
pub(crate) struct DeviceStep {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) num_blocks: usize,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) block_size: usize,
    pub(crate) plan: plan::StepPlan,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) packed: Tensor,
}

impl StepAttention {
    pub fn meta(&self) -> &AttentionMetadata {
        &self.meta
    }

    pub fn num_tokens(&self) -> usize {
        self.meta.num_tokens()
    }

    /// The split plan of a step prepared for a CUDA cache (`None` on CPU).
    pub fn plan(&self) -> Option<&plan::StepPlan> {
        self.device.as_ref().map(|d| &d.plan)
    }

    /// Of a step from [`PagedKvCache::prepare_fixed`]: the padded input ids and rope positions, `[bucket]`
    /// u32 each, as views of the step buffer (fixed addresses).
    pub fn fixed_inputs(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let d = self.device()?;
        let (t, p) = (d.plan.tokens, d.plan.rope_pos);
        if t.len == 0 {
            candle_core::bail!("attention step was not prepared with fixed inputs");
        }
        Ok((d.packed.narrow(0, t.start, t.len)?, d.packed.narrow(0, p.start, p.len)?))
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn device(&self) -> candle_core::Result<&DeviceStep> {
        self.device.as_ref().ok_or_else(|| candle_core::Error::Msg("attention step was prepared for a CPU cache".into()))
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
    /// For an FP8 cache, per layer the scales of its K and V rows: `[num_blocks, block_size,
    /// num_kv_heads, 1]` f32 each (one per token and KV head); empty otherwise.
    pub fp8_scales: Vec<LayerKvCache>,
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
        if dtype == DType::F8E4M3 && !(device.is_cpu() || device.is_cuda()) {
            candle_core::bail!("an FP8 KV cache (kv_cache_dtype \"fp8_e4m3\") runs on the CPU and on CUDA only");
        }
        let shape = (num_blocks, block_size, num_kv_heads, head_dim);
        let zeros = |shape: (usize, usize, usize, usize), dtype: DType| {
            (0..num_layers)
                .map(|_| Ok(LayerKvCache { k: Tensor::zeros(shape, dtype, device)?, v: Tensor::zeros(shape, dtype, device)? }))
                .collect::<candle_core::Result<Vec<_>>>()
        };
        let layers = zeros(shape, dtype)?;
        let fp8_scales = if dtype == DType::F8E4M3 { zeros((num_blocks, block_size, num_kv_heads, 1), DType::F32)? } else { Vec::new() };
        Ok(PagedKvCache { layers, fp8_scales, num_blocks, block_size, num_kv_heads, head_dim })
    }

    pub fn device(&self) -> Device {
        self.layers.first().map(|l| l.k.device().clone()).unwrap_or(Device::Cpu)
    }

    /// Validates a step's metadata against this cache and, on CUDA, plans it and uploads it (one
    /// host-to-device copy per step).
    pub fn prepare(&self, meta: AttentionMetadata) -> candle_core::Result<StepAttention> {
        plan::validate(&meta, self.num_blocks, self.block_size)?;
        let device = self.device();
        if !device.is_cuda() {
            return Ok(StepAttention { meta, device: None });
        }
        let mut plan = plan::plan(&meta);
        let packed = std::mem::take(&mut plan.packed);
        let n = packed.len();
        let packed = Tensor::from_vec(packed, n, &device)?; // [packed_len] u32
        let device = DeviceStep { num_blocks: self.num_blocks, block_size: self.block_size, plan, packed };
        Ok(StepAttention { meta, device: Some(device) })
    }

    /// Like [`prepare`](Self::prepare) for a decode step (one query token per sequence) laid out
    /// for `key` ([`plan::plan_fixed_decode`]) and uploaded into `buffer` (`[capacity]` u32 on the cache's
    /// device) instead of a fresh allocation, so that a CUDA graph captured over one such step replays
    /// any other with the same key. `tokens` are the sequences' input ids, stored in the same upload
    /// (read them back with [`StepAttention::fixed_inputs`]). `Ok(None)`: the step does not fit `key`.
    pub fn prepare_fixed(
        &self,
        meta: AttentionMetadata,
        tokens: &[u32],
        rope_pos: &[u32],
        key: plan::FixedDecodeKey,
        buffer: &Tensor,
    ) -> candle_core::Result<Option<StepAttention>> {
        plan::validate(&meta, self.num_blocks, self.block_size)?;
        let Some(mut plan) = plan::plan_fixed_decode(&meta, tokens, rope_pos, key) else { return Ok(None) };
        let packed = std::mem::take(&mut plan.packed);
        buffer.inplace_op1(&ops::UploadU32 { data: &packed })?;
        let device = DeviceStep { num_blocks: self.num_blocks, block_size: self.block_size, plan, packed: buffer.clone() };
        Ok(Some(StepAttention { meta, device: Some(device) }))
    }

    /// Writes the step's new K/V (`[num_tokens, num_kv_heads, head_dim]` each) into their slots.
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor, step: &StepAttention) -> candle_core::Result<()> {
        let cache = self.layer(layer)?;
        if step.num_tokens() == 0 {
            return Ok(());
        }
        let op = ops::KvWrite { step };
        if let Some(scales) = self.fp8_scales.get(layer).filter(|_| k.device().is_cuda()) {
            // The same quantization in kv_write.cu: scales first, then the rows (each recomputes amax).
            for (x, scale_cache, cache) in [(k, &scales.k, &cache.k), (v, &scales.v, &cache.v)] {
                scale_cache.inplace_op2(x, &ops::KvWriteFp8 { step, scales: true })?;
                cache.inplace_op2(x, &ops::KvWriteFp8 { step, scales: false })?;
            }
            return Ok(());
        }
        if let Some(scales) = self.fp8_scales.get(layer) {
            // Each row (one token's head) is scaled so that its largest magnitude is e4m3's largest
            // value, 448: no row saturates, and small rows stay out of e4m3's subnormals (SmolLM2's first
            // layer: 41 % of V below 2^-6). e4m3 keeps 3 mantissa bits either way: on SmolLM2 the cache
            // costs 0.11 nats per token scaled, 0.096 unscaled (tests/smollm2_gguf.rs).
            let e4m3 = |x: &Tensor, scale_cache: &Tensor, cache: &Tensor| -> candle_core::Result<()> {
                let x = x.to_dtype(DType::F32)?; // [num_tokens, kv_heads, head_dim]
                // A true division, as kv_write.cu's `amax / 448.f`: candle's `tensor / 448.0` multiplies by
                // 1/448, one f32 ulp away for some rows, which moves a tie of x / scale (common with bf16
                // inputs) to the other e4m3 neighbour, so the CPU and CUDA caches would differ.
                let amax = x.abs()?.max_keepdim(2)?; // [num_tokens, kv_heads, 1]
                let scale = amax.broadcast_div(&Tensor::new(448f32, x.device())?)?.maximum(f32::MIN_POSITIVE)?;
                scale_cache.inplace_op2(&scale, &op)?;
                // Clamped: a rounding of x / scale past 448 must saturate (e4m3 has no infinity).
                let q = x.broadcast_div(&scale)?.clamp(-448f32, 448f32)?.to_dtype(DType::F8E4M3)?;
                cache.inplace_op2(&q, &op)
            };
            e4m3(k, &scales.k, &cache.k)?;
            return e4m3(v, &scales.v, &cache.v);
        }
        if (cache.k.dtype(), k.dtype(), v.dtype()) == (DType::F16, DType::F32, DType::F32) && k.device().is_cpu() {
            // An f16 cache under f32 compute (the CPU's default): each value rounded to nearest even. Any
            // other mix of dtypes is refused by the write.
            let (k, v) = (k.to_dtype(DType::F16)?, v.to_dtype(DType::F16)?);
            cache.k.inplace_op2(&k, &op)?;
            return cache.v.inplace_op2(&v, &op);
        }
        cache.k.inplace_op2(k, &op)?;
        cache.v.inplace_op2(v, &op)
    }

    /// Attention of the step's queries `[num_tokens, num_heads, head_dim]` over the cached context of
    /// their sequences, causal and within `params.window`, with scores scaled and capped by `params`;
    /// returns `[num_tokens, num_heads, head_dim]`. Keys before a query's window are never read.
    pub fn attend_with(&self, layer: usize, q: &Tensor, step: &StepAttention, params: &AttnParams) -> candle_core::Result<Tensor> {
        self.attend_with_sinks(layer, q, step, params, None)
    }

    /// [`attend_with`](Self::attend_with) where each head may also have a sink (gpt-oss): a learned
    /// logit `sinks[h]` that joins head `h`'s softmax (max and denominator) and attends to no value, so
    /// the weights on the keys sum to less than 1. `sinks`: `[num_heads]` f32 on the cache's device (keep
    /// it there: a per-step upload would cost a copy per layer and cannot be captured in a CUDA graph).
    pub fn attend_with_sinks(&self, layer: usize, q: &Tensor, step: &StepAttention, params: &AttnParams, sinks: Option<&Tensor>) -> candle_core::Result<Tensor> {
        params.validate()?;
        let cache = self.layer(layer)?;
        if step.num_tokens() == 0 {
            return Ok(q.clone()); // [0, num_heads, head_dim]
        }
        let scales = self.fp8_scales.get(layer).map(|s| (&s.k, &s.v));
        let op = ops::PagedAttention { step, params: *params, sinks, fp8_scales: scales };
        q.apply_op3_no_bwd(&cache.k, &cache.v, &op)
    }

    /// Plain causal attention: [`attend_with`](Self::attend_with) without a cap or a window.
    pub fn attend(&self, layer: usize, q: &Tensor, step: &StepAttention, scale: f32) -> candle_core::Result<Tensor> {
        self.attend_with(layer, q, step, &AttnParams::causal(scale))
    }

    fn layer(&self, layer: usize) -> candle_core::Result<&LayerKvCache> {
        self.layers.get(layer).ok_or_else(|| candle_core::Error::Msg(format!("kv cache has no layer {layer}")))
    }
}
