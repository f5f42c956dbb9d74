// Fused elementwise kernels of the decoder layer: each replaces two to four candle ops, so a decode step
// launches fewer kernels. Every value is computed in f32 and rounded to the element type exactly where
// the unfused ops round (their outputs), so results match the CPU reference up to f32 arithmetic order.
//
//   silu_mul_<T>      [T, 2F] gate|up (the fused gate/up projection) -> [T, F] silu(gate) * up
//   add_rms_norm_<T>  x, residual [T, H], weight [H] -> out [2, T, H]: out[0] = x + residual (the new
//                     residual), out[1] = rms_norm(out[0]) * weight
//   rope_qkv_<T>      qkv [T, (H + 2 KVH) * D] (the fused q/k/v projection): optional per-head RMSNorm of
//                     q and k, rotary embedding of q and k (half or interleaved pairs), q written to
//                     [T, H, D], k and v written straight into their paged-cache slots
#include "common.cuh"  // also pdl_wait: every entry point below waits first (launched with PDL, cuda_pdl.rs)

#define FUSED_THREADS 256
#define ROPE_WARPS 4
// head_dim / 2 rotation pairs, at most 4 per lane: head_dim <= 256.
#define ROPE_MAX_PAIRS_PER_LANE 4

// ---------------------------------------------------------------------------------------------------
// silu(gate) * up: one thread per output element (grid-stride).
template <typename T>
__device__ void silu_mul(T* __restrict__ out, const T* __restrict__ gate_up, uint32_t num_tokens, uint32_t ffn) {
    const size_t n = (size_t)num_tokens * ffn;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / ffn, j = i % ffn;
        const T* row = gate_up + t * 2 * (size_t)ffn;
        out[i] = silu_times<T>(to_f32(row[j]), to_f32(row[ffn + j]));
    }
}

// ---------------------------------------------------------------------------------------------------
// Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 1024).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? partial[lane] : 0.0f;
    v = warp_sum(v);  // every warp reduces the partials: all threads get the total
    return v;
}

// 16-byte words of V = 16 / sizeof(T) elements, unpacked to and packed from f32.
template <typename T> struct Vec16 {
    static constexpr int V = 16 / sizeof(T);
    __device__ __forceinline__ static void unpack(const uint4& w, float* f) {
        const T* p = reinterpret_cast<const T*>(&w);
#pragma unroll
        for (int j = 0; j < V; ++j) f[j] = to_f32(p[j]);
    }
    __device__ __forceinline__ static uint4 pack(const float* f) {
        uint4 w;
        T* p = reinterpret_cast<T*>(&w);
#pragma unroll
        for (int j = 0; j < V; ++j) p[j] = from_f32<T>(f[j]);
        return w;
    }
};

__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p % 16) == 0; }

// Words of a row each thread keeps in registers between the sum and the norm (beyond them it re-reads
// its own writes): 256 threads x 4 words = 8192 bf16 / 4096 f32 elements.
#define NORM_KEEP 4

// One block per token: out[0][t] = x[t] + res[t] (rounded), out[1][t] = rms_norm(out[0][t]) * w. Rows
// of whole 16-byte words go word-wise (one round of loads for a 4096-wide bf16 row), others element-wise.
template <typename T>
__device__ void add_rms_norm(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ res,
                             const T* __restrict__ w, uint32_t num_tokens, uint32_t hidden, float eps) {
    using W = Vec16<T>;
    constexpr int V = W::V;
    const uint32_t t = blockIdx.x;
    const size_t off = (size_t)t * hidden;
    T* sum_out = out + off;
    T* norm_out = out + (size_t)num_tokens * hidden + off;
    const T* xr = x + off;
    const T* rr = res + off;
    float ss = 0.0f;
    const bool words = hidden % V == 0 && aligned16(sum_out) && aligned16(norm_out) && aligned16(xr) &&
                       aligned16(rr) && aligned16(w);
    if (words) {
        const uint32_t nw = hidden / V;
        const uint4* x4 = reinterpret_cast<const uint4*>(xr);
        const uint4* r4 = reinterpret_cast<const uint4*>(rr);
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        uint4* s4 = reinterpret_cast<uint4*>(sum_out);
        uint4* n4 = reinterpret_cast<uint4*>(norm_out);
        uint4 keep[NORM_KEEP], wk[NORM_KEEP];
#pragma unroll
        for (int c = 0; c < NORM_KEEP; ++c) {
            const uint32_t i = threadIdx.x + c * blockDim.x;
            if (i < nw) {
                float a[V], b[V];
                W::unpack(x4[i], a);
                W::unpack(r4[i], b);
                wk[c] = w4[i];  // the weights' loads are in flight during the reduction
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    a[j] = round_to<T>(a[j] + b[j]);
                    ss += a[j] * a[j];
                }
                keep[c] = W::pack(a);
                s4[i] = keep[c];
            }
        }
        for (uint32_t i = threadIdx.x + NORM_KEEP * blockDim.x; i < nw; i += blockDim.x) {
            float a[V], b[V];
            W::unpack(x4[i], a);
            W::unpack(r4[i], b);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                a[j] = round_to<T>(a[j] + b[j]);
                ss += a[j] * a[j];
            }
            s4[i] = W::pack(a);
        }
        const float scale = rsqrtf(block_sum(ss) / (float)hidden + eps);
