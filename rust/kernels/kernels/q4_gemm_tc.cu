// GGML Q4_0 weights times activations on tensor cores for batches larger than a GEMV's (decode batches of
// dozens to hundreds of sequences, and prefill chunks of thousands of tokens):
//
//   q4_gemm_tc_<T>         (T = bf16, f16) y[M, N] = x[M, K] . W[N, K]^T; K % 256 == 0
//   q4_gemm_tc_reduce_<T>  y = sum over the K splits of the f32 partial products (in split order)
//
// W is the raw Q4_0 blocks as loaded (18 bytes per 32 weights: an f16 scale d, then 16 bytes whose low
// nibbles are elements 0..15 and high nibbles elements 16..31; value = d * (q - 8)), no repacking. Each
// weight is dequantized to T once per block of the grid, as the dequantize + cuBLAS path would round it:
// round_T(d * (q - 8)), the product exact in f32 (f16: one correctly rounded f16 multiply of two exact
// f16 values, the same number). So the result is that of a dense GEMM on the dequantized weight, up to
// the order of the f32 sums.
//
// Tiling: one block = 128 weight rows x 64 tokens, 8 warps as 4 (32 rows) x 2 (32 tokens); per warp 2 x 4
// m16n8k16 tiles with f32 accumulators. Decode-sized batches have too few such tiles to fill the GPU
// (one token tile; N / 128 row tiles), so K can be split over grid.z: split z writes its f32 sums to
// partial[z][M][N] and q4_gemm_tc_reduce adds the splits in order (deterministic, unlike atomics).
// K advances by 256 (8 Q4_0 blocks, 144 bytes per row: 9 aligned 16-byte chunks when K % 256 == 0)
// through a 2-stage cp.async pipeline in dynamic shared memory (two blocks fit an SM):
//   W stage  [128 rows][144 bytes]          rows past N re-read row N - 1 (never stored)
//   x stage  [64 tokens][256 + 8 elements]  tokens past M are zeros; the 8-element pad puts the 8 rows
//                                           an ldmatrix reads 4 banks apart (conflict-free)
// A (weights) fragments come from the W stage with 16-bit loads: lane (g, c) needs, for rows g and g + 8,
// qs bytes 2c, 2c + 1 (MMA k 2c, 2c + 1) and 2c + 8, 2c + 9 (k 2c + 8, 2c + 9): their low nibbles are the
// first k16 step of the Q4_0 block (elements 0..15), their high nibbles the second (16..31). So the MMA
// k order is the natural one and B (x) fragments come from ldmatrix on the x stage.
#include "common.cuh"
#include "mma.cuh"

#define Q4T_ROWS 128
#define Q4T_TOKENS 64
#define Q4T_THREADS 256
#define Q4T_STAGES 2
#define Q4T_GROUP_K 256
#define Q4T_W_ROW_BYTES 144
#define Q4T_X_ROW_BYTES 528
#define Q4T_W_STAGE_BYTES (Q4T_ROWS * Q4T_W_ROW_BYTES)
#define Q4T_X_STAGE_BYTES (Q4T_TOKENS * Q4T_X_ROW_BYTES)
#define Q4T_STAGE_BYTES (Q4T_W_STAGE_BYTES + Q4T_X_STAGE_BYTES)
#define Q4T_SMEM_BYTES (Q4T_STAGES * Q4T_STAGE_BYTES)

// Two nibbles at bits 0..3 and 16..19 (the rest zero) and their block's scale -> the pair
// (round_T(d * (q0 - 8)), round_T(d * (q1 - 8))) packed as the MMA wants it (first element low).
template <typename T> __device__ __forceinline__ uint32_t q4t_scaled_pair(uint32_t q, float d, __half2 d2);
template <> __device__ __forceinline__ uint32_t q4t_scaled_pair<__half>(uint32_t q, float, __half2 d2) {
    // 0x6400 = 1024.0 in f16 (ulp 1): 1024 + q, minus 1032, is q - 8 exactly; times d rounds once.
    q |= 0x64006400u;
    const uint32_t bias_bits = 0x64086408u;
    __half2 h, bias;
    memcpy(&h, &q, 4);
    memcpy(&bias, &bias_bits, 4);
    h = __hmul2(__hsub2(h, bias), d2);
    uint32_t out;
    memcpy(&out, &h, 4);
    return out;
}
template <> __device__ __forceinline__ uint32_t q4t_scaled_pair<__nv_bfloat16>(uint32_t q, float d, __half2) {
    // d is an f16 value, often not a bf16 one: form the product in f32 (exact) and round once.
    // 0x4B000000 = 2^23 (ulp 1): 2^23 + q, minus 2^23 + 8, is q - 8 exactly.
    const float lo = __uint_as_float(0x4B000000u | (q & 0xffffu)) - 8388616.0f;
    const float hi = __uint_as_float(0x4B000000u | (q >> 16)) - 8388616.0f;
    __nv_bfloat162 h = __floats2bfloat162_rn(lo * d, hi * d);
    uint32_t out;
    memcpy(&out, &h, 4);
    return out;
}

