// Tiled causal attention for prefill chunks (sequences with more than SPLIT_MAX_QUERY_LEN query tokens in a
// step) over the paged KV cache, in bf16 / f16 on the tensor cores (mma.sync m16n8k16, f32 accumulation).
//
// Layouts (row-major), as in paged_attention.cu:
//   q, out:            [num_tokens, num_heads, head_dim]
//   k_cache, v_cache:  [num_blocks, block_size, num_kv_heads, head_dim]
//   block_tables:      [num_seqs, max_blocks]
//   query_start:       [num_seqs + 1]  first query token of each sequence
//   context_len:       [num_seqs]      tokens in the cache after this step; the chunk's queries sit at positions
//                                      context_len - query_len .. context_len - 1
//   tile_seq/start:    [num_tiles]     sequence of each query tile and its first query row within the chunk
//
// Grid (num_tiles, num_heads), PREFILL_THREADS threads. A block takes PREFILL_TILE_M query rows of one head;
// each of its 4 warps owns 16 rows and keeps their Q fragments and f32 output accumulators in registers.
// Keys are walked in tiles of BN (below) from the block's first key: each K and V tile is gathered once
// through the block table into shared memory (cp.async) and used by all 64 rows. V's load overlaps S = Q K^T and the
// next K's load overlaps O += P V. The softmax is online, in f32 (exp2 of log2e-scaled scores); P is rounded
// to the input type for the tensor-core product and the row sums add the rounded values.
//
// Per layer (launch arguments, constants of a captured graph): `window` keys at most per query (UINT32_MAX:
// full causal; row at position p sees keys max(0, p + 1 - window)..=p) and `softcap` (0: none; else the
// scaled score s becomes softcap * tanh(s / softcap) before the softmax, as in HF transformers). A block
// starts at the key tile holding its first row's window start (the lowest of its rows'), so key tiles
// wholly before it are never loaded, and keys before it inside that tile are zero-filled, never gathered:
// block-table entries before the window are never read.
//
// `sinks` (gpt-oss; nullptr: none): [num_heads] f32, a logit per head that joins the head's softmax (its
// max and denominator) with no value. It enters only at the end, where each row is normalised: its
// running max (of unscaled scores: times `scale` in the sink's units) and sum absorb it (sink_norm).
//
// Result of a row does not depend on the tile it sits in: a key tile wholly outside a row's keys (after
// its position or before its window) changes nothing in it (its weights are exactly 0; before the row's
// first key its running max stays -inf and the row's sums stay exact zeros; after it the rescale factor
// is exactly 1), so chunking and tiling leave each row's arithmetic unchanged.
//
// Key tiles are PREFILL_TILE_N keys (64) up to head_dim 128 and 32 at head_dim 256, so that the K and V
// tiles stay in 48 KB of static shared memory (2 x 32 x 264 x 2 bytes = 33 KB) and two blocks fit an SM.
//
// FP8 e4m3 caches (KT = uint8_t; `_fp8_` instances): k_scales / v_scales ([num_slots, num_kv_heads] f32)
// hold each row's scale. A tile is fetched into registers (16 values per 16-byte word, and the row's scale)
// where the 16-bit caches issue their cp.async copy, and stored to shared memory as T, each value times its
// row's scale rounded once, where they wait for it: the tensor-core loop is the same, and the loads still
// overlap the math. The rounding to T adds half an ulp of T (2^-9 relative in bf16) to e4m3's 2^-4.
#include "common.cuh"
#include "mma.cuh"
#include "tc_ops.cuh"
#include <math.h>

#define PREFILL_TILE_M 64
#define PREFILL_TILE_N 64
#define PREFILL_THREADS 128
// Padding of each shared-memory row (elements): rows start 16 bytes apart modulo 128, so the 8 row
// addresses of one ldmatrix fall in distinct banks.
#define PREFILL_PAD 8

// tanh(x) from one ex2.approx: absolute error about 2e-7 (so a cap of 50 moves a score by about 1e-5, far
// below the rounding of P to bf16 / f16), and far fewer registers than tanhf in the unrolled score loop.
__device__ __forceinline__ float fast_tanh(float x) {
    const float e = fast_exp2(-2.8853900817779268f * fabsf(x));  // exp(-2|x|), in (0, 1]
    return copysignf(__fdividef(1.f - e, 1.f + e), x);
}

