// The emulation's launch: the shim's globals and a grid of blocks run one after the other, each block as
// one OS thread per CUDA thread (shim.cuh), with the block and warp barriers the shim's primitives use.
#pragma once
#include "q4_shim.h"  // gridDim, and the bf16 / f16 types through attention_shim.h
#include <functional>
#include <memory>
#include <thread>
#include <vector>

thread_local Dim threadIdx;
Dim blockIdx;
std::barrier<>* g_block_barrier;
std::barrier<>* g_warp_barriers[32];
uint64_t g_slots[32][32];

static void launch(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& body) {
    std::barrier<> block(threads);
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    for (unsigned w = 0; w < threads / 32; ++w) {
        warps.emplace_back(new std::barrier<>(32));
        g_warp_barriers[w] = warps.back().get();
    }
    g_block_barrier = &block;
    blockDim.x = threads;
    gridDim.x = gx;
    gridDim.y = gy;
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x) {
            blockIdx.x = x;
            blockIdx.y = y;
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&, t] { threadIdx.x = t; body(); });
            for (auto& t : ts) t.join();
        }
}