template <typename T> __device__ __forceinline__ void q4t_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void q4t_mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16_f16(c, a, b0, b1);
}
template <> __device__ __forceinline__ void q4t_mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16_bf16(c, a, b0, b1);
}

// Bytes b0, b1 of a 16-bit word -> bits 0..7 and 16..23.
__device__ __forceinline__ uint32_t q4t_spread(uint32_t two) { return (two & 0xffu) | ((two & 0xff00u) << 8); }

// The A fragments of one Q4_0 block (32 k) of MMA rows g and g + 8, whose blocks start at blk_g and
// blk_g8, for lane column c: a[0] the first k16 step (low nibbles, elements 0..15), a[1] the second (high).
template <typename T>
__device__ __forceinline__ void q4t_a_fragments(uint32_t (&a)[2][4], const uint8_t* blk_g, const uint8_t* blk_g8, int c) {
    const uint16_t d_g_bits = *reinterpret_cast<const uint16_t*>(blk_g);
    const uint16_t d_g8_bits = *reinterpret_cast<const uint16_t*>(blk_g8);
    __half d_g_h, d_g8_h;
    memcpy(&d_g_h, &d_g_bits, 2);
    memcpy(&d_g8_h, &d_g8_bits, 2);
    const float d_g = __half2float(d_g_h), d_g8 = __half2float(d_g8_h);
    const __half2 d2_g = __halves2half2(d_g_h, d_g_h), d2_g8 = __halves2half2(d_g8_h, d_g8_h);
    const uint32_t v0 = q4t_spread(*reinterpret_cast<const uint16_t*>(blk_g + 2 + 2 * c));
    const uint32_t v1 = q4t_spread(*reinterpret_cast<const uint16_t*>(blk_g8 + 2 + 2 * c));
    const uint32_t v2 = q4t_spread(*reinterpret_cast<const uint16_t*>(blk_g + 10 + 2 * c));
    const uint32_t v3 = q4t_spread(*reinterpret_cast<const uint16_t*>(blk_g8 + 10 + 2 * c));
#pragma unroll
    for (int s = 0; s < 2; ++s) {
        const int sh = 4 * s;  // low nibbles, then high nibbles
        a[s][0] = q4t_scaled_pair<T>((v0 >> sh) & 0x000f000fu, d_g, d2_g);
        a[s][1] = q4t_scaled_pair<T>((v1 >> sh) & 0x000f000fu, d_g8, d2_g8);
        a[s][2] = q4t_scaled_pair<T>((v2 >> sh) & 0x000f000fu, d_g, d2_g);
        a[s][3] = q4t_scaled_pair<T>((v3 >> sh) & 0x000f000fu, d_g8, d2_g8);
    }
}

// grid = (ceil(N / 128), ceil(M / 64), splits), block = 256 threads, Q4T_SMEM_BYTES of dynamic shared
// memory at `smem` (16-byte aligned). Needs K % 256 == 0, w 16-byte and x 16-byte aligned (checked by the
// caller). splits == 1: y gets the result; else partial[split][M][N] gets each split's f32 sums.
template <typename T>
__device__ void q4_gemm_tc(T* __restrict__ y, float* __restrict__ partial, const uint8_t* __restrict__ w,
                           const T* __restrict__ x, uint32_t m, uint32_t n, uint32_t k, uint32_t splits,
                           uint32_t split, uint8_t* smem) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int warp_rows = (warp & 3) * 32, warp_tokens = (warp >> 2) * 32;
    const uint32_t row0 = blockIdx.x * Q4T_ROWS, tok0 = blockIdx.y * Q4T_TOKENS;
    const size_t row_bytes = (size_t)(k / 32) * 18;
    const uint32_t all_groups = k / Q4T_GROUP_K;
    const uint32_t first = split * all_groups / splits, groups = (split + 1) * all_groups / splits - first;

    // Copies K group `grp` of the block's weight rows and tokens into stage `s`.
    auto issue = [&](uint32_t grp, int s) {
        uint8_t* ws = smem + s * Q4T_STAGE_BYTES;
        uint8_t* xs = ws + Q4T_W_STAGE_BYTES;
        for (int j = threadIdx.x; j < Q4T_ROWS * 9; j += Q4T_THREADS) {
            const int r = j / 9, piece = j - r * 9;
            const uint32_t row = min(row0 + r, n - 1);
            cp_async16(ws + r * Q4T_W_ROW_BYTES + piece * 16, w + row * row_bytes + (size_t)grp * Q4T_W_ROW_BYTES + piece * 16, true);
        }
        for (int j = threadIdx.x; j < Q4T_TOKENS * 32; j += Q4T_THREADS) {
            const int t = j >> 5, piece = j & 31;
            const uint32_t tok = tok0 + t;
            const bool valid = tok < m;
            const T* src = x + (size_t)(valid ? tok : 0) * k + (size_t)grp * Q4T_GROUP_K + piece * 8;
            cp_async16(xs + t * Q4T_X_ROW_BYTES + piece * 16, src, valid);
        }
    };

    float acc[2][4][4];
