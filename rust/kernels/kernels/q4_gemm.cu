// GGML Q4_0 weights times activations, for decode-sized batches, and Q4_0 dequantization.
//
//   q4_gemv_mma_<T>     (T = bf16, f16) y[M, N] = x[M, K] . W[N, K]^T on tensor cores; K % 256 == 0
//   q4_gemv_mma_silu_<T> the same for a stacked gate/up weight W[2N, K] (gate rows, then up rows), with
//                       the MLP's activation as epilogue: y[M, N] = silu(x . gate^T) * (x . up^T)
//   q4_gemv_simple_<T>  (T = f32, bf16, f16) the same with scalar f32 FMAs; any K % 32 == 0
//   moe_q4_gemv[_silu]_<T> the tensor-core GEMV per (token, expert) slot of the fused MoE's decode (below)
//   q4_dequant_<T>      W[N, K] -> out[N, K] in T (for what q4_gemm_tc.cu does not take: f32, K % 256 != 0)
//
// Q4_0 (GGML): per 32 weights one block of 18 bytes, an f16 scale d then 16 bytes of nibbles; byte j
// holds element j in its low nibble and element j + 16 in its high nibble; value = d * (q - 8). A row
// of W is K / 32 consecutive blocks; rows follow each other with no padding.
//
// Both GEMV kernels accumulate in f32 and round once, to x's dtype, when they store y. Tokens come in
// tiles of 8 (the scalar kernel: one per block; the tensor-core kernel: NT per block) along grid.x, the
// fastest-varying block index, rows in tiles of 16 or 8 (grid.y): the token tiles of one row tile run
// side by side, so for M > 8 NT the later tiles re-read the weights from L2 and the weights leave DRAM once.
//
// The tensor-core kernel (the decode path for bf16 / f16 models). One block = 16 rows x 8 NT tokens
// (NT = 1..4 or 8 n8 tiles: each dequantized A fragment feeds NT MMAs, so a batch of 9-64 tokens
// dequantizes each weight once instead of once per 8 tokens, what made 16 tokens cost twice 8); its 8
// warps split K (warp w takes the groups of 8 Q4_0 blocks w, w + 8, ...) and sum their partial results
// through shared memory at the end. Per group a warp copies the 16 rows' 144 contiguous bytes with
// 16-byte cp.async into a ring of S = Q4_MMA_STAGES stages (the next group loads while one computes; no
// thread waits on a global load). The first S groups are issued before pdl_wait(): launched with PDL, a
// warp's first S groups (all of them for K <= 4096) stream in while the kernel before finishes. Measured
// on an H100 (Llama-3-8B shapes, tests/gpu/test_q4_gpu.py timings): 4 stages were slower than 2 for every
// projection (down at one token 24.8 against 22.1 us; 8 tokens up to 1.3x), so 2 it is.
// Per Q4_0 block it runs two m16n8k16 MMAs (A = q - 8, exact in bf16 / f16;
// B = x; C fresh in f32) and folds the result into the accumulator times the block's scale in f32.
// The order of K inside one MMA is free as long as A and B agree, so it is chosen to let each lane's A
// come from one 32-bit word of nibbles with two bit operations and B from one 8-byte load of x:
//   lane (g, c) = (lane / 4, lane % 4) holds, for rows g and g + 8, qs bytes 4c..4c+3 of the block;
//   step s (0: low nibbles, 1: high nibbles), MMA k index -> element of the block:
//     2c -> 16s + 4c,  2c + 1 -> 16s + 4c + 2,  2c + 8 -> 16s + 4c + 1,  2c + 9 -> 16s + 4c + 3.
// The silu variant gives a block gate rows r..r + 7 as MMA rows 0-7 and the matching up rows as rows
// 8-15, so each output's gate and up sums meet in one block; they are rounded to T (as the separate
// projection would store them) before silu_times, so it equals the unfused GEMV + silu_mul exactly.
// Nibbles become f16 / bf16 by the magic-exponent trick (OR the nibble into the mantissa of 1024.0 /
// 128.0, subtract 1032 / 136 to get q - 8 exactly).
//
// x is read with 8-byte loads through the read-only cache rather than staged in shared memory: all
// blocks read the same x (at most 8 x K values per token tile, e.g. 224 KiB for 8 x 14336 bf16), which
// stays in L1 / L2, while shared memory is kept for the weight stages.
#include "common.cuh"
#include "mma.cuh"

