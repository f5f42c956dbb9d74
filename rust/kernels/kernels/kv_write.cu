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
