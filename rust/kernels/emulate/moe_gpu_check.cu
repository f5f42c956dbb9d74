// The fused mixture of experts' kernels (moe.cu, moe_gemm.cu) on a real GPU, launched as the engine launches
// them (rust/core/src/model/layers/moe_cuda_launch.rs), checked against moe_check.h's references; and, with
// `perf`, timed per kernel at a real model's shape beside the floor of the expert bytes the step reads.
// Built and run by `python3 rust/kernels/emulate/check_moe.py --gpu` (nvcc; no Rust, no wheel).
//
//   moe_gpu_check DTYPE T E K H I ROUTING NORM ACT BIAS LOGITS SEED     one checked case (as moe_driver)
//   moe_gpu_check mxfp4-dequant                                         the MXFP4 fragments, bit for bit
//   moe_gpu_check perf DTYPE T E K H I                                  microseconds per kernel, floor
#include "moe.cu"
#include "moe_gemm.cu"
#include "moe_check.h"
#include <cuda_runtime.h>

#define CK(call)                                                                                      \
    do {                                                                                              \
        cudaError_t err_ = (call);                                                                    \
        if (err_ != cudaSuccess) {                                                                    \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
            std::exit(3);                                                                             \
        }                                                                                             \
    } while (0)

template <typename T> using GemmFn = void (*)(T*, const T*, const uint8_t*, const T*, const uint32_t*, const int32_t*, uint32_t,
                                              uint32_t, uint32_t, uint32_t, uint32_t, float, float);
template <typename T> using CombineFn = void (*)(T*, const T*, const float*, uint32_t, uint32_t, uint32_t);
template <typename T> struct Kernels;
template <> struct Kernels<__nv_bfloat16> {
    static GemmFn<__nv_bfloat16> gemm(int fmt) { return fmt == MG_W_Q4 ? moe_gemm_q4_bf16 : fmt == MG_W_MXFP4 ? moe_gemm_mxfp4_bf16 : moe_gemm_bf16; }
    static CombineFn<__nv_bfloat16> combine() { return moe_combine_bf16; }
};
template <> struct Kernels<__half> {
    static GemmFn<__half> gemm(int fmt) {
        if (fmt == MG_W_MXFP4) {
            std::fprintf(stderr, "no MXFP4 kernel for f16\n");
            std::exit(2);
        }
        return fmt == MG_W_Q4 ? moe_gemm_q4_f16 : moe_gemm_f16;
    }
    static CombineFn<__half> combine() { return moe_combine_f16; }
};

template <typename V> V* upload(const std::vector<V>& h) {
    V* d = nullptr;
    CK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(V)));
    if (!h.empty()) CK(cudaMemcpy(d, h.data(), h.size() * sizeof(V), cudaMemcpyHostToDevice));
    return d;
}
template <typename V> void download(std::vector<V>& h, const V* d) {
    if (!h.empty()) CK(cudaMemcpy(h.data(), d, h.size() * sizeof(V), cudaMemcpyDeviceToHost));
}

