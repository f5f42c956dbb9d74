// Paged attention over block tables, for any mix of prefill chunks and decode tokens in one launch.
//
// Layouts (row-major):
//   q, out:            [num_tokens, num_heads, head_dim]
//   k_cache, v_cache:  [num_blocks, block_size, num_kv_heads, head_dim]   of T, or e4m3 bytes (FP8)
//   k/v_scales:        [num_blocks, block_size, num_kv_heads]             f32, FP8 row scales (else null)
//   block_tables:      [num_seqs, max_blocks]   (padded; only the first ceil(context / block_size) are read)
//   token_seq/pos:     [num_tokens]   sequence of each query token and its position; it attends causally to
//                                     positions lo..=pos of its own sequence, lo = max(0, pos + 1 - window)
//   token_splits:      [num_tokens]   partitions of its keys (1 = whole context in one block)
//   token_part:        [num_tokens]   first row of its partial results when token_splits > 1
//   work_token/split:  [num_work]     one (token, partition) pair per block row of the grid
//   part_o:            [num_partials, num_heads, head_dim]  f32, normalised partial outputs
//   part_ml:           [num_partials, num_heads, 2]         f32, (running max, sum of exp) per partial
//   counters:          [num_tokens, num_heads]              u32, finished partitions (zero at launch)
//
// Grid (num_work, num_heads / group), ATTN_THREADS threads: a block serves `group` query heads of one KV
// head (cuda.rs heads_per_block), so each K/V row of its partition is read from memory once for all of
// them; online softmax in f32 (see paged_attention below). A token with one partition writes `out`;
// split tokens (decode over long contexts: flash-decoding) write partials, and the last of a (token,
// group)'s partition blocks to finish (counted in `counters` at the group's first head, zero at launch)
// merges them with their log-sum-exp weights: no second launch, whose fixed cost exceeded the merge
// itself at batch 1.
//
// Per layer (launch arguments, so one plan serves full and sliding layers alike and a CUDA graph holds
// them as constants): `window` keys at most per query (UINT32_MAX: full causal) and `softcap` (0: none;
// else score = softcap * tanh(scale * q.k / softcap), before the softmax, as HF transformers does). The
// plan gives a token token_splits = clamp(ceil(keys / split_keys), 1, ATTN_MAX_SPLITS) partitions of its
// whole context 0..=pos. A layer splits only the keys it attends, lo..=pos, by the same rule within
// them: live = min(token_splits, ceil((pos + 1 - lo) / split_keys)) partitions of equal size (for a full
// layer exactly the plan's). The grid rows past `live` return at once, so partitions before the window
// cost nothing, and keys (and block-table entries) before lo are never read. `live` depends only on
// the token and the layer, so every block of a (token, head) agrees on how many partitions to merge.
//
// `sinks` (gpt-oss; nullptr: none): [num_heads] f32, a logit per head that joins the head's softmax (its
// max and denominator) and attends to no value. Partitions ignore it; it enters once, where a row is
// normalised: by the block of an unsplit token, or by the merge of a split one (sink_norm in common.cuh).
#include "common.cuh"
#include "mma.cuh"
#include <math.h>

#define ATTN_THREADS 256
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_MAX_SPLITS 64
// Query heads one block serves, a warp each (they share one KV head); a larger GQA group is served by
// several blocks.
#define ATTN_MAX_GROUP ATTN_WARPS
// Bytes of K (and as many of V) per pipeline stage: two stages of K and V, 32 KB of shared memory.
#define ATTN_TILE_BYTES 8192

