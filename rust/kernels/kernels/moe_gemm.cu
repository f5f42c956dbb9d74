// The fused mixture-of-experts' grouped GEMM on tensor cores: one launch multiplies every expert's
// weights by its tokens, the slots moe_align (moe.cu) sorted by expert in tiles of MG_TOKENS.
//
//   moe_gemm_<T>[_q4] / moe_gemm_mxfp4_bf16
//       out[slot, :] = epilogue(x[slot / x_div, :] . W[e]^T) for every real slot of every tile
//
// W holds every expert's weight stacked, [E, rows, K] row-major (nn.Linear's [out, in] per expert): bf16 /
// f16 (T), GGML Q4_0 blocks (_q4: rows of K / 32 blocks of 18 bytes, as q4_dequant.cuh reads them, each
// weight dequantized to round_T(d * (q - 8))) or GGML MXFP4 blocks (_mxfp4, bf16 only: rows of K / 32
// blocks of 17 bytes, as mxfp4_dequant.cuh reads them, each weight exactly kvalues[q] * 2^(e - 128)). Modes:
//   MG_PLAIN    rows = n: out[slot, r] = acc (+ bias[e, r])                     (the down projection)
//   MG_SILU     rows = 2n, gate rows then up rows: out[slot, i] = silu(gate_i) * up_i      (gate/up)
//   MG_SWIGLU   as MG_SILU with gpt-oss's clamped SwiGLU: gate = min(gate, limit), up = clamp(up, +-limit),
//               out = (up + 1) * gate * sigmoid(alpha * gate)
// Rounding follows the unfused path step by step (matmul output rounded to T, + bias rounded, each
// activation op rounded), so the result is that of the CPU reference up to the order of f32 sums.
//
// Tiling: grid = (row tiles, moe_max_tiles token tiles); a block = 64 MMA rows x 32 slots, 4 warps of 16
// rows x 32 slots (4 m16n8k16 tiles each, f32 accumulators). In the gated modes an MMA tile's rows 0..7 are
// gate rows i..i+7 and rows 8..15 the up rows of the same i, so each thread holds gate and up of the same
// (i, slot) in its own registers (c0/c2, c1/c3) and the activation needs no exchange: a block computes 32
// outputs. Token tiles past the last real one (tile_expert < 0) exit at once: the grid is the worst case.
// K advances through a cp.async pipeline in dynamic shared memory:
//   dense: 4 stages of K 64: W [64 rows][64 + 8 el], x [32 slots][64 + 8 el] (pads: conflict-free ldmatrix)
//   q4:    2 stages of K 256: W [64 rows][144 bytes] (8 Q4_0 blocks), x [32 slots][256 + 8 el]
//   mxfp4: 3 stages of K 256: W [64 rows][176 bytes], x [32 slots][256 + 8 el]. A stage's 8 blocks of a row
//          are 136 bytes at any byte offset (17-byte blocks; gpt-oss's rows are 90 blocks, 1530 bytes, so
//          rows are only 2-byte aligned and no cp.async size fits every row): each row's window is copied
//          from the 16-byte boundary below it in whole 16-byte pieces (at most 10: 15 + 136 bytes), the
//          blocks read at their offset in it. 16-byte copies keep the copy count of the aligned formats; the
//          cost is up to 15 bytes over-read per row and stage (bytes of the neighbouring row, or of the 16
//          bytes of padding the stacked weight carries after its last row: moe_cuda.rs). 176 = 11 pieces,
//          so the 8 rows g of a warp start on distinct banks. K need only be a multiple of 32: the last
//          stage may hold fewer blocks (gpt-oss: K 2880 = 11 stages + 2 blocks), its copies and MMAs
//          stop there (uniform over the block).
// Rows past the weight's end re-read its last row (never stored); padding slots read zeros.
#include "common.cuh"
#include "mma.cuh"
#include "q4_dequant.cuh"  // the Q4_0 A fragments and MMA dispatch, shared with the dense Q4_0 GEMM
#include "mxfp4_dequant.cuh"  // the MXFP4 A fragments

