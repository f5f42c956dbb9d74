// 16-bit dense weights times a decode-sized batch: y[M, N] = x[M, K] . W[N, K]^T, bf16 / f16, f32
// accumulation, one rounding when y is stored.
//
//   dense_gemv_<T>_t<TOK>       one warp per output row
//   dense_gemv_silu_<T>_t<TOK>  a stacked gate/up weight W[2N, K] (gate rows, then up rows): one warp per
//                               output, y[M, N] = silu(x . gate^T) * (x . up^T)
//   dense_gemv_mma[_silu]_<T>_t<NT>  2-16 tokens on tensor cores: NT tiles of 8 tokens (below)
//   moe_dense_gemv[_silu]_<T>   the same per (token, expert) slot of the fused MoE's decode (below)
//
// Why not cuBLAS: at one token cuBLAS runs these shapes as split-K GEMVs with a separate reduction
// kernel (q/k/v, down), or a GEMV at half the bandwidth (o_proj); and its kernels are launched plainly,
// so the fused elementwise kernels between them cannot start early (programmatic dependent launch,
// common.cuh). Here every launch is one kernel that starts streaming its weights before the kernel
// before it has finished: a warp's first loads are issued before pdl_wait(), since weights are never
// written by a step.
//
// Layout: block = 8 warps = 8 output rows (outputs with SILU), grid = (ceil(M / TOK), ceil(N / 8)). A warp
// reads its row(s) in 16-byte chunks (8 elements), lane l taking chunks l, l + 32, ...; chunks are loaded
// DENSE_UNROLL at a time, the next DENSE_UNROLL in flight while the current ones are multiplied (a
// register double buffer), bypassing L1 (read once). x is read through the read-only cache: all blocks
// read the same TOK x K values. Needs K % 8 == 0 and x, W 16-byte aligned (checked by the caller).
//
// The silu variant rounds gate and up to T before silu_times, as the separate GEMV would store them
// before silu_mul, so it equals the unfused pair exactly.
#include "common.cuh"
#include "mma.cuh"

#define DENSE_WARPS 8
#define DENSE_UNROLL 4

// 16 bytes of weights, streamed: not kept in L1 (x lives there).
__device__ __forceinline__ uint4 ld_stream_16(const void* p) {
#ifdef __CUDA_ARCH__
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
#else  // the host emulation (rust/kernels/emulate)
    return *reinterpret_cast<const uint4*>(p);
#endif
}

// Sum over the pair of 16-bit values in w and x: w.lo * x.lo + w.hi * x.hi + acc, in f32.
template <typename T> __device__ __forceinline__ float dot2(uint32_t w, uint32_t x, float acc);
template <> __device__ __forceinline__ float dot2<__nv_bfloat16>(uint32_t w, uint32_t x, float acc) {
    // bf16 -> f32 is a 16-bit shift: the low element moves up, the high one is masked.
    acc = fmaf(__uint_as_float(w << 16), __uint_as_float(x << 16), acc);
    return fmaf(__uint_as_float(w & 0xffff0000u), __uint_as_float(x & 0xffff0000u), acc);
}
template <> __device__ __forceinline__ float dot2<__half>(uint32_t w, uint32_t x, float acc) {
    const float2 wf = __half22float2(*reinterpret_cast<const __half2*>(&w));
    const float2 xf = __half22float2(*reinterpret_cast<const __half2*>(&x));
    acc = fmaf(wf.x, xf.x, acc);
    return fmaf(wf.y, xf.y, acc);
}

template <typename T> __device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
    acc = dot2<T>(w.x, x.x, acc);
    acc = dot2<T>(w.y, x.y, acc);
    acc = dot2<T>(w.z, x.z, acc);
    return dot2<T>(w.w, x.w, acc);
}

