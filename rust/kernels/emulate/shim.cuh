// CPU emulation of the CUDA primitives sampling.cu (and, with attention_shim.h, the attention kernels) use: one OS thread per CUDA thread, a std::barrier
// for __syncthreads and per-warp barriers around every shuffle / ballot. Slow (barriers cost context
// switches) but exact in control flow and f32 rounding, so the kernel logic can be checked on a machine
// without a GPU. Copied next to sampling.cu as common.cuh by check_sampling.py.
#pragma once
#include <barrier>
#include <cmath>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <memory>
using std::min; using std::max;
#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Shared memory: function statics. harness.py lists them after the build (GCC puts no section attribute on
// a template's statics, so they are found by name in the symbol table) and the launch (harness.h) fills
// them with 0xff bytes before each block (see poison_shared).
#define __shared__ static
#define __restrict__
struct Dim { unsigned x, y, z; };
extern thread_local Dim threadIdx;
extern Dim blockIdx;
extern std::barrier<>* g_block_barrier;
extern std::barrier<>* g_warp_barriers[32];
extern uint64_t g_slots[32][32];
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline std::barrier<>& wb() { return *g_warp_barriers[threadIdx.x / 32]; }
template <typename T> inline uint64_t to_bits(T v) { uint64_t b = 0; std::memcpy(&b, &v, sizeof(T)); return b; }
template <typename T> inline T from_bits(uint64_t b) { T v; std::memcpy(&v, &b, sizeof(T)); return v; }
template <typename T> inline T exchange(T v, int src) {
    unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    g_slots[w][lane] = to_bits(v);
    wb().arrive_and_wait();
    T r = from_bits<T>(g_slots[w][src & 31]);
    wb().arrive_and_wait();
    return r;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int off) { return exchange(v, (threadIdx.x % 32) ^ off); }
template <typename T> inline T __shfl_up_sync(unsigned, T v, int off) { int l = threadIdx.x % 32; return exchange(v, l >= off ? l - off : l); }
template <typename T> inline T __shfl_sync(unsigned, T v, int src) { return exchange(v, src); }
inline unsigned __ballot_sync(unsigned, bool p) {
    unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    g_slots[w][lane] = p ? 1 : 0;
    wb().arrive_and_wait();
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= (unsigned)(g_slots[w][i] & 1) << i;
    wb().arrive_and_wait();
    return r;
}
inline unsigned __reduce_or_sync(unsigned, unsigned v) {
    unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    g_slots[w][lane] = v;
    wb().arrive_and_wait();
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= (unsigned)g_slots[w][i];
    wb().arrive_and_wait();
    return r;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(v); }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
using std::isnan; using std::exp; using std::log; using std::ceil; using std::fmaxf;
