// The tensor-core attention kernels' type-specific pieces (prefill_attention.cu, decode_tc.cuh): the mma
// instruction of T and the f32 -> pair packing of P.
#pragma once
#include "common.cuh"
#include "mma.cuh"

// Type-specific pieces: the mma instruction and the f32 -> pair packing of P.
template <typename T> struct PrefillOps;

template <> struct PrefillOps<__nv_bfloat16> {
    static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        mma_m16n8k16_bf16(c, a, b0, b1);
    }
    // Rounds (lo, hi) to a packed pair and adds the rounded values to `sum`.
    static __device__ __forceinline__ uint32_t pack(float lo, float hi, float& sum) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        sum += __low2float(v) + __high2float(v);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

template <> struct PrefillOps<__half> {
    static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        mma_m16n8k16_f16(c, a, b0, b1);
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi, float& sum) {
        __half2 v = __floats2half2_rn(lo, hi);
        sum += __low2float(v) + __high2float(v);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

// A tile key without a cache slot (outside the keys a block reads): its rows are zero-filled, never read.
constexpr uint32_t NO_SLOT = 0xffffffffu;

// An FP8 e4m3 tile of ROWS cache rows of D values for THREADS threads: fetch() reads word i (row i / WORDS,
// 16 values from column (i % WORDS) * 16) by thread i % THREADS into registers, with its row's scale (0 for
// rows without a slot: their values become 0); store() writes them to shared memory (rows STRIDE elements
// apart) as T, each value times its row's scale, rounded once. Split in two so that a kernel can issue
// the loads early and store where a cp.async copy would be waited for.
template <typename T, int D, int ROWS, int THREADS, int STRIDE>
struct Fp8Tile {
    static constexpr int WORDS = D / 16;                  // 16-byte words per row
    static constexpr int COPIES = ROWS * WORDS / THREADS;  // words per thread
    static_assert((ROWS * WORDS) % THREADS == 0, "the block fetches whole tiles");
    Words4 raw[COPIES];
    float scale[COPIES];

    // slots[r]: the cache slot of row r or NO_SLOT; a slot's row of this KV head starts at
    // head + slot * slot_stride; scales: [num_slots, num_kv_heads].
    __device__ __forceinline__ void fetch(const uint8_t* head, const float* scales, const uint32_t* slots,
                                          size_t slot_stride, uint32_t num_kv_heads, uint32_t kvh) {
#pragma unroll
        for (int i = 0; i < COPIES; ++i) {
            const int c = threadIdx.x + i * THREADS;
            const uint32_t sl = slots[c / WORDS];
            const bool valid = sl != NO_SLOT;
            raw[i] = valid ? *reinterpret_cast<const Words4*>(head + (size_t)sl * slot_stride + (c % WORDS) * 16)
                           : Words4{{0u, 0u, 0u, 0u}};
            // 256: store() widens each byte to its value / 256 (exact powers of two)
            scale[i] = valid ? scales[(size_t)sl * num_kv_heads + kvh] * 256.f : 0.f;
        }
    }

    __device__ __forceinline__ void store(T* dst) const {
#pragma unroll
        for (int i = 0; i < COPIES; ++i) {
            const int c = threadIdx.x + i * THREADS;
            uint32_t o8[8];
            float unused = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {  // values 2j, 2j + 1: bytes b0 (low), b1 of the half j % 2 of word j / 2
                const __half2 h = e4m3x2_over_256(raw[i].w[j / 2] >> (16 * (j % 2)));
                o8[j] = PrefillOps<T>::pack(__low2float(h) * scale[i], __high2float(h) * scale[i], unused);
            }
            T* d = dst + (c / WORDS) * STRIDE + (c % WORDS) * 16;
            *reinterpret_cast<Words4*>(d) = Words4{{o8[0], o8[1], o8[2], o8[3]}};
            *reinterpret_cast<Words4*>(d + 8) = Words4{{o8[4], o8[5], o8[6], o8[7]}};
        }
    }
};