// ROWS = 1 (plain) or 2 (gate row `row`, up row `row + n`); TOK tokens per block (the block's first is
// blockIdx.x * TOK; those past M are skipped).
template <typename T, bool SILU, int TOK>
__device__ void dense_gemv(T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ x, uint32_t m,
                           uint32_t n, uint32_t k) {
    constexpr int ROWS = SILU ? 2 : 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t row = blockIdx.y * DENSE_WARPS + warp;  // output index
    const uint32_t t0 = blockIdx.x * TOK;
    const uint32_t chunks = k / 8;
    const bool live = row < n;

    const uint4* wrow[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) wrow[r] = reinterpret_cast<const uint4*>(w + (size_t)(row + r * n) * k);

    uint4 next[ROWS][DENSE_UNROLL];
    auto load = [&](uint32_t base) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int u = 0; u < DENSE_UNROLL; ++u) {
                const uint32_t c = base + u * 32 + lane;
                next[r][u] = c < chunks ? ld_stream_16(wrow[r] + c) : make_uint4(0u, 0u, 0u, 0u);
            }
    };
    if (live) load(0);  // weights only: allowed before the wait
    pdl_wait();
    pdl_launch_dependents();
    if (!live) return;

    float acc[ROWS][TOK];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int t = 0; t < TOK; ++t) acc[r][t] = 0.f;

    for (uint32_t base = 0; base < chunks; base += 32 * DENSE_UNROLL) {
        uint4 cur[ROWS][DENSE_UNROLL];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int u = 0; u < DENSE_UNROLL; ++u) cur[r][u] = next[r][u];
        if (base + 32 * DENSE_UNROLL < chunks) load(base + 32 * DENSE_UNROLL);
#pragma unroll
        for (int u = 0; u < DENSE_UNROLL; ++u) {
            const uint32_t c = base + u * 32 + lane;
            if (c < chunks) {
#pragma unroll
                for (int t = 0; t < TOK; ++t) {
                    if (t0 + t < m) {
                        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + (size_t)(t0 + t) * k) + c);
#pragma unroll
                        for (int r = 0; r < ROWS; ++r) acc[r][t] = dot8<T>(cur[r][u], xv, acc[r][t]);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int t = 0; t < TOK; ++t) {
        float s[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) s[r] = warp_sum(acc[r][t]);
        if (lane == 0 && t0 + t < m) {
            T* out = y + (size_t)(t0 + t) * n + row;
            if (SILU) *out = silu_times<T>(round_to<T>(s[0]), round_to<T>(s[ROWS - 1]));
            else *out = from_f32<T>(s[0]);
        }
    }
}

// Tensor-core variant for 2-16 tokens (speculative decoding's verify steps, small decode batches), where the
// warp-per-row kernel's f32 FMAs per token fell behind cuBLAS (down at 4 tokens 72.9 against 44.4 us).
// Block = 16 weight rows (SILU: 8 gate rows and the 8 up rows n further, as MMA rows 0-7 and 8-15, so each
// output's gate and up sums meet in one block) x NT tiles of 8 tokens; its 8 warps split K in chunks of 32
// inputs (warp v takes chunks v, v + 8, ...), DENSE_UNROLL chunks at a time with the next in flight (weights
// bypass L1), and meet through shared memory at the end. Lane (g, c) = (lane / 4, lane % 4) loads rows g
// and g + 8's inputs 8c..8c+7 of a chunk as one 16-byte word each. The order of K inside an MMA is free as
// long as A and B agree, so MMA 0 takes inputs 8c..8c+3 of every lane c and MMA 1 inputs 8c+4..8c+7:
//   MMA k index 2c, 2c + 1 -> input 8c + 4h, + 1;   2c + 8, 2c + 9 -> input 8c + 4h + 2, + 3   (h = MMA)
// and the lane's B fragments are the 16 bytes of x at the same inputs. f32 accumulators; one rounding when
// y is stored (SILU: gate and up rounded to T first, as the separate GEMV + silu_mul). Needs K % 32 == 0 and
// 16-byte aligned x, W; grid = (ceil(M / (8 NT)), ceil(N / 16)) (SILU: ceil(N / 8), N = outputs).
#define DENSE_MMA_ROWS 16
template <typename T>
__device__ __forceinline__ void dense_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void dense_mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16_f16(c, a, b0, b1);
}
template <>
__device__ __forceinline__ void dense_mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16_bf16(c, a, b0, b1);
}

