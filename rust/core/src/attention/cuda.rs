//! CUDA forward of the KV write and paged attention: shape and dtype checks (errors, never panics),
//! then launches of `mlc_kernels`' PTX on candle's stream. The step's metadata arrays are views into
//! the one buffer [`PagedKvCache::prepare`](super::PagedKvCache::prepare) uploaded.
//!
//! Attention runs up to two kernels: the tiled prefill kernel for the query tiles of long chunks
//! (bf16 / f16, head_dim 64, 96, 128 or 256), the per-token kernel for every other row of the plan
//! (decode, short chunks, and long chunks where no tiled kernel applies, i.e. f32 and other head dims;
//! split tokens are merged by their last partition's block). A layer's window and cap are launch
//! arguments of both: the plan is the step's, shared by every layer, and nothing is planned or uploaded
//! per layer (a captured CUDA graph holds each layer's arguments as constants). gpt-oss's sinks are a
//! pointer argument (null: none) to the layer's `[num_heads]` f32, resident on the device since load.

use super::plan::{heads_per_block, Span};
use super::{AttnParams, DeviceStep};
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use mlc_kernels::{self as kernels, KernelDType};
use crate::cuda_args::{contiguous, kernel_dtype, to_u32, view};

fn span(s: Span) -> std::ops::Range<usize> {
    s.start..s.start + s.len
}

/// Runs `f` on the step's packed metadata, checked to live on `dev`.
fn with_packed<R>(step: &DeviceStep, dev: &CudaDevice, f: impl FnOnce(&CudaSlice<u32>) -> Result<R>) -> Result<R> {
    let (storage, layout) = step.packed.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { bail!("attention step metadata is not on a CUDA device") };
    if !cs.device().same_device(dev) {
        bail!("attention step metadata lives on another CUDA device than the cache");
    }
    if layout.start_offset() != 0 || !layout.is_contiguous() {
        bail!("attention step metadata must be one contiguous buffer");
    }
    f(cs.as_cuda_slice::<u32>()?)
}

fn check_cache(step: &DeviceStep, cl: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    let dims = cl.shape().dims4()?; // [num_blocks, block_size, num_kv_heads, head_dim]
    if dims.0 != step.num_blocks || dims.1 != step.block_size {
        bail!("{op}: cache {:?} does not match the step, prepared for {} blocks of {}", cl.shape(), step.num_blocks, step.block_size);
    }
    Ok(dims)
}

/// `cache[slot_mapping[t]] = new[t]`; cache `[num_blocks, block_size, kv_heads, head_dim]`, new
/// `[num_tokens, kv_heads, head_dim]`.
pub fn kv_write(step: &DeviceStep, cache: &mut CudaStorage, cl: &Layout, new: &CudaStorage, nl: &Layout) -> Result<()> {
    let (nb, bs, kvh, d) = check_cache(step, cl, "kv-write")?;
    let (t, new_kvh, new_d) = nl.shape().dims3()?;
    if (new_kvh, new_d) != (kvh, d) || t != step.plan.num_tokens {
        bail!("kv-write: new rows {:?} do not match cache {:?} and {} step tokens", nl.shape(), cl.shape(), step.plan.num_tokens);
    }
    if cache.dtype() != new.dtype() {
        bail!("kv-write: cache is {:?} but new rows are {:?}", cache.dtype(), new.dtype());
    }
    let dtype = kernel_dtype(cache.dtype(), "kv-write")?;
    let args = KvWriteArgs {
        cache: contiguous(cl, "kv cache")?,
        new: contiguous(nl, "new k/v")?,
        row: to_u32(kvh * d, "kv row")?,
        num_slots: to_u32(nb * bs, "cache slots")?,
        num_tokens: to_u32(t, "tokens")?,
    };
    if t == 0 {
        return Ok(());
    }
    match dtype {
        KernelDType::F32 => launch_kv_write::<f32>(step, dtype, cache, new, &args),
        KernelDType::BF16 => launch_kv_write::<half::bf16>(step, dtype, cache, new, &args),
        KernelDType::F16 => launch_kv_write::<half::f16>(step, dtype, cache, new, &args),
    }
}