// Per-instance geometry for a cache of KT (T, or uint8_t for FP8 e4m3). A key's row is read by L lanes,
// VEC values each (16-byte shared-memory reads), so a warp scores S = 32 / L keys at once and reduces a
// dot product over log2(L) lanes.
template <typename T, int D> struct AttnShape {
    static constexpr int DP = D <= 64 ? 64 : D <= 128 ? 128 : 256;  // row stride in shared memory
    static constexpr int CE = 16 / (int)sizeof(T);                   // elements per 16-byte chunk
    static constexpr int VEC = CE > DP / 32 ? CE : DP / 32;
    static constexpr int L = DP / VEC;
    static constexpr int S = 32 / L;
    static constexpr int TK = ATTN_TILE_BYTES / (DP * (int)sizeof(T));  // keys per tile
    static constexpr int CR = DP / CE;                                  // chunks per row
    static_assert(TK >= ATTN_WARPS * S, "a tile must give every key stream of a head a key");
};

// 16 bytes of a 16-byte aligned address, widened to f32.
template <typename T>
__device__ __forceinline__ void widen16(float* dst, const T* src) {
    const Words4 raw = *reinterpret_cast<const Words4*>(src);
    T v[16 / sizeof(T)];
    memcpy(v, &raw, 16);
#pragma unroll
    for (int e = 0; e < (int)(16 / sizeof(T)); ++e) dst[e] = to_f32(v[e]);
}
// 16 e4m3 bytes, each widened to its value / 256 (e4m3x2_over_256); the caller's row scale carries the 256.
template <>
__device__ __forceinline__ void widen16<uint8_t>(float* dst, const uint8_t* src) {
    const Words4 raw = *reinterpret_cast<const Words4*>(src);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const __half2 h = e4m3x2_over_256(raw.w[i] >> (16 * half));  // bytes b0 (low), b1
            dst[4 * i + 2 * half] = __low2float(h);
            dst[4 * i + 2 * half + 1] = __high2float(h);
        }
    }
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

// (m, l, acc) of two disjoint key sets merged into the first: the online softmax's combine.
template <int N>
__device__ __forceinline__ void merge_state(float& m, float& l, float (&acc)[N], float m2, float l2, const float (&acc2)[N]) {
    const float mx = fmaxf(m, m2);
    const float a = m == -INFINITY ? 0.f : expf(m - mx);
    const float b = m2 == -INFINITY ? 0.f : expf(m2 - mx);
    l = l * a + l2 * b;
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = acc[e] * a + acc2[e] * b;
    m = mx;
}

// out[t, h] = sum_z w_z o_z / sum_z w_z over the token's partitions, w_z = l_z * exp(m_z - max_z m_z), for
// the block's `group` heads from h0: a warp per head weighs the partitions, then every thread sums four
// dims of one head over them. Partials were written by other blocks: read past L1 (__ldcg).
template <typename T, int THREADS = ATTN_THREADS>
__device__ void combine_partitions(T* __restrict__ out, const float* __restrict__ part_o,
                                   const float* __restrict__ part_ml, const float* __restrict__ sinks, uint32_t first,
                                   uint32_t splits, uint32_t t, uint32_t h0, uint32_t group, uint32_t num_heads,
                                   uint32_t head_dim) {
    __shared__ float sm_w[ATTN_MAX_GROUP][ATTN_MAX_SPLITS];
    __shared__ float sm_inv[ATTN_MAX_GROUP];
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (uint32_t hl = warp; hl < group; hl += THREADS / 32) {  // uniform per warp
        const uint32_t h = h0 + hl;
        float mz[2], wz[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint32_t z = lane + 32 * i;
            mz[i] = z < splits ? __ldcg(part_ml + ((size_t)(first + z) * num_heads + h) * 2) : -INFINITY;
        }
        const float mx = warp_max(fmaxf(mz[0], mz[1]));
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint32_t z = lane + 32 * i;
            wz[i] = mz[i] == -INFINITY ? 0.f : __ldcg(part_ml + ((size_t)(first + z) * num_heads + h) * 2 + 1) * expf(mz[i] - mx);
            if (z < splits) sm_w[hl][z] = wz[i];
        }
        const float total = warp_sum(wz[0] + wz[1]);
        // sum_z w_z o_z is the row's output unnormalised at max mx, total its sum: the sink joins here.
        if (lane == 0) sm_inv[hl] = sinks ? sink_norm(mx, total, sinks[h]) : total > 0.f ? 1.f / total : 0.f;
    }
    __syncthreads();
    const uint32_t quads = (head_dim + 3) / 4;
    for (uint32_t idx = threadIdx.x; idx < group * quads; idx += THREADS) {
        const uint32_t hl = idx / quads, d = (idx % quads) * 4, h = h0 + hl;
        float o[4] = {0.f, 0.f, 0.f, 0.f};
        if (head_dim % 4 == 0) {  // rows 16-byte aligned: one vector load per partition
#pragma unroll 4
            for (uint32_t z = 0; z < splits; ++z) {
                const float4 p = __ldcg(reinterpret_cast<const float4*>(part_o + ((size_t)(first + z) * num_heads + h) * head_dim + d));
                const float w = sm_w[hl][z];
                o[0] += w * p.x;
                o[1] += w * p.y;
                o[2] += w * p.z;
                o[3] += w * p.w;
            }
        } else {
            for (uint32_t z = 0; z < splits; ++z)
                for (uint32_t e = 0; e < 4 && d + e < head_dim; ++e)
                    o[e] += sm_w[hl][z] * __ldcg(part_o + ((size_t)(first + z) * num_heads + h) * head_dim + d + e);
        }
        T* op = out + ((size_t)t * num_heads + h) * head_dim;
        for (uint32_t e = 0; e < 4 && d + e < head_dim; ++e) op[d + e] = from_f32<T>(o[e] * sm_inv[hl]);
    }
}