template <typename T, bool SILU, int NT>
__device__ void dense_gemv_mma(T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ x, uint32_t m,
                               uint32_t n, uint32_t k, float (*part)[DENSE_MMA_ROWS][8 * NT]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const uint32_t t0 = blockIdx.x * 8 * NT;
    const int live = (int)min((uint32_t)NT, (m - t0 + 7) / 8);  // token tiles with a token (warp-uniform)
    const uint32_t row0 = blockIdx.y * (SILU ? DENSE_MMA_ROWS / 2 : DENSE_MMA_ROWS);
    // MMA row r's weight row (rows past N re-read the last one, never stored).
    auto wrow = [&](int r) {
        const uint32_t row = SILU ? min(row0 + (r & 7), n - 1) + (r < 8 ? 0 : n) : min(row0 + r, n - 1);
        return reinterpret_cast<const uint4*>(w + (size_t)row * k);
    };
    const uint4* wr[2] = {wrow(g), wrow(g + 8)};
    const uint32_t chunks = k / 32;
    const uint32_t mine = chunks > (uint32_t)warp ? (chunks - warp + DENSE_WARPS - 1) / DENSE_WARPS : 0;
    uint4 next[2][DENSE_UNROLL];
    auto load = [&](uint32_t i) {  // the warp's chunks i .. i + DENSE_UNROLL - 1
#pragma unroll
        for (int u = 0; u < DENSE_UNROLL; ++u) {
            const uint32_t q = warp + (i + u) * DENSE_WARPS;
#pragma unroll
            for (int r = 0; r < 2; ++r) next[r][u] = i + u < mine ? ld_stream_16(wr[r] + 4 * q + c) : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    load(0);  // weights only: allowed before the wait
    pdl_wait();
    pdl_launch_dependents();
    const T* xrow[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const uint32_t token = t0 + 8 * j + g;
        xrow[j] = token < m ? x + (size_t)token * k : nullptr;
    }
    float acc[NT][4] = {};  // per token tile: rows g, g + 8 x tokens 2c, 2c + 1 (the C fragment)
    for (uint32_t i = 0; i < mine; i += DENSE_UNROLL) {
        uint4 cur[2][DENSE_UNROLL];
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
            for (int u = 0; u < DENSE_UNROLL; ++u) cur[r][u] = next[r][u];
        if (i + DENSE_UNROLL < mine) load(i + DENSE_UNROLL);
#pragma unroll
        for (int u = 0; u < DENSE_UNROLL; ++u) {
            if (i + u >= mine) break;
            const uint32_t q = warp + (i + u) * DENSE_WARPS;
            const uint32_t a0[4] = {cur[0][u].x, cur[1][u].x, cur[0][u].y, cur[1][u].y};
            const uint32_t a1[4] = {cur[0][u].z, cur[1][u].z, cur[0][u].w, cur[1][u].w};
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                if (j >= live) break;
                const uint4 xv = xrow[j] != nullptr ? __ldg(reinterpret_cast<const uint4*>(xrow[j]) + 4 * q + c) : make_uint4(0u, 0u, 0u, 0u);
                dense_mma<T>(acc[j], a0, xv.x, xv.y);
                dense_mma<T>(acc[j], a1, xv.z, xv.w);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        part[warp][g][8 * j + 2 * c] = acc[j][0];
        part[warp][g][8 * j + 2 * c + 1] = acc[j][1];
        part[warp][g + 8][8 * j + 2 * c] = acc[j][2];
        part[warp][g + 8][8 * j + 2 * c + 1] = acc[j][3];
    }
    __syncthreads();
    gemv_mma_store<T, SILU, DENSE_WARPS, 8 * NT>(y, [&](int v, int r, int t) { return part[v][r][t]; }, row0, t0, m, n);
}

// The fused MoE's decode GEMV (moe_cuda.rs, a step of a few tokens): blockIdx.z = slot s of the step's
// T x top_k (token, expert) slots; expert ids[s] (moe_route's output) picks its rows of W [E, ROWS n, K],
// the input is x row s / x_div (the token for gate/up, the slot for down) and the output y row s [n]. One
// token per slot, grid = (1, ceil(n / 8), slots). Launched plainly, not with PDL: ids come from the kernel
// before, and the weight loads that dense_gemv issues before its pdl_wait depend on them.
template <typename T, bool SILU>
__device__ void moe_dense_gemv(T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ x,
                               const uint32_t* __restrict__ ids, uint32_t n, uint32_t k, uint32_t x_div,
                               uint32_t experts) {
    const uint32_t s = blockIdx.z;
    const uint32_t e = min(ids[s], experts - 1);  // always < experts (moe_route); clamped to stay in bounds
    const size_t rows = SILU ? 2 * (size_t)n : n;
    dense_gemv<T, SILU, 1>(y + (size_t)s * n, w + (size_t)e * rows * k, x + (size_t)(s / x_div) * k, 1, n, k);
}

#ifndef DENSE_GEMV_HOST  // the emulation (rust/kernels/emulate) calls dense_gemv itself
#define DENSE_GEMV(NAME, T, SILU, TOK)                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * DENSE_WARPS)                                       \
        NAME(T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ x, uint32_t m, uint32_t n, \
             uint32_t k) {                                                                               \
        dense_gemv<T, SILU, TOK>(y, w, x, m, n, k);                                                      \
    }

DENSE_GEMV(dense_gemv_bf16_t1, __nv_bfloat16, false, 1)
DENSE_GEMV(dense_gemv_bf16_t4, __nv_bfloat16, false, 4)
DENSE_GEMV(dense_gemv_f16_t1, __half, false, 1)
DENSE_GEMV(dense_gemv_f16_t4, __half, false, 4)
DENSE_GEMV(dense_gemv_silu_bf16_t1, __nv_bfloat16, true, 1)
DENSE_GEMV(dense_gemv_silu_bf16_t4, __nv_bfloat16, true, 4)
DENSE_GEMV(dense_gemv_silu_f16_t1, __half, true, 1)
DENSE_GEMV(dense_gemv_silu_f16_t4, __half, true, 4)

#define DENSE_GEMV_MMA(NAME, T, SILU, NT)                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * DENSE_WARPS)                                       \
        NAME(T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ x, uint32_t m, uint32_t n, \
             uint32_t k) {                                                                               \
        __shared__ float part[DENSE_WARPS][DENSE_MMA_ROWS][8 * NT];                                      \
        dense_gemv_mma<T, SILU, NT>(y, w, x, m, n, k, part);                                             \
    }

DENSE_GEMV_MMA(dense_gemv_mma_bf16_t1, __nv_bfloat16, false, 1)
DENSE_GEMV_MMA(dense_gemv_mma_bf16_t2, __nv_bfloat16, false, 2)
DENSE_GEMV_MMA(dense_gemv_mma_f16_t1, __half, false, 1)
DENSE_GEMV_MMA(dense_gemv_mma_f16_t2, __half, false, 2)
DENSE_GEMV_MMA(dense_gemv_mma_silu_bf16_t1, __nv_bfloat16, true, 1)
DENSE_GEMV_MMA(dense_gemv_mma_silu_bf16_t2, __nv_bfloat16, true, 2)
DENSE_GEMV_MMA(dense_gemv_mma_silu_f16_t1, __half, true, 1)
DENSE_GEMV_MMA(dense_gemv_mma_silu_f16_t2, __half, true, 2)

#define MOE_DENSE_GEMV(NAME, T, SILU)                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * DENSE_WARPS)                                       \
        NAME(T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ x,                        \
             const uint32_t* __restrict__ ids, uint32_t n, uint32_t k, uint32_t x_div, uint32_t experts) { \
        moe_dense_gemv<T, SILU>(y, w, x, ids, n, k, x_div, experts);                                     \
    }

MOE_DENSE_GEMV(moe_dense_gemv_bf16, __nv_bfloat16, false)
MOE_DENSE_GEMV(moe_dense_gemv_f16, __half, false)
MOE_DENSE_GEMV(moe_dense_gemv_silu_bf16, __nv_bfloat16, true)
MOE_DENSE_GEMV(moe_dense_gemv_silu_f16, __half, true)
#endif
