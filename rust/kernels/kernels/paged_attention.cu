// Paged attention over block tables, for any mix of prefill chunks and decode tokens in one launch.
//
// Layouts (row-major):
//   q, out:            [num_tokens, num_heads, head_dim]
//   k_cache, v_cache:  [num_blocks, block_size, num_kv_heads, head_dim]
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
// Grid (num_work, num_heads), ATTN_THREADS threads. Each of the ATTN_WARPS warps walks every
// ATTN_WARPS-th key of the block's partition, a batch of keys at a time, with an online softmax in f32
// (lane i holds dims i, i+32, ..);
// the warps are merged through shared memory at the end. A token with one partition writes `out`;
// split tokens (decode over long contexts: flash-decoding) write partials, and the last of a (token,
// head)'s partition blocks to finish (counted in `counters`, [num_tokens, num_heads] u32, zero at
// launch) merges them with their log-sum-exp weights: no second launch, whose fixed cost exceeded the
// merge itself at batch 1.
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
#include <math.h>

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_MAX_SPLITS 64

// out[t, h] = sum_z w_z o_z / sum_z w_z over the token's partitions, w_z = l_z * exp(m_z - max_z m_z);
// run by the whole block. Partials were written by other blocks: read past L1 (__ldcg).
template <typename T>
__device__ void combine_partitions(T* __restrict__ out, const float* __restrict__ part_o,
                                   const float* __restrict__ part_ml, const float* __restrict__ sinks, uint32_t first,
                                   uint32_t splits, uint32_t t, uint32_t h, uint32_t num_heads, uint32_t head_dim) {
    __shared__ float sm_w[ATTN_MAX_SPLITS];
    __shared__ float sm_inv;
    if (threadIdx.x == 0) {
        float mx = -INFINITY;
        for (uint32_t z = 0; z < splits; ++z) mx = fmaxf(mx, __ldcg(part_ml + ((size_t)(first + z) * num_heads + h) * 2));
        float total = 0.f;
        for (uint32_t z = 0; z < splits; ++z) {
            const size_t row = (size_t)(first + z) * num_heads + h;
            const float mz = __ldcg(part_ml + row * 2);
            const float wz = mz == -INFINITY ? 0.f : __ldcg(part_ml + row * 2 + 1) * expf(mz - mx);
            sm_w[z] = wz;
            total += wz;
        }
        // sum_z w_z o_z is the row's output unnormalised at max mx, total its sum: the sink joins here.
        sm_inv = sinks ? sink_norm(mx, total, sinks[h]) : total > 0.f ? 1.f / total : 0.f;
    }
    __syncthreads();
    const float inv = sm_inv;
    T* op = out + ((size_t)t * num_heads + h) * head_dim;
    for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.f;
        for (uint32_t z = 0; z < splits; ++z) o += sm_w[z] * __ldcg(part_o + ((size_t)(first + z) * num_heads + h) * head_dim + d);
        op[d] = from_f32<T>(o * inv);
    }
}

template <typename T, int NPL>  // NPL: values per lane, head_dim <= 32 * NPL
__device__ void paged_attention(T* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
                                uint32_t* __restrict__ counters,
                                const T* __restrict__ q, const T* __restrict__ k_cache,
                                const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                const uint32_t* __restrict__ token_seq, const uint32_t* __restrict__ token_pos,
                                const uint32_t* __restrict__ token_splits, const uint32_t* __restrict__ token_part,
                                const uint32_t* __restrict__ work_token, const uint32_t* __restrict__ work_split,
                                uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim, uint32_t block_size,
                                uint32_t max_blocks, float scale, uint32_t split_keys, uint32_t window,
                                float softcap, const float* __restrict__ sinks) {
    __shared__ float sm_m[ATTN_WARPS];
    __shared__ float sm_l[ATTN_WARPS];
    __shared__ float sm_acc[ATTN_WARPS][NPL * 32];

    const uint32_t w = blockIdx.x;
    const uint32_t h = blockIdx.y;
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
    const uint32_t kvh = h / (num_heads / num_kv_heads);
    const uint32_t* table = block_tables + (size_t)token_seq[t] * max_blocks;
    const size_t slot_stride = (size_t)num_kv_heads * head_dim;

    float qr[NPL];
    const T* qp = q + ((size_t)t * num_heads + h) * head_dim;
#pragma unroll
    for (int i = 0; i < NPL; ++i) {
        const uint32_t d = lane + 32 * i;
        qr[i] = d < head_dim ? to_f32(qp[d]) * scale : 0.f;
    }

    float m = -INFINITY, l = 0.f;
    float acc[NPL];
#pragma unroll
    for (int i = 0; i < NPL; ++i) acc[i] = 0.f;

    // Keys come in batches of KEYS per warp (keys j, j + W, .., j + (KEYS - 1) W): all their K and V loads
    // are issued before any is used, so a warp waits for memory once per batch rather than once per key.
    constexpr int KEYS = NPL <= 4 ? 8 : 4;
    for (uint32_t j0 = k_begin + warp; j0 < k_end; j0 += ATTN_WARPS * KEYS) {
        T kr[KEYS][NPL], vr[KEYS][NPL];
#pragma unroll
        for (int u = 0; u < KEYS; ++u) {
            const uint32_t j = j0 + u * ATTN_WARPS;
            const uint32_t jj = j < k_end ? j : j0;  // past the partition: re-read a live key, weighted 0
            const size_t base = ((size_t)table[jj / block_size] * block_size + jj % block_size) * slot_stride +
                                (size_t)kvh * head_dim;
#pragma unroll
            for (int i = 0; i < NPL; ++i) {
                const uint32_t d = lane + 32 * i;
                kr[u][i] = d < head_dim ? k_cache[base + d] : from_f32<T>(0.f);
                vr[u][i] = d < head_dim ? v_cache[base + d] : from_f32<T>(0.f);
            }
        }
        float s[KEYS];
#pragma unroll
        for (int u = 0; u < KEYS; ++u) {
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < NPL; ++i) dot += qr[i] * to_f32(kr[u][i]);
            s[u] = dot;
        }
#pragma unroll
        for (int u = 0; u < KEYS; ++u) s[u] = warp_sum(s[u]);
        if (softcap > 0.f) {  // uniform per launch
#pragma unroll
            for (int u = 0; u < KEYS; ++u) s[u] = softcap * tanhf(s[u] / softcap);
        }
        float m_new = m;
#pragma unroll
        for (int u = 0; u < KEYS; ++u) {
            if (j0 + u * ATTN_WARPS >= k_end) s[u] = -INFINITY;
            m_new = fmaxf(m_new, s[u]);
        }
        const float alpha = expf(m - m_new);  // 0 on the first batch (m = -inf); key j0 is live
        l *= alpha;
#pragma unroll
        for (int i = 0; i < NPL; ++i) acc[i] *= alpha;
#pragma unroll
        for (int u = 0; u < KEYS; ++u) {
            const float p = expf(s[u] - m_new);  // 0 for keys past the partition
            l += p;
#pragma unroll
            for (int i = 0; i < NPL; ++i) acc[i] += p * to_f32(vr[u][i]);
        }
        m = m_new;
    }

    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < NPL; ++i) sm_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();

    float wm = -INFINITY;
