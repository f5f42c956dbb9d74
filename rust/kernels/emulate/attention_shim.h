// CPU stand-ins for what the attention kernels use beyond shim.cuh: bf16 / f16 types with CUDA's
// round-to-nearest-even conversions, atomics and fences, cache-hinted loads, CUDA's math names.
// check_attention.py installs this file as cuda_bf16.h and cuda_fp16.h, so the kernels' own
// common.cuh compiles unchanged on the host.
#pragma once
#include "shim.cuh"
#include <atomic>
#include <math.h>

#define __align__(n) __attribute__((aligned(n)))

inline Dim blockDim;  // set by the driver's launch
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };

struct __nv_bfloat16 { uint16_t x; };
struct __half { uint16_t x; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
struct __half2 { __half x, y; };

inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((uint32_t)h.x << 16); }
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t b = __float_as_uint(f);
    if (std::isnan(f)) return {(uint16_t)((b >> 16) | 0x40)};
    b += 0x7fffu + ((b >> 16) & 1u);  // round to nearest, ties to even
    return {(uint16_t)(b >> 16)};
}
inline float __half2float(__half h) { _Float16 v; std::memcpy(&v, &h.x, 2); return (float)v; }
inline __half __float2half(float f) { _Float16 v = (_Float16)f; __half h; std::memcpy(&h.x, &v, 2); return h; }

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16(lo), __float2bfloat16(hi)}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half(lo), __float2half(hi)}; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T> inline T __ldcg(const T* p) { return *p; }
inline float __fdividef(float a, float b) { return a / b; }