#define Q4_BLOCK_BYTES 18
// Q4_0 blocks per copy group: 8 x 18 = 144 bytes = 9 x 16 per row, so a row's groups are 16-byte
// aligned whenever its start is (K % 256 == 0).
#define Q4_GROUP_BLOCKS 8
#define Q4_GROUP_BYTES 144
#define Q4_MMA_ROWS 16
#define Q4_MMA_WARPS 8
#define Q4_MMA_STAGES 2
#define Q4_STAGE_BYTES (Q4_MMA_ROWS * Q4_GROUP_BYTES)
#define Q4_TOKENS 8
#define Q4_SIMPLE_WARPS 8

// ---------------------------------------------------------------------------------------------------
// Helpers

__device__ __forceinline__ float f16_bits_to_f32(uint32_t bits) {
    return __half2float(__ushort_as_half((unsigned short)(bits & 0xffffu)));
}

// Two nibbles already at bits 0..3 and 16..19 (the rest masked off) -> (q0 - 8, q1 - 8) as a packed pair.
template <typename T> __device__ __forceinline__ uint32_t nibbles_to_pair(uint32_t q);
template <> __device__ __forceinline__ uint32_t nibbles_to_pair<__half>(uint32_t q) {
    // 0x6400 = 1024.0 in f16 (ulp 1): OR-ing q into the mantissa gives 1024 + q; minus 1032 is exact.
    q |= 0x64006400u;
    __half2 h = *reinterpret_cast<__half2*>(&q);
    const uint32_t bias_bits = 0x64086408u;
    h = __hsub2(h, *reinterpret_cast<const __half2*>(&bias_bits));
    return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t nibbles_to_pair<__nv_bfloat16>(uint32_t q) {
    // 0x4300 = 128.0 in bf16 (ulp 1): 128 + q, minus 136 is exact.
    q |= 0x43004300u;
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&q);
    const uint32_t bias_bits = 0x43084308u;
    h = __hsub2(h, *reinterpret_cast<const __nv_bfloat162*>(&bias_bits));
    return *reinterpret_cast<uint32_t*>(&h);
}

