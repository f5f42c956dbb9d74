// Shared helpers of our kernels: element conversions to and from f32, warp reductions, silu * up.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }

// A packed pair (__half2, __nv_bfloat162) from its 32 bits and back (the 4-bit dequantizers build pairs
// with integer operations).
template <typename P> __device__ __forceinline__ P pair_from_bits(uint32_t bits) {
    P p;
    memcpy(&p, &bits, 4);
    return p;
}
template <typename P> __device__ __forceinline__ uint32_t pair_bits(P p) {
    uint32_t bits;
    memcpy(&bits, &p, 4);
    return bits;
}

// The two e4m3 bytes in the low 16 bits of `x` (b0 low, b1) as an f16 pair of their values / 256: sign and
// the 7 exponent-mantissa bits moved up (the exponent biases differ by 8, subnormals included), exact. The
// caller's row scale carries the 256.
__device__ __forceinline__ __half2 e4m3x2_over_256(uint32_t x) {
    return pair_from_bits<__half2>(((x & 0x80u) << 8) | ((x & 0x7Fu) << 7) | ((x & 0x8000u) << 16) | ((x & 0x7F00u) << 15));
}

// 16 bytes as four words (16-byte aligned: one vector load or store).
struct __align__(16) Words4 { uint32_t w[4]; };

// x rounded to T's precision, kept in f32.
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_f32(from_f32<T>(x)); }

// silu(gate) * up for a gate and an up already in T (silu's own output rounded to T, as a separate
// activation would be): the one definition behind silu_mul_* and the fused gate/up GEMV.
template <typename T> __device__ __forceinline__ T silu_times(float gate, float up) {
    const float s = round_to<T>(gate / (1.0f + expf(-gate)));
    return from_f32<T>(s * up);
}

// The end of the tensor-core GEMVs (dense_gemv.cu, q4_gemm.cu): the block's WARPS warps left partial sums
// for 16 MMA rows x TOK tokens, partial(v, r, t); their sums are stored to y[M, N] (rows row0.., tokens t0..,
// only those inside N and M). SILU: MMA rows 0-7 are gate rows, 8-15 the matching up rows, and y gets
// silu(gate) * up with both rounded to T first (as the separate GEMV + silu_mul). Plain: consecutive threads
// take consecutive rows of one token (contiguous stores). Call after a __syncthreads.
template <typename T, bool SILU, int WARPS, int TOK, typename Partial>
__device__ __forceinline__ void gemv_mma_store(T* __restrict__ y, const Partial& partial, uint32_t row0, uint32_t t0,
                                               uint32_t m, uint32_t n) {
    constexpr int ROWS = SILU ? 8 : 16;
    for (int i = threadIdx.x; i < ROWS * TOK; i += blockDim.x) {
        const int r = i % ROWS, t = i / ROWS;
        float a = 0.f, b = 0.f;
#pragma unroll
        for (int v = 0; v < WARPS; ++v) {
            a += partial(v, r, t);
            if (SILU) b += partial(v, r + 8, t);
        }
        const uint32_t row = row0 + r, tok = t0 + t;
        if (row < n && tok < m) y[(size_t)tok * n + row] = SILU ? silu_times<T>(round_to<T>(a), round_to<T>(b)) : from_f32<T>(a);
    }
}

// The factor that turns an attention row's unnormalised output into its result when the row's softmax
// also takes a sink logit (gpt-oss): with running max m and sum l (of exp(score - m)) over the keys,
// m' = max(m, sink) and the result is acc * exp(m - m') / (l * exp(m - m') + exp(sink - m')). Finite for
// any inputs: a row without keys (m = -inf) gets 0, as does a -inf sink without keys.
__device__ __forceinline__ float sink_norm(float m, float l, float sink) {
    const float ms = fmaxf(m, sink);
    const float f = m == -INFINITY ? 0.f : expf(m - ms);
    const float denom = l * f + expf(sink - ms);
    return denom > 0.f ? f / denom : 0.f;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

// Programmatic dependent launch (sm_90; rust/core/src/cuda_pdl.rs launches with the attribute). A grid
// launched with it may start while the grid before it on the stream is still running: pdl_wait() blocks
// until that grid has completed and its writes are visible, so before it a kernel may read only what no
// kernel of the step writes (weights, tables uploaded before the step) and write no global memory. Every
// thread of such a kernel calls it, also on early exits: a grid that completed without waiting would let
// the next one overtake the grid before. pdl_launch_dependents(), called after pdl_wait(), lets the next
// grid be scheduled once every block of this one has called it or exited (so at most the running grid and
// the next one's waiting blocks are resident). Both are no-ops for grids launched without the attribute,
// and compiled out below sm_90 (and on the host emulator).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
