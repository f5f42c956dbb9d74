// CPU stand-ins for the pair arithmetic q4_dequant.cuh uses beyond attention_shim.h: each lane of the pair
// rounded once to f16 / bf16, as the hardware's HSUB2 / HMUL2 / HFMA2 do (products and sums formed exactly
// in double first: exact for the operands those kernels give them), and the byte permute.
#pragma once
#include "attention_shim.h"

inline Dim gridDim;  // set by the driver's launch
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half2 __hsub2(__half2 a, __half2 b) {
    return {__float2half(__half2float(a.x) - __half2float(b.x)), __float2half(__half2float(a.y) - __half2float(b.y))};
}
inline __half2 __hmul2(__half2 a, __half2 b) {
    return {__float2half(__half2float(a.x) * __half2float(b.x)), __float2half(__half2float(a.y) * __half2float(b.y))};
}
// f16 rounding of a double (_Float16 converts from double with one rounding).
inline __half q4s_half(double v) { _Float16 h = (_Float16)v; __half r; std::memcpy(&r.x, &h, 2); return r; }
// bf16 rounding of a double, to nearest even, in one step (via float would round twice).
inline __nv_bfloat16 q4s_bf16(double v) {
    uint64_t b;
    std::memcpy(&b, &v, 8);
    const int shift = 52 - 7;  // double's mantissa bits beyond bf16's (the exponent range of our values fits both)
    const uint64_t half = 1ull << (shift - 1), rem = b & ((1ull << shift) - 1);
    uint64_t top = b >> shift;
    if (rem > half || (rem == half && (top & 1))) ++top;
    const uint64_t r = top << shift;
    double d;
    std::memcpy(&d, &r, 8);
    return __float2bfloat16((float)d);  // exact: d has bf16's mantissa
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    auto one = [](__half x, __half y, __half z) { return q4s_half((double)__half2float(x) * __half2float(y) + __half2float(z)); };
    return {one(a.x, b.x, c.x), one(a.y, b.y, c.y)};
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
    auto one = [](__nv_bfloat16 x, __nv_bfloat16 y, __nv_bfloat16 z) {
        return q4s_bf16((double)__bfloat162float(x) * __bfloat162float(y) + __bfloat162float(z));
    };
    return {one(a.x, b.x, c.x), one(a.y, b.y, c.y)};
}
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) { return __hfma2(a, b, __nv_bfloat162{{0x8000}, {0x8000}}); }
inline __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) {
    auto one = [](__nv_bfloat16 x, __nv_bfloat16 y) { return q4s_bf16((double)__bfloat162float(x) - __bfloat162float(y)); };
    return {one(a.x, b.x), one(a.y, b.y)};
}
// Result byte i = byte (s >> 4i) & 7 of the 8 bytes {y, x} (x the low four).
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    const uint64_t both = ((uint64_t)y << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= (uint32_t)((both >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