// c += A (16x16, row) . B (16x8, col), f32 accumulators (mma.cuh's PTX wrappers).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_m16n8k16_f16(c, a, b[0], b[1]);
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_m16n8k16_bf16(c, a, b[0], b[1]);
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core GEMV. grid = (ceil(M / (8 NT)), ceil(N / 16)) (SILU: ceil(N / 8), N = outputs = half of W's
// rows), block = 32 * Q4_MMA_WARPS, dynamic shared memory Q4_MMA_WARPS * S * Q4_STAGE_BYTES. Needs
// K % 256 == 0 and w, x 16- and 8-byte aligned (checked by the caller).
template <typename T, bool SILU, int S, int NT>
__device__ void q4_gemv_mma(T* __restrict__ y, const uint8_t* __restrict__ w, const T* __restrict__ x,
                            uint32_t m, uint32_t n, uint32_t k, uint8_t* __restrict__ q4_smem) {

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const uint32_t t0 = blockIdx.x * (Q4_TOKENS * NT);
    // n8 token tiles holding at least one of the M tokens (the same for every warp: skipped uniformly).
    // (NT = 1: always 1, a block exists only for a live tile; said as a constant so nothing waits on it.)
    const int live = NT == 1 ? 1 : (int)min((uint32_t)NT, (m - t0 + Q4_TOKENS - 1) / Q4_TOKENS);
    // First output row of the block (SILU: first gate row; its up rows start n rows further).
    const uint32_t row0 = blockIdx.y * (SILU ? Q4_MMA_ROWS / 2 : Q4_MMA_ROWS);
    const size_t row_bytes = (size_t)(k / 32) * Q4_BLOCK_BYTES;
    const uint32_t groups = k / (32 * Q4_GROUP_BLOCKS);
    const uint32_t mine = groups > (uint32_t)warp ? (groups - warp + Q4_MMA_WARPS - 1) / Q4_MMA_WARPS : 0;

    // This lane's token in tile j (B column g); lanes past the batch feed zeros.
    const T* xrow[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const uint32_t token = t0 + j * Q4_TOKENS + g;
        xrow[j] = token < m ? x + (size_t)token * k : nullptr;
    }

    // This warp's ring of S stages; after its loop the same bytes hold its partial sums.
    uint8_t* ring = q4_smem + (size_t)warp * S * Q4_STAGE_BYTES;
    // Copies group `grp` of the tile's 16 rows into stage `s`: 16 x 9 chunks of 16 bytes, chunk j =
    // row j / 9, piece j % 9; rows past N re-read the last row (never stored).
    auto issue = [&](uint32_t grp, int s) {
        uint8_t* dst = ring + s * Q4_STAGE_BYTES;
        for (int j = lane; j < Q4_MMA_ROWS * 9; j += 32) {
            const int r = j / 9, piece = j - r * 9;
            const uint32_t row = SILU ? min(row0 + (r & 7), n - 1) + (r < 8 ? 0 : n) : min(row0 + r, n - 1);
            const uint8_t* src = w + (size_t)row * row_bytes + (size_t)grp * Q4_GROUP_BYTES + piece * 16;
            cp_async16(dst + r * Q4_GROUP_BYTES + piece * 16, src, true);
        }
    };

    float acc[NT][4] = {};  // per token tile: rows g, g + 8 x tokens 2c, 2c + 1 (the C fragment)
    // Launched with PDL (cuda_pdl.rs): the first S weight groups are on their way while the kernel that
    // writes x finishes; x is read only after the wait. One commit per stage, empty or not, so that
    // "all but the newest S - 1 groups" always means "group i".
#pragma unroll
    for (int s = 0; s < S; ++s) {
        if ((uint32_t)s < mine) issue(warp + s * Q4_MMA_WARPS, s);
        cp_async_commit();
    }
    pdl_wait();
    pdl_launch_dependents();
    for (uint32_t i = 0; i < mine; ++i) {
        cp_async_wait_pending<S - 1>();
        __syncwarp();

        const uint32_t grp = warp + i * Q4_MMA_WARPS;
        const uint8_t* cur = ring + (i % S) * Q4_STAGE_BYTES;
        const uint32_t* lo_row = reinterpret_cast<const uint32_t*>(cur + g * Q4_GROUP_BYTES);
        const uint32_t* hi_row = reinterpret_cast<const uint32_t*>(cur + (g + 8) * Q4_GROUP_BYTES);
#pragma unroll
        for (int p = 0; p < Q4_GROUP_BLOCKS / 2; ++p) {
            // Two blocks = 36 bytes = 9 words: [d0 | qs0 0..1] [qs0 2..5] .. [qs0 14..15 | d1] [qs1 0..3] ..
            // Block 2p's qs word c straddles words c and c + 1; block 2p + 1's is word 5 + c. Bank-conflict
            // free: rows are 36 words apart (4 banks), lanes of a row 1 word apart.
            const uint32_t* lo = lo_row + 9 * p;
            const uint32_t* hi = hi_row + 9 * p;
            const uint32_t qs_lo[2] = {__byte_perm(lo[c], lo[c + 1], 0x5432), lo[5 + c]};
            const uint32_t qs_hi[2] = {__byte_perm(hi[c], hi[c + 1], 0x5432), hi[5 + c]};
            const float d_lo[2] = {f16_bits_to_f32(lo[0]), f16_bits_to_f32(lo[4] >> 16)};
            const float d_hi[2] = {f16_bits_to_f32(hi[0]), f16_bits_to_f32(hi[4] >> 16)};
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint32_t kb = grp * Q4_GROUP_BLOCKS + 2 * p + h;  // Q4_0 block index along K
                float cb[NT][4] = {};
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    // x first: its loads are in flight while the nibbles are turned into A (issued after
                    // the dequantization, each MMA waits on its load).
                    uint32_t b[NT][2];
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        b[j][0] = b[j][1] = 0u;
                        if (j < live && xrow[j] != nullptr) {
                            const uint2 v = __ldg(reinterpret_cast<const uint2*>(xrow[j] + kb * 32 + 16 * s + 4 * c));
                            b[j][0] = __byte_perm(v.x, v.y, 0x5410);  // elements 4c, 4c + 2
                            b[j][1] = __byte_perm(v.x, v.y, 0x7632);  // elements 4c + 1, 4c + 3
                        }
                    }
                    const int sh = 4 * s;  // low nibbles, then high nibbles
                    uint32_t a[4];
                    a[0] = nibbles_to_pair<T>((qs_lo[h] >> sh) & 0x000f000fu);
                    a[1] = nibbles_to_pair<T>((qs_hi[h] >> sh) & 0x000f000fu);
                    a[2] = nibbles_to_pair<T>((qs_lo[h] >> (sh + 8)) & 0x000f000fu);
                    a[3] = nibbles_to_pair<T>((qs_hi[h] >> (sh + 8)) & 0x000f000fu);
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        if (j < live) mma_16816<T>(cb[j], a, b[j]);
                    }
                }
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    acc[j][0] = fmaf(d_lo[h], cb[j][0], acc[j][0]);
                    acc[j][1] = fmaf(d_lo[h], cb[j][1], acc[j][1]);
                    acc[j][2] = fmaf(d_hi[h], cb[j][2], acc[j][2]);
                    acc[j][3] = fmaf(d_hi[h], cb[j][3], acc[j][3]);
                }
            }
        }
        __syncwarp();  // the stage is overwritten by the copy issued next
        if (i + S < mine) issue(warp + (i + S) * Q4_MMA_WARPS, i % S);
        cp_async_commit();
    }

    // Every real copy has landed (groups complete in order; the ones after the last are empty), so the
    // warp's ring is free: partial[v][row][token] (16 x 8 NT floats, at most S * Q4_STAGE_BYTES) sits at
    // the start of warp v's ring.
    constexpr int TOK = Q4_TOKENS * NT;
    static_assert(Q4_MMA_ROWS * TOK * sizeof(float) <= S * Q4_STAGE_BYTES, "partial sums exceed a warp's ring");
    auto partial = [&](int v, int r, int t) -> float& {
        return reinterpret_cast<float*>(q4_smem + (size_t)v * S * Q4_STAGE_BYTES)[r * TOK + t];
    };
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        partial(warp, g, 8 * j + 2 * c) = acc[j][0];
        partial(warp, g, 8 * j + 2 * c + 1) = acc[j][1];
        partial(warp, g + 8, 8 * j + 2 * c) = acc[j][2];
        partial(warp, g + 8, 8 * j + 2 * c + 1) = acc[j][3];
    }
    __syncthreads();
    gemv_mma_store<T, SILU, Q4_MMA_WARPS, TOK>(y, partial, row0, t0, m, n);
}