// The five launches of one layer on device buffers; `timing` (5 entries) gets each kernel's milliseconds.
template <typename T> struct Layer {
    const Case& c;
    int fmt;
    uint32_t slots, tiles;
    float *logits, *wts;
    T *x, *gu_bias, *dn_bias, *a, *y, *out;
    uint8_t *gu, *dn;
    uint32_t *ids, *sorted;
    int32_t* tile_expert;

    void launch(float* timing) {
        cudaEvent_t ev[6];
        for (auto& e : ev) CK(cudaEventCreate(&e));
        const uint32_t smem = fmt == MG_W_Q4 ? MG_Q4_SMEM_BYTES : fmt == MG_W_MXFP4 ? MG_MX_SMEM_BYTES : MG_DENSE_SMEM_BYTES;
        GemmFn<T> gemm = Kernels<T>::gemm(fmt);
        CK(cudaFuncSetAttribute(gemm, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const float alpha = 1.702f, limit = 7.0f;
        CK(cudaEventRecord(ev[0]));
        moe_route_f32<<<(c.t + MOE_ROUTE_WARPS - 1) / MOE_ROUTE_WARPS, 32 * MOE_ROUTE_WARPS>>>(logits, ids, wts, c.t, c.e, c.k, c.routing, c.norm);
        CK(cudaEventRecord(ev[1]));
        moe_align_u32<<<c.e, MOE_ALIGN_THREADS>>>(ids, slots, c.e, sorted, tile_expert, tiles);
        CK(cudaEventRecord(ev[2]));
        gemm<<<dim3((c.i + MG_ROWS / 2 - 1) / (MG_ROWS / 2), tiles), MG_THREADS, smem>>>(
            a, x, gu, c.bias ? gu_bias : nullptr, sorted, tile_expert, c.i, c.h, c.k, slots, c.swiglu ? MG_SWIGLU : MG_SILU, alpha, limit);
        CK(cudaEventRecord(ev[3]));
        gemm<<<dim3((c.h + MG_ROWS - 1) / MG_ROWS, tiles), MG_THREADS, smem>>>(y, a, dn, c.bias ? dn_bias : nullptr, sorted, tile_expert,
                                                                               c.h, c.i, 1, slots, MG_PLAIN, alpha, limit);
        CK(cudaEventRecord(ev[4]));
        const uint32_t blocks = std::min<uint64_t>(((uint64_t)c.t * c.h + MOE_COMBINE_THREADS - 1) / MOE_COMBINE_THREADS, 65535);
        Kernels<T>::combine()<<<std::max(blocks, 1u), MOE_COMBINE_THREADS>>>(out, y, wts, c.t, c.k, c.h);
        CK(cudaEventRecord(ev[5]));
        CK(cudaGetLastError());
        CK(cudaEventSynchronize(ev[5]));
        for (int i = 0; i < 5; ++i) CK(cudaEventElapsedTime(&timing[i], ev[i], ev[i + 1]));
        for (auto& e : ev) CK(cudaEventDestroy(e));
    }
};

template <typename T> Layer<T> to_device(const MoeCase<T>& d) {
    const Case& c = d.c;
    Layer<T> l{c, d.fmt, d.slots, d.tiles};
    l.logits = upload(d.logits);
    l.wts = upload(d.wts);
    l.x = upload(d.x);
    l.gu_bias = upload(d.gu_bias);
    l.dn_bias = upload(d.dn_bias);
    l.gu = upload(d.gu.raw);
    l.dn = upload(d.dn.raw);
    l.ids = upload(d.ids);
    l.sorted = upload(d.sorted);
    l.tile_expert = upload(d.tile_expert);
    l.out = upload(d.out);
    l.a = upload(std::vector<T>((size_t)d.slots * c.i, hto<T>(NAN)));
    l.y = upload(std::vector<T>((size_t)d.slots * c.h, hto<T>(NAN)));
    return l;
}

__global__ void mx_frags_kernel(const uint8_t* buf, const uint32_t* offsets, uint32_t* out, uint32_t n) {
    const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    uint32_t a[2][4];
    const uint8_t* blk = buf + offsets[j / 4];
    mx_a_fragments(a, blk, blk, (int)(j % 4));
    for (int q = 0; q < 8; ++q) out[(size_t)j * 8 + q] = a[q / 4][q % 4];
}

template <typename T> struct OnGpu {
    static void run(MoeCase<T>& d) {
        Layer<T> l = to_device(d);
        float ms[5];
        l.launch(ms);
        download(d.ids, l.ids);
        download(d.wts, l.wts);
        download(d.sorted, l.sorted);
        download(d.tile_expert, l.tile_expert);
        download(d.out, l.out);
    }
    // One thread per (block, lane column): mx_a_fragments on the device.
    static void mx_frags(const std::vector<uint8_t>& buf, const std::vector<uint32_t>& offsets, std::vector<uint32_t>& out) {
        uint8_t* b = upload(buf);
        uint32_t* o = upload(offsets);
        uint32_t* f = upload(out);
        const uint32_t n = (uint32_t)offsets.size() * 4;
        mx_frags_kernel<<<(n + 127) / 128, 128>>>(b, o, f, n);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        download(out, f);
        CK(cudaFree(b));
        CK(cudaFree(o));
        CK(cudaFree(f));
    }
};

// Device-to-device copy rate (read + write bytes per second) of a 1 GiB buffer, the floor's bandwidth.
static double copy_bandwidth() {
    const size_t n = 1ull << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e0));
    for (int i = 0; i < 10; ++i) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * n * 10 / (ms * 1e-3);
}

// Median over 20 runs of each kernel's time at a shape, and the floor: the bytes of the experts the
// routing touched (gate/up and down), of x, of the logits and of the output, at the copy bandwidth.
template <typename T> int perf(const char* name, int fmt, Case c) {
    MoeCase<T> d = make_case<T>(c, fmt);
    Layer<T> l = to_device(d);
    std::vector<std::vector<float>> runs(5);
    float ms[5];
    l.launch(ms);  // warm-up
    for (int r = 0; r < 20; ++r) {
        l.launch(ms);
        for (int i = 0; i < 5; ++i) runs[i].push_back(ms[i] * 1e3f);
    }
    download(d.ids, l.ids);
    std::vector<bool> touched(c.e, false);
    for (uint32_t id : d.ids) touched[id] = true;
    const double experts = (double)std::count(touched.begin(), touched.end(), true);
    const double per_weight = fmt == MG_W_Q4 ? 18.0 / 32.0 : fmt == MG_W_MXFP4 ? 17.0 / 32.0 : 2.0;
    const double bytes = experts * 3.0 * c.h * c.i * per_weight + 2.0 * c.t * c.h * sizeof(T) + 4.0 * c.t * c.e;
    const double floor_us = bytes / copy_bandwidth() * 1e6;
    double total = 0;
    std::printf("perf %-6s T=%u E=%u k=%u H=%u I=%u | experts touched %.0f | us:", name, c.t, c.e, c.k, c.h, c.i, experts);
    const char* names[5] = {"route", "align", "gate_up", "down", "combine"};
    for (int i = 0; i < 5; ++i) {
        std::sort(runs[i].begin(), runs[i].end());
        total += runs[i][10];
        std::printf(" %s %.1f", names[i], runs[i][10]);
    }
    std::printf(" | total %.1f, floor %.1f (%.0f%% of floor)\n", total, floor_us, 100.0 * floor_us / total);
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 8 && std::string(argv[1]) == "perf") {
        const std::string dt = argv[2];
        auto u = [&](int i) { return (uint32_t)std::stoul(argv[i]); };
        Case c{u(3), u(4), u(5), u(6), u(7), 0, 1, false, 0, "rand", 1};
        if (dt == "bf16") return perf<__nv_bfloat16>("bf16", MG_W_DENSE, c);
        if (dt == "f16") return perf<__half>("f16", MG_W_DENSE, c);
        if (dt == "q4bf16") return perf<__nv_bfloat16>("q4bf16", MG_W_Q4, c);
        if (dt == "q4f16") return perf<__half>("q4f16", MG_W_Q4, c);
        if (dt == "mxfp4bf16") return perf<__nv_bfloat16>("mxfp4bf16", MG_W_MXFP4, c);
        return 2;
    }
    return run_cli<OnGpu>(argc, argv);
}
