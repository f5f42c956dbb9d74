// GGML Q4_0 weights times activations on tensor cores for batches larger than a GEMV's (decode batches of
// dozens to hundreds of sequences, and prefill chunks of thousands of tokens):
//
//   q4_gemm_tc_<T>         (T = bf16, f16) y[M, N] = x[M, K] . W[N, K]^T; K % 256 == 0
//   q4_gemm_tc_reduce_<T>  y = sum over the K splits of the f32 partial products (in split order)
//
// W is the raw Q4_0 blocks as loaded (q4_dequant.cuh), no repacking. Each weight is dequantized to T once
// per block of the grid, as the dequantize + cuBLAS path would round it: round_T(d * (q - 8)). So the result
// is that of a dense GEMM on the dequantized weight, up to the order of the f32 sums.
//
// Tiling: one block = 256 weight rows x 64 tokens, 8 warps side by side along the rows: a warp owns 32
// rows (2 m16 tiles) and all 64 tokens (8 n8 tiles), so each dequantized A fragment feeds 8 MMAs (with
// 32 x 32 warp tiles the dequantization, not the tensor cores, bounded the kernel), and the activations,
// which every row tile of the grid reads again from L2, are read once per 256 weight rows. Token tiles
// wholly past M are skipped warp-uniformly (a decode batch of 33 runs 5 of the 8 tiles). Decode-sized
// batches have too few blocks to fill the GPU (one token tile; N / 256 row tiles), so K can be split over
// grid.z: split z writes its f32 sums to partial[z][M][N] and q4_gemm_tc_reduce adds the splits in order
// (deterministic, unlike atomics). K advances by 128 (4 Q4_0 blocks: 72 bytes per row, copied 8 bytes at
// a time) through a 3-stage cp.async pipeline in dynamic shared memory (35 KB a stage: two blocks fit an SM):
//   W stage  [256 rows][72 bytes]           rows past N re-read row N - 1 (never stored)
//   x stage  [64 tokens][128 + 8 elements]  tokens past M are zeros; the 8-element pad puts the 8 rows
//                                           an ldmatrix reads 4 banks apart (conflict-free)
// A (weights) fragments come from the W stage with 16-bit loads (rows 72 bytes apart: the 8 rows of a
// fragment fall in distinct banks); B (x) fragments from ldmatrix on the x stage.
#include "common.cuh"
#include "mma.cuh"
#include "q4_dequant.cuh"

#define Q4T_ROWS 256
#define Q4T_TOKENS 64
#define Q4T_THREADS 256
#define Q4T_WARP_ROWS 32
#define Q4T_STAGES 3
#define Q4T_GROUP_K 128
#define Q4T_W_ROW_BYTES (Q4T_GROUP_K / 32 * 18)
#define Q4T_W_PIECES (Q4T_W_ROW_BYTES / 8)
#define Q4T_X_ROW_BYTES ((Q4T_GROUP_K + 8) * 2)
#define Q4T_X_PIECES (Q4T_GROUP_K / 8)
#define Q4T_W_STAGE_BYTES (Q4T_ROWS * Q4T_W_ROW_BYTES)
#define Q4T_X_STAGE_BYTES (Q4T_TOKENS * Q4T_X_ROW_BYTES)
#define Q4T_STAGE_BYTES (Q4T_W_STAGE_BYTES + Q4T_X_STAGE_BYTES)
#define Q4T_SMEM_BYTES (Q4T_STAGES * Q4T_STAGE_BYTES)