// ---------------------------------------------------------------------------------------------------
// Scalar GEMV: one warp per row, lane l takes Q4_0 blocks l, l + 32, ...; 16-bit loads (blocks are only
// 2-byte aligned). grid = (ceil(M / 8), ceil(N / Q4_SIMPLE_WARPS)), block = 32 * Q4_SIMPLE_WARPS.
template <typename T>
__device__ void q4_gemv_simple(T* __restrict__ y, const uint8_t* __restrict__ w, const T* __restrict__ x,
                               uint32_t m, uint32_t n, uint32_t k) {
    pdl_wait();  // launched with PDL (cuda_pdl.rs)
    pdl_launch_dependents();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t row = blockIdx.y * Q4_SIMPLE_WARPS + warp;
    if (row >= n) return;
    const uint32_t t0 = blockIdx.x * Q4_TOKENS;
    const uint32_t tokens = min((uint32_t)Q4_TOKENS, m - t0);
    const uint32_t blocks = k / 32;
    const uint8_t* wrow = w + (size_t)row * blocks * Q4_BLOCK_BYTES;
    float acc[Q4_TOKENS];
#pragma unroll
    for (int t = 0; t < Q4_TOKENS; ++t) acc[t] = 0.f;
    for (uint32_t b = lane; b < blocks; b += 32) {
        const uint16_t* blk = reinterpret_cast<const uint16_t*>(wrow + (size_t)b * Q4_BLOCK_BYTES);
        const float d = f16_bits_to_f32(blk[0]);
        float wv[32];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const uint32_t two = blk[1 + j];  // qs bytes 2j, 2j + 1
            wv[2 * j] = (float)((int)(two & 0xf) - 8);
            wv[2 * j + 16] = (float)((int)((two >> 4) & 0xf) - 8);
            wv[2 * j + 1] = (float)((int)((two >> 8) & 0xf) - 8);
            wv[2 * j + 17] = (float)((int)((two >> 12) & 0xf) - 8);
        }
#pragma unroll
        for (int t = 0; t < Q4_TOKENS; ++t) {
            if ((uint32_t)t < tokens) {
                const T* xb = x + (size_t)(t0 + t) * k + (size_t)b * 32;
                float s = 0.f;
#pragma unroll
                for (int j = 0; j < 32; ++j) s = fmaf(wv[j], to_f32(xb[j]), s);
                acc[t] = fmaf(d, s, acc[t]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < Q4_TOKENS; ++t) {
        const float s = warp_sum(acc[t]);
        if (lane == 0 && (uint32_t)t < tokens) y[(size_t)(t0 + t) * n + row] = from_f32<T>(s);
    }
}

// ---------------------------------------------------------------------------------------------------
// Dequantization: one thread per quarter of a Q4_0 block (grid-stride): 8 consecutive outputs, stored
// as one 16-byte (bf16 / f16) or two 16-byte (f32) writes, so a warp writes 512 (1024) contiguous bytes.
// Quarters 0, 1 are the low nibbles of qs bytes 0..7, 8..15 (elements 0..15); quarters 2, 3 the high ones.
template <typename T>
__device__ void q4_dequant(T* __restrict__ out, const uint8_t* __restrict__ w, uint64_t num_blocks) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < num_blocks * 4; i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t b = i >> 2;
        const int quarter = (int)(i & 3), sh = quarter < 2 ? 0 : 4;
        const uint16_t* blk = reinterpret_cast<const uint16_t*>(w + b * Q4_BLOCK_BYTES);
        const float d = f16_bits_to_f32(blk[0]);
        __align__(16) T v[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const uint32_t two = blk[1 + 4 * (quarter & 1) + j];  // qs bytes 8 (quarter & 1) + 2j, + 2j + 1
            v[2 * j] = from_f32<T>(d * (float)((int)((two >> sh) & 0xf) - 8));
            v[2 * j + 1] = from_f32<T>(d * (float)((int)((two >> (8 + sh)) & 0xf) - 8));
        }
        uint4* o = reinterpret_cast<uint4*>(out + b * 32 + quarter * 8);  // 16-byte aligned: 8 x sizeof(T) apart
#pragma unroll
        for (int p = 0; p < (int)(8 * sizeof(T) / 16); ++p) o[p] = reinterpret_cast<const uint4*>(v)[p];
    }
}

