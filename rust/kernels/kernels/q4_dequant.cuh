// GGML Q4_0 weights turned into tensor-core A fragments, shared by the dense GEMM (q4_gemm_tc.cu) and the
// fused MoE's grouped GEMM (moe_gemm.cu).
//
// A Q4_0 block is 18 bytes for 32 weights: an f16 scale d, then 16 bytes whose low nibbles are elements
// 0..15 and high nibbles elements 16..31; value = d * (q - 8). Every weight becomes round_T(d * (q - 8))
// (T = bf16 / f16), the number a dequantize-then-cuBLAS path would hold, with one rounding:
//   q - 8, exactly: the nibble ORed into the mantissa of a power of two (f16 1024, bf16 128: ulp 1) minus
//     that power plus 8 (HSUB2). f16: a high nibble sits 4 bits up, still inside the 10-bit mantissa, so
//     the OR gives 1024 + 16 q and one fused multiply-add by 1/16 minus 72 (HFMA2) gives q - 8 (every
//     intermediate an exact small integer: no shift). bf16's 7-bit mantissa would put the nibble's top
//     bit into the exponent: its high nibbles are shifted down first.
//   f16: times d (HMUL2), rounded once.
//   bf16: d is an f16 value, often not a bf16 one. Split it as d = hi + lo with hi = round_bf16(d): lo holds
//     the at most 3 low mantissa bits of d, so it is a bf16 value, and lo (q - 8) (<= 7 bits) is exact;
//     fma(hi, q - 8, lo (q - 8)) is d (q - 8) rounded once. (An f32 product and a conversion, what this
//     path did before, takes twice the instructions.)
// So a pair of weights costs 3 (f16) or 4-5 (bf16) instructions after a byte permute, against 6-9 through f32.
#pragma once
#include "common.cuh"  // pair_from_bits / pair_bits

template <typename T> struct Q4tPair;  // T's pair type and constants (bits of both halves)
template <> struct Q4tPair<__half> {
    typedef __half2 P;
    static constexpr uint32_t MAGIC = 0x64006400u;     // 1024
    static constexpr uint32_t LO_BIAS = 0x64086408u;   // 1032: (1024 + q) - 1032 = q - 8
    static constexpr uint32_t HI_SCALE = 0x2C002C00u;  // 1/16
    static constexpr uint32_t HI_BIAS = 0xD480D480u;   // -72: (1024 + 16 q) / 16 - 72 = q - 8
};
template <> struct Q4tPair<__nv_bfloat16> {
    typedef __nv_bfloat162 P;
    static constexpr uint32_t MAGIC = 0x43004300u;     // 128
    static constexpr uint32_t LO_BIAS = 0x43084308u;   // 136: (128 + q) - 136 = q - 8
};

// A block's scale as the pair multiply wants it: f16 {d, d}; bf16 {hi, hi} and {lo, lo} (see above).
template <typename T> struct Q4tScale;
template <> struct Q4tScale<__half> {
    uint32_t d2;
    __device__ __forceinline__ explicit Q4tScale(uint16_t d_bits) : d2(d_bits * 0x10001u) {}
};
template <> struct Q4tScale<__nv_bfloat16> {
    uint32_t hi2, lo2;
    __device__ __forceinline__ explicit Q4tScale(uint16_t d_bits) {
        __half d_h;
        memcpy(&d_h, &d_bits, 2);
        const float d = __half2float(d_h);
        const __nv_bfloat16 hi = __float2bfloat16(d);
        const __nv_bfloat16 lo = __float2bfloat16(d - __bfloat162float(hi));  // exact (at most 3 bits)
        uint16_t hb, lb;
        memcpy(&hb, &hi, 2);
        memcpy(&lb, &lo, 2);
        hi2 = hb * 0x10001u;
        lo2 = lb * 0x10001u;
    }
};

