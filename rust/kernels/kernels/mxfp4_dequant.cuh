// GGML MXFP4 weights (gpt-oss's experts) turned into bf16 tensor-core A fragments, for the fused MoE's
// grouped GEMM (moe_gemm.cu, `_mxfp4` kernels).
//
// A block is 17 bytes for 32 weights: the e8m0 scale byte e, then 16 bytes whose low nibbles are elements
// 0..15 and high nibbles elements 16..31; value = kvalues[q] * 2^(e - 128) with ggml's doubled e2m1 table
// kvalues = {0, 1, 2, 3, 4, 6, 8, 12, -0, -1, ..., -12} (quant/mxfp4.rs `dequantize_ggml`, the reference:
// computed in f32, e = 0 / 1 subnormal powers, e = 255 read as 2^127, never NaN). Every such value is a
// bf16 value (at most 2 significant bits times a power of two, subnormals included) or overflows to inf in
// f32 and bf16 alike, so the fragment holds exactly round_bf16(reference) = reference:
//   |kvalues[q]| as bf16 bits by table lookup: the 3 magnitude bits of four nibbles at once select bytes of
//     two 8-entry tables (PRMT: one for the high bytes of the bf16 patterns, one for the low bytes), two
//     more PRMTs interleave them into the pairs the MMA wants;
//   the sign: the nibble's bit 3 moved to bit 15 of its half (shift and mask);
//   times 2^(e - 128) as a bf16 pair (HMUL2): exact, since the product is representable (rounding to
//     nearest gives it unchanged; past bf16's range, inf, as f32 gives); -0 stays -0 (nibble 8), as the
//     reference's 2 * -0.0 * scale does.
// So 4 weights cost 12 instructions after the loads. f16 has no such kernel: 2^(e - 128) leaves f16's range
// for most exponents (moe_cuda.rs keeps f16 models on the dense path).
//
// Blocks sit at any byte offset in shared memory (17-byte blocks; moe_gemm.cu copies aligned 16-byte
// windows of the rows): a lane's two nibble bytes are taken from two aligned 32-bit words by a funnel shift.
#pragma once
#include "common.cuh"  // pair_from_bits / pair_bits

// High / low bytes of the bf16 patterns of {0, 1, 2, 3, 4, 6, 8, 12}: entries 0..3 in the first word,
// 4..7 in the second (byte i of {hi, lo} = entry i, as PRMT indexes its 8 source bytes).
#define MX_HI_TAB0 0x40403F00u  // 0x0000 0x3F80 0x4000 0x4040
#define MX_HI_TAB1 0x41414040u  // 0x4080 0x40C0 0x4100 0x4140
#define MX_LO_TAB0 0x40008000u
#define MX_LO_TAB1 0x4000C080u

// The bf16 bits of 2^(e - 128), as ggml's GGML_E8M0_TO_FP32_HALF gives it in f32 (e < 2: subnormal).
__device__ __forceinline__ uint32_t mx_scale_bits(uint32_t e) { return e < 2 ? 0x20u << e : (e - 1) << 7; }

// Two nibble bytes b0 (bits 0..7), b1 (bits 8..15) of `two` -> the bf16 pairs {b0 low, b1 low} (lo) and
// {b0 high, b1 high} (hi), each element first in its low half, times the scale pair s2.
__device__ __forceinline__ void mx_dequant_pairs(uint32_t two, uint32_t s2, uint32_t& lo, uint32_t& hi) {
    const uint32_t sel = two & 0x7777u;  // four magnitudes: b0 low, b0 high, b1 low, b1 high
    const uint32_t h = __byte_perm(MX_HI_TAB0, MX_HI_TAB1, sel);
    const uint32_t l = __byte_perm(MX_LO_TAB0, MX_LO_TAB1, sel);
    const uint32_t spread = __byte_perm(two, 0u, 0x4140);  // b0 -> bits 0..7, b1 -> bits 16..23
    const uint32_t mlo = __byte_perm(l, h, 0x6240) | ((spread << 12) & 0x80008000u);  // signs: bits 3, 19
    const uint32_t mhi = __byte_perm(l, h, 0x7351) | ((spread << 8) & 0x80008000u);   // signs: bits 7, 23
    const __nv_bfloat162 s = pair_from_bits<__nv_bfloat162>(s2);
    lo = pair_bits(__hmul2(pair_from_bits<__nv_bfloat162>(mlo), s));
    hi = pair_bits(__hmul2(pair_from_bits<__nv_bfloat162>(mhi), s));
}

// Bytes p, p + 1 of shared memory at any alignment, from the aligned words around them.
__device__ __forceinline__ uint32_t mx_ld16(const uint8_t* p) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>((uintptr_t)p & ~(uintptr_t)3);
    return __funnelshift_r(w[0], w[1], 8u * ((uintptr_t)p & 3));
}

// One row's part of a block's A fragments for lane column c: the pairs of elements 2c, 2c + 1 (k16 step
// 0, k 2c..) and 2c + 8, 2c + 9 (step 0, k 2c + 8..), and the same + 16 (step 1).
__device__ __forceinline__ void mx_row(const uint8_t* blk, int c, uint32_t& s0a, uint32_t& s1a, uint32_t& s0b, uint32_t& s1b) {
    const uint32_t s2 = mx_scale_bits(blk[0]) * 0x10001u;
    mx_dequant_pairs(mx_ld16(blk + 1 + 2 * c), s2, s0a, s1a);
    mx_dequant_pairs(mx_ld16(blk + 9 + 2 * c), s2, s0b, s1b);
}

// Both k16 steps' A fragments of one MXFP4 block for MMA rows g and g + 8, whose blocks start (at the scale
// byte) at blk_g and blk_g8: a[step][0..3] as mma.sync m16n8k16 .row wants them (rows g / g + 8 x k 2c, 2c + 1
// / 2c + 8, 2c + 9).
__device__ __forceinline__ void mx_a_fragments(uint32_t (&a)[2][4], const uint8_t* blk_g, const uint8_t* blk_g8, int c) {
    mx_row(blk_g, c, a[0][0], a[1][0], a[0][2], a[1][2]);
    mx_row(blk_g8, c, a[0][1], a[1][1], a[0][3], a[1][3]);
}