// ---------------------------------------------------------------------------------------------------
// Instances

#define Q4_GEMV(NAME, IMPL, T)                                                                             \
    extern "C" __global__ void __launch_bounds__(256) NAME(T* __restrict__ y, const uint8_t* __restrict__ w, \
                                                           const T* __restrict__ x, uint32_t m, uint32_t n,  \
                                                           uint32_t k) {                                     \
        IMPL<T>(y, w, x, m, n, k);                                                                           \
    }

// The fused MoE's decode GEMV on Q4_0 experts (moe_cuda.rs, a step of a few tokens): blockIdx.z = slot s
// of the step's T x top_k (token, expert) slots; expert ids[s] (moe_route's output) picks its rows of the
// stacked blocks (E experts of ROWS n rows of K / 32 blocks; an expert's rows start 16-byte aligned as
// K % 256 == 0), the input is x row s / x_div (the token for gate/up, the slot for down), the output y row
// s [n]. One token per slot: grid = (1, row tiles, slots), as q4_gemv_mma's with M = 1. Launched plainly,
// not with PDL: the copies q4_gemv_mma issues before its pdl_wait depend on ids, written by the kernel before.
template <typename T, bool SILU>
__device__ void moe_q4_gemv(T* __restrict__ y, const uint8_t* __restrict__ w, const T* __restrict__ x,
                            const uint32_t* __restrict__ ids, uint32_t n, uint32_t k, uint32_t x_div,
                            uint32_t experts, uint8_t* __restrict__ smem) {
    const uint32_t s = blockIdx.z;
    const uint32_t e = min(ids[s], experts - 1);  // always < experts (moe_route); clamped to stay in bounds
    const size_t expert_bytes = (SILU ? 2 * (size_t)n : n) * (k / 32) * Q4_BLOCK_BYTES;
    q4_gemv_mma<T, SILU, Q4_MMA_STAGES, 1>(y + (size_t)s * n, w + e * expert_bytes, x + (size_t)(s / x_div) * k, 1,
                                          n, k, smem);
}

