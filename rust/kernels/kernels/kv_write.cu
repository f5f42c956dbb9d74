// KV-cache write: cache[slot_mapping[t]] = src[t] for every new token t.
//   cache: [num_blocks * block_size, row]   (row = num_kv_heads * head_dim elements)
//   src:   [num_tokens, row]
// One block per token. Rows are copied in 16-byte words when both rows are 16-byte aligned (always
// true for candle's allocations with head_dim a multiple of 8 in bf16/f16 or 4 in f32).
#include "common.cuh"

template <typename T>
__device__ void kv_write(T* __restrict__ cache, const T* __restrict__ src, const uint32_t* __restrict__ slot_mapping,
                         uint32_t row, uint32_t num_slots) {
    const uint32_t t = blockIdx.x;
    const uint32_t slot = slot_mapping[t];
    if (slot >= num_slots) return;  // validated on the host; never write outside the cache
    T* dst = cache + (size_t)slot * row;
    const T* s = src + (size_t)t * row;
    const size_t bytes = (size_t)row * sizeof(T);
    if (bytes % 16 == 0 && ((uintptr_t)dst % 16) == 0 && ((uintptr_t)s % 16) == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(s);
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        for (uint32_t i = threadIdx.x; i < bytes / 16; i += blockDim.x) d4[i] = s4[i];
    } else {
        for (uint32_t i = threadIdx.x; i < row; i += blockDim.x) dst[i] = s[i];
    }
}

#define KV_WRITE(NAME, T)                                                                               \
    extern "C" __global__ void NAME(T* cache, const T* src, const uint32_t* slot_mapping, uint32_t row, \
                                    uint32_t num_slots) {                                               \
        kv_write<T>(cache, src, slot_mapping, row, num_slots);                                          \
    }

KV_WRITE(kv_write_f32, float)
KV_WRITE(kv_write_bf16, __nv_bfloat16)
KV_WRITE(kv_write_f16, __half)

// FP8 e4m3 cache rows (kv_cache_dtype "fp8_e4m3"), written as the CPU writes them (attention/mod.rs): a
// row, one token's KV head, is divided by its scale max(amax / 448, FLT_MIN), clamped to +-448 and rounded
// to nearest even, and the scale is kept beside it.
//   cache:  [num_slots, kv_heads, head_dim] e4m3 bytes     scales: [num_slots, kv_heads] f32
//   src:    [num_tokens, kv_heads, head_dim]
// One block per token, a warp per head. Two launches read the same rows: SCALES writes the scales, the
// other the bytes (each recomputes amax, so both are plain in-place ops on one output each).
#include <cuda_fp8.h>
#include <float.h>

template <typename T, bool SCALES>
__device__ void kv_write_fp8(void* __restrict__ dst, const T* __restrict__ src, const uint32_t* __restrict__ slot_mapping,
                             uint32_t kv_heads, uint32_t head_dim, uint32_t num_slots) {
    const uint32_t t = blockIdx.x;
    const uint32_t slot = slot_mapping[t];
    if (slot >= num_slots) return;  // validated on the host; never write outside the cache
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (uint32_t h = warp; h < kv_heads; h += blockDim.x / 32) {
        const T* s = src + ((size_t)t * kv_heads + h) * head_dim;
        float amax = 0.f;
        for (uint32_t e = lane; e < head_dim; e += 32) amax = fmaxf(amax, fabsf(to_f32(s[e])));
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
        const float scale = fmaxf(amax / 448.f, FLT_MIN);
        const size_t row = (size_t)slot * kv_heads + h;
        if (SCALES) {
            if (lane == 0) static_cast<float*>(dst)[row] = scale;
        } else {
            uint8_t* d = static_cast<uint8_t*>(dst) + row * head_dim;
            for (uint32_t e = lane; e < head_dim; e += 32) {
                const float x = fminf(fmaxf(to_f32(s[e]) / scale, -448.f), 448.f);
                d[e] = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
            }
        }
    }
}

#define KV_WRITE_FP8(NAME, T, SCALES)                                                                    \
    extern "C" __global__ void NAME(void* dst, const T* src, const uint32_t* slot_mapping, uint32_t kv_heads, \
                                    uint32_t head_dim, uint32_t num_slots) {                           \
        kv_write_fp8<T, SCALES>(dst, src, slot_mapping, kv_heads, head_dim, num_slots);                 \
    }

KV_WRITE_FP8(kv_write_fp8_f32, float, false)
KV_WRITE_FP8(kv_write_fp8_bf16, __nv_bfloat16, false)
KV_WRITE_FP8(kv_write_fp8_f16, __half, false)
KV_WRITE_FP8(kv_scale_fp8_f32, float, true)
KV_WRITE_FP8(kv_scale_fp8_bf16, __nv_bfloat16, true)
KV_WRITE_FP8(kv_scale_fp8_f16, __half, true)