template <typename T, typename KT, int D, int BN, bool CAP>
__device__ void prefill_attention(T* __restrict__ out, const T* __restrict__ q, const KT* __restrict__ k_cache,
                                  const KT* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                  const uint32_t* __restrict__ query_start, const uint32_t* __restrict__ context_len,
                                  const uint32_t* __restrict__ tile_seq, const uint32_t* __restrict__ tile_start,
                                  uint32_t num_heads, uint32_t num_kv_heads, uint32_t block_size,
                                  uint32_t max_blocks, float scale, uint32_t window, float softcap,
                                  const float* __restrict__ sinks, const float* __restrict__ k_scales,
                                  const float* __restrict__ v_scales) {
    using Ops = PrefillOps<T>;
    constexpr bool FP8 = sizeof(KT) == 1;
    constexpr int STRIDE = D + PREFILL_PAD;  // elements per shared-memory row
    constexpr int KC = D / 16;               // 16-wide k steps of Q K^T
    constexpr int DT = D / 8;                // 8-wide column tiles of O
    constexpr int NT = BN / 8;               // 8-key column tiles of S
    constexpr int PK = BN / 16;              // 16-key k steps of P V
    constexpr int CHUNKS = D / 8;            // 16-byte chunks per cache row
    constexpr int COPIES = BN * CHUNKS / PREFILL_THREADS;  // chunks each thread copies per tile
    static_assert(PREFILL_TILE_M == 4 * 16 && PREFILL_THREADS == 128, "4 warps of 16 query rows");
    static_assert(D % 32 == 0 && KC % 2 == 0 && DT % 2 == 0, "head_dim must be a multiple of 32");
    static_assert(BN % 16 == 0 && BN <= PREFILL_THREADS, "key tiles of 16-key steps, one slot per thread");
    static_assert((BN * CHUNKS) % PREFILL_THREADS == 0, "the block copies whole tiles");
    __shared__ __align__(16) T ks[BN * STRIDE];
    __shared__ __align__(16) T vs[BN * STRIDE];
    __shared__ uint32_t slot_buf[2][BN];  // cache slots of the current and the next key tile

    const uint32_t seq = tile_seq[blockIdx.x];
    const uint32_t q0 = tile_start[blockIdx.x];
    const uint32_t h = blockIdx.y;
    const uint32_t qs = query_start[seq];
    const uint32_t qlen = query_start[seq + 1] - qs;
    const uint32_t first_pos = context_len[seq] - qlen;
    const uint32_t kvh = h / (num_heads / num_kv_heads);
    const uint32_t* table = block_tables + (size_t)seq * max_blocks;
    const size_t slot_stride = (size_t)num_kv_heads * D;
    // First key a query at `pos` attends.
    auto key_lo = [&](uint32_t pos) { return pos + 1 > window ? pos + 1 - window : 0u; };

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tig = lane & 3;  // mma fragment row group and thread within the group
    const uint32_t wq0 = q0 + warp * 16;      // the warp's first query row (within the chunk)
    const bool warp_rows = wq0 < qlen;
    const uint32_t warp_min_pos = first_pos + wq0;
    const uint32_t warp_max_pos = first_pos + min(wq0 + 15, qlen - 1);
    const uint32_t warp_min_lo = key_lo(warp_min_pos), warp_max_lo = key_lo(warp_max_pos);
    const uint32_t n_keys = first_pos + min(q0 + PREFILL_TILE_M, qlen);  // keys any row of the block sees
    const uint32_t k_lo = key_lo(first_pos + q0);                        // the first key any row sees
    const uint32_t n_tiles = (n_keys + BN - 1) / BN;
    const uint32_t r0 = wq0 + g, r1 = r0 + 8;  // this thread's two rows
    const uint32_t pos0 = first_pos + r0, pos1 = first_pos + r1;
    const uint32_t lo0 = key_lo(pos0), lo1 = key_lo(pos1);

    // Q as A fragments of m16n8k16 (rows g / g+8, columns 2*tig + {0,1} and + 8); rows past the chunk are 0.
    uint32_t qf[KC][4];
    {
        const uint16_t* qb = reinterpret_cast<const uint16_t*>(q);
        const uint16_t* q_r0 = qb + ((size_t)(qs + r0) * num_heads + h) * D;
        const uint16_t* q_r1 = qb + ((size_t)(qs + r1) * num_heads + h) * D;
        const bool v0 = r0 < qlen, v1 = r1 < qlen;
        auto pair = [](const uint16_t* p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 16); };
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            const int c = kc * 16 + 2 * tig;
            qf[kc][0] = v0 ? pair(q_r0 + c) : 0u;
            qf[kc][1] = v1 ? pair(q_r1 + c) : 0u;
            qf[kc][2] = v0 ? pair(q_r0 + c + 8) : 0u;
            qf[kc][3] = v1 ? pair(q_r1 + c + 8) : 0u;
        }
    }

    // Cache slots of the keys of a tile (NO_SLOT for keys outside k_lo..n_keys): looked up in the block
    // table once per key tile by the first BN threads (key key0 + thread), kept in shared memory for the K
    // and the V copy of that tile.
    auto slot_of = [&](uint32_t key) {
        return key >= k_lo && key < n_keys ? table[key / block_size] * block_size + key % block_size : NO_SLOT;
    };
    // Copies one K or V tile (rows of `slots`) into shared memory; rows without a slot are zero-filled.
    // Chunk i of the tile (row i / CHUNKS, 16-byte column i % CHUNKS) is copied by thread i % THREADS.
    const KT* k_head = k_cache + (size_t)kvh * D;
    const KT* v_head = v_cache + (size_t)kvh * D;
    auto load_tile = [&](T* dst, const T* head, const uint32_t* slots) {
        uint32_t slot[COPIES];  // all slot reads first: the copies then issue back to back
#pragma unroll
        for (int i = 0; i < COPIES; ++i) slot[i] = slots[(threadIdx.x + i * PREFILL_THREADS) / CHUNKS];
#pragma unroll
        for (int i = 0; i < COPIES; ++i) {
            const int c = threadIdx.x + i * PREFILL_THREADS;
            const int row = c / CHUNKS, col = (c % CHUNKS) * 8;
            const bool valid = slot[i] != NO_SLOT;
            cp_async16(dst + row * STRIDE + col, head + (size_t)(valid ? slot[i] : 0u) * slot_stride + col, valid);
        }
    };
    // FP8: a tile's rows fetched into registers, then widened into shared memory (tc_ops.cuh).
    Fp8Tile<T, D, BN, PREFILL_THREADS, STRIDE> tile8;
    auto fetch8 = [&](const KT* head, const float* scales, const uint32_t* slots) {
        tile8.fetch(reinterpret_cast<const uint8_t*>(head), scales, slots, slot_stride, num_kv_heads, kvh);
    };
    auto store8 = [&](T* dst) { tile8.store(dst); };

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const float sl2 = scale * 1.4426950408889634f;
    // With a cap (CAP: instances of their own, so the plain ones keep their registers), scores are
    // replaced by cap(scale s) / scale, so that the scaled exponent below is unchanged: scale * that =
    // softcap * tanh(scale s / softcap).
    const float cap_in = CAP ? scale / softcap : 0.f, cap_out = CAP ? softcap / scale : 0.f;

    const uint32_t kt0 = k_lo / BN;  // the tile holding the block's first key
    if (threadIdx.x < BN) slot_buf[kt0 & 1][threadIdx.x] = slot_of(kt0 * BN + threadIdx.x);
    __syncthreads();
    if constexpr (FP8) {
        fetch8(k_head, k_scales, slot_buf[kt0 & 1]);
        store8(ks);
    } else {
        load_tile(ks, k_head, slot_buf[kt0 & 1]);
        cp_async_commit();
    }
    for (uint32_t kt = kt0; kt < n_tiles; ++kt) {
        const uint32_t key0 = kt * BN;
        const uint32_t* slots = slot_buf[kt & 1];
        uint32_t* next_slots = slot_buf[(kt + 1) & 1];
        if constexpr (!FP8) cp_async_wait_all();
        __syncthreads();  // K tile ready; every warp is done with the previous V tile and its slots
        if constexpr (FP8) {
            fetch8(v_head, v_scales, slots);
        } else {
            load_tile(vs, v_head, slots);
            cp_async_commit();
        }
        // The next tile's slots: looked up now, stored after the softmax (the lookup's latency is hidden
        // behind Q K^T), read after the next barrier.
        const bool fill = kt + 1 < n_tiles && threadIdx.x < BN;
        const uint32_t next_slot = fill ? slot_of(key0 + BN + threadIdx.x) : NO_SLOT;

        // A warp skips key tiles wholly after its rows or wholly before their windows: for them it would
        // add exact zeros.
        const bool active = warp_rows && key0 <= warp_max_pos && key0 + BN > warp_min_lo;
        uint32_t pf[PK][4];
        if (active) {
            float s[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
                for (int kc = 0; kc < KC; kc += 2) {
                    uint32_t b[4];  // keys nt*8 .. +8; dims kc*16 + {0, 8, 16, 24} .. +8
                    ldmatrix_x4(b, &ks[(nt * 8 + (lane & 7)) * STRIDE + kc * 16 + (lane >> 3) * 8]);
                    Ops::mma(s[nt], qf[kc], b[0], b[1]);
                    Ops::mma(s[nt], qf[kc + 1], b[2], b[3]);
                }
            }
            // The tile reaches past some row's position or before some row's window start.
            const bool masked = key0 + BN - 1 > warp_min_pos || key0 < warp_max_lo;
            if (CAP) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[nt][e] = cap_out * fast_tanh(s[nt][e] * cap_in);
                }
            }
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const uint32_t key = key0 + nt * 8 + 2 * tig + e;
                    float a = s[nt][e], b = s[nt][2 + e];
                    if (masked) {
                        if (key > pos0 || key < lo0) a = -INFINITY;
                        if (key > pos1 || key < lo1) b = -INFINITY;
                    }
                    s[nt][e] = a;
                    s[nt][2 + e] = b;
                    mx0 = fmaxf(mx0, a);
                    mx1 = fmaxf(mx1, b);
                }
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            // Maxima of the unscaled scores (scale > 0). A row whose keys all lie outside the tiles seen
            // so far (its window starts later) keeps m = -inf: its exponent offset is then 0, so its p are
            // 2^-inf = 0 and its rescale factor 2^-inf = 0 (of sums that are still exact zeros).
            // p = 2^(s * scale * log2e - max * scale * log2e), one FFMA per score.
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            const float ms0 = mn0 == -INFINITY ? 0.f : mn0 * sl2, ms1 = mn1 == -INFINITY ? 0.f : mn1 * sl2;
            const float al0 = fast_exp2(fmaf(m0, sl2, -ms0)), al1 = fast_exp2(fmaf(m1, sl2, -ms1));  // 0 at first
            m0 = mn0;
            m1 = mn1;
            auto p = [&](float x, float ms) { return fast_exp2(fmaf(x, sl2, -ms)); };
            float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
            for (int kk = 0; kk < PK; ++kk) {
                // The C fragments of key tiles 2kk and 2kk+1 are the A fragment of k step kk.
                pf[kk][0] = Ops::pack(p(s[2 * kk][0], ms0), p(s[2 * kk][1], ms0), rs0);
                pf[kk][1] = Ops::pack(p(s[2 * kk][2], ms1), p(s[2 * kk][3], ms1), rs1);
                pf[kk][2] = Ops::pack(p(s[2 * kk + 1][0], ms0), p(s[2 * kk + 1][1], ms0), rs0);
                pf[kk][3] = Ops::pack(p(s[2 * kk + 1][2], ms1), p(s[2 * kk + 1][3], ms1), rs1);
            }
            l0 = l0 * al0 + rs0;
            l1 = l1 * al1 + rs1;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                o[dt][0] *= al0;
                o[dt][1] *= al0;
                o[dt][2] *= al1;
                o[dt][3] *= al1;
            }
        }
        if (fill) next_slots[threadIdx.x] = next_slot;
        if constexpr (FP8) {
            store8(vs);  // every warp finished the previous V tile before the barrier above
        } else {
            cp_async_wait_all();
        }
        __syncthreads();  // V tile ready; every warp is done with this K tile; the next slots are stored
        if (kt + 1 < n_tiles) {
            if constexpr (FP8) {
                fetch8(k_head, k_scales, next_slots);
            } else {
                load_tile(ks, k_head, next_slots);
                cp_async_commit();
            }
        }
        if (active) {
#pragma unroll
            for (int kk = 0; kk < PK; ++kk) {
#pragma unroll
                for (int dt = 0; dt < DT; dt += 2) {
                    uint32_t b[4];  // keys kk*16 + {0, 8} .. +8 (transposed); dims dt*8 + {0, 8} .. +8
                    ldmatrix_x4_trans(
                        b, &vs[(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * STRIDE + dt * 8 + (lane >> 4) * 8]);
                    Ops::mma(o[dt], pf[kk], b[0], b[1]);
                    Ops::mma(o[dt + 1], pf[kk], b[2], b[3]);
                }
            }
        }
        // The next K tile: every warp finished this K tile before the barrier above, and the next
        // iteration's barrier publishes it.
        if constexpr (FP8) {
            if (kt + 1 < n_tiles) store8(ks);
        }
    }

    if (!warp_rows) return;
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float inv0 = 1.f / l0, inv1 = 1.f / l1;
    if (sinks) {  // uniform per launch; m0 / m1 are maxima of unscaled scores (scale > 0)
        const float sink = sinks[h];
        inv0 = sink_norm(m0 * scale, l0, sink);
        inv1 = sink_norm(m1 * scale, l1, sink);
    }
    T* out0 = out + ((size_t)(qs + r0) * num_heads + h) * D + 2 * tig;
    T* out1 = out + ((size_t)(qs + r1) * num_heads + h) * D + 2 * tig;
    float unused = 0.f;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
        if (r0 < qlen) *reinterpret_cast<uint32_t*>(out0 + dt * 8) = Ops::pack(o[dt][0] * inv0, o[dt][1] * inv0, unused);
        if (r1 < qlen) *reinterpret_cast<uint32_t*>(out1 + dt * 8) = Ops::pack(o[dt][2] * inv1, o[dt][3] * inv1, unused);
    }
}

