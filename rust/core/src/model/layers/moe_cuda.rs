//! The fused mixture of experts on CUDA (`mlc_kernels`' moe.cu and moe_gemm.cu): the routing, the sort of
//! (token, choice) slots by expert, one grouped GEMM for every expert's gate/up with the activation as
//! epilogue, one for every expert's down projection and the weighted combine, all on the device. Nothing
//! is read back and every launch's grid depends on the token count only, so MoE decode steps are
//! captured in CUDA graphs (runner.rs). The host-routed path of moe.rs stays the reference (and the path
//! of every case this one does not take).
//!
//! Each layer's experts are stacked once at load: gate/up `[E, 2I, H]` (gate rows then up rows) and down
//! `[E, H, I]`, dense in the model dtype or as raw Q4_0 blocks, or (gpt-oss, bf16) as llama.cpp's MXFP4
//! blocks as the loader hands them over ([`stack_mxfp4`]); gpt-oss's biases `[E, 2I]` and `[E, H]`.
//!
//! Per step, with `T` tokens, `k` experts per token and slot `s = t * k + i`:
//!   logits `[T, E]` f32 -> plan (u32: ids `[T*k]`, weights `[T*k]` f32 bits, sorted slots
//!   `[tiles * 32]`, tile experts `[tiles]`) -> act `[T*k, I]` -> y `[T*k, H]` -> out `[T, H]`.
//!
//! Decode steps of at most `MLC_MOE_GEMV_MAX_SLOTS` slots (read at load; 0, the default, turns it off)
//! may instead run a GEMV per slot (dense_gemv.cu / q4_gemm.cu's `moe_*_gemv`: the slot's expert picked
//! from the plan's ids on the device; no sort, the plan's sorted part is not written): the grouped GEMM
//! gives each slot of a one-token step a 32-slot tile of its own and streams the expert through 4 warps
//! a block, where the GEMVs are the decode kernels of the dense layers. Dense and Q4_0 experts with
//! SiLU, no biases. Off by default until measured against the grouped GEMM on a GPU.

use super::clamped_swiglu::{ClampedSwigluExperts, ExpertWeights};
use super::mlp::GatedMlp;
use crate::error::Result;
use crate::model::config::{Activation, MoeConfig, Routing};
use crate::model::linear::{Linear, StackedLinear, Weight};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use mlc_kernels::{self as kernels, MoeGemmMode, MoeWeights};