#pragma unroll
        for (int c = 0; c < NORM_KEEP; ++c) {
            const uint32_t i = threadIdx.x + c * blockDim.x;
            if (i < nw) {
                float a[V], g[V];
                W::unpack(keep[c], a);
                W::unpack(wk[c], g);
#pragma unroll
                for (int j = 0; j < V; ++j) a[j] = a[j] * scale * g[j];
                n4[i] = W::pack(a);
            }
        }
        // Each thread reads back only the words it wrote itself.
        for (uint32_t i = threadIdx.x + NORM_KEEP * blockDim.x; i < nw; i += blockDim.x) {
            float a[V], g[V];
            W::unpack(s4[i], a);
            W::unpack(w4[i], g);
#pragma unroll
            for (int j = 0; j < V; ++j) a[j] = a[j] * scale * g[j];
            n4[i] = W::pack(a);
        }
        return;
    }
    for (uint32_t i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float s = round_to<T>(to_f32(xr[i]) + to_f32(rr[i]));
        sum_out[i] = from_f32<T>(s);
        ss += s * s;
    }
    const float scale = rsqrtf(block_sum(ss) / (float)hidden + eps);
    // Each thread reads back only the elements it wrote itself.
    for (uint32_t i = threadIdx.x; i < hidden; i += blockDim.x) {
        norm_out[i] = from_f32<T>(to_f32(sum_out[i]) * scale * to_f32(w[i]));
    }
}