#ifndef Q4_GEMV_HOST  // the emulation (rust/kernels/emulate) calls the kernels with its own memory
#define Q4_GEMV_MMA(NAME, T, SILU, NT)                                                                    \
    extern "C" __global__ void __launch_bounds__(256) NAME(T* __restrict__ y, const uint8_t* __restrict__ w, \
                                                           const T* __restrict__ x, uint32_t m, uint32_t n,  \
                                                           uint32_t k) {                                     \
        extern __shared__ __align__(16) uint8_t q4_smem[];                                                   \
        q4_gemv_mma<T, SILU, Q4_MMA_STAGES, NT>(y, w, x, m, n, k, q4_smem);                                  \
    }
// Token tiles per block: _t1 (8 tokens), _t2, _t3, _t4 and _t8 (up to 64): kernels::q4_gemv_mma_name.
#define Q4_GEMV_MMA_TILES(NT)                                                      \
    Q4_GEMV_MMA(q4_gemv_mma_bf16_t##NT, __nv_bfloat16, false, NT)                  \
    Q4_GEMV_MMA(q4_gemv_mma_f16_t##NT, __half, false, NT)                          \
    Q4_GEMV_MMA(q4_gemv_mma_silu_bf16_t##NT, __nv_bfloat16, true, NT)              \
    Q4_GEMV_MMA(q4_gemv_mma_silu_f16_t##NT, __half, true, NT)
Q4_GEMV_MMA_TILES(1)
Q4_GEMV_MMA_TILES(2)
Q4_GEMV_MMA_TILES(3)
Q4_GEMV_MMA_TILES(4)
Q4_GEMV_MMA_TILES(8)

#define MOE_Q4_GEMV(NAME, T, SILU)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        NAME(T* __restrict__ y, const uint8_t* __restrict__ w, const T* __restrict__ x,                     \
             const uint32_t* __restrict__ ids, uint32_t n, uint32_t k, uint32_t x_div, uint32_t experts) {    \
        extern __shared__ __align__(16) uint8_t q4_smem[];                                                  \
        moe_q4_gemv<T, SILU>(y, w, x, ids, n, k, x_div, experts, q4_smem);                                  \
    }
MOE_Q4_GEMV(moe_q4_gemv_bf16, __nv_bfloat16, false)
MOE_Q4_GEMV(moe_q4_gemv_f16, __half, false)
MOE_Q4_GEMV(moe_q4_gemv_silu_bf16, __nv_bfloat16, true)
MOE_Q4_GEMV(moe_q4_gemv_silu_f16, __half, true)

Q4_GEMV(q4_gemv_simple_f32, q4_gemv_simple, float)
Q4_GEMV(q4_gemv_simple_bf16, q4_gemv_simple, __nv_bfloat16)
Q4_GEMV(q4_gemv_simple_f16, q4_gemv_simple, __half)

#define Q4_DEQUANT(NAME, T)                                                                                 \
    extern "C" __global__ void NAME(T* __restrict__ out, const uint8_t* __restrict__ w, uint64_t num_blocks) { \
        q4_dequant<T>(out, w, num_blocks);                                                                  \
    }

Q4_DEQUANT(q4_dequant_f32, float)
Q4_DEQUANT(q4_dequant_bf16, __nv_bfloat16)
Q4_DEQUANT(q4_dequant_f16, __half)
#endif