// The end of a work row, for both decode kernels: each of the block's `group` heads has `streams` online-
// softmax states (disjoint keys) in shared memory, stream k of head hl at index i = hl * head_step + k *
// stream_step: (max, sum) at sm_ml[2 i], the unnormalised output at sm_acc[i * acc_stride ..]. They are
// merged; an unsplit token's row is normalised (the sink, if any, joins here) and written, a partition's is
// published to part_o / part_ml and counted, and the block completing the count merges the partitions.
template <typename T, int THREADS>
__device__ void finish_work_row(T* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
                                uint32_t* __restrict__ counters, const float* sm_acc, const float* sm_ml,
                                uint32_t acc_stride, uint32_t streams, uint32_t head_step, uint32_t stream_step,
                                const float* __restrict__ sinks, uint32_t t, uint32_t z, uint32_t live,
                                uint32_t first_part, uint32_t h0, uint32_t group, uint32_t num_heads,
                                uint32_t head_dim) {
    for (uint32_t idx = threadIdx.x; idx < group * head_dim; idx += THREADS) {
        const uint32_t hl = idx / head_dim, d = idx % head_dim, h = h0 + hl;
        float mx = -INFINITY;
        for (uint32_t k = 0; k < streams; ++k) mx = fmaxf(mx, sm_ml[(hl * head_step + k * stream_step) * 2]);
        float total = 0.f, o = 0.f;
        for (uint32_t k = 0; k < streams; ++k) {
            const uint32_t at = hl * head_step + k * stream_step;
            const float mk = sm_ml[at * 2];
            const float wk = mk == -INFINITY ? 0.f : expf(mk - mx);  // a stream without keys weighs 0
            total += sm_ml[at * 2 + 1] * wk;
            o += sm_acc[at * acc_stride + d] * wk;
        }
        if (live == 1) {
            // The whole row is here: the sink (if any) joins now. Partials leave it to the merge.
            const float inv = sinks ? sink_norm(mx, total, sinks[h]) : total > 0.f ? 1.f / total : 0.f;
            out[((size_t)t * num_heads + h) * head_dim + d] = from_f32<T>(o * inv);
        } else {
            const size_t row = (size_t)(first_part + z) * num_heads + h;
            part_o[row * head_dim + d] = total > 0.f ? o / total : 0.f;
            if (d == 0) {
                part_ml[row * 2] = mx;  // -inf for an empty partition (its sum is 0)
                part_ml[row * 2 + 1] = total;
            }
        }
    }
    if (live > 1) {
        // Publish this partition, then count it; the block that completes the count merges the group.
        __shared__ bool sm_last;
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) sm_last = atomicAdd(counters + (size_t)t * num_heads + h0, 1u) == live - 1;
        __syncthreads();
        if (sm_last) {
            __threadfence();
            combine_partitions<T, THREADS>(out, part_o, part_ml, sinks, first_part, min(live, (uint32_t)ATTN_MAX_SPLITS),
                                           t, h0, group, num_heads, head_dim);
        }
    }
}