#define MG_ROWS 64
#define MG_TOKENS 32  // MOE_TILE in moe.cu
#define MG_THREADS 128
#define MG_PLAIN 0
#define MG_SILU 1
#define MG_SWIGLU 2
#define MG_NO_SLOT 0xffffffffu

#define MG_DENSE_K 64
#define MG_DENSE_STAGES 4
#define MG_DENSE_ROW_BYTES 144  // (64 + 8) x 2 bytes, W and x alike
#define MG_DENSE_STAGE_BYTES ((MG_ROWS + MG_TOKENS) * MG_DENSE_ROW_BYTES)
#define MG_Q4_K 256
#define MG_Q4_STAGES 2
#define MG_Q4_W_ROW_BYTES 144
#define MG_Q4_X_ROW_BYTES 528
#define MG_Q4_STAGE_BYTES (MG_ROWS * MG_Q4_W_ROW_BYTES + MG_TOKENS * MG_Q4_X_ROW_BYTES)
#define MG_MX_K 256
#define MG_MX_STAGES 3
#define MG_MX_BLOCKS (MG_MX_K / 32)         // blocks of a row per stage
#define MG_MX_W_PIECES 10                   // 16-byte pieces of a row's window: (15 + 8 x 17) / 16, rounded up
#define MG_MX_W_ROW_BYTES 176
#define MG_MX_X_ROW_BYTES 528
#define MG_MX_STAGE_BYTES (MG_ROWS * MG_MX_W_ROW_BYTES + MG_TOKENS * MG_MX_X_ROW_BYTES)
#define MG_MX_TAIL_BYTES 16  // padding after the stacked MXFP4 weight's last row (the windows' over-read)
#define MG_ROWS_BYTES (MG_TOKENS * 4)  // the tile's slot numbers, after the stages
#define MG_DENSE_SMEM_BYTES (MG_DENSE_STAGES * MG_DENSE_STAGE_BYTES + MG_ROWS_BYTES)
#define MG_Q4_SMEM_BYTES (MG_Q4_STAGES * MG_Q4_STAGE_BYTES + MG_ROWS_BYTES)
#define MG_MX_SMEM_BYTES (MG_MX_STAGES * MG_MX_STAGE_BYTES + MG_ROWS_BYTES)

// The weights' format (moe_gemm's WF).
#define MG_W_DENSE 0
#define MG_W_Q4 1
#define MG_W_MXFP4 2

template <typename T> struct MgIsBf16 { static constexpr bool value = false; };
template <> struct MgIsBf16<__nv_bfloat16> { static constexpr bool value = true; };

template <typename T> __device__ __forceinline__ float mg_sigmoid(float x) { return round_to<T>(1.0f / (1.0f + expf(-x))); }

// The gated epilogue on one (i, slot): gate and up are the f32 sums, bias_g / bias_u their biases (0
// when none; `biased` says whether to add).
template <typename T>
__device__ __forceinline__ T mg_gated(float gate, float up, bool biased, float bias_g, float bias_u, uint32_t mode, float alpha, float limit) {
    gate = round_to<T>(gate);
    up = round_to<T>(up);
    if (biased) {
        gate = round_to<T>(gate + bias_g);
        up = round_to<T>(up + bias_u);
    }
    if (mode == MG_SILU) return silu_times<T>(gate, up);
    gate = fminf(gate, limit);
    up = fminf(fmaxf(up, -limit), limit);
    const float glu = round_to<T>(gate * mg_sigmoid<T>(round_to<T>(gate * alpha)));
    return from_f32<T>(round_to<T>(up + 1.0f) * glu);
}

