// Tensor-core decode attention (included by paged_attention.cu, whose partitions, merge and layouts it
// shares): the per-token kernel's work rows (a query token's partition of keys, for the `group` query heads
// of one KV head: same grid, same arguments) with the group's heads as the rows of one m16n8k16 A operand,
// for bf16 / f16 q and head_dim 64 or 128 exactly, over caches of the q dtype or FP8 e4m3.
//
// Why: the per-token kernel gives each head of a group its own warp, which widens and multiplies every K
// and V element once per head on the CUDA cores; on an H100 at batch 64 x 1024 keys (Llama-3-8B: 4 heads
// per KV head) it issued 82 warp instructions per key and head and ran issue-bound at 37 % of DRAM
// bandwidth (Nsight Compute, benches/results/gpu_ncu_paged_attention_b64_ctx1024_bf16_h100_2026-12-07.txt).
// Here S = Q K^T and O += P V are mma.sync over all heads at once: a K or V element is read from shared
// memory once per 16 rows of A, whatever the group.
//
// A block (DECODE_TC_THREADS = 4 warps) walks its partition's keys k_begin..k_end in tiles of BN = 64: the
// block table is read once per key (the first BN threads), the K and V rows are copied into shared memory
// (16-bit rows by cp.async into two stages, the next tile's copy in flight while the warps work on this
// one, its slots looked up a tile earlier still: with one stage the block waited for every tile's copy
// and table reads in turn, 1.5 TB/s of the H100's 3 at batch 64 x 1,024 keys; FP8 rows widened to T times
// their row scale, tc_ops.cuh's Fp8Tile, in one stage through registers, V's fetch in flight while the
// warps score K and the next K's while they multiply by V), and warp w scores keys
// 16w..16w+15 of the tile for every head: rows g < group of the A fragment are heads h0 + g, the others
// zeros (group <= ATTN_MAX_GROUP = 8, so rows 8..15 are always padding). Each warp keeps an online softmax
// per row (scores scaled, capped as in paged_attention, -inf past k_end; p rounded to T for the product,
// the row sums adding the rounded values); the four warps' states are merged through shared memory, and
// the row is written (one partition) or published as a partial for combine_partitions, as the per-token
// kernel does, so the two kernels' partials and merges are interchangeable.
#pragma once
#include "tc_ops.cuh"

#define DECODE_TC_THREADS 128
#define DECODE_TC_BN 64
#define DECODE_TC_PAD 8  // elements of padding per shared-memory row (ldmatrix rows in distinct banks)

// Stages of K / V tiles in shared memory: a 16-bit cache's next tile is copied (cp.async) while the warps
// work on this one; FP8 tiles are widened through registers, one stage. Dynamic shared memory of a block
// (kernels::decode_tc_smem_bytes in lib.rs computes the same): per stage a K and a V tile of BN rows of
// D + PAD 16-bit values, then the stages' BN slots.
template <typename KT> constexpr int decode_tc_stages() { return sizeof(KT) == 1 ? 1 : 2; }
template <typename KT, int D> constexpr int decode_tc_smem_bytes() {
    return decode_tc_stages<KT>() * (2 * DECODE_TC_BN * (D + DECODE_TC_PAD) * 2 + DECODE_TC_BN * 4);
}