// One block per (work row, group of query heads sharing a KV head): the work row's keys stream through
// shared memory in tiles of TK keys (cp.async, two stages), each read from the cache once for all the
// group's heads. A warp serves one head; with fewer heads than warps, the warps of a head split its keys
// (key streams), and within a warp S keys are scored at once. Every stream keeps its own online softmax
// (m, l, acc); streams are merged through shuffles (within a warp) and shared memory (across warps).
// An FP8 cache (KT = uint8_t, e4m3) scales each row by its own factor (k_scales, v_scales: [num_slots,
// num_kv_heads] f32): a key's score is its scale times q . k, its value enters as p times its scale.
template <typename T, typename KT, int D>
__device__ void paged_attention(T* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
                                uint32_t* __restrict__ counters,
                                const T* __restrict__ q, const KT* __restrict__ k_cache,
                                const KT* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                const uint32_t* __restrict__ token_seq, const uint32_t* __restrict__ token_pos,
                                const uint32_t* __restrict__ token_splits, const uint32_t* __restrict__ token_part,
                                const uint32_t* __restrict__ work_token, const uint32_t* __restrict__ work_split,
                                uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim, uint32_t block_size,
                                uint32_t max_blocks, float scale, uint32_t split_keys, uint32_t window,
                                float softcap, const float* __restrict__ sinks, uint32_t group, uint32_t vec_ok,
                                const float* __restrict__ k_scales, const float* __restrict__ v_scales) {
    using Sh = AttnShape<KT, D>;
    constexpr bool FP8 = sizeof(KT) == 1;
    constexpr int DP = Sh::DP, CE = Sh::CE, VEC = Sh::VEC, L = Sh::L, S = Sh::S, TK = Sh::TK, CR = Sh::CR;
    constexpr int STAGE = TK * DP;  // elements of one K (or V) tile
    constexpr int KB = 4;           // keys per stream between two softmax rescales
    // Two stages of [K tile, V tile]; after the key loop the same bytes hold the cross-warp merge.
    __shared__ __align__(16) unsigned char smem[2 * 2 * STAGE * sizeof(KT)];
    static_assert(ATTN_WARPS * (DP + 2) * sizeof(float) <= sizeof(smem), "merge area");
    KT* tiles = reinterpret_cast<KT*>(smem);
    __shared__ float sm_scale[2][2][FP8 ? TK : 1];  // [stage][K, V][row]: FP8 row scales times 256

    const uint32_t w = blockIdx.x;
    const uint32_t h0 = blockIdx.y * group;
    const uint32_t t = work_token[w];
    const uint32_t z = work_split[w];
    const uint32_t warp = threadIdx.x / 32;
    const uint32_t lane = threadIdx.x % 32;
    const uint32_t n_keys = token_pos[t] + 1;
    const uint32_t splits = token_splits[t];
    const uint32_t lo = n_keys > window ? n_keys - window : 0;  // the layer's first key
    const uint32_t n_win = n_keys - lo;
    const uint32_t live = min(splits, (n_win + split_keys - 1) / split_keys);  // >= 1
    // Rows past the layer's partitions have nothing to read or merge: those a window does not need, and
    // in a fixed grid (CUDA-graph decode, as many rows per token as the most split one) those past the
    // token's own partitions. Uniform per block: before any barrier.
    if (z >= live) return;
    const uint32_t per_split = (n_win + live - 1) / live;
    const uint32_t k_begin = lo + z * per_split;
    const uint32_t k_end = min(n_keys, k_begin + per_split);
    const uint32_t kvh = h0 / (num_heads / num_kv_heads);
    const uint32_t* table = block_tables + (size_t)token_seq[t] * max_blocks;
    const size_t slot_stride = (size_t)num_kv_heads * head_dim;

    // Roles: key streams per head, the most (a power of two) that lets every head have a warp; warp
    // `warp` serves head `slot` (none past the group); lanes: subgroup `sub` scores its own key, `c`
    // its chunk of it.
    uint32_t kstreams = ATTN_WARPS;
    while (kstreams > 1 && group * kstreams > ATTN_WARPS) kstreams /= 2;
    const uint32_t ks = warp % kstreams, slot = warp / kstreams;
    const bool has = slot < group;  // uniform per warp
    const uint32_t sub = lane / L, c = lane % L;
    const uint32_t ns = kstreams * S;      // streams per head
    const uint32_t sid = ks * S + sub;     // this lane's stream
    const uint32_t kps = TK / ns;          // keys per stream and tile

    float qr[VEC];
    {
        const T* qp = q + ((size_t)t * num_heads + h0 + slot) * head_dim;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const uint32_t d = c * VEC + e;
            qr[e] = has && d < head_dim ? to_f32(qp[d]) * scale : 0.f;
        }
    }

    // Tile `k0 ..` into stage `st`: rows past the partition and columns past head_dim are zeros.
    auto load_tile = [&](int st, uint32_t k0) {
        KT* kt = tiles + st * 2 * STAGE;
        KT* vt = kt + STAGE;
        if constexpr (FP8) {
            for (uint32_t r = threadIdx.x; r < (uint32_t)TK; r += ATTN_THREADS) {
                const uint32_t j = k0 + r;
                const size_t row = j < k_end ? ((size_t)table[j / block_size] * block_size + j % block_size) * num_kv_heads + kvh : 0;
                // 256: widen16 gives e4m3 values / 256 (exact powers of two)
                sm_scale[st][0][r] = j < k_end ? k_scales[row] * 256.f : 0.f;
                sm_scale[st][1][r] = j < k_end ? v_scales[row] * 256.f : 0.f;
            }
        }
        if (vec_ok) {  // 16-byte copies: caches 16-byte aligned, rows a whole number of chunks
            for (uint32_t i = threadIdx.x; i < (uint32_t)(TK * CR); i += ATTN_THREADS) {
                const uint32_t r = i / CR, ch = i % CR, j = k0 + r;
                const bool valid = j < k_end && ch * CE < head_dim;
                const uint32_t jj = valid ? j : k_begin;
                const size_t src = ((size_t)table[jj / block_size] * block_size + jj % block_size) * slot_stride +
                                   (size_t)kvh * head_dim + (valid ? ch * CE : 0);
                cp_async16(kt + r * DP + ch * CE, k_cache + src, valid);
                cp_async16(vt + r * DP + ch * CE, v_cache + src, valid);
            }
            cp_async_commit();
        } else {
            for (uint32_t i = threadIdx.x; i < (uint32_t)(TK * DP); i += ATTN_THREADS) {
                const uint32_t r = i / DP, d = i % DP, j = k0 + r;
                const bool valid = j < k_end && d < head_dim;
                const size_t src = valid ? ((size_t)table[j / block_size] * block_size + j % block_size) * slot_stride +
                                               (size_t)kvh * head_dim + d
                                         : 0;
                kt[r * DP + d] = valid ? k_cache[src] : KT{};
                vt[r * DP + d] = valid ? v_cache[src] : KT{};
            }
        }
    };

    float m = -INFINITY, l = 0.f;
    float acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = 0.f;

    const uint32_t n_tiles = (k_end - k_begin + TK - 1) / TK;
    load_tile(0, k_begin);
    for (uint32_t it = 0; it < n_tiles; ++it) {
        if (it + 1 < n_tiles) {
            load_tile((it + 1) & 1, k_begin + (it + 1) * TK);
            cp_async_wait_pending<1>();
        } else {
            cp_async_wait_all();
        }
        __syncthreads();
        const uint32_t k0 = k_begin + it * TK;
        const KT* kt = tiles + (it & 1) * 2 * STAGE;
        const KT* vt = kt + STAGE;
        if (has) {  // a warp without a head only loads
            for (uint32_t u0 = 0; u0 < kps; u0 += KB) {
                float s[KB];
#pragma unroll
                for (int u = 0; u < KB; ++u) {
                    const uint32_t r = (u0 + u) * ns + sid;
                    float kv[VEC];
                    if (u0 + u < kps) {
#pragma unroll
                        for (int e = 0; e < VEC; e += CE) widen16(kv + e, kt + r * DP + c * VEC + e);
                    } else {
#pragma unroll
                        for (int e = 0; e < VEC; ++e) kv[e] = 0.f;
                    }
                    float dot = 0.f;
#pragma unroll
                    for (int e = 0; e < VEC; ++e) dot += qr[e] * kv[e];
                    s[u] = dot;
                }
#pragma unroll
                for (int u = 0; u < KB; ++u)
#pragma unroll
                    for (int off = 1; off < L; off <<= 1) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
                float m_new = m;
#pragma unroll
                for (int u = 0; u < KB; ++u) {
                    const uint32_t r = (u0 + u) * ns + sid;
                    if (u0 + u >= kps || k0 + r >= k_end) {
                        s[u] = -INFINITY;
                        continue;
                    }
                    if constexpr (FP8) s[u] *= sm_scale[it & 1][0][r];
                    if (softcap > 0.f) s[u] = softcap * tanhf(s[u] / softcap);
                    m_new = fmaxf(m_new, s[u]);
                }
                // A stream with no key yet keeps m = -inf: rescale against 0 so nothing turns NaN.
                const float mref = m_new == -INFINITY ? 0.f : m_new;
                const float alpha = expf(m - mref);
                l *= alpha;
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[e] *= alpha;
                m = m_new;
#pragma unroll
                for (int u = 0; u < KB; ++u) {
                    if (u0 + u >= kps) break;
                    const uint32_t r = (u0 + u) * ns + sid;
                    float vv[VEC];
#pragma unroll
                    for (int e = 0; e < VEC; e += CE) widen16(vv + e, vt + r * DP + c * VEC + e);
                    const float p = expf(s[u] - mref);  // 0 for keys past the partition
                    l += p;
                    float pv = p;
                    if constexpr (FP8) pv *= sm_scale[it & 1][1][r];
#pragma unroll
                    for (int e = 0; e < VEC; ++e) acc[e] += pv * vv[e];
                }
            }
        }
        __syncthreads();  // the stage just read is the next iteration's load target
    }

    // The warp's subgroups hold disjoint keys of its head: merge them (lanes c, c + L, ..).