// ---------------------------------------------------------------------------------------------------
// One warp per (token, head slot); head slots 0..H are q heads, H..H+KVH k heads, the rest v heads.
// Pair p of a head is (p, p + D/2) for half rotation and (2p, 2p + 1) for interleaved; it is rotated
// by cos/sin[pos][p]. q/k norm (Qwen3) runs first, over the whole head, rounded as its own op would be.
template <typename T>
__device__ void rope_qkv(T* __restrict__ q_out, T* __restrict__ k_cache, T* __restrict__ v_cache,
                         const T* __restrict__ qkv, const uint32_t* __restrict__ positions,
                         const T* __restrict__ cos_table, const T* __restrict__ sin_table,
                         const T* __restrict__ q_norm, const T* __restrict__ k_norm,
                         const uint32_t* __restrict__ slot_mapping, uint32_t num_tokens, uint32_t num_heads,
                         uint32_t num_kv_heads, uint32_t head_dim, uint32_t max_pos, uint32_t num_slots,
                         uint32_t interleaved, uint32_t has_norm, float eps) {
    const uint32_t lane = threadIdx.x & 31;
    const uint32_t slots_per_token = num_heads + 2 * num_kv_heads;
    const size_t unit = (size_t)blockIdx.x * ROPE_WARPS + (threadIdx.x >> 5);
    if (unit >= (size_t)num_tokens * slots_per_token) return;
    const uint32_t t = (uint32_t)(unit / slots_per_token);
    const uint32_t h = (uint32_t)(unit % slots_per_token);
    const T* src = qkv + (size_t)t * slots_per_token * head_dim + (size_t)h * head_dim;
    const uint32_t slot = slot_mapping[t];
    const size_t kv_row = (size_t)num_kv_heads * head_dim;

    if (h >= num_heads + num_kv_heads) {  // v: a plain copy into the cache
        if (slot >= num_slots) return;  // validated on the host; never write outside the cache
        T* dst = v_cache + (size_t)slot * kv_row + (size_t)(h - num_heads - num_kv_heads) * head_dim;
        for (uint32_t i = lane; i < head_dim; i += 32) dst[i] = src[i];
        return;
    }
    const bool is_q = h < num_heads;
    T* dst;
    if (is_q) {
        dst = q_out + ((size_t)t * num_heads + h) * head_dim;
    } else {
        if (slot >= num_slots) return;
        dst = k_cache + (size_t)slot * kv_row + (size_t)(h - num_heads) * head_dim;
    }
    const uint32_t half = head_dim / 2;
    uint32_t pos = positions[t];
    if (pos >= max_pos) pos = max_pos - 1;  // checked on the host; only keeps the table reads in bounds

    float a[ROPE_MAX_PAIRS_PER_LANE], b[ROPE_MAX_PAIRS_PER_LANE];
    uint32_t ia[ROPE_MAX_PAIRS_PER_LANE], ib[ROPE_MAX_PAIRS_PER_LANE];
    float ss = 0.0f;
#pragma unroll
    for (int r = 0; r < ROPE_MAX_PAIRS_PER_LANE; ++r) {
        const uint32_t p = lane + 32 * r;
        ia[r] = interleaved ? 2 * p : p;
        ib[r] = interleaved ? 2 * p + 1 : p + half;
        a[r] = p < half ? to_f32(src[ia[r]]) : 0.0f;
        b[r] = p < half ? to_f32(src[ib[r]]) : 0.0f;
        ss += a[r] * a[r] + b[r] * b[r];
    }
    if (has_norm) {
        const T* w = is_q ? q_norm : k_norm;
        const float scale = rsqrtf(warp_sum(ss) / (float)head_dim + eps);
#pragma unroll
        for (int r = 0; r < ROPE_MAX_PAIRS_PER_LANE; ++r) {
            if (lane + 32 * r < half) {
                a[r] = round_to<T>(a[r] * scale * to_f32(w[ia[r]]));
                b[r] = round_to<T>(b[r] * scale * to_f32(w[ib[r]]));
            }
        }
    }
    const T* cs = cos_table + (size_t)pos * half;
    const T* sn = sin_table + (size_t)pos * half;
#pragma unroll
    for (int r = 0; r < ROPE_MAX_PAIRS_PER_LANE; ++r) {
        const uint32_t p = lane + 32 * r;
        if (p < half) {
            const float c = to_f32(cs[p]), s = to_f32(sn[p]);
            dst[ia[r]] = from_f32<T>(a[r] * c - b[r] * s);
            dst[ib[r]] = from_f32<T>(a[r] * s + b[r] * c);
        }
    }
}

#define FUSED(SUFFIX, T)                                                                                      \
    extern "C" __global__ void silu_mul_##SUFFIX(T* out, const T* gate_up, uint32_t num_tokens, uint32_t ffn) { \
        pdl_wait();                                                                                           \
        pdl_launch_dependents();                                                                              \
        silu_mul<T>(out, gate_up, num_tokens, ffn);                                                           \
    }                                                                                                         \
    extern "C" __global__ void add_rms_norm_##SUFFIX(T* out, const T* x, const T* res, const T* w,            \
                                                     uint32_t num_tokens, uint32_t hidden, float eps) {       \
        pdl_wait();                                                                                           \
        pdl_launch_dependents();                                                                              \
        add_rms_norm<T>(out, x, res, w, num_tokens, hidden, eps);                                             \
    }                                                                                                         \
    extern "C" __global__ void rope_qkv_##SUFFIX(                                                             \
        T* q_out, T* k_cache, T* v_cache, const T* qkv, const uint32_t* positions, const T* cos_table,       \
        const T* sin_table, const T* q_norm, const T* k_norm, const uint32_t* slot_mapping,                  \
        uint32_t num_tokens, uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim, uint32_t max_pos, \
        uint32_t num_slots, uint32_t interleaved, uint32_t has_norm, float eps) {                            \
        pdl_wait();                                                                                           \
        pdl_launch_dependents();                                                                              \
        rope_qkv<T>(q_out, k_cache, v_cache, qkv, positions, cos_table, sin_table, q_norm, k_norm,           \
                    slot_mapping, num_tokens, num_heads, num_kv_heads, head_dim, max_pos, num_slots,         \
                    interleaved, has_norm, eps);                                                             \
    }

FUSED(f32, float)
FUSED(bf16, __nv_bfloat16)
FUSED(f16, __half)