template <typename T, typename KT, int D>
__device__ void decode_attention_tc(T* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
                                    uint32_t* __restrict__ counters, const T* __restrict__ q,
                                    const KT* __restrict__ k_cache, const KT* __restrict__ v_cache,
                                    const uint32_t* __restrict__ block_tables, const uint32_t* __restrict__ token_seq,
                                    const uint32_t* __restrict__ token_pos, const uint32_t* __restrict__ token_splits,
                                    const uint32_t* __restrict__ token_part, const uint32_t* __restrict__ work_token,
                                    const uint32_t* __restrict__ work_split, uint32_t num_heads, uint32_t num_kv_heads,
                                    uint32_t block_size, uint32_t max_blocks, float scale, uint32_t split_keys,
                                    uint32_t window, float softcap, const float* __restrict__ sinks, uint32_t group,
                                    const float* __restrict__ k_scales, const float* __restrict__ v_scales,
                                    uint8_t* __restrict__ smem) {
    using Ops = PrefillOps<T>;
    constexpr bool FP8 = sizeof(KT) == 1;
    constexpr int STAGES = decode_tc_stages<KT>();
    constexpr int BN = DECODE_TC_BN, THREADS = DECODE_TC_THREADS, WARPS = THREADS / 32;
    constexpr int STRIDE = D + DECODE_TC_PAD;
    constexpr int TILE = BN * STRIDE;                // elements of one K or V tile
    constexpr int KC = D / 16;                       // 16-wide k steps of Q K^T
    constexpr int DT = D / 8;                        // 8-wide column tiles of O
    constexpr int CHUNKS = D / 8;                    // 16-byte chunks per 16-bit cache row
    constexpr int COPIES = BN * CHUNKS / THREADS;    // chunks each thread copies per tile (K, and V)
    static_assert(BN == WARPS * 16, "a warp scores 16 keys of every tile");
    static_assert(D % 32 == 0 && (BN * CHUNKS) % THREADS == 0, "whole tiles");
    static_assert(BN <= THREADS, "one thread per key looks up the slots");
    static_assert(WARPS * ATTN_MAX_GROUP * (D + 2) * sizeof(float) <= TILE * sizeof(T), "merge area");
    static_assert(decode_tc_smem_bytes<KT, D>() == STAGES * (2 * TILE * (int)sizeof(T) + BN * 4), "layout");
    // Stage s: K tile at tiles + 2 s TILE, V tile after it; slots + s BN its keys' cache slots.
    T* tiles = reinterpret_cast<T*>(smem);
    uint32_t* slots = reinterpret_cast<uint32_t*>(smem + STAGES * 2 * TILE * sizeof(T));

    const uint32_t w = blockIdx.x;
    const uint32_t h0 = blockIdx.y * group;
    const uint32_t t = work_token[w];
    const uint32_t z = work_split[w];
    const uint32_t n_keys = token_pos[t] + 1;
    const uint32_t splits = token_splits[t];
    const uint32_t lo = n_keys > window ? n_keys - window : 0;  // the layer's first key
    const uint32_t n_win = n_keys - lo;
    const uint32_t live = min(splits, (n_win + split_keys - 1) / split_keys);  // >= 1
    if (z >= live) return;  // as paged_attention: uniform per block, before any barrier
    const uint32_t per_split = (n_win + live - 1) / live;
    const uint32_t k_begin = lo + z * per_split;
    const uint32_t k_end = min(n_keys, k_begin + per_split);
    const uint32_t kvh = h0 / (num_heads / num_kv_heads);
    const uint32_t* table = block_tables + (size_t)token_seq[t] * max_blocks;
    const size_t slot_stride = (size_t)num_kv_heads * D;
    const KT* k_head = k_cache + (size_t)kvh * D;
    const KT* v_head = v_cache + (size_t)kvh * D;
    // The cache slot of a key of this partition, NO_SLOT past its end.
    auto slot_of = [&](uint32_t key) { return key < k_end ? table[key / block_size] * block_size + key % block_size : NO_SLOT; };

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tig = lane & 3;  // fragment row (head g; g + 8 is padding) and thread in the row

    // Q as A fragments (row g: columns 2 tig + {0, 1} and + 8 of each 16-wide k step; row g + 8: zeros).
    uint32_t qf[KC][4];
    {
        const bool real = (uint32_t)g < group;
        const uint16_t* qr = reinterpret_cast<const uint16_t*>(q) + ((size_t)t * num_heads + h0 + (real ? g : 0)) * D;
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            const int c = kc * 16 + 2 * tig;
            qf[kc][0] = real ? (uint32_t)qr[c] | ((uint32_t)qr[c + 1] << 16) : 0u;
            qf[kc][1] = 0u;
            qf[kc][2] = real ? (uint32_t)qr[c + 8] | ((uint32_t)qr[c + 9] << 16) : 0u;
            qf[kc][3] = 0u;
        }
    }

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m = -INFINITY, l = 0.f;  // row g's running max (scaled scores) and this thread's part of its sum

    // Warp `warp`'s keys k0 + 16 warp .. + 16 of a tile: score() folds their scores (K in ks) into row g's
    // softmax state, rescales O and leaves P in pf; accumulate() adds P V (V in vs) to O. A warp past
    // k_end does neither (uniform per warp).
    uint32_t pf[4];  // P as the A fragment of one 16-key k step: row g, keys 2 tig + {0, 1} and + 8
    auto score = [&](const T* ks, uint32_t k0) {
        const uint32_t kw = k0 + warp * 16;  // this warp's first key
        if (kw >= k_end) return;
        float s[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kc = 0; kc < KC; kc += 2) {
                uint32_t b[4];  // keys nt*8 .. +8 of the warp; dims kc*16 + {0, 8, 16, 24} .. +8
                ldmatrix_x4(b, &ks[(warp * 16 + nt * 8 + (lane & 7)) * STRIDE + kc * 16 + (lane >> 3) * 8]);
                Ops::mma(s[nt], qf[kc], b[0], b[1]);
                Ops::mma(s[nt], qf[kc + 1], b[2], b[3]);
            }
        }
        // Row g's scores (s[nt][0..1]: keys kw + nt*8 + 2 tig + {0, 1}); rows g + 8 are padding.
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float x = s[nt][e] * scale;
                if (softcap > 0.f) x = softcap * tanhf(x / softcap);
                if (kw + nt * 8 + 2 * tig + e >= k_end) x = -INFINITY;
                s[nt][e] = x;
                mx = fmaxf(mx, x);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m, mx);
        // A row with no key yet keeps -inf: rescale against 0 so nothing turns NaN.
        const float ref = mn == -INFINITY ? 0.f : mn;
        const float alpha = expf(m - ref);  // 0 while m = -inf
        m = mn;
        float rs = 0.f;
        pf[0] = Ops::pack(expf(s[0][0] - ref), expf(s[0][1] - ref), rs);
        pf[1] = 0u;
        pf[2] = Ops::pack(expf(s[1][0] - ref), expf(s[1][1] - ref), rs);
        pf[3] = 0u;
        l = l * alpha + rs;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            o[dt][0] *= alpha;
            o[dt][1] *= alpha;
        }
    };
    auto accumulate = [&](const T* vs, uint32_t k0) {
        if (k0 + warp * 16 >= k_end) return;
#pragma unroll
        for (int dt = 0; dt < DT; dt += 2) {
            uint32_t b[4];  // keys {0, 8} .. +8 of the warp (transposed); dims dt*8 + {0, 8} .. +8
            ldmatrix_x4_trans(b, &vs[(warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * STRIDE + dt * 8 + (lane >> 4) * 8]);
            Ops::mma(o[dt], pf, b[0], b[1]);
            Ops::mma(o[dt + 1], pf, b[2], b[3]);
        }
    };

    if constexpr (FP8) {
        // One stage, fetched through registers: V of this tile is in flight while the warps score its K,
        // K of the next one while they multiply P V; the slots are looked up a tile ahead (`ahead`).
        T* ks = tiles;
        T* vs = tiles + TILE;
        const uint8_t* k8 = reinterpret_cast<const uint8_t*>(k_head);
        const uint8_t* v8 = reinterpret_cast<const uint8_t*>(v_head);
        Fp8Tile<T, D, BN, THREADS, STRIDE> tile8;
        uint32_t ahead = NO_SLOT;
        if (threadIdx.x < BN) {
            slots[threadIdx.x] = slot_of(k_begin + threadIdx.x);
            ahead = slot_of(k_begin + BN + threadIdx.x);
        }
        __syncthreads();  // tile 0's slots
        tile8.fetch(k8, k_scales, slots, slot_stride, num_kv_heads, kvh);
        for (uint32_t k0 = k_begin; k0 < k_end; k0 += BN) {
            const bool more = k0 + BN < k_end;
            tile8.store(ks);  // K: every warp scored the previous tile before the last barrier
            tile8.fetch(v8, v_scales, slots, slot_stride, num_kv_heads, kvh);
            __syncthreads();  // K stored; every thread read this tile's slots; every warp is done with vs
            score(ks, k0);
            if (more && threadIdx.x < BN) {
                slots[threadIdx.x] = ahead;
                ahead = slot_of(k0 + 2 * BN + threadIdx.x);
            }
            tile8.store(vs);
            __syncthreads();  // V and the next tile's slots stored; every warp is done with ks
            if (more) tile8.fetch(k8, k_scales, slots, slot_stride, num_kv_heads, kvh);
            accumulate(vs, k0);
        }
    } else {
        // Tile k0's K and V rows into stage st (its slots stored and visible): COPIES 16-byte chunks each.
        auto copy_tile = [&](int st) {
            T* ks = tiles + 2 * st * TILE;
            const uint32_t* sl_st = slots + st * BN;
#pragma unroll
            for (int i = 0; i < COPIES; ++i) {
                const int c = threadIdx.x + i * THREADS;
                const int row = c / CHUNKS, col = (c % CHUNKS) * 8;
                const uint32_t sl = sl_st[row];
                const bool valid = sl != NO_SLOT;
                const size_t src = (size_t)(valid ? sl : 0u) * slot_stride + col;
                cp_async16(ks + row * STRIDE + col, reinterpret_cast<const T*>(k_head) + src, valid);
                cp_async16(ks + TILE + row * STRIDE + col, reinterpret_cast<const T*>(v_head) + src, valid);
            }
        };
        // Tile j (keys k_begin + j BN ..) lives in stage j % 2. Thread i < BN looks up key i's slot of the
        // tile after next one iteration early (`ahead`), so the table's latency is behind a tile's work.
        uint32_t ahead = NO_SLOT;
        if (threadIdx.x < BN) {
            slots[threadIdx.x] = slot_of(k_begin + threadIdx.x);
            ahead = slot_of(k_begin + BN + threadIdx.x);
        }
        __syncthreads();  // tile 0's slots
        copy_tile(0);
        cp_async_commit();
        int st = 0;
        for (uint32_t k0 = k_begin; k0 < k_end; k0 += BN, st ^= 1) {
            const bool more = k0 + BN < k_end;
            if (more && threadIdx.x < BN) {
                slots[(st ^ 1) * BN + threadIdx.x] = ahead;
                ahead = slot_of(k0 + 2 * BN + threadIdx.x);
            }
            __syncthreads();  // the next tile's slots are stored; every warp is done with its stage (tile j - 1)
            if (more) copy_tile(st ^ 1);
            cp_async_commit();  // possibly empty: one group per tile keeps the count below exact
            cp_async_wait_pending<1>();  // this tile's group has landed (the next one may be in flight)
            __syncthreads();             // ... for every thread's copies
            score(tiles + 2 * st * TILE, k0);
            accumulate(tiles + (2 * st + 1) * TILE, k0);
        }
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);

    // The warps hold disjoint keys of every row: merge them through shared memory (over stage 0's K tile;
    // no copy is in flight: the last tile's group was waited for, later ones are empty).
    __syncthreads();
    float* sm_o = reinterpret_cast<float*>(tiles);                 // [warp][ATTN_MAX_GROUP][D]
    float* sm_ml = sm_o + WARPS * ATTN_MAX_GROUP * D;              // [warp][ATTN_MAX_GROUP][2]
    if ((uint32_t)g < group) {
        float* row = sm_o + (warp * ATTN_MAX_GROUP + g) * D;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            row[dt * 8 + 2 * tig] = o[dt][0];
            row[dt * 8 + 2 * tig + 1] = o[dt][1];
        }
        if (tig == 0) {
            sm_ml[(warp * ATTN_MAX_GROUP + g) * 2] = m;
            sm_ml[(warp * ATTN_MAX_GROUP + g) * 2 + 1] = l;
        }
    }
    __syncthreads();
    // Head hl's streams are the warps' rows hl: index warp * ATTN_MAX_GROUP + hl.
    finish_work_row<T, THREADS>(out, part_o, part_ml, counters, sm_o, sm_ml, D, WARPS, 1, ATTN_MAX_GROUP, sinks, t, z, live,
                                token_part[t], h0, group, num_heads, D);
}