// grid = (ceil(n / 64) [plain] or ceil(n / 32) [gated], max tiles), block = MG_THREADS, dynamic shared
// memory MG_DENSE_SMEM_BYTES / MG_Q4_SMEM_BYTES / MG_MX_SMEM_BYTES at smem (16-byte aligned). Needs K % 64
// == 0 (dense), K % 256 == 0 (q4) or K % 32 == 0 (mxfp4), x and w 16-byte aligned, mxfp4's w followed by
// MG_MX_TAIL_BYTES readable bytes (checked by the caller). bias: [E, rows] or null.
template <typename T, int WF>
__device__ void moe_gemm(T* __restrict__ out, const T* __restrict__ x, const uint8_t* __restrict__ w, const T* __restrict__ bias,
                         const uint32_t* __restrict__ sorted, const int32_t* __restrict__ tile_expert, uint32_t n, uint32_t k,
                         uint32_t x_div, uint32_t slots, uint32_t mode, float alpha, float limit, uint32_t row_tile,
                         uint32_t tile, uint8_t* smem) {
    constexpr bool Q4 = WF == MG_W_Q4, MX = WF == MG_W_MXFP4;
    static_assert(!MX || MgIsBf16<T>::value, "MXFP4 weights: bf16 only (mxfp4_dequant.cuh)");
    constexpr int KS = Q4 ? MG_Q4_K : MX ? MG_MX_K : MG_DENSE_K;
    constexpr int STAGES = Q4 ? MG_Q4_STAGES : MX ? MG_MX_STAGES : MG_DENSE_STAGES;
    constexpr int STAGE_BYTES = Q4 ? MG_Q4_STAGE_BYTES : MX ? MG_MX_STAGE_BYTES : MG_DENSE_STAGE_BYTES;
    constexpr int W_ROW = Q4 ? MG_Q4_W_ROW_BYTES : MX ? MG_MX_W_ROW_BYTES : MG_DENSE_ROW_BYTES;
    constexpr int X_ROW = Q4 ? MG_Q4_X_ROW_BYTES : MX ? MG_MX_X_ROW_BYTES : MG_DENSE_ROW_BYTES;
    constexpr int W_PIECES = Q4 ? 9 : MX ? MG_MX_W_PIECES : 8;  // 16-byte pieces of one row per stage
    constexpr int X_PIECES = KS / 8;
    const int32_t expert = tile_expert[tile];
    if (expert < 0) return;  // past the last real tile (uniform over the block)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const bool gated = mode != MG_PLAIN;
    const uint32_t rows = gated ? 2 * n : n;  // weight rows per expert
    const size_t row_bytes = Q4 ? (size_t)(k / 32) * 18 : MX ? (size_t)(k / 32) * 17 : (size_t)k * sizeof(T);
    const uint8_t* we = w + (size_t)expert * rows * row_bytes;
    uint32_t* tile_slots = reinterpret_cast<uint32_t*>(smem + STAGES * STAGE_BYTES);
    if (threadIdx.x < MG_TOKENS) tile_slots[threadIdx.x] = sorted[(size_t)tile * MG_TOKENS + threadIdx.x];
    __syncthreads();

    // The weight row behind shared row r (0..63) of this block.
    auto weight_row = [&](int r) -> uint32_t {
        if (!gated) return min(row_tile * MG_ROWS + r, n - 1);
        const uint32_t i = min(row_tile * (MG_ROWS / 2) + (r >> 4) * 8 + (r & 7), n - 1);
        return (r & 8) ? n + i : i;
    };
    // K blocks of 32 in stage grp (mxfp4: the last stage may hold fewer; the other formats need whole stages).
    const uint32_t kblocks = k / 32;
    auto stage_blocks = [&](uint32_t grp) -> uint32_t { return MX ? min((uint32_t)(KS / 32), kblocks - grp * (KS / 32)) : KS / 32; };
    auto issue = [&](uint32_t grp, int s) {
        uint8_t* ws = smem + s * STAGE_BYTES;
        uint8_t* xs = ws + MG_ROWS * W_ROW;
        const uint32_t nb = stage_blocks(grp);
        for (int j = threadIdx.x; j < MG_ROWS * W_PIECES; j += MG_THREADS) {
            const int r = j / W_PIECES, piece = j - r * W_PIECES;
            if constexpr (MX) {
                // The window of the stage's blocks from the 16-byte boundary below them (see the top).
                const uintptr_t src = (uintptr_t)(we + weight_row(r) * row_bytes + (size_t)grp * (MG_MX_BLOCKS * 17));
                if ((uint32_t)piece < ((src & 15) + nb * 17 + 15) / 16)
                    cp_async16(ws + r * W_ROW + piece * 16, reinterpret_cast<const uint8_t*>(src & ~(uintptr_t)15) + piece * 16, true);
            } else {
                cp_async16(ws + r * W_ROW + piece * 16, we + weight_row(r) * row_bytes + (size_t)grp * (Q4 ? MG_Q4_W_ROW_BYTES : KS * sizeof(T)) + piece * 16, true);
            }
        }
        for (int j = threadIdx.x; j < MG_TOKENS * X_PIECES; j += MG_THREADS) {
            const int t = j / X_PIECES, piece = j - t * X_PIECES;
            if (MX && (uint32_t)piece >= nb * 4) continue;  // past K in a short last stage
            const uint32_t slot = tile_slots[t];
            const bool valid = slot < slots;
            const T* src = x + (size_t)(valid ? slot / x_div : 0) * k + (size_t)grp * KS + piece * 8;
            cp_async16(xs + t * X_ROW + piece * 16, src, valid);
        }
    };

    float acc[4][4];
#pragma unroll
    for (int tt = 0; tt < 4; ++tt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[tt][e] = 0.f;

    // mxfp4: where rows g and g + 8 of this warp start past their 16-byte boundary (a stage's window
    // starts grp x 136 bytes further on).
    uint32_t mis_g = 0, mis_g8 = 0;
    if constexpr (MX) {
        mis_g = (uint32_t)((uintptr_t)(we + weight_row(warp * 16 + g) * row_bytes) & 15);
        mis_g8 = (uint32_t)((uintptr_t)(we + weight_row(warp * 16 + g + 8) * row_bytes) & 15);
    }
    const uint32_t groups = (kblocks + KS / 32 - 1) / (KS / 32);
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if ((uint32_t)s < groups) issue(s, s);
        cp_async_commit();
    }
    for (uint32_t i = 0; i < groups; ++i) {
        cp_async_wait_pending<STAGES - 2>();  // this thread's copies of stage i have landed
        __syncthreads();  // everyone's have; and every warp is done with the stage refilled below
        if (i + STAGES - 1 < groups) issue(i + STAGES - 1, (i + STAGES - 1) % STAGES);
        cp_async_commit();  // possibly empty: keeps the count of groups in flight uniform

        const uint8_t* ws = smem + (i % STAGES) * STAGE_BYTES;
        const uint8_t* xs = ws + MG_ROWS * W_ROW;
        const uint32_t steps = 2 * stage_blocks(i);  // k16 steps of this stage
        const uint8_t* mx_g = ws + (warp * 16 + g) * W_ROW + ((mis_g + i * (MG_MX_BLOCKS * 17)) & 15);
        const uint8_t* mx_g8 = ws + (warp * 16 + g + 8) * W_ROW + ((mis_g8 + i * (MG_MX_BLOCKS * 17)) & 15);
        uint32_t aq[2][4];  // Q4 / MXFP4: the two k16 steps of one block
#pragma unroll
        for (int kk = 0; kk < KS / 16; ++kk) {
            if (MX && (uint32_t)kk >= steps) break;  // a short last stage (uniform over the block)
            uint32_t a[4];
            if constexpr (Q4 || MX) {
                // Block kk / 2 of rows g, g + 8: built for the even k16 step, the odd one uses its high half.
                if ((kk & 1) == 0) {
                    if constexpr (Q4) q4t_a_fragments<T>(aq, ws + (warp * 16 + g) * W_ROW + (kk >> 1) * 18, ws + (warp * 16 + g + 8) * W_ROW + (kk >> 1) * 18, c);
                    else mx_a_fragments(aq, mx_g + (kk >> 1) * 17, mx_g8 + (kk >> 1) * 17, c);
                }
#pragma unroll
                for (int q = 0; q < 4; ++q) a[q] = aq[kk & 1][q];
            } else {
                // Matrices: rows 0..7 / 8..15 (lanes 8..15, 24..31) x k 0..7 / 8..15 (lanes 16..31).
                const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                ldmatrix_x4(a, ws + r * W_ROW + (kk * 16 + (lane >> 4) * 8) * 2);
            }
            uint32_t b[4][2];
#pragma unroll
            for (int tp = 0; tp < 2; ++tp) {
                // Matrices: slots tp*16 + 0..7 / + 8..15 (lanes 16..31) x k 0..7 / 8..15 (lanes 8..15, 24..31).
                const int tok = tp * 16 + (lane >> 4) * 8 + (lane & 7);
                const int col = kk * 16 + ((lane >> 3) & 1) * 8;
                uint32_t r[4];
                ldmatrix_x4(r, xs + tok * X_ROW + col * 2);
#pragma unroll
                for (int q = 0; q < 4; ++q) b[2 * tp + (q >> 1)][q & 1] = r[q];
            }
#pragma unroll
            for (int tt = 0; tt < 4; ++tt) q4t_mma<T>(acc[tt], a, b[tt][0], b[tt][1]);
        }
    }

    // C fragment: MMA rows g, g + 8 x slots 2c, 2c + 1 of each 8-slot tile.
#pragma unroll
    for (int tt = 0; tt < 4; ++tt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const uint32_t slot = tile_slots[tt * 8 + 2 * c + e];
            if (slot >= slots) continue;
            if (gated) {
                const uint32_t i = row_tile * (MG_ROWS / 2) + warp * 8 + g;
                if (i >= n) continue;
                const T* b = bias ? bias + (size_t)expert * rows : nullptr;
                out[(size_t)slot * n + i] = mg_gated<T>(acc[tt][e], acc[tt][e + 2], b != nullptr, b ? to_f32(b[i]) : 0.f,
                                                        b ? to_f32(b[n + i]) : 0.f, mode, alpha, limit);
            } else {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const uint32_t row = row_tile * MG_ROWS + warp * 16 + g + 8 * h;
                    if (row >= n) continue;
                    float v = acc[tt][e + 2 * h];
                    if (bias) v = round_to<T>(v) + to_f32(bias[(size_t)expert * rows + row]);
                    out[(size_t)slot * n + row] = from_f32<T>(v);
                }
            }
        }
}

