// The fused mixture-of-experts' bookkeeping kernels, all on the device with outputs of fixed size, so a
// decode step with them can be captured in a CUDA graph (no read-back, no host loop per token):
//
//   moe_route_f32       router logits [T, E] f32 -> expert ids [T, k] u32 and weights [T, k] f32
//   moe_align           ids [T * k] -> slots sorted by expert, each expert's run padded to whole token
//                       tiles of the grouped GEMM (moe_gemm.cu), and the expert of every tile (a block per expert)
//   moe_combine_<T>     out[t] = sum over i < k of weight[t, i] * y[t * k + i] (f32, in slot order)
//
// A slot is (token t, choice i) numbered t * k + i. The grouped GEMM reads tile j's slots at
// sorted[j * MOE_TILE ...], their expert at tile_expert[j] (-1: past the last real tile, the block exits).
// Its grid is sized for the worst case of T * k slots over E experts (moe_max_tiles), so a captured
// graph holds for any routing.
#include "common.cuh"

#define MOE_TILE 32            // slots per token tile of the grouped GEMM (MG_TOKENS in moe_gemm.cu)
#define MOE_MAX_EXPERTS 256
#define MOE_MAX_TOPK 16
#define MOE_ROUTE_WARPS 4      // tokens per block of moe_route_f32, one warp each
#define MOE_ALIGN_THREADS 128  // per block of moe_align (one block per expert)
#define MOE_COMBINE_THREADS 256
#define MOE_NO_SLOT 0xffffffffu  // padding of `sorted`

// Routing modes (moe.rs `Routing`): softmax over all E, top k (weights renormalized when `norm`);
// or top k of the logits, softmax over those k (gpt-oss).
#define MOE_SOFTMAX_TOPK 0
#define MOE_TOPK_SOFTMAX 1

// Candidate a outranks b: larger value first, NaN after every number, ties to the lower expert; an
// index of MOE_MAX_EXPERTS marks "none" (already chosen / past E) and never wins.
__device__ __forceinline__ bool moe_better(float av, uint32_t ai, float bv, uint32_t bi) {
    if (ai >= MOE_MAX_EXPERTS) return false;
    if (bi >= MOE_MAX_EXPERTS) return true;
    const bool an = isnan(av), bn = isnan(bv);
    if (an != bn) return bn;
    if (!an && av != bv) return av > bv;
    return ai < bi;
}

// One warp per token; lane l holds experts l, l + 32, ... (E <= 256, k <= 16, k <= E: checked by the
// caller). The weights follow moe.rs `route` step by step in f32: the top k in descending order (ties to
// the lower index), then p / sum(chosen p) or p (softmax routing), softmax of the chosen logits (top-k
// softmax routing).
__device__ void moe_route(const float* __restrict__ logits, uint32_t* __restrict__ ids, float* __restrict__ weights,
                          uint32_t tokens, uint32_t experts, uint32_t k, uint32_t mode, uint32_t norm) {
    const uint32_t lane = threadIdx.x & 31, t = blockIdx.x * MOE_ROUTE_WARPS + (threadIdx.x >> 5);
    if (t >= tokens) return;  // the whole warp
    const float* row = logits + (size_t)t * experts;
    float v[MOE_MAX_EXPERTS / 32];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < MOE_MAX_EXPERTS / 32; ++j) {
        const uint32_t e = lane + 32 * j;
        v[j] = e < experts ? row[e] : -INFINITY;
        if (e < experts) mx = fmaxf(mx, v[j]);
    }
    if (mode == MOE_SOFTMAX_TOPK) {
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < MOE_MAX_EXPERTS / 32; ++j)
            if (lane + 32 * j < experts) sum += expf(v[j] - mx);
        sum = warp_sum(sum);
#pragma unroll
        for (int j = 0; j < MOE_MAX_EXPERTS / 32; ++j) v[j] = expf(v[j] - mx) / sum;
    }
    uint32_t taken = 0;  // bit j: expert lane + 32 j already chosen
    float chosen_v[MOE_MAX_TOPK];
    uint32_t chosen_e[MOE_MAX_TOPK];
    for (uint32_t r = 0; r < k; ++r) {
        float bv = 0.f;
        uint32_t bi = MOE_MAX_EXPERTS;
#pragma unroll
        for (int j = 0; j < MOE_MAX_EXPERTS / 32; ++j) {
            const uint32_t e = lane + 32 * j;
            if (e < experts && !(taken >> j & 1) && moe_better(v[j], e, bv, bi)) { bv = v[j]; bi = e; }
        }
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
            const uint32_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (moe_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
        if (bi < MOE_MAX_EXPERTS && (bi & 31) == lane) taken |= 1u << (bi >> 5);
        chosen_v[r] = bv;
        chosen_e[r] = bi;
    }
    if (lane != 0) return;
    float sum = 0.f;
    if (mode == MOE_SOFTMAX_TOPK) {
        for (uint32_t r = 0; r < k; ++r) sum += chosen_v[r];
        for (uint32_t r = 0; r < k; ++r) weights[(size_t)t * k + r] = norm ? chosen_v[r] / sum : chosen_v[r];
    } else {
        const float top = chosen_v[0];
        for (uint32_t r = 0; r < k; ++r) sum += expf(chosen_v[r] - top);
        for (uint32_t r = 0; r < k; ++r) weights[(size_t)t * k + r] = expf(chosen_v[r] - top) / sum;
    }
    for (uint32_t r = 0; r < k; ++r) ids[(size_t)t * k + r] = chosen_e[r];
}

