// Runs sample_rows_f32 (sampling.cu, compiled on the host against shim.cuh) block by block, one OS
// thread per CUDA thread; exported to Python as emulate(logits, work, params, out, batch, vocab).
#include <thread>
#include <vector>
#include <cstdio>
#include "sampling.cu"
thread_local Dim threadIdx;
Dim blockIdx;
std::barrier<>* g_block_barrier;
std::barrier<>* g_warp_barriers[32];
uint64_t g_slots[32][32];
extern "C" void emulate(const float* logits, float* work, const uint32_t* params, uint32_t* out, uint32_t batch, uint32_t vocab) {
    std::barrier<> block(SAMPLE_THREADS);
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    for (int w = 0; w < SAMPLE_THREADS / 32; ++w) { warps.emplace_back(new std::barrier<>(32)); g_warp_barriers[w] = warps.back().get(); }
    g_block_barrier = &block;
    for (uint32_t b = 0; b < batch; ++b) {
        blockIdx.x = b;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < SAMPLE_THREADS; ++t) ts.emplace_back([=] { threadIdx.x = t; sample_rows_f32(logits, work, params, out, batch, vocab); });
        for (auto& t : ts) t.join();
    }
}