struct KvWriteArgs {
    cache: std::ops::Range<usize>,
    new: std::ops::Range<usize>,
    row: u32,
    num_slots: u32,
    num_tokens: u32,
}

fn launch_kv_write<T: CudaDType + DeviceRepr>(
    step: &DeviceStep,
    dtype: KernelDType,
    cache: &mut CudaStorage,
    new: &CudaStorage,
    a: &KvWriteArgs,
) -> Result<()> {
    let dev = cache.device().clone();
    let func = crate::cuda_kernels::func(&dev, kernels::kv_write_name(dtype), &kernels::modules::KV_WRITE)?;
    with_packed(step, &dev, |meta| {
        let slots = view(meta, span(step.plan.slot_mapping), "slot mapping")?;
        let src = view(new.as_cuda_slice::<T>()?, a.new.clone(), "new k/v")?;
        let cache = cache.as_cuda_slice_mut::<T>()?;
        let len = cache.len();
        let Some(mut dst) = cache.try_slice_mut(a.cache.clone()) else { bail!("kv-write: cache range outside a buffer of {len}") };
        let mut b = func.builder();
        b.arg(&mut dst);
        b.arg(&src);
        b.arg(&slots);
        b.arg(&a.row);
        b.arg(&a.num_slots);
        let cfg = LaunchConfig { grid_dim: (a.num_tokens, 1, 1), block_dim: (kernels::KV_WRITE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the argument list matches kv_write_* in kv_write.cu; every slot was validated against
        // the cache size in `prepare` (and the kernel skips any slot outside it).
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    })
}

/// An FP8 e4m3 cache's rows (`scales`: false; `dst` the `[num_blocks, block_size, kv_heads, head_dim]`
/// F8E4M3 cache) or their scales (true; `dst` the `[num_blocks, block_size, kv_heads, 1]` f32 scales) from
/// the step's new rows `[num_tokens, kv_heads, head_dim]` of the model dtype: the quantization of
/// `PagedKvCache::write` on the CPU, row by row (kv_write.cu).
pub fn kv_write_fp8(step: &DeviceStep, dst: &mut CudaStorage, dl: &Layout, new: &CudaStorage, nl: &Layout, scales: bool) -> Result<()> {
    let what = if scales { "kv-scale-fp8" } else { "kv-write-fp8" };
    let (nb, bs, kvh, d) = check_cache(step, dl, what)?;
    let (t, new_kvh, new_d) = nl.shape().dims3()?;
    let (want_dtype, want_d) = if scales { (DType::F32, 1) } else { (DType::F8E4M3, new_d) };
    if (new_kvh, want_d) != (kvh, d) || t != step.plan.num_tokens || dst.dtype() != want_dtype {
        bail!("{what}: {:?} {:?} does not take new rows {:?} for {} step tokens", dl.shape(), dst.dtype(), nl.shape(), step.plan.num_tokens);
    }
    if t == 0 {
        return Ok(());
    }
    let dtype = kernel_dtype(new.dtype(), what)?;
    let dst_range = contiguous(dl, what)?;
    let new_range = contiguous(nl, "new k/v")?;
    let (kv_heads, head_dim, num_slots) = (to_u32(kvh, "kv heads")?, to_u32(new_d, "head_dim")?, to_u32(nb * bs, "cache slots")?);
    let dev = dst.device().clone();
    let func = crate::cuda_kernels::func(&dev, kernels::kv_write_fp8_name(dtype, scales), &kernels::modules::KV_WRITE)?;
    with_packed(step, &dev, |meta| {
        let slots = view(meta, span(step.plan.slot_mapping), "slot mapping")?;
        let len = dst_range.len();
        let outside = || candle_core::Error::Msg(format!("{what}: range outside a buffer of {len}"));
        // The destination as the kernel's void*: an f32 view (scales) or an e4m3 one (rows).
        let (mut dst_f32, mut dst_u8) = (None, None);
        if scales {
            dst_f32 = Some(dst.as_cuda_slice_mut::<f32>()?.try_slice_mut(dst_range).ok_or_else(outside)?);
        } else {
            dst_u8 = Some(dst.as_cuda_slice_mut::<float8::F8E4M3>()?.try_slice_mut(dst_range).ok_or_else(outside)?);
        }
        let (mut src_f32, mut src_bf16, mut src_f16) = (None, None, None);
        match dtype {
            KernelDType::F32 => src_f32 = Some(view(new.as_cuda_slice::<f32>()?, new_range, "new k/v")?),
            KernelDType::BF16 => src_bf16 = Some(view(new.as_cuda_slice::<half::bf16>()?, new_range, "new k/v")?),
            KernelDType::F16 => src_f16 = Some(view(new.as_cuda_slice::<half::f16>()?, new_range, "new k/v")?),
        }
        let mut b = func.builder();
        match (&mut dst_f32, &mut dst_u8) {
            (Some(d), _) => b.arg(d),
            (_, Some(d)) => b.arg(d),
            _ => bail!("{what}: no destination view"),
        };
        match (&src_f32, &src_bf16, &src_f16) {
            (Some(s), _, _) => b.arg(s),
            (_, Some(s), _) => b.arg(s),
            (_, _, Some(s)) => b.arg(s),
            _ => bail!("{what}: no source view"),
        };
        b.arg(&slots);
        b.arg(&kv_heads);
        b.arg(&head_dim);
        b.arg(&num_slots);
        let cfg = LaunchConfig { grid_dim: (to_u32(t, "tokens")?, 1, 1), block_dim: (kernels::KV_WRITE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the argument list matches kv_write_fp8_* / kv_scale_fp8_* in kv_write.cu; the destination
        // holds num_slots rows of kv_heads x head_dim bytes (or kv_heads f32 scales), checked above; every
        // slot was validated against the cache size in `prepare` (and the kernel skips any outside it).
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    })
}

struct AttentionArgs {
    q: std::ops::Range<usize>,
    k: std::ops::Range<usize>,
    v: std::ops::Range<usize>,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    scale: f32,
    /// Keys per query at most (`u32::MAX`: full causal) and the score cap (0: none).
    window: u32,
    softcap: f32,
    /// The tiled kernel for the plan's query tiles (`None`: every row runs on the per-token kernel).
    prefill: Option<&'static str>,
    /// Query heads per block of the per-token kernel ([`heads_per_block`]).
    group: u32,
    /// 1 when both caches start 16-byte aligned and a row is a whole number of 16-byte words: the
    /// per-token kernel then copies them with cp.async (else element by element).
    vec_ok: u32,
    /// Threads per block of the per-token launch (the CUDA-core kernel's or the tensor-core one's).
    threads: u32,
    /// Dynamic shared memory of the per-token launch (the tensor-core kernel's; 0 for the other).
    smem: u32,
}


/// `MLC_TILED_PREFILL=0` sends long chunks to the per-token kernel (for comparisons and as a way out).
fn tiled_prefill_enabled() -> bool {
    !crate::switches::off("MLC_TILED_PREFILL")
}

/// `MLC_DECODE_TC=0` keeps the per-token rows on the CUDA-core kernel where the tensor-core one applies
/// (for comparisons and as a way out).
fn decode_tc_enabled() -> bool {
    !crate::switches::off("MLC_DECODE_TC")
}

/// Paged attention: q `[num_tokens, num_heads, head_dim]`, caches `[num_blocks, block_size, kv_heads,
/// head_dim]` of q's dtype, or FP8 e4m3 with `fp8_scales` (K's and V's, `[num_blocks, block_size,
/// kv_heads, 1]` f32), sinks `[num_heads]` f32 (or none); returns `[num_tokens, num_heads, head_dim]` in
/// q's dtype.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    step: &DeviceStep,
    params: &AttnParams,
    sinks: Option<&Tensor>,
    fp8_scales: Option<(&Tensor, &Tensor)>,
    q: &CudaStorage,
    ql: &Layout,
    k: &CudaStorage,
    kl: &Layout,
    v: &CudaStorage,
    vl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (t, h, d) = ql.shape().dims3()?;
    let (_, bs, kvh, kd) = check_cache(step, kl, "paged-attention")?;
    if vl.shape() != kl.shape() {
        bail!("paged-attention: k cache {:?} and v cache {:?} differ", kl.shape(), vl.shape());
    }
    if kd != d || kvh == 0 || h % kvh != 0 {
        bail!("paged-attention: q {:?} does not match cache {:?}", ql.shape(), kl.shape());
    }
    if t != step.plan.num_tokens {
        bail!("paged-attention: q has {t} tokens, the step {}", step.plan.num_tokens);
    }
    let fp8 = k.dtype() == DType::F8E4M3;
    if (q.dtype() != k.dtype() && !fp8) || v.dtype() != k.dtype() {
        bail!("paged-attention: q {:?}, k cache {:?}, v cache {:?} must share one dtype (or the caches be FP8 e4m3)", q.dtype(), k.dtype(), v.dtype());
    }
    match fp8_scales {
        Some((ks, vs)) if fp8 => {
            let want = [kl.dims()[0], bs, kvh, 1];
            if ks.dtype() != DType::F32 || vs.dtype() != DType::F32 || ks.dims() != want || vs.dims() != want {
                bail!("paged-attention: FP8 scales {:?} / {:?} must be f32 {want:?}", ks.shape(), vs.shape());
            }
        }
        None if !fp8 => {}
        _ => bail!("paged-attention: an FP8 cache needs its row scales, and only an FP8 cache takes them"),
    }
    if let Some(s) = sinks.filter(|s| s.dtype() != DType::F32 || s.dims() != [h]) {
        bail!("paged-attention: sinks {:?} {:?} for {h} heads (one f32 per head)", s.shape(), s.dtype());
    }
    let dtype = kernel_dtype(q.dtype(), "paged-attention")?;
    let Some(name) = kernels::paged_attention_name(dtype, d, fp8) else {
        bail!("paged-attention: head_dim {d} is not supported (1..={})", kernels::ATTN_MAX_HEAD_DIM)
    };
    let mut args = AttentionArgs {
        q: contiguous(ql, "q")?,
        k: contiguous(kl, "k cache")?,
        v: contiguous(vl, "v cache")?,
        num_heads: to_u32(h, "num_heads")?,
        num_kv_heads: to_u32(kvh, "num_kv_heads")?,
        head_dim: to_u32(d, "head_dim")?,
        block_size: to_u32(bs, "block_size")?,
        scale: params.scale,
        window: kernels::attn_window_arg(params.window),
        softcap: kernels::attn_softcap_arg(params.softcap),
        prefill: None,
        group: to_u32(heads_per_block(h, kvh), "heads per block")?,
        vec_ok: 0,
        threads: kernels::ATTN_THREADS,
        smem: 0,
    };
    if h > 65_535 {
        bail!("paged-attention: {h} heads exceed the grid's y dimension");
    }
    // The tiled kernel copies cache rows in 16-byte words (cp.async): both caches must start 16-byte
    // aligned (candle's allocations are; a view at an odd offset falls back).
    let elem = k.dtype().size_in_bytes();
    let aligned = (args.k.start * elem).is_multiple_of(16) && (args.v.start * elem).is_multiple_of(16);
    args.vec_ok = u32::from(aligned && (d * elem).is_multiple_of(16));
    // The per-token rows on the tensor cores where an instance exists (its copies need 16-byte rows).
    let name = match kernels::decode_attention_tc_name(dtype, d, fp8) {
        Some(tc) if args.vec_ok == 1 && decode_tc_enabled() => {
            args.threads = kernels::DECODE_TC_THREADS;
            args.smem = kernels::decode_tc_smem_bytes(d, fp8);
            tc
        }
        _ => name,
    };
    // The tiled kernel reads 16-bit caches with cp.async, FP8 ones in 16-byte words: both need aligned rows.
    if step.plan.num_tiles > 0 && aligned && tiled_prefill_enabled() {
        args.prefill = kernels::prefill_attention_name(dtype, d, params.softcap.is_some(), fp8);
    }
    use float8::F8E4M3;
    let storage = match (dtype, fp8) {
        (KernelDType::F32, false) => launch_attention::<f32, f32>(step, name, q, k, v, sinks, None, &args)?,
        (KernelDType::BF16, false) => launch_attention::<half::bf16, half::bf16>(step, name, q, k, v, sinks, None, &args)?,
        (KernelDType::F16, false) => launch_attention::<half::f16, half::f16>(step, name, q, k, v, sinks, None, &args)?,
        (KernelDType::F32, true) => launch_attention::<f32, F8E4M3>(step, name, q, k, v, sinks, fp8_scales, &args)?,
        (KernelDType::BF16, true) => launch_attention::<half::bf16, F8E4M3>(step, name, q, k, v, sinks, fp8_scales, &args)?,
        (KernelDType::F16, true) => launch_attention::<half::f16, F8E4M3>(step, name, q, k, v, sinks, fp8_scales, &args)?,
    };
    Ok((storage, Shape::from((t, h, d))))
}

/// A contiguous f32 tensor on `dev` as a kernel argument (sinks, FP8 scales).
fn f32_view<'a>(guard: &'a (std::sync::RwLockReadGuard<'a, Storage>, &'a Layout), dev: &CudaDevice, what: &str) -> Result<CudaView<'a, f32>> {
    let (storage, layout) = guard;
    let Storage::Cuda(cs) = &**storage else { bail!("paged-attention: the {what} are not on a CUDA device") };
    if !cs.device().same_device(dev) {
        bail!("paged-attention: the {what} live on another CUDA device than q");
    }
    view(cs.as_cuda_slice::<f32>()?, contiguous(layout, what)?, what)
}

/// The kernels' last two arguments: the FP8 K and V row scales, or two nullptrs.
fn push_scales<'a>(b: &mut LaunchArgs<'a>, scales: &'a Option<(CudaView<'a, f32>, CudaView<'a, f32>)>, null: &'a u64) {
    match scales {
        Some((ks, vs)) => {
            b.arg(ks);
            b.arg(vs);
        }
        None => {
            b.arg(null);
            b.arg(null);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn launch_attention<T: CudaDType + DeviceRepr, KT: CudaDType + DeviceRepr>(
    step: &DeviceStep,
    name: &str,
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    sinks: Option<&Tensor>,
    fp8_scales: Option<(&Tensor, &Tensor)>,
    a: &AttentionArgs,
) -> Result<CudaStorage> {
    let dev = q.device().clone();
    let sinks_guard = sinks.map(|s| s.storage_and_layout());
    let scale_guards = fp8_scales.map(|(ks, vs)| (ks.storage_and_layout(), vs.storage_and_layout()));
    let plan = &step.plan;
    let (h, d) = (a.num_heads as usize, a.head_dim as usize);
    let attn = crate::cuda_kernels::func_smem(&dev, name, &kernels::modules::PAGED_ATTENTION, a.smem)?;
    // SAFETY: every row of `out` is written: the step's sequences tile all its tokens (validated in
    // `prepare`), each unsplit token by the per-token or the tiled kernel and each split one by the
    // block of its last finished partition.
    let mut out = unsafe { dev.alloc::<T>(plan.num_tokens * h * d) }?;
    // Partial results of split tokens (at least one element so the pointers are valid).
    let mut part_o = unsafe { dev.alloc::<f32>((plan.num_partials * h * d).max(1)) }?;
    let mut part_ml = unsafe { dev.alloc::<f32>((plan.num_partials * h * 2).max(1)) }?;
    // Finished partitions per (token, head): the kernel's merge needs them zero at launch. Steps without
    // split tokens never touch them (no memset for a placeholder).
    let mut counters = if plan.num_split_tokens > 0 {
        dev.alloc_zeros::<u32>(plan.num_tokens * h)?
    } else {
        // SAFETY: never read or written: every token of the step has one partition.
        unsafe { dev.alloc::<u32>(1) }?
    };
    // With the tiled kernel the per-token kernel takes only the rows of the untiled sequences.
    let rows = if a.prefill.is_some() { plan.num_short_work } else { plan.num_work };
    let num_work = to_u32(rows, "attention work items")?;
    let max_blocks = to_u32(plan.max_blocks, "max_blocks")?;
    let split_keys = to_u32(plan.split_keys.max(1), "split keys")?;
    with_packed(step, &dev, |meta| {
        let m = |s: Span, what: &str| view(meta, span(s), what);
        let (block_tables, token_seq, token_pos) = (m(plan.block_tables, "block tables")?, m(plan.token_seq, "token seq")?, m(plan.token_pos, "token pos")?);
        let (token_splits, token_part) = (m(plan.token_splits, "token splits")?, m(plan.token_part, "token part")?);
        let (work_token, work_split) = (m(plan.work_token, "work token")?, m(plan.work_split, "work split")?);
        let qv = view(q.as_cuda_slice::<T>()?, a.q.clone(), "q")?;
        let kv = view(k.as_cuda_slice::<KT>()?, a.k.clone(), "k cache")?;
        let vv = view(v.as_cuda_slice::<KT>()?, a.v.clone(), "v cache")?;
        let sinks = sinks_guard.as_ref().map(|g| f32_view(g, &dev, "sinks")).transpose()?;
        let scales = match &scale_guards {
            Some((kg, vg)) => Some((f32_view(kg, &dev, "FP8 k scales")?, f32_view(vg, &dev, "FP8 v scales")?)),
            None => None,
        };
        let null: u64 = 0; // the kernels' nullptr: no sinks
        if num_work > 0 {
            let mut b = attn.builder();
            b.arg(&mut out);
            b.arg(&mut part_o);
            b.arg(&mut part_ml);
            b.arg(&mut counters);
            b.arg(&qv);
            b.arg(&kv);
            b.arg(&vv);
            b.arg(&block_tables);
            b.arg(&token_seq);
            b.arg(&token_pos);
            b.arg(&token_splits);
            b.arg(&token_part);
            b.arg(&work_token);
            b.arg(&work_split);
            b.arg(&a.num_heads);
            b.arg(&a.num_kv_heads);
            b.arg(&a.head_dim);
            b.arg(&a.block_size);
            b.arg(&max_blocks);
            b.arg(&a.scale);
            b.arg(&split_keys);
            b.arg(&a.window);
            b.arg(&a.softcap);
            match &sinks {
                Some(s) => b.arg(s),
                None => b.arg(&null),
            };
            b.arg(&a.group);
            b.arg(&a.vec_ok);
            push_scales(&mut b, &scales, &null);
            let cfg = LaunchConfig { grid_dim: (num_work, a.num_heads / a.group, 1), block_dim: (a.threads, 1, 1), shared_mem_bytes: a.smem };
            // SAFETY: the argument list matches paged_attention_* in paged_attention.cu (and
            // decode_attention_tc_* in decode_tc.cuh, at its thread count, only with vec_ok); the block
            // tables, positions and partitions were validated and planned from the same metadata; the
            // sinks, when given, are num_heads f32 (checked in `paged_attention`); `group` divides the
            // GQA group (heads_per_block), so every block's heads share one KV head; with vec_ok the
            // caches and their rows are 16-byte aligned (checked above).
            unsafe { b.launch(cfg) }.w()?;
        }
        if let Some(prefill_name) = a.prefill {
            let (query_start, context_len) = (m(plan.query_start, "query start")?, m(plan.context_len, "context len")?);
            let (tile_seq, tile_start) = (m(plan.tile_seq, "tile seq")?, m(plan.tile_start, "tile start")?);
            let prefill = crate::cuda_kernels::func(&dev, prefill_name, &kernels::modules::PREFILL_ATTENTION)?;
            let mut b = prefill.builder();
            b.arg(&mut out);
            b.arg(&qv);
            b.arg(&kv);
            b.arg(&vv);
            b.arg(&block_tables);
            b.arg(&query_start);
            b.arg(&context_len);
            b.arg(&tile_seq);
            b.arg(&tile_start);
            b.arg(&a.num_heads);
            b.arg(&a.num_kv_heads);
            b.arg(&a.block_size);
            b.arg(&max_blocks);
            b.arg(&a.scale);
            b.arg(&a.window);
            b.arg(&a.softcap);
            match &sinks {
                Some(s) => b.arg(s),
                None => b.arg(&null),
            };
            push_scales(&mut b, &scales, &null);
            let grid = (to_u32(plan.num_tiles, "query tiles")?, a.num_heads, 1);
            let cfg = LaunchConfig { grid_dim: grid, block_dim: (kernels::PREFILL_THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: matches prefill_attention_* in prefill_attention.cu (instantiated for this dtype,
            // cache type and head_dim; the FP8 scales given exactly for an FP8 cache); tiles, query
            // ranges, contexts and block tables were planned from validated metadata, and the tiles cover
            // exactly the rows the per-token launch above left out.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(())
    })?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