// grid = (ceil(N / 256), ceil(M / 64), splits), block = 256 threads, Q4T_SMEM_BYTES of dynamic shared
// memory at `smem` (16-byte aligned). Needs K % 256 == 0, w and x 16-byte aligned (checked by the caller).
// splits == 1: y gets the result; else partial[split][M][N] gets each split's f32 sums.
template <typename T>
__device__ void q4_gemm_tc(T* __restrict__ y, float* __restrict__ partial, const uint8_t* __restrict__ w,
                           const T* __restrict__ x, uint32_t m, uint32_t n, uint32_t k, uint32_t splits,
                           uint32_t split, uint8_t* smem) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int warp_rows = warp * Q4T_WARP_ROWS;
    const uint32_t row0 = blockIdx.x * Q4T_ROWS, tok0 = blockIdx.y * Q4T_TOKENS;
    // n8 token tiles holding at least one of the M tokens (the same for every warp of the block).
    const int live = (int)min((uint32_t)(Q4T_TOKENS / 8), (m - tok0 + 7) / 8);
    const size_t row_bytes = (size_t)(k / 32) * 18;
    const uint32_t all_groups = k / Q4T_GROUP_K;
    const uint32_t first = split * all_groups / splits, groups = (split + 1) * all_groups / splits - first;

    // Copies K group `grp` of the block's weight rows and live tokens into stage `s`.
    auto issue = [&](uint32_t grp, int s) {
        uint8_t* ws = smem + s * Q4T_STAGE_BYTES;
        uint8_t* xs = ws + Q4T_W_STAGE_BYTES;
        for (int j = threadIdx.x; j < Q4T_ROWS * Q4T_W_PIECES; j += Q4T_THREADS) {
            const int r = j / Q4T_W_PIECES, piece = j - r * Q4T_W_PIECES;
            const uint32_t row = min(row0 + r, n - 1);
            cp_async8(ws + r * Q4T_W_ROW_BYTES + piece * 8, w + row * row_bytes + (size_t)grp * Q4T_W_ROW_BYTES + piece * 8);
        }
        for (int j = threadIdx.x; j < live * 8 * Q4T_X_PIECES; j += Q4T_THREADS) {
            const int t = j / Q4T_X_PIECES, piece = j - t * Q4T_X_PIECES;
            const uint32_t tok = tok0 + t;
            const bool valid = tok < m;
            const T* src = x + (size_t)(valid ? tok : 0) * k + (size_t)grp * Q4T_GROUP_K + piece * 8;
            cp_async16(xs + t * Q4T_X_ROW_BYTES + piece * 16, src, valid);
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int rt = 0; rt < 2; ++rt)
#pragma unroll
        for (int tt = 0; tt < 8; ++tt)
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
#pragma unroll
        for (int qb = 0; qb < Q4T_GROUP_K / 32; ++qb) {
            const uint8_t* b0 = ws + (warp_rows + g) * Q4T_W_ROW_BYTES + qb * 18;
            const Q4tBlock<T> blk[2] = {Q4tBlock<T>(b0, b0 + 8 * Q4T_W_ROW_BYTES, c),
                                        Q4tBlock<T>(b0 + 16 * Q4T_W_ROW_BYTES, b0 + 24 * Q4T_W_ROW_BYTES, c)};
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                uint32_t a[2][4];  // [row tile][register]
                blk[0].fragment(a[0], s);
                blk[1].fragment(a[1], s);
#pragma unroll
                for (int tp = 0; tp < 4; ++tp) {
                    if (2 * tp >= live) break;
                    // Matrices: tokens tp*16 + 0..7 / + 8..15 (lanes 16..31) x k 0..7 / 8..15 (lanes 8..15, 24..31).
                    const int tok = tp * 16 + (lane >> 4) * 8 + (lane & 7);
                    const int col = qb * 32 + 16 * s + ((lane >> 3) & 1) * 8;
                    uint32_t r[4];
                    ldmatrix_x4(r, xs + tok * Q4T_X_ROW_BYTES + col * 2);
#pragma unroll
                    for (int rt = 0; rt < 2; ++rt) {
                        q4t_mma<T>(acc[rt][2 * tp], a[rt], r[0], r[1]);
                        if (2 * tp + 1 < live) q4t_mma<T>(acc[rt][2 * tp + 1], a[rt], r[2], r[3]);
                    }
                }
            }
        }
    }

    // C fragment: rows g, g + 8 of the tile x tokens 2c, 2c + 1.
#pragma unroll
    for (int rt = 0; rt < 2; ++rt)
#pragma unroll
        for (int tt = 0; tt < 8; ++tt) {
            if (tt >= live) break;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t row = row0 + warp_rows + rt * 16 + g + 8 * (e >> 1);
                const uint32_t tok = tok0 + tt * 8 + 2 * c + (e & 1);
                if (row >= n || tok >= m) continue;
                if (splits == 1) y[(size_t)tok * n + row] = from_f32<T>(acc[rt][tt][e]);
                else partial[((size_t)split * m + tok) * n + row] = acc[rt][tt][e];
            }
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