#ifndef MG_HOST
#define MOE_GEMM(NAME, T, WF)                                                                                        \
    extern "C" __global__ void __launch_bounds__(MG_THREADS)                                                         \
        NAME(T* __restrict__ out, const T* __restrict__ x, const uint8_t* __restrict__ w, const T* __restrict__ bias, \
             const uint32_t* __restrict__ sorted, const int32_t* __restrict__ tile_expert, uint32_t n, uint32_t k,    \
             uint32_t x_div, uint32_t slots, uint32_t mode, float alpha, float limit) {                              \
        extern __shared__ __align__(16) uint8_t mg_smem[];                                                           \
        moe_gemm<T, WF>(out, x, w, bias, sorted, tile_expert, n, k, x_div, slots, mode, alpha, limit, blockIdx.x,    \
                        blockIdx.y, mg_smem);                                                                        \
    }
MOE_GEMM(moe_gemm_bf16, __nv_bfloat16, MG_W_DENSE)
MOE_GEMM(moe_gemm_f16, __half, MG_W_DENSE)
MOE_GEMM(moe_gemm_q4_bf16, __nv_bfloat16, MG_W_Q4)
MOE_GEMM(moe_gemm_q4_f16, __half, MG_W_Q4)
MOE_GEMM(moe_gemm_mxfp4_bf16, __nv_bfloat16, MG_W_MXFP4)
#endif
