// CPU emulation of kernels/mma.cuh (installed in its place by check_attention.py): copies are synchronous,
// ldmatrix and mma.sync gather their operands from the 32 lanes of the warp through shared slots, with
// the fragment layouts of the PTX ISA (m8n8 .b16 matrices; m16n8k16 .row.col with f32 accumulators).
// Products of bf16 / f16 values are exact in f32; the accumulation order is the emulation's own.
#pragma once
#include <stdint.h>
#include <cstring>
#include <deque>
#include <vector>

// Misaligned addresses fault on the GPU: abort here too (the emulation is where a layout is first tried).
inline void cp_async_check(const void* smem, const void* gmem, uintptr_t align) {
    if ((uintptr_t)smem % align || (uintptr_t)gmem % align) __builtin_trap();
}
// A copy lands when a wait covers its group, as late as the GPU may land it: a kernel that reads shared
// memory before waiting (or overwrites a stage another warp still reads) reads the poisoned or the previous
// bytes here, and fails its case. Each thread queues its own copies (thread_local), as cp.async groups are
// per thread.
struct AsyncCopy {
    void* dst;
    const void* src;  // nullptr: zero-fill
    size_t bytes;
};
inline thread_local std::vector<AsyncCopy> g_copies_open;                // not yet committed
inline thread_local std::deque<std::vector<AsyncCopy>> g_copies_groups;  // committed, oldest first
inline void cp_async_land(const std::vector<AsyncCopy>& group) {
    for (const AsyncCopy& c : group) {
        if (c.src) std::memcpy(c.dst, c.src, c.bytes);
        else std::memset(c.dst, 0, c.bytes);
    }
}
inline void cp_async16(void* smem, const void* gmem, bool valid) {
    cp_async_check(smem, gmem, 16);
    g_copies_open.push_back({smem, valid ? gmem : nullptr, 16});  // an invalid source is not read
}
inline void cp_async8(void* smem, const void* gmem) {
    cp_async_check(smem, gmem, 8);
    g_copies_open.push_back({smem, gmem, 8});
}
inline void cp_async_commit() {
    g_copies_groups.push_back(std::move(g_copies_open));
    g_copies_open.clear();
}
// cp.async.wait_group N: all but the N most recent committed groups have landed.
template <int N> inline void cp_async_wait_pending() {
    while (g_copies_groups.size() > (size_t)N) {
        cp_async_land(g_copies_groups.front());
        g_copies_groups.pop_front();
    }
}
inline void cp_async_wait_all() { cp_async_wait_pending<0>(); }

// Lane l receives, of each of the 4 matrices (rows given by lanes 8i .. 8i+7), the pair at row l/4,
// columns 2(l%4), 2(l%4)+1; transposed: rows 2(l%4), 2(l%4)+1 of column l/4.
inline void ldmatrix(uint32_t (&r)[4], const void* smem, bool trans) {
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    g_slots[w][l] = (uint64_t)(uintptr_t)smem;
    wb().arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        auto row = [&](unsigned k) { return reinterpret_cast<const uint16_t*>((uintptr_t)g_slots[w][8 * i + k]); };
        uint32_t lo, hi;
        if (!trans) {
            lo = row(l / 4)[2 * (l % 4)];
            hi = row(l / 4)[2 * (l % 4) + 1];
        } else {
            lo = row(2 * (l % 4))[l / 4];
            hi = row(2 * (l % 4) + 1)[l / 4];
        }
        r[i] = lo | (hi << 16);
    }
    wb().arrive_and_wait();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem) { ldmatrix(r, smem, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) { ldmatrix(r, smem, true); }

inline float fast_exp2(float x) { return x == -INFINITY ? 0.f : exp2f(x); }

// The operand registers of every lane of a warp: a[4], b0, b1.
inline uint32_t g_mma[32][32][6];

template <typename T>
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, float (*to)(T)) {
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) g_mma[w][l][i] = a[i];
    g_mma[w][l][4] = b0;
    g_mma[w][l][5] = b1;
    wb().arrive_and_wait();
    auto half = [&](uint32_t word, unsigned k) {
        T v;
        const uint16_t bits = (uint16_t)(k % 2 ? word >> 16 : word);
        std::memcpy(&v, &bits, 2);
        return to(v);
    };
    // A[r][k]: lane (r % 8) * 4 + (k % 8) / 2, register (r >= 8) + 2 (k >= 8); B[k][n]: lane n * 4 + (k % 8) / 2,
    // register b0 / b1 for k < 8 / k >= 8.
    auto A = [&](unsigned r, unsigned k) { return half(g_mma[w][(r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k); };
    auto B = [&](unsigned k, unsigned n) { return half(g_mma[w][n * 4 + (k % 8) / 2][4 + (k >= 8)], k); };
    const unsigned g = l >> 2, t = l & 3;
    for (int e = 0; e < 4; ++e) {
        const unsigned r = g + 8 * (e >= 2), n = 2 * t + e % 2;
        float acc = c[e];
        for (unsigned k = 0; k < 16; ++k) acc += A(r, k) * B(k, n);
        c[e] = acc;
    }
    wb().arrive_and_wait();
}
inline void mma_m16n8k16_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16<__nv_bfloat16>(c, a, b0, b1, __bfloat162float);
}
inline void mma_m16n8k16_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16<__half>(c, a, b0, b1, __half2float);
}