#pragma unroll
    for (int off = L; off < 32; off <<= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
        const float l2 = __shfl_xor_sync(0xffffffffu, l, off);
        float acc2[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc2[e] = __shfl_xor_sync(0xffffffffu, acc[e], off);
        merge_state(m, l, acc, m2, l2, acc2);
    }
    // Across warps (key streams of one head) through shared memory, over the tiles' bytes.
    float* sm_acc = reinterpret_cast<float*>(smem);  // [warp][DP]
    float* sm_ml = sm_acc + ATTN_WARPS * DP;         // [warp][2]
    if (sub == 0) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) sm_acc[warp * DP + c * VEC + e] = acc[e];
        if (c == 0) {
            sm_ml[warp * 2] = m;
            sm_ml[warp * 2 + 1] = l;
        }
    }
    __syncthreads();

    // Head hl's streams are warps hl * kstreams .. + kstreams.
    finish_work_row<T, ATTN_THREADS>(out, part_o, part_ml, counters, sm_acc, sm_ml, DP, kstreams, kstreams, 1, sinks, t, z,
                                     live, token_part[t], h0, group, num_heads, head_dim);
}

#define PAGED_ATTENTION(NAME, T, KT, D)                                                                        \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS, 3)                                              \
        NAME(T* out, float* part_o, float* part_ml, uint32_t* counters, const T* q, const KT* k_cache,         \
             const KT* v_cache, const uint32_t* block_tables, const uint32_t* token_seq, const uint32_t* token_pos, \
             const uint32_t* token_splits, const uint32_t* token_part, const uint32_t* work_token,             \
             const uint32_t* work_split, uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim,         \
             uint32_t block_size, uint32_t max_blocks, float scale, uint32_t split_keys, uint32_t window,       \
             float softcap, const float* sinks, uint32_t group, uint32_t vec_ok, const float* k_scales,        \
             const float* v_scales) {                                                                          \
        /* Launched plainly (a memset of the split counters may precede it), but the projection after it  \
           is launched with PDL (cuda_pdl.rs): letting it be scheduled now starts its weight loads while   \
           attention runs; it reads the output only after its griddepcontrol.wait, which waits for this   \
           whole grid. */                                                                                  \
        pdl_launch_dependents();                                                                           \
        paged_attention<T, KT, D>(out, part_o, part_ml, counters, q, k_cache, v_cache, block_tables, token_seq, \
                                  token_pos, token_splits, token_part, work_token, work_split, num_heads,     \
                                  num_kv_heads, head_dim, block_size, max_blocks, scale, split_keys, window,   \
                                  softcap, sinks, group, vec_ok, k_scales, v_scales);                          \
    }