// grid = E blocks of MOE_ALIGN_THREADS, block e places expert e's slots. Every block counts all experts
// (a shared-memory histogram: integer adds, so the counts are exact whatever their order) to know where
// expert e's run starts, then writes e's slots in increasing slot order (ballots and a prefix over the
// warps; deterministic), pads its last tile and marks its tiles; block 0 also marks the unused tiles. sorted
// holds max_tiles * MOE_TILE entries, of which the first (real tiles) * MOE_TILE are written; tile_expert
// holds max_tiles.
__device__ void moe_align(const uint32_t* __restrict__ ids, uint32_t slots, uint32_t experts, uint32_t* __restrict__ sorted,
                          int32_t* __restrict__ tile_expert, uint32_t max_tiles) {
    __shared__ uint32_t count[MOE_MAX_EXPERTS];
    __shared__ uint32_t warp_hits[MOE_ALIGN_THREADS / 32];
    __shared__ uint32_t first_tile, total_tiles;
    const uint32_t e = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (uint32_t j = threadIdx.x; j < experts; j += blockDim.x) count[j] = 0;
    __syncthreads();
    for (uint32_t j = threadIdx.x; j < slots; j += blockDim.x) {
        const uint32_t id = ids[j];
        if (id < experts) atomicAdd(&count[id], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t acc = 0, mine = 0;
        for (uint32_t x = 0; x < experts; ++x) {
            if (x == e) mine = acc;
            acc += (count[x] + MOE_TILE - 1) / MOE_TILE;
        }
        first_tile = mine;
        total_tiles = acc;
    }
    __syncthreads();
    const uint32_t tiles = (count[e] + MOE_TILE - 1) / MOE_TILE;
    for (uint32_t j = threadIdx.x; j < tiles; j += blockDim.x) tile_expert[first_tile + j] = (int32_t)e;
    for (uint32_t p = count[e] + threadIdx.x; p < tiles * MOE_TILE; p += blockDim.x) sorted[first_tile * MOE_TILE + p] = MOE_NO_SLOT;
    if (e == 0)
        for (uint32_t j = total_tiles + threadIdx.x; j < max_tiles; j += blockDim.x) tile_expert[j] = -1;
    uint32_t at = first_tile * MOE_TILE;  // where the next slot of e goes (uniform over the block)
    for (uint32_t base = 0; base < slots; base += blockDim.x) {
        const uint32_t j = base + threadIdx.x;
        const bool hit = j < slots && ids[j] == e;
        const uint32_t mask = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) warp_hits[warp] = __popc(mask);
        __syncthreads();
        uint32_t before = 0, all = 0;
        for (uint32_t w = 0; w < blockDim.x / 32; ++w) {
            before += w < warp ? warp_hits[w] : 0;
            all += warp_hits[w];
        }
        if (hit) sorted[at + before + __popc(mask & ((1u << lane) - 1u))] = j;
        at += all;
        __syncthreads();  // warp_hits is rewritten by the next chunk
    }
}

// One thread per output element, grid-stride: y [T * k, H] (slot rows) -> out [T, H].
template <typename T>
__device__ void moe_combine(T* __restrict__ out, const T* __restrict__ y, const float* __restrict__ weights, uint32_t tokens,
                            uint32_t k, uint32_t hidden) {
    const uint64_t count = (uint64_t)tokens * hidden;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t t = i / hidden, h = i - t * hidden;
        float acc = 0.f;
        for (uint32_t r = 0; r < k; ++r) acc += weights[t * k + r] * to_f32(y[(t * k + r) * hidden + h]);
        out[i] = from_f32<T>(acc);
    }
}

#ifndef MOE_HOST
extern "C" __global__ void __launch_bounds__(32 * MOE_ROUTE_WARPS)
    moe_route_f32(const float* __restrict__ logits, uint32_t* __restrict__ ids, float* __restrict__ weights, uint32_t tokens,
                  uint32_t experts, uint32_t k, uint32_t mode, uint32_t norm) {
    moe_route(logits, ids, weights, tokens, experts, k, mode, norm);
}
extern "C" __global__ void __launch_bounds__(MOE_ALIGN_THREADS)
    moe_align_u32(const uint32_t* __restrict__ ids, uint32_t slots, uint32_t experts, uint32_t* __restrict__ sorted,
                  int32_t* __restrict__ tile_expert, uint32_t max_tiles) {
    moe_align(ids, slots, experts, sorted, tile_expert, max_tiles);
}
#define MOE_COMBINE(NAME, T)                                                                                     \
    extern "C" __global__ void __launch_bounds__(MOE_COMBINE_THREADS)                                            \
        NAME(T* __restrict__ out, const T* __restrict__ y, const float* __restrict__ weights, uint32_t tokens,    \
             uint32_t k, uint32_t hidden) {                                                                      \
        moe_combine<T>(out, y, weights, tokens, k, hidden);                                                      \
    }
MOE_COMBINE(moe_combine_bf16, __nv_bfloat16)
MOE_COMBINE(moe_combine_f16, __half)
MOE_COMBINE(moe_combine_f32, float)
#endif