#pragma unroll
    for (int rt = 0; rt < 2; ++rt)
#pragma unroll
        for (int tt = 0; tt < 4; ++tt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[rt][tt][e] = 0.f;

#pragma unroll
    for (int s = 0; s < Q4T_STAGES - 1; ++s) {
        if ((uint32_t)s < groups) issue(first + s, s);
        cp_async_commit();
    }
    for (uint32_t i = 0; i < groups; ++i) {
        cp_async_wait_pending<Q4T_STAGES - 2>();  // this thread's copies of stage i have landed
        __syncthreads();  // everyone's have; and every warp is done with the stage refilled below
        if (i + Q4T_STAGES - 1 < groups) issue(first + i + Q4T_STAGES - 1, (i + Q4T_STAGES - 1) % Q4T_STAGES);
        cp_async_commit();  // possibly empty: keeps the count of groups in flight uniform

        const uint8_t* ws = smem + (i % Q4T_STAGES) * Q4T_STAGE_BYTES;
        const uint8_t* xs = ws + Q4T_W_STAGE_BYTES;
#pragma unroll 2
        for (int qb = 0; qb < Q4T_GROUP_K / 32; ++qb) {
            uint32_t a[2][2][4];  // [row tile][k16 step][register]
#pragma unroll
            for (int rt = 0; rt < 2; ++rt) {
                const uint8_t* blk_g = ws + (warp_rows + rt * 16 + g) * Q4T_W_ROW_BYTES + qb * 18;
                q4t_a_fragments<T>(a[rt], blk_g, blk_g + 8 * Q4T_W_ROW_BYTES, c);
            }
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                uint32_t b[4][2];
#pragma unroll
                for (int tp = 0; tp < 2; ++tp) {
                    // Matrices: tokens tp*16 + 0..7 / + 8..15 (lanes 16..31) x k 0..7 / 8..15 (lanes 8..15, 24..31).
                    const int tok = warp_tokens + tp * 16 + (lane >> 4) * 8 + (lane & 7);
                    const int col = qb * 32 + 16 * s + ((lane >> 3) & 1) * 8;
                    uint32_t r[4];
                    ldmatrix_x4(r, xs + tok * Q4T_X_ROW_BYTES + col * 2);
                    b[2 * tp][0] = r[0];
                    b[2 * tp][1] = r[1];
                    b[2 * tp + 1][0] = r[2];
                    b[2 * tp + 1][1] = r[3];
                }
#pragma unroll
                for (int rt = 0; rt < 2; ++rt)
#pragma unroll
                    for (int tt = 0; tt < 4; ++tt) q4t_mma<T>(acc[rt][tt], a[rt][s], b[tt][0], b[tt][1]);
            }
        }
    }

    // C fragment: rows g, g + 8 of the tile x tokens 2c, 2c + 1.
#pragma unroll
    for (int rt = 0; rt < 2; ++rt)
#pragma unroll
        for (int tt = 0; tt < 4; ++tt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t row = row0 + warp_rows + rt * 16 + g + 8 * (e >> 1);
                const uint32_t tok = tok0 + warp_tokens + tt * 8 + 2 * c + (e & 1);
                if (row >= n || tok >= m) continue;
                if (splits == 1) y[(size_t)tok * n + row] = from_f32<T>(acc[rt][tt][e]);
                else partial[((size_t)split * m + tok) * n + row] = acc[rt][tt][e];
            }
}

// One thread per output, grid-stride: the splits' partial sums added in split order.
template <typename T>
__device__ void q4_gemm_tc_reduce(T* __restrict__ y, const float* __restrict__ partial, uint64_t count, uint32_t splits) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (uint64_t)gridDim.x * blockDim.x) {
        float sum = 0.f;
        for (uint32_t z = 0; z < splits; ++z) sum += partial[z * count + i];
        y[i] = from_f32<T>(sum);
    }
}

#ifndef Q4T_HOST
#define Q4_GEMM_TC(NAME, REDUCE, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(Q4T_THREADS, 2)                                            \
        NAME(T* __restrict__ y, float* __restrict__ partial, const uint8_t* __restrict__ w, const T* __restrict__ x, \
             uint32_t m, uint32_t n, uint32_t k, uint32_t splits) {                                         \
        extern __shared__ __align__(16) uint8_t q4t_smem[];                                                  \
        q4_gemm_tc<T>(y, partial, w, x, m, n, k, splits, blockIdx.z, q4t_smem);                             \
    }                                                                                                       \
    extern "C" __global__ void REDUCE(T* __restrict__ y, const float* __restrict__ partial, uint64_t count,  \
                                      uint32_t splits) {                                                    \
        q4_gemm_tc_reduce<T>(y, partial, count, splits);                                                    \
    }

Q4_GEMM_TC(q4_gemm_tc_bf16, q4_gemm_tc_reduce_bf16, __nv_bfloat16)
Q4_GEMM_TC(q4_gemm_tc_f16, q4_gemm_tc_reduce_f16, __half)
#endif