// Head dims up to 64, 128 and 256 (d96, Phi-3, runs the d128 instance: rows padded to 128 in shared memory);
// caches of the q dtype, or FP8 e4m3 (`_fp8_`, scales k_scales / v_scales; null for the others).
PAGED_ATTENTION(paged_attention_f32_d64, float, float, 64)
PAGED_ATTENTION(paged_attention_f32_d128, float, float, 128)
PAGED_ATTENTION(paged_attention_f32_d256, float, float, 256)
PAGED_ATTENTION(paged_attention_bf16_d64, __nv_bfloat16, __nv_bfloat16, 64)
PAGED_ATTENTION(paged_attention_bf16_d128, __nv_bfloat16, __nv_bfloat16, 128)
PAGED_ATTENTION(paged_attention_bf16_d256, __nv_bfloat16, __nv_bfloat16, 256)
PAGED_ATTENTION(paged_attention_f16_d64, __half, __half, 64)
PAGED_ATTENTION(paged_attention_f16_d128, __half, __half, 128)
PAGED_ATTENTION(paged_attention_f16_d256, __half, __half, 256)
PAGED_ATTENTION(paged_attention_fp8_f32_d64, float, uint8_t, 64)
PAGED_ATTENTION(paged_attention_fp8_f32_d128, float, uint8_t, 128)
PAGED_ATTENTION(paged_attention_fp8_f32_d256, float, uint8_t, 256)
PAGED_ATTENTION(paged_attention_fp8_bf16_d64, __nv_bfloat16, uint8_t, 64)
PAGED_ATTENTION(paged_attention_fp8_bf16_d128, __nv_bfloat16, uint8_t, 128)
PAGED_ATTENTION(paged_attention_fp8_bf16_d256, __nv_bfloat16, uint8_t, 256)
PAGED_ATTENTION(paged_attention_fp8_f16_d64, __half, uint8_t, 64)
PAGED_ATTENTION(paged_attention_fp8_f16_d128, __half, uint8_t, 128)
PAGED_ATTENTION(paged_attention_fp8_f16_d256, __half, uint8_t, 256)

// The tensor-core instances of the same work rows (bf16 / f16, head_dim 64 / 128).
#include "decode_tc.cuh"
