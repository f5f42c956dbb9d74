//! The fused MoE's launches: shape and dtype checks (errors, never panics), then kernels of moe.cu /
//! moe_gemm.cu on candle's stream. Grids depend on the token count only (the GEMM's is sized for the
//! worst routing, moe_max_tiles), so a captured graph replays them for any routing.

use super::{Combine, Gemm, Gemv, Plan, PlanLayout};
use crate::cuda_args::{contiguous, kernel_dtype, to_u32, view};
use crate::model::config::Routing;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, Storage};
use mlc_kernels::{self as kernels, KernelDType, MoeGemmMode, MoeWeights};

/// The plan buffer (u32, contiguous from its start) with the layout of `tokens` x `top_k` slots.
fn plan_slice<'a>(plan: &'a CudaStorage, pl: &Layout, lay: &PlanLayout) -> Result<CudaView<'a, u32>> {
    let r = contiguous(pl, "moe plan")?;
    if r.len() != lay.len() {
        bail!("moe: plan of {} words, expected {}", r.len(), lay.len());
    }
    view(plan.as_cuda_slice::<u32>()?, r, "moe plan")
}

pub(super) fn plan(p: &Plan, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let (t, e) = l.shape().dims2()?; // [T, E]
    if e != p.experts || s.dtype() != DType::F32 {
        bail!("moe-plan: logits {:?} {:?}, expected [T, {}] f32", l.shape(), s.dtype(), p.experts);
    }
    let lay = PlanLayout::new(t, p.top_k, p.experts);
    let dev = s.device().clone();
    // SAFETY: the route writes ids and weights of every slot, the alignment every tile's expert and the
    // sorted slots of every real tile; sorted entries of the tiles past them are never read (their blocks
    // exit on tile_expert = -1). Without the alignment (the per-slot GEMVs) only ids and weights are read.
    let mut buf: CudaSlice<u32> = unsafe { dev.alloc::<u32>(lay.len().max(1)) }?;
    if t == 0 {
        return Ok((CudaStorage::wrap_cuda_slice(buf, dev), Shape::from(lay.len())));
    }
    let logits = view(s.as_cuda_slice::<f32>()?, contiguous(l, "router logits")?, "router logits")?;
    let (t32, e32, k32) = (to_u32(t, "tokens")?, to_u32(e, "experts")?, to_u32(p.top_k, "top-k")?);
    let mode = match p.routing {
        Routing::SoftmaxTopK => kernels::MOE_ROUTE_SOFTMAX_TOPK,
        Routing::TopKSoftmax => kernels::MOE_ROUTE_TOPK_SOFTMAX,
    };
    let norm = u32::from(p.norm);
    let (slots32, tiles32) = (to_u32(lay.slots, "slots")?, to_u32(lay.tiles, "tiles")?);
    {
        let route = crate::cuda_kernels::func(&dev, kernels::MOE_ROUTE_FUNC, &kernels::modules::MOE)?;
        let (mut ids, mut rest) = buf.split_at_mut(lay.weights().start);
        let (mut weights, _) = rest.split_at_mut(lay.slots);
        let mut b = route.builder();
        b.arg(&logits);
        b.arg(&mut ids);
        b.arg(&mut weights);
        b.arg(&t32);
        b.arg(&e32);
        b.arg(&k32);
        b.arg(&mode);
        b.arg(&norm);
        let warps = kernels::MOE_ROUTE_WARPS;
        let cfg = LaunchConfig { grid_dim: (t32.div_ceil(warps), 1, 1), block_dim: (32 * warps, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches moe_route_f32 in moe.cu; logits hold t x e f32, ids and weights t x k words;
        // e <= MOE_MAX_EXPERTS and k <= MOE_MAX_TOPK, k <= e (FusedMoe::supported).
        unsafe { b.launch(cfg) }.w()?;
    }
    if p.align {
        let align = crate::cuda_kernels::func(&dev, kernels::MOE_ALIGN_FUNC, &kernels::modules::MOE)?;
        let (head, mut rest) = buf.split_at_mut(lay.sorted().start);
        let ids = head.slice(lay.ids());
        let (mut sorted, mut tile_expert) = rest.split_at_mut(lay.tiles * kernels::MOE_TILE);
        let mut b = align.builder();
        b.arg(&ids);
        b.arg(&slots32);
        b.arg(&e32);
        b.arg(&mut sorted);
        b.arg(&mut tile_expert);
        b.arg(&tiles32);
        let cfg = LaunchConfig { grid_dim: (e32, 1, 1), block_dim: (kernels::MOE_ALIGN_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches moe_align_u32 (one block per expert); ids hold `slots` words, sorted tiles x
        // MOE_TILE, tile_expert tiles, and the real tiles never exceed moe_max_tiles.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(buf, dev), Shape::from(lay.len())))
}

pub(super) fn gemm(g: &Gemm, x: &CudaStorage, xl: &Layout, plan: &CudaStorage, pl: &Layout) -> Result<(CudaStorage, Shape)> {
    let (rows_in, k) = xl.shape().dims2()?;
    if k != g.k || rows_in * g.x_div != g.slots {
        bail!("moe-gemm: input {:?} for {} slots ({} per row) of K {}", xl.shape(), g.slots, g.x_div, g.k);
    }
    let dtype = kernel_dtype(x.dtype(), "moe-gemm")?;
    match dtype {
        KernelDType::BF16 => launch_gemm::<half::bf16>(g, dtype, x, xl, plan, pl),
        KernelDType::F16 => launch_gemm::<half::f16>(g, dtype, x, xl, plan, pl),
        KernelDType::F32 => bail!("moe-gemm: f32 activations take the host-routed path"),
    }
}

/// The storage of a weight tensor on CUDA, checked contiguous and 16-byte aligned.
fn with_cuda<R>(t: &candle_core::Tensor, what: &str, f: impl FnOnce(&CudaStorage, std::ops::Range<usize>) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { bail!("moe: {what} is not on a CUDA device") };
    let r = contiguous(layout, what)?;
    if !(r.start * t.dtype().size_in_bytes()).is_multiple_of(16) {
        bail!("moe: {what} does not start on a 16-byte boundary");
    }
    f(cs, r)
}

fn launch_gemm<T: CudaDType + DeviceRepr>(g: &Gemm, dtype: KernelDType, x: &CudaStorage, xl: &Layout, plan: &CudaStorage, pl: &Layout) -> Result<(CudaStorage, Shape)> {
    let lay = PlanLayout { slots: g.slots, tiles: kernels::moe_max_tiles(g.slots, g.experts) };
    let plan = plan_slice(plan, pl, &lay)?;
    let xr = contiguous(xl, "moe input")?;
    if !(xr.start * std::mem::size_of::<T>()).is_multiple_of(16) {
        bail!("moe-gemm: the input does not start on a 16-byte boundary");
    }
    let dev = x.device().clone();
    // SAFETY: every (slot, output) is written: each slot sits in exactly one real tile (moe_align), and the
    // row tiles cover all n outputs.
    let mut out = unsafe { dev.alloc::<T>((g.slots * g.n).max(1)) }?;
    let Some(name) = kernels::moe_gemm_name(dtype, g.weights) else { bail!("moe-gemm: no kernel for {:?} weights with {dtype:?} activations", g.weights) };
    let smem = g.weights.smem_bytes();
    let func = crate::cuda_kernels::func_smem(&dev, name, &kernels::modules::MOE_GEMM, smem)?;
    let gated = g.mode != MoeGemmMode::Plain;
    let rows_per_expert = if gated { 2 * g.n } else { g.n };
    let row_tiles = if gated { g.n.div_ceil(kernels::MOE_GEMM_ROWS / 2) } else { g.n.div_ceil(kernels::MOE_GEMM_ROWS) };
    if lay.tiles > 65_535 {
        bail!("moe-gemm: {} slots need {} token tiles, more than a grid's 65535", g.slots, lay.tiles);
    }
    let xv = view(x.as_cuda_slice::<T>()?, xr, "moe input")?;
    let sorted = plan.slice(lay.sorted());
    let tile_expert = plan.slice(lay.tile_expert());
    let (n32, k32, div32, slots32, mode32) = (to_u32(g.n, "outputs")?, to_u32(g.k, "inputs")?, to_u32(g.x_div, "x_div")?, to_u32(g.slots, "slots")?, g.mode as u32);
    let grid = (to_u32(row_tiles, "row tiles")?, to_u32(lay.tiles, "token tiles")?, 1);
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (kernels::MOE_GEMM_THREADS, 1, 1), shared_mem_bytes: smem };
    with_cuda(&g.w, "expert weights", |ws, wr| {
        // MXFP4: the kernel's 16-byte windows may read past the last row, into the stacked weight's padding.
        let tail = if g.weights == MoeWeights::Mxfp4 { kernels::MOE_GEMM_MXFP4_TAIL_BYTES } else { 0 };
        let want = g.weights.size(g.experts * rows_per_expert, g.k) + tail;
        if wr.len() != want {
            bail!("moe-gemm: expert weights of {} elements, expected {want}", wr.len());
        }
        let mut b = func.builder();
        b.arg(&mut out);
        b.arg(&xv);
        let wv_u8;
        let wv_t;
        if g.weights != MoeWeights::Dense {
            if ws.dtype() != DType::U8 {
                bail!("moe-gemm: {:?} expert blocks must be u8", g.weights);
            }
            wv_u8 = view(ws.as_cuda_slice::<u8>()?, wr, "expert weights")?;
            b.arg(&wv_u8);
        } else {
            wv_t = view(ws.as_cuda_slice::<T>()?, wr, "expert weights")?;
            b.arg(&wv_t);
        }
        let bias_guard;
        let bias_view;
        let null: u64 = 0;
        match &g.bias {
            Some(bias) => {
                if bias.dtype() != x.dtype() || bias.elem_count() != g.experts * rows_per_expert {
                    bail!("moe-gemm: bias {:?} {:?} for {} experts of {rows_per_expert} rows", bias.shape(), bias.dtype(), g.experts);
                }
                bias_guard = bias.storage_and_layout();
                let Storage::Cuda(bs) = &*bias_guard.0 else { bail!("moe: bias is not on a CUDA device") };
                bias_view = view(bs.as_cuda_slice::<T>()?, contiguous(bias_guard.1, "moe bias")?, "moe bias")?;
                b.arg(&bias_view);
            }
            None => {
                b.arg(&null);
            }
        }
        b.arg(&sorted);
        b.arg(&tile_expert);
        b.arg(&n32);
        b.arg(&k32);
        b.arg(&div32);
        b.arg(&slots32);
        b.arg(&mode32);
        b.arg(&g.alpha);
        b.arg(&g.limit);
        // SAFETY: matches moe_gemm_[q4_|mxfp4_]<dtype> in moe_gemm.cu; x holds slots / x_div rows of k, the
        // weights experts x rows_per_expert rows of k (+ MXFP4's tail padding; checked above), bias experts x
        // rows_per_expert or null, out slots x n; K is a multiple of the format's (FusedMoe::check_shapes)
        // and every operand 16-byte aligned.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    })?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((g.slots, g.n))))
}

pub(super) fn gemv(g: &Gemv, x: &CudaStorage, xl: &Layout, plan: &CudaStorage, pl: &Layout) -> Result<(CudaStorage, Shape)> {
    let g = &g.0;
    let (rows_in, k) = xl.shape().dims2()?;
    if k != g.k || rows_in * g.x_div != g.slots {
        bail!("moe-gemv: input {:?} for {} slots ({} per row) of K {}", xl.shape(), g.slots, g.x_div, g.k);
    }
    let dtype = kernel_dtype(x.dtype(), "moe-gemv")?;
    match dtype {
        KernelDType::BF16 => launch_gemv::<half::bf16>(g, dtype, x, xl, plan, pl),
        KernelDType::F16 => launch_gemv::<half::f16>(g, dtype, x, xl, plan, pl),
        KernelDType::F32 => bail!("moe-gemv: f32 activations take the host-routed path"),
    }
}

fn launch_gemv<T: CudaDType + DeviceRepr>(g: &Gemm, dtype: KernelDType, x: &CudaStorage, xl: &Layout, plan: &CudaStorage, pl: &Layout) -> Result<(CudaStorage, Shape)> {
    let lay = PlanLayout { slots: g.slots, tiles: kernels::moe_max_tiles(g.slots, g.experts) };
    let plan = plan_slice(plan, pl, &lay)?;
    let Some((name, (rows_per_block, threads, smem))) = kernels::moe_gemv_kernel(dtype, g.weights, g.mode) else {
        bail!("moe-gemv: no per-slot GEMV for {:?} weights, {dtype:?} activations and {:?}", g.weights, g.mode)
    };
    let xr = contiguous(xl, "moe input")?;
    if !(xr.start * std::mem::size_of::<T>()).is_multiple_of(16) {
        bail!("moe-gemv: the input does not start on a 16-byte boundary");
    }
    let dev = x.device().clone();
    // SAFETY: every (slot, output) is written: grid.z covers the slots, the row tiles all n outputs.
    let mut out = unsafe { dev.alloc::<T>((g.slots * g.n).max(1)) }?;
    let module = if g.weights == MoeWeights::Dense { &kernels::modules::DENSE_GEMV } else { &kernels::modules::Q4_GEMM };
    let func = crate::cuda_kernels::func_smem(&dev, name, module, smem)?;
    let gated = g.mode != MoeGemmMode::Plain;
    let rows_per_expert = if gated { 2 * g.n } else { g.n };
    if g.slots > 65_535 {
        bail!("moe-gemv: {} slots, more than a grid's 65535", g.slots);
    }
    let xv = view(x.as_cuda_slice::<T>()?, xr, "moe input")?;
    let ids = plan.slice(lay.ids());
    let (n32, k32, div32, e32) = (to_u32(g.n, "outputs")?, to_u32(g.k, "inputs")?, to_u32(g.x_div, "x_div")?, to_u32(g.experts, "experts")?);
    let cfg = LaunchConfig { grid_dim: (1, to_u32(g.n.div_ceil(rows_per_block), "row tiles")?, g.slots as u32), block_dim: (threads, 1, 1), shared_mem_bytes: smem };
    with_cuda(&g.w, "expert weights", |ws, wr| {
        let want = g.weights.size(g.experts * rows_per_expert, g.k);
        if wr.len() != want {
            bail!("moe-gemv: expert weights of {} elements, expected {want}", wr.len());
        }
        let mut b = func.builder();
        b.arg(&mut out);
        let wv_u8;
        let wv_t;
        if g.weights == MoeWeights::Dense {
            wv_t = view(ws.as_cuda_slice::<T>()?, wr, "expert weights")?;
            b.arg(&wv_t);
        } else {
            if ws.dtype() != DType::U8 {
                bail!("moe-gemv: {:?} expert blocks must be u8", g.weights);
            }
            wv_u8 = view(ws.as_cuda_slice::<u8>()?, wr, "expert weights")?;
            b.arg(&wv_u8);
        }
        b.arg(&xv);
        b.arg(&ids);
        b.arg(&n32);
        b.arg(&k32);
        b.arg(&div32);
        b.arg(&e32);
        // SAFETY: matches moe_dense_gemv[_silu]_<dtype> (dense_gemv.cu) / moe_q4_gemv[_silu]_<dtype>
        // (q4_gemm.cu): y slots x n, w experts x rows_per_expert rows of k (checked above), x slots / x_div
        // rows of k, ids `slots` expert ids (< experts: moe_route; the kernel clamps them); K is a multiple
        // of 64 (dense) or 256 (Q4_0; FusedMoe::check_shapes), every operand 16-byte aligned. Launched
        // plainly: the kernel reads ids, written by the route, before its first weight load.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    })?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((g.slots, g.n))))
}

pub(super) fn combine(c: &Combine, y: &CudaStorage, yl: &Layout, plan: &CudaStorage, pl: &Layout) -> Result<(CudaStorage, Shape)> {
    let (slots, h) = yl.shape().dims2()?; // [T*k, H]
    if slots != c.tokens * c.top_k {
        bail!("moe-combine: y {:?} for {} tokens x {}", yl.shape(), c.tokens, c.top_k);
    }
    let dtype = kernel_dtype(y.dtype(), "moe-combine")?;
    match dtype {
        KernelDType::F32 => launch_combine::<f32>(c, dtype, h, y, yl, plan, pl),
        KernelDType::BF16 => launch_combine::<half::bf16>(c, dtype, h, y, yl, plan, pl),
        KernelDType::F16 => launch_combine::<half::f16>(c, dtype, h, y, yl, plan, pl),
    }
}

fn launch_combine<T: CudaDType + DeviceRepr>(c: &Combine, dtype: KernelDType, h: usize, y: &CudaStorage, yl: &Layout, plan: &CudaStorage, pl: &Layout) -> Result<(CudaStorage, Shape)> {
    let lay = PlanLayout::new(c.tokens, c.top_k, c.experts);
    let plan = plan_slice(plan, pl, &lay)?;
    let dev = y.device().clone();
    // SAFETY: one thread per output element, grid-stride over all of them.
    let mut out = unsafe { dev.alloc::<T>((c.tokens * h).max(1)) }?;
    let func = crate::cuda_kernels::func(&dev, kernels::moe_combine_name(dtype), &kernels::modules::MOE)?;
    let yv = view(y.as_cuda_slice::<T>()?, contiguous(yl, "expert outputs")?, "expert outputs")?;
    let weights = plan.slice(lay.weights());
    let (t32, k32, h32) = (to_u32(c.tokens, "tokens")?, to_u32(c.top_k, "top-k")?, to_u32(h, "hidden")?);
    let blocks = (c.tokens * h).div_ceil(kernels::MOE_COMBINE_THREADS as usize).clamp(1, 65_535) as u32;
    let mut b = func.builder();
    b.arg(&mut out);
    b.arg(&yv);
    b.arg(&weights);
    b.arg(&t32);
    b.arg(&k32);
    b.arg(&h32);
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (kernels::MOE_COMBINE_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: matches moe_combine_<dtype> in moe.cu; y holds tokens x k rows of h, weights tokens x k f32
    // (as u32 words), out tokens x h.
    unsafe { b.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((c.tokens, h))))
}
