// Runs q4_gemm_tc.cu (compiled on the host against shim.cuh, attention_shim.h, q4_shim.h and
// mma_shim.cuh) block by block, one OS thread per CUDA thread, on random Q4_0 weights and activations,
// and compares every output with a reference in double on the weights dequantized as the kernel's
// contract says (round_T(d * (q - 8))).
//
//   q4_gemm_driver DTYPE M N K SPLITS SEED
//
// Prints one line; exit status 1 if an output is off by more than the dtype's rounding allows.
#define Q4T_HOST 1
#include "q4_gemm_tc.cu"
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

template <typename T>
static int run(const char* name, uint32_t m, uint32_t n, uint32_t k, uint32_t splits, uint32_t seed, double tol) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> scale(-0.02f, 0.02f), act(-2.f, 2.f);
    std::uniform_int_distribution<int> nib(0, 255);
    const uint32_t blocks = n * (k / 32);
    std::vector<uint8_t> w(blocks * 18);
    std::vector<double> wd((size_t)n * k);
    for (uint32_t b = 0; b < blocks; ++b) {
        __half d = __float2half(scale(rng));
        std::memcpy(&w[b * 18], &d.x, 2);
        for (int j = 0; j < 16; ++j) w[b * 18 + 2 + j] = (uint8_t)nib(rng);
        const float df = __half2float(d);
        for (int j = 0; j < 16; ++j) {
            wd[(size_t)b * 32 + j] = to_f32(from_f32<T>(df * (float)((w[b * 18 + 2 + j] & 15) - 8)));
            wd[(size_t)b * 32 + j + 16] = to_f32(from_f32<T>(df * (float)((w[b * 18 + 2 + j] >> 4) - 8)));
        }
    }
    std::vector<T> x((size_t)m * k), y((size_t)m * n);
    for (auto& v : x) v = from_f32<T>(act(rng));
    for (auto& v : y) v = from_f32<T>(NAN);
    std::vector<uint8_t> smem(Q4T_SMEM_BYTES + 16);
    uint8_t* s = smem.data() + (16 - (uintptr_t)smem.data() % 16) % 16;
    std::vector<float> partial((size_t)splits * m * n, NAN);
    for (uint32_t z = 0; z < splits; ++z)
        launch((n + Q4T_ROWS - 1) / Q4T_ROWS, (m + Q4T_TOKENS - 1) / Q4T_TOKENS, Q4T_THREADS,
               [&] { q4_gemm_tc<T>(y.data(), partial.data(), w.data(), x.data(), m, n, k, splits, z, s); });
    if (splits > 1) launch(2, 1, 64, [&] { q4_gemm_tc_reduce<T>(y.data(), partial.data(), (uint64_t)m * n, splits); });
    double worst = 0;
    for (uint32_t t = 0; t < m; ++t)
        for (uint32_t r = 0; r < n; ++r) {
            double ref = 0, mag = 0;
            for (uint32_t j = 0; j < k; ++j) {
                const double p = wd[(size_t)r * k + j] * to_f32(x[(size_t)t * k + j]);
                ref += p;
                mag += std::fabs(p);
            }
            const double got = to_f32(y[(size_t)t * n + r]);
            const double err = std::fabs(got - ref) / (std::fabs(ref) * tol + mag * 1e-6 + 1e-30);
            if (!(err <= 1.0)) worst = INFINITY;
            else worst = std::max(worst, err);
        }
    const bool ok = worst <= 1.0;
    std::printf("%s %s m=%u n=%u k=%u splits=%u seed=%u: worst error / allowed %.3f\n", ok ? "ok  " : "FAIL", name, m, n, k, splits, seed, worst);
    return ok ? 0 : 1;
}

// Every finite f16 scale d and nibble q through q4_dequant.cuh's pair dequantization (both halves, low and
// high nibbles) against round_T(d * (q - 8)) formed in f32 (exact) and rounded once.
template <typename T>
static int pairs(const char* name) {
    uint64_t checked = 0, bad = 0;
    for (uint32_t bits = 0; bits < 0x10000; ++bits) {
        __half d;
        d.x = (uint16_t)bits;
        const float df = __half2float(d);
        if (!std::isfinite(df)) continue;
        const Q4tScale<T> s((uint16_t)bits);
        for (uint32_t q0 = 0; q0 < 16; ++q0) {
            const uint32_t q1 = 15 - q0;
            const uint32_t v = q0 | (q1 << 16) | ((q1 << 4) | (q0 << 20));  // low nibbles q0 / q1, high q1 / q0
            for (int hi = 0; hi < 2; ++hi) {
                const uint32_t got = q4t_dequant_pair<T>(v, hi != 0, s);
                const uint32_t lo_q = hi ? q1 : q0, hi_q = hi ? q0 : q1;
                const T want_lo = from_f32<T>(df * (float)((int)lo_q - 8)), want_hi = from_f32<T>(df * (float)((int)hi_q - 8));
                uint16_t wl, wh;
                std::memcpy(&wl, &want_lo, 2);
                std::memcpy(&wh, &want_hi, 2);
                const uint32_t want = wl | ((uint32_t)wh << 16);
                // +0 and -0 are the same weight
                auto half_same = [](uint32_t a, uint32_t b) { return a == b || ((a | b) & 0x7fffu) == 0; };
                const bool same = half_same(got & 0xffffu, want & 0xffffu) && half_same(got >> 16, want >> 16);
                checked += 2;
                if (!same && bad++ < 5)
                    std::printf("  %s d=0x%04x q=%u/%u hi=%d: got 0x%08x want 0x%08x\n", name, bits, lo_q, hi_q, hi, got, want);
            }
        }
    }
    std::printf("%s %s pairs: %llu weights, %llu wrong\n", bad ? "FAIL" : "ok  ", name, (unsigned long long)checked, (unsigned long long)bad);
    return bad ? 1 : 0;
}

int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[1]) == "pairs")
        return std::string(argv[2]) == "bf16" ? pairs<__nv_bfloat16>("bf16") : pairs<__half>("f16");
    if (argc != 7) { std::fprintf(stderr, "usage: q4_gemm_driver DTYPE M N K SPLITS SEED\n"); return 2; }
    const std::string dt = argv[1];
    const uint32_t m = std::stoul(argv[2]), n = std::stoul(argv[3]), k = std::stoul(argv[4]);
    const uint32_t splits = std::stoul(argv[5]), seed = std::stoul(argv[6]);
    if (dt == "bf16") return run<__nv_bfloat16>("bf16", m, n, k, splits, seed, 1.0 / 128);
    if (dt == "f16") return run<__half>("f16", m, n, k, splits, seed, 1.0 / 1024);
    std::fprintf(stderr, "dtype must be bf16 or f16\n");
    return 2;
}