// round_T(d * (q - 8)) for the pair of nibbles at bits 0..3 / 16..19 (hi = false) or 4..7 / 20..23
// (hi = true) of v, packed as the MMA wants it (first element low).
template <typename T>
__device__ __forceinline__ uint32_t q4t_dequant_pair(uint32_t v, bool hi, const Q4tScale<T>& s);
template <>
__device__ __forceinline__ uint32_t q4t_dequant_pair<__half>(uint32_t v, bool hi, const Q4tScale<__half>& s) {
    typedef Q4tPair<__half> C;
    const __half2 h = pair_from_bits<__half2>((v & (hi ? 0x00f000f0u : 0x000f000fu)) | C::MAGIC);
    const __half2 q = hi ? __hfma2(h, pair_from_bits<__half2>(C::HI_SCALE), pair_from_bits<__half2>(C::HI_BIAS))
                         : __hsub2(h, pair_from_bits<__half2>(C::LO_BIAS));
    return pair_bits(__hmul2(q, pair_from_bits<__half2>(s.d2)));
}
template <>
__device__ __forceinline__ uint32_t q4t_dequant_pair<__nv_bfloat16>(uint32_t v, bool hi, const Q4tScale<__nv_bfloat16>& s) {
    typedef Q4tPair<__nv_bfloat16> C;
    typedef __nv_bfloat162 P;
    const P q = __hsub2(pair_from_bits<P>(((hi ? v >> 4 : v) & 0x000f000fu) | C::MAGIC), pair_from_bits<P>(C::LO_BIAS));
    return pair_bits(__hfma2(q, pair_from_bits<P>(s.hi2), __hmul2(q, pair_from_bits<P>(s.lo2))));
}

// Bytes b0, b1 of a 16-bit word -> bits 0..7 and 16..23 (one PRMT).
__device__ __forceinline__ uint32_t q4t_spread(uint32_t two) { return __byte_perm(two, 0u, 0x4140); }

__device__ __forceinline__ uint16_t q4t_ld16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

// The raw material of one Q4_0 block's A fragments for MMA rows g and g + 8, whose blocks start at blk_g
// and blk_g8, for lane column c: v[0] / v[2] the nibble bytes of row g at k 2c, 2c + 1 / 2c + 8, 2c + 9
// (low nibbles: the first k16 step, elements 0..15; high nibbles: the second), v[1] / v[3] row g + 8's;
// and the two rows' scales.
template <typename T> struct Q4tBlock {
    uint32_t v[4];
    Q4tScale<T> s_g, s_g8;
    __device__ __forceinline__ Q4tBlock(const uint8_t* blk_g, const uint8_t* blk_g8, int c)
        : s_g(q4t_ld16(blk_g)), s_g8(q4t_ld16(blk_g8)) {
        v[0] = q4t_spread(q4t_ld16(blk_g + 2 + 2 * c));
        v[1] = q4t_spread(q4t_ld16(blk_g8 + 2 + 2 * c));
        v[2] = q4t_spread(q4t_ld16(blk_g + 10 + 2 * c));
        v[3] = q4t_spread(q4t_ld16(blk_g8 + 10 + 2 * c));
    }
    // The A fragment of k16 step `step` (0: elements 0..15, 1: 16..31).
    __device__ __forceinline__ void fragment(uint32_t (&a)[4], int step) const {
        const bool hi = step != 0;
        a[0] = q4t_dequant_pair<T>(v[0], hi, s_g);
        a[1] = q4t_dequant_pair<T>(v[1], hi, s_g8);
        a[2] = q4t_dequant_pair<T>(v[2], hi, s_g);
        a[3] = q4t_dequant_pair<T>(v[3], hi, s_g8);
    }
};

// Both k16 steps' A fragments of one block at once.
template <typename T>
__device__ __forceinline__ void q4t_a_fragments(uint32_t (&a)[2][4], const uint8_t* blk_g, const uint8_t* blk_g8, int c) {
    const Q4tBlock<T> b(blk_g, blk_g8, c);
    b.fragment(a[0], 0);
    b.fragment(a[1], 1);
}

template <typename T> __device__ __forceinline__ void q4t_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void q4t_mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16_f16(c, a, b0, b1);
}
template <> __device__ __forceinline__ void q4t_mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16_bf16(c, a, b0, b1);
}