#ifndef DECODE_TC_HOST  // the emulation (rust/kernels/emulate) calls decode_attention_tc with its own memory
// Same arguments as PAGED_ATTENTION (head_dim is D; vec_ok is 1: cuda.rs picks these instances only then),
// launched with decode_tc_smem_bytes<KT, D>() of dynamic shared memory.
#define DECODE_ATTENTION_TC(NAME, T, KT, D)                                                                    \
    extern "C" __global__ void __launch_bounds__(DECODE_TC_THREADS, 3)                                         \
        NAME(T* out, float* part_o, float* part_ml, uint32_t* counters, const T* q, const KT* k_cache,         \
             const KT* v_cache, const uint32_t* block_tables, const uint32_t* token_seq, const uint32_t* token_pos, \
             const uint32_t* token_splits, const uint32_t* token_part, const uint32_t* work_token,             \
             const uint32_t* work_split, uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim,         \
             uint32_t block_size, uint32_t max_blocks, float scale, uint32_t split_keys, uint32_t window,       \
             float softcap, const float* sinks, uint32_t group, uint32_t vec_ok, const float* k_scales,        \
             const float* v_scales) {                                                                          \
        extern __shared__ __align__(16) uint8_t decode_tc_smem[];                                              \
        pdl_launch_dependents(); /* see PAGED_ATTENTION */                                                     \
        decode_attention_tc<T, KT, D>(out, part_o, part_ml, counters, q, k_cache, v_cache, block_tables,       \
                                      token_seq, token_pos, token_splits, token_part, work_token, work_split,  \
                                      num_heads, num_kv_heads, block_size, max_blocks, scale, split_keys,      \
                                      window, softcap, sinks, group, k_scales, v_scales, decode_tc_smem);      \
    }

DECODE_ATTENTION_TC(decode_attention_tc_bf16_d64, __nv_bfloat16, __nv_bfloat16, 64)
DECODE_ATTENTION_TC(decode_attention_tc_bf16_d128, __nv_bfloat16, __nv_bfloat16, 128)
DECODE_ATTENTION_TC(decode_attention_tc_f16_d64, __half, __half, 64)
DECODE_ATTENTION_TC(decode_attention_tc_f16_d128, __half, __half, 128)
DECODE_ATTENTION_TC(decode_attention_tc_fp8_bf16_d64, __nv_bfloat16, uint8_t, 64)
DECODE_ATTENTION_TC(decode_attention_tc_fp8_bf16_d128, __nv_bfloat16, uint8_t, 128)
DECODE_ATTENTION_TC(decode_attention_tc_fp8_f16_d64, __half, uint8_t, 64)
DECODE_ATTENTION_TC(decode_attention_tc_fp8_f16_d128, __half, uint8_t, 128)
#endif