/// Set when a mixture-of-experts layer on a CUDA device was loaded on the host-routed path, whose
/// read-back a CUDA graph cannot capture. Process-wide (conservative when several models share a process).
static HOST_ROUTED_ON_CUDA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that a CUDA MoE layer routes on the host.
pub fn note_host_routed() {
    HOST_ROUTED_ON_CUDA.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether every MoE layer loaded on a CUDA device so far runs fused (MoE decode steps may then be
/// captured in CUDA graphs).
pub fn all_fused() -> bool {
    !HOST_ROUTED_ON_CUDA.load(std::sync::atomic::Ordering::Relaxed)
}

/// One stacked projection of every expert.
enum Stacked {
    /// `[E, rows, K]` in the model dtype.
    Dense(Tensor),
    /// `[E * rows * K / 32 * 18]` u8: each expert's Q4_0 rows, expert after expert.
    Q4(Tensor),
    /// `[E * rows * K / 32 * 17 + 16]` u8: each expert's MXFP4 rows, expert after expert, then the
    /// padding the kernel's 16-byte windows may read (`MOE_GEMM_MXFP4_TAIL_BYTES`).
    Mxfp4(Tensor),
}

impl Stacked {
    fn tensor(&self) -> &Tensor {
        match self {
            Stacked::Dense(t) | Stacked::Q4(t) | Stacked::Mxfp4(t) => t,
        }
    }
    fn format(&self) -> MoeWeights {
        match self {
            Stacked::Dense(_) => MoeWeights::Dense,
            Stacked::Q4(_) => MoeWeights::Q4_0,
            Stacked::Mxfp4(_) => MoeWeights::Mxfp4,
        }
    }
}

pub struct FusedMoe {
    gate_up: Stacked,
    down: Stacked,
    /// gpt-oss: `[E, 2I]` (gate then up) and `[E, H]`.
    gate_up_bias: Option<Tensor>,
    down_bias: Option<Tensor>,
    mode: MoeGemmMode,
    alpha: f32,
    limit: f32,
    num_experts: usize,
    top_k: usize,
    inter: usize,
    hidden: usize,
    routing: Routing,
    norm: bool,
    /// Steps of at most this many slots take the per-slot GEMVs (0: never).
    gemv_max_slots: usize,
}

/// `MLC_MOE_GEMV_MAX_SLOTS`, read when a layer loads (so a test may load models both ways in one
/// process); unset or unparsable: 0.
fn gemv_max_slots_from_env() -> usize {
    crate::switches::number("MLC_MOE_GEMV_MAX_SLOTS").unwrap_or(0)
}

/// Why an MoE layer keeps the host-routed path, or the layer's stacked weights.
type Built = std::result::Result<FusedMoe, &'static str>;

/// The weight of a projection as a dense `[rows, K]` tensor or Q4_0 blocks of `rows` rows; `None` for
/// anything else (other quantizations, biases).
fn parts_of(l: &Linear) -> Option<Stacked> {
    if l.bias.is_some() {
        return None;
    }
    match &l.weight {
        Weight::Dense(w) => Some(Stacked::Dense(w.clone())),
        Weight::Q4Cuda(q) => Some(Stacked::Q4(q.blocks().clone())),
        Weight::Quantized(_) => None,
    }
}

/// A gate/up projection's rows (gate then up) as one weight.
fn gate_up_of(s: &StackedLinear) -> Option<Stacked> {
    let parts = match s {
        StackedLinear::Stacked(l) => return parts_of(l),
        StackedLinear::Separate(parts) => parts.iter().map(parts_of).collect::<Option<Vec<_>>>()?,
    };
    join(parts).ok().flatten()
}

/// The parts' rows concatenated: dense with dense, Q4_0 blocks with Q4_0 blocks, else `None`.
fn join(parts: Vec<Stacked>) -> candle_core::Result<Option<Stacked>> {
    if parts.iter().all(|p| matches!(p, Stacked::Dense(_))) {
        return Ok(Some(Stacked::Dense(Tensor::cat(&parts.iter().map(Stacked::tensor).collect::<Vec<_>>(), 0)?)));
    }
    if parts.iter().all(|p| matches!(p, Stacked::Q4(_))) {
        return Ok(Some(Stacked::Q4(Tensor::cat(&parts.iter().map(Stacked::tensor).collect::<Vec<_>>(), 0)?)));
    }
    Ok(None)
}

/// Every expert's weight of one projection, `[rows, K]` each, stacked: dense `[E, rows, K]`, Q4_0 blocks
/// concatenated.
fn stack_experts(parts: Vec<Stacked>) -> candle_core::Result<Option<Stacked>> {
    if parts.iter().all(|p| matches!(p, Stacked::Dense(_))) {
        let ts = parts.iter().map(Stacked::tensor).collect::<Vec<_>>();
        return Ok(Some(Stacked::Dense(Tensor::stack(&ts, 0)?.contiguous()?)));
    }
    join(parts)
}

/// gpt-oss's MXFP4 experts on `device` for the MXFP4 kernel: the loader's bytes as they are (llama.cpp's
/// blocks, each expert's gate rows then up rows, as the CPU's kernels take them too), each projection
/// followed by `MOE_GEMM_MXFP4_TAIL_BYTES` zeros that the kernel's 16-byte windows may read past the last
/// row: gate/up `[E * 2I * H / 32 * 17 + 16]` u8, down `[E * H * I / 32 * 17 + 16]` u8.
fn stack_mxfp4(m: &crate::model::weights::Mxfp4Experts, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    m.check_sizes()?;
    let upload = |b: &[u8]| -> Result<Tensor> {
        let mut v = Vec::with_capacity(b.len() + kernels::MOE_GEMM_MXFP4_TAIL_BYTES);
        v.extend_from_slice(b);
        v.resize(b.len() + kernels::MOE_GEMM_MXFP4_TAIL_BYTES, 0);
        let n = v.len();
        Ok(Tensor::from_vec(v, n, device)?)
    };
    Ok((upload(&m.gate_up)?, upload(&m.down)?))
}

impl FusedMoe {
    /// The fused layer for gated experts (Mixtral, Qwen2/3-MoE), or why it does not apply.
    pub fn from_gated(experts: &[GatedMlp], m: &MoeConfig, dtype: DType, hidden: usize) -> Result<Built> {
        if let Err(why) = Self::supported(m, dtype) {
            return Ok(Err(why));
        }
        let mut gate_ups = Vec::with_capacity(experts.len());
        let mut downs = Vec::with_capacity(experts.len());
        for e in experts {
            let (gate_up, down, act) = e.parts();
            if act != Activation::Silu {
                return Ok(Err("experts' activation is not SiLU"));
            }
            let (Some(gu), Some(d)) = (gate_up_of(gate_up), parts_of(down)) else { return Ok(Err("expert weights neither dense nor Q4_0")) };
            gate_ups.push(gu);
            downs.push(d);
        }
        let (Some(gate_up), Some(down)) = (stack_experts(gate_ups)?, stack_experts(downs)?) else {
            return Ok(Err("experts mix dense and Q4_0 weights"));
        };
        Ok(Self::assemble(m, hidden, gate_up, down, None, MoeGemmMode::Silu, (0.0, 0.0)))
    }

    /// The fused layer for gpt-oss's experts, or why it does not apply.
    pub fn from_clamped_swiglu(experts: &ClampedSwigluExperts, m: &MoeConfig, dtype: DType, hidden: usize) -> Result<Built> {
        if let Err(why) = Self::supported(m, dtype) {
            return Ok(Err(why));
        }
        let (weights, gate_up_bias, down_bias, act) = experts.parts();
        let (gate_up, down) = match weights {
            ExpertWeights::Dense { gate_up, down } => {
                if gate_up.dtype() != dtype {
                    return Ok(Err("experts are not in the model dtype"));
                }
                let gate_up = Stacked::Dense(gate_up.transpose(1, 2)?.contiguous()?); // [E, H, 2I] -> [E, 2I, H]
                let down = Stacked::Dense(down.transpose(1, 2)?.contiguous()?); // [E, I, H] -> [E, H, I]
                (gate_up, down)
            }
            ExpertWeights::Mxfp4(m) => {
                if dtype != DType::BF16 {
                    return Ok(Err("MXFP4 experts need bf16 activations (their scales leave f16's range)"));
                }
                let (gate_up, down) = stack_mxfp4(m, gate_up_bias.device())?;
                (Stacked::Mxfp4(gate_up), Stacked::Mxfp4(down))
            }
        };
        let biases = (gate_up_bias.to_dtype(dtype)?.contiguous()?, down_bias.to_dtype(dtype)?.contiguous()?);
        Ok(Self::assemble(m, hidden, gate_up, down, Some(biases), MoeGemmMode::ClampedSwiglu, (act.alpha as f32, act.limit as f32)))
    }

    /// The layer from its stacked weights (biases: gate/up `[E, 2I]`, down `[E, H]`), checked.
    fn assemble(m: &MoeConfig, hidden: usize, gate_up: Stacked, down: Stacked, biases: Option<(Tensor, Tensor)>, mode: MoeGemmMode, (alpha, limit): (f32, f32)) -> Built {
        let (gate_up_bias, down_bias) = biases.unzip();
        FusedMoe {
            gate_up,
            down,
            gate_up_bias,
            down_bias,
            mode,
            alpha,
            limit,
            num_experts: m.num_experts,
            top_k: m.top_k,
            inter: m.expert_intermediate,
            hidden,
            routing: m.routing,
            norm: m.norm_topk_prob,
            gemv_max_slots: gemv_max_slots_from_env(),
        }
        .check_shapes()
    }

    fn supported(m: &MoeConfig, dtype: DType) -> std::result::Result<(), &'static str> {
        if super::moe::fused_disabled_by_env() {
            return Err("MLC_MOE_FUSED=0");
        }
        if !matches!(dtype, DType::BF16 | DType::F16) {
            return Err("the fused kernels take bf16 / f16 activations");
        }
        if m.num_experts > kernels::MOE_MAX_EXPERTS || m.top_k > kernels::MOE_MAX_TOPK || m.top_k == 0 || m.top_k > m.num_experts {
            return Err("more experts or experts per token than the routing kernel holds");
        }
        Ok(())
    }

    /// The stacked weights' sizes against `[E, 2I, H]` / `[E, H, I]`, and K multiples of the GEMM's stage.
    fn check_shapes(self) -> Built {
        let (e, i, h) = (self.num_experts, self.inter, self.hidden);
        let format = self.gate_up.format();
        if format != self.down.format() {
            return Err("gate/up and down experts in different formats");
        }
        if h % format.k_multiple() != 0 || i % format.k_multiple() != 0 {
            return Err(match format {
                MoeWeights::Dense => "hidden or expert size not a multiple of 64",
                MoeWeights::Q4_0 => "hidden or expert size not a multiple of 256 (Q4_0)",
                MoeWeights::Mxfp4 => "hidden or expert size not a multiple of 32 (MXFP4)",
            });
        }
        let tail = if format == MoeWeights::Mxfp4 { kernels::MOE_GEMM_MXFP4_TAIL_BYTES } else { 0 };
        let want = |rows: usize, k: usize| format.size(e * rows, k) + tail;
        if self.gate_up.tensor().elem_count() != want(2 * i, h) || self.down.tensor().elem_count() != want(h, i) {
            return Err("expert weights do not have the configured shapes");
        }
        Ok(self)
    }

    /// `x: [T, hidden]`, `logits: [T, E]` (the router's, any float dtype) -> `[T, hidden]`.
    pub fn forward(&self, x: &Tensor, logits: &Tensor) -> Result<Tensor> {
        let t = x.dim(0)?;
        if t == 0 {
            return Ok(x.zeros_like()?);
        }
        let mut x = x.contiguous()?;
        // The GEMM copies 16-byte pieces of rows: a view starting mid-piece is copied to a fresh buffer.
        if !(x.layout().start_offset() * x.dtype().size_in_bytes()).is_multiple_of(16) {
            x = x.copy()?;
        }
        let logits = logits.to_dtype(DType::F32)?.contiguous()?;
        let slots = t * self.top_k;
        // The per-slot GEMVs take dense / Q4_0 experts with SiLU and no biases (the dtype was checked at load).
        let gemv = slots <= self.gemv_max_slots
            && self.gate_up_bias.is_none()
            && kernels::moe_gemv_kernel(kernels::KernelDType::BF16, self.gate_up.format(), self.mode).is_some();
        let plan = logits.apply_op1_no_bwd(&Plan { top_k: self.top_k, experts: self.num_experts, routing: self.routing, norm: self.norm, align: !gemv })?;
        if gemv {
            let run = |input: &Tensor, w: &Stacked, n: usize, k: usize, x_div: usize, mode: MoeGemmMode| {
                let (experts, alpha, limit) = (self.num_experts, self.alpha, self.limit);
                input.apply_op2_no_bwd(&plan, &Gemv(Gemm { w: w.tensor().clone(), weights: w.format(), bias: None, n, k, x_div, slots, experts, mode, alpha, limit }))
            };
            let act = run(&x, &self.gate_up, self.inter, self.hidden, self.top_k, self.mode)?; // [T*k, I]
            let y = run(&act, &self.down, self.hidden, self.inter, 1, MoeGemmMode::Plain)?; // [T*k, H]
            return Ok(y.apply_op2_no_bwd(&plan, &Combine { tokens: t, top_k: self.top_k, experts: self.num_experts })?);
        }
        let gemm = |input: &Tensor, w: &Stacked, bias: &Option<Tensor>, n: usize, k: usize, x_div: usize, mode: MoeGemmMode| {
            input.apply_op2_no_bwd(
                &plan,
                &Gemm { w: w.tensor().clone(), weights: w.format(), bias: bias.clone(), n, k, x_div, slots: t * self.top_k, experts: self.num_experts, mode, alpha: self.alpha, limit: self.limit },
            )
        };
        let act = gemm(&x, &self.gate_up, &self.gate_up_bias, self.inter, self.hidden, self.top_k, self.mode)?; // [T*k, I]
        let y = gemm(&act, &self.down, &self.down_bias, self.hidden, self.inter, 1, MoeGemmMode::Plain)?; // [T*k, H]
        Ok(y.apply_op2_no_bwd(&plan, &Combine { tokens: t, top_k: self.top_k, experts: self.num_experts })?)
    }
}

/// The plan's parts, in u32 words: ids, weights, sorted slots, tile experts.
struct PlanLayout {
    slots: usize,
    tiles: usize,
}

impl PlanLayout {
    fn new(tokens: usize, top_k: usize, experts: usize) -> Self {
        let slots = tokens * top_k;
        PlanLayout { slots, tiles: kernels::moe_max_tiles(slots, experts) }
    }
    fn ids(&self) -> std::ops::Range<usize> {
        0..self.slots
    }
    fn weights(&self) -> std::ops::Range<usize> {
        self.slots..2 * self.slots
    }
    fn sorted(&self) -> std::ops::Range<usize> {
        2 * self.slots..2 * self.slots + self.tiles * kernels::MOE_TILE
    }
    fn tile_expert(&self) -> std::ops::Range<usize> {
        let s = self.sorted().end;
        s..s + self.tiles
    }
    fn len(&self) -> usize {
        self.tile_expert().end
    }
}

/// Router logits `[T, E]` f32 -> the step's plan (u32, [`PlanLayout`]).
struct Plan {
    top_k: usize,
    experts: usize,
    routing: Routing,
    norm: bool,
    /// Sort the slots by expert for the grouped GEMM (the per-slot GEMVs read only ids and weights).
    align: bool,
}

/// `[T*k, K]` or `[T, K]` activations (arg 1) and the plan (arg 2) -> `[T*k, n]`.
struct Gemm {
    w: Tensor,
    weights: MoeWeights,
    bias: Option<Tensor>,
    n: usize,
    k: usize,
    /// Input row of slot s: s / x_div (k for the gate/up GEMM on tokens, 1 for down on slots).
    x_div: usize,
    slots: usize,
    experts: usize,
    mode: MoeGemmMode,
    alpha: f32,
    limit: f32,
}

/// The same product as [`Gemm`] (no bias: the per-slot kernels take none) by a GEMV per slot.
struct Gemv(Gemm);

/// `y: [T*k, H]` (arg 1) and the plan (arg 2) -> `[T, H]`.
struct Combine {
    tokens: usize,
    top_k: usize,
    experts: usize,
}

fn cpu_unused(op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
    candle_core::bail!("{op}: the fused mixture of experts runs on CUDA only (the CPU takes moe.rs's path)")
}

impl CustomOp1 for Plan {
    fn name(&self) -> &'static str {
        "moe-plan"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unused(self.name())
    }
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        launch::plan(self, s, l)
    }
}

/// A CUDA-only `CustomOp2` whose forward is `launch::$f(self, arg1, layout1, plan, plan layout)`.
macro_rules! plan_op2 {
    ($op:ty, $name:literal, $f:path) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
                cpu_unused(self.name())
            }
            fn cuda_fwd(
                &self,
                a: &candle_core::CudaStorage,
                al: &Layout,
                plan: &candle_core::CudaStorage,
                pl: &Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
                $f(self, a, al, plan, pl)
            }
        }
    };
}
plan_op2!(Gemm, "moe-gemm", launch::gemm);
plan_op2!(Gemv, "moe-gemv", launch::gemv);
plan_op2!(Combine, "moe-combine", launch::combine);

#[path = "moe_cuda_launch.rs"]
mod launch;