// MINB: blocks per SM the registers must allow. head_dim 64 fits three (153 registers, 19 KB of shared
// memory) without its cap; the others take two.
// k_scales / v_scales: FP8 instances only (null for the others).
#define PREFILL_ATTENTION(NAME, T, KT, D, BN, CAP, MINB)                                                       \
    extern "C" __global__ void __launch_bounds__(PREFILL_THREADS, MINB)                                        \
        NAME(T* out, const T* q, const KT* k_cache, const KT* v_cache, const uint32_t* block_tables,           \
             const uint32_t* query_start, const uint32_t* context_len, const uint32_t* tile_seq,               \
             const uint32_t* tile_start, uint32_t num_heads, uint32_t num_kv_heads, uint32_t block_size,       \
             uint32_t max_blocks, float scale, uint32_t window, float softcap, const float* sinks,             \
             const float* k_scales, const float* v_scales) {                                                   \
        prefill_attention<T, KT, D, BN, CAP>(out, q, k_cache, v_cache, block_tables, query_start, context_len, \
                                             tile_seq, tile_start, num_heads, num_kv_heads, block_size,        \
                                             max_blocks, scale, window, softcap, sinks, k_scales, v_scales);   \
    }
#define PREFILL_ATTENTION_DTYPE(SUFFIX, T, KT)                                                                 \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d64, T, KT, 64, PREFILL_TILE_N, false, 3)                   \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d96, T, KT, 96, PREFILL_TILE_N, false, 2)                   \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d128, T, KT, 128, PREFILL_TILE_N, false, 2)                 \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d256, T, KT, 256, PREFILL_TILE_N / 2, false, 2)             \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d64_cap, T, KT, 64, PREFILL_TILE_N, true, 2)                \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d96_cap, T, KT, 96, PREFILL_TILE_N, true, 2)                \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d128_cap, T, KT, 128, PREFILL_TILE_N, true, 2)              \
    PREFILL_ATTENTION(prefill_attention_##SUFFIX##_d256_cap, T, KT, 256, PREFILL_TILE_N / 2, true, 2)

PREFILL_ATTENTION_DTYPE(bf16, __nv_bfloat16, __nv_bfloat16)
PREFILL_ATTENTION_DTYPE(f16, __half, __half)
PREFILL_ATTENTION_DTYPE(fp8_bf16, __nv_bfloat16, uint8_t)
PREFILL_ATTENTION_DTYPE(fp8_f16, __half, uint8_t)