#pragma unroll
    for (int k = 0; k < ATTN_WARPS; ++k) wm = fmaxf(wm, sm_m[k]);
    float weight[ATTN_WARPS];
    float total = 0.f;
#pragma unroll
    for (int k = 0; k < ATTN_WARPS; ++k) {
        weight[k] = sm_m[k] == -INFINITY ? 0.f : expf(sm_m[k] - wm);  // a warp without keys weighs 0
        total += sm_l[k] * weight[k];
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;

    if (live == 1) {
        // The whole row is here: the sink (if any) joins now. Partials leave it to the merge.
        const float row_inv = sinks ? sink_norm(wm, total, sinks[h]) : inv;
        T* op = out + ((size_t)t * num_heads + h) * head_dim;
        for (uint32_t d = threadIdx.x; d < head_dim; d += ATTN_THREADS) {
            float o = 0.f;
#pragma unroll
            for (int k = 0; k < ATTN_WARPS; ++k) o += sm_acc[k][d] * weight[k];
            op[d] = from_f32<T>(o * row_inv);
        }
    } else {
        const size_t row = (size_t)(token_part[t] + z) * num_heads + h;
        float* op = part_o + row * head_dim;
        for (uint32_t d = threadIdx.x; d < head_dim; d += ATTN_THREADS) {
            float o = 0.f;
#pragma unroll
            for (int k = 0; k < ATTN_WARPS; ++k) o += sm_acc[k][d] * weight[k];
            op[d] = o * inv;
        }
        if (threadIdx.x == 0) {
            part_ml[row * 2] = wm;  // -inf for an empty partition (its sum is 0)
            part_ml[row * 2 + 1] = total;
        }
        // Publish this partition, then count it; the block that completes the count merges.
        __shared__ bool sm_last;
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) sm_last = atomicAdd(counters + (size_t)t * num_heads + h, 1u) == live - 1;
        __syncthreads();
        if (sm_last) {
            __threadfence();
            combine_partitions<T>(out, part_o, part_ml, sinks, token_part[t], min(live, (uint32_t)ATTN_MAX_SPLITS), t, h,
                                  num_heads, head_dim);
        }
    }
}

#define PAGED_ATTENTION(NAME, T, NPL)                                                                          \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                                 \
        NAME(T* out, float* part_o, float* part_ml, uint32_t* counters, const T* q, const T* k_cache,          \
             const T* v_cache, const uint32_t* block_tables, const uint32_t* token_seq, const uint32_t* token_pos,               \
             const uint32_t* token_splits, const uint32_t* token_part, const uint32_t* work_token,             \
             const uint32_t* work_split, uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim,         \
             uint32_t block_size, uint32_t max_blocks, float scale, uint32_t split_keys, uint32_t window,       \
             float softcap, const float* sinks) {                                                              \
        paged_attention<T, NPL>(out, part_o, part_ml, counters, q, k_cache, v_cache, block_tables, token_seq,   \
                                token_pos, token_splits, token_part, work_token, work_split, num_heads,       \
                                num_kv_heads, head_dim, block_size, max_blocks, scale, split_keys, window,     \
                                softcap, sinks);                                                               \
    }

// d96 (Phi-3) is an exact fit too: three values per lane instead of the d128 instance's masked fourth.
PAGED_ATTENTION(paged_attention_f32_d64, float, 2)
PAGED_ATTENTION(paged_attention_f32_d96, float, 3)
PAGED_ATTENTION(paged_attention_f32_d128, float, 4)
PAGED_ATTENTION(paged_attention_f32_d256, float, 8)
PAGED_ATTENTION(paged_attention_bf16_d64, __nv_bfloat16, 2)
PAGED_ATTENTION(paged_attention_bf16_d96, __nv_bfloat16, 3)
PAGED_ATTENTION(paged_attention_bf16_d128, __nv_bfloat16, 4)
PAGED_ATTENTION(paged_attention_bf16_d256, __nv_bfloat16, 8)
PAGED_ATTENTION(paged_attention_f16_d64, __half, 2)
PAGED_ATTENTION(paged_attention_f16_d96, __half, 3)
PAGED_ATTENTION(paged_attention_f16_d128, __half, 4)
PAGED_ATTENTION(paged_attention_f16_d256, __half, 8)
