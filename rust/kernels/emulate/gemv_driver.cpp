// Runs the decode GEMVs (dense_gemv.cu: 16-bit weights; q4_gemm.cu's tensor-core GEMV: Q4_0 weights with
// its Q4_MMA_STAGES copy stages, 1-4 or 8 token tiles a block as the host picks) compiled on the host, block by block, one OS thread per CUDA thread, on random weights
// and activations, and compares every output with a reference in double: x . W^T, or with SILU (a stacked
// gate/up weight) silu(x . gate^T) * (x . up^T). KIND moe-dense / moe-q4 runs the fused MoE's per-slot
// decode GEMVs instead: M slots, 3 experts' weights stacked, random expert ids, slot s reading x row
// s / x_div (x_div 2 for even M: the gate/up case, two slots a token; else 1) and expert ids[s]'s rows.
//
//   gemv_driver KIND DTYPE SILU M N K STAGES SEED     KIND dense | dense-mma | q4 | moe-dense | moe-q4; N = outputs; STAGES: q4_gemm.cu's
//
// Prints one line; exit status 1 if an output is off by more than the dtype's rounding allows. The copies
// land only when a wait covers them (mma_shim.cuh), so a stage read before its wait reads poison.
#define DENSE_GEMV_HOST 1
#define Q4_GEMV_HOST 1
#include <cmath>
#include <cstring>

#include "harness.h"  // before the kernels: the shim's types, globals and launch

// What the two kernels use beyond the shims.
struct __attribute__((aligned(16))) uint4 { uint32_t x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { uint32_t x, y; };
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
template <typename V> inline V __ldg(const V* p) { return *p; }
struct float2 { float x, y; };
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __half __ushort_as_half(unsigned short b) { return {b}; }
inline void __syncwarp() { wb().arrive_and_wait(); }

#include "dense_gemv.cu"
#include "q4_gemm.cu"

#include <random>
#include <string>
#include <vector>

template <typename T> static constexpr double eps() { return sizeof(T) == 2 && std::is_same_v<T, __half> ? 1.0 / 2048 : 1.0 / 256; }

// Every output against the reference in double (slot t reads x row t / x_div and expert ids[t]'s rows).
// Bound: the stored rounding(s) relative to the value, plus f32 summation noise relative to the sum of
// |products|; silu adds the roundings of gate and up (its sensitivity to either is below 1.1).
template <typename T>
static int check(const std::string& kind, bool silu, uint32_t m, uint32_t n, uint32_t k, int stages, const std::vector<double>& wd,
                 const std::vector<T>& x, const std::vector<T>& y, const std::vector<uint32_t>& ids, uint32_t rows_per_expert,
                 uint32_t x_div) {
    double worst = 0;
    for (uint32_t t = 0; t < m; ++t)
        for (uint32_t r = 0; r < n; ++r) {
            auto dot = [&](uint32_t row, double& mag) {
                double ref = 0;
                mag = 0;
                const size_t w0 = ((size_t)ids[t] * rows_per_expert + row) * k, x0 = (size_t)(t / x_div) * k;
                for (uint32_t j = 0; j < k; ++j) {
                    const double p = wd[w0 + j] * to_f32(x[x0 + j]);
                    ref += p;
                    mag += std::fabs(p);
                }
                return ref;
            };
            double mag_g, mag_u = 0, ref, bound;
            const double g = dot(r, mag_g);
            if (silu) {
                const double u = dot(r + n, mag_u), sg = g / (1 + std::exp(-g));
                ref = sg * u;
                bound = 4.5 * eps<T>() * std::fabs(ref) + 1e-5 * (mag_g * std::fabs(u) + mag_u * std::fabs(sg)) + 1e-30;
            } else {
                ref = g;
                bound = eps<T>() * std::fabs(ref) + 1e-5 * mag_g + 1e-30;
            }
            const double got = to_f32(y[(size_t)t * n + r]);
            const double err = std::fabs(got - ref) / bound;
            worst = err <= 1.0 ? std::max(worst, err) : INFINITY;
        }
    const bool ok = worst <= 1.0;
    std::printf("%s %s %s silu=%d m=%u n=%u k=%u stages=%d: worst error / bound %.3f\n", ok ? "ok  " : "FAIL", kind.c_str(),
                sizeof(T) == 2 && std::is_same_v<T, __half> ? "f16" : "bf16", silu, m, n, k, stages, worst);
    return ok ? 0 : 1;
}

template <typename T>
static int run(const std::string& kind, bool silu, uint32_t m, uint32_t n, uint32_t k, int stages, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> wdist(-0.1f, 0.1f), scale(-0.02f, 0.02f), act(-2.f, 2.f);
    std::uniform_int_distribution<int> nib(0, 255);
    const bool moe = kind.rfind("moe-", 0) == 0;
    const bool q4 = kind == "q4" || kind == "q4-t1" || kind == "moe-q4";
    const uint32_t experts = moe ? 3 : 1, x_div = moe && m % 2 == 0 ? 2 : 1;
    std::vector<uint32_t> ids(m, 0);
    std::uniform_int_distribution<uint32_t> expert(0, experts - 1);
    for (auto& e : ids) e = expert(rng);
    const uint32_t rows_per_expert = silu ? 2 * n : n, rows = experts * rows_per_expert;
    std::vector<double> wd((size_t)rows * k);  // the weights' values, as the kernels read them
    std::vector<T> wdense;
    std::vector<uint8_t> wq;
    if (!q4) {
        wdense.resize((size_t)rows * k);
        for (size_t i = 0; i < wdense.size(); ++i) {
            wdense[i] = from_f32<T>(wdist(rng));
            wd[i] = to_f32(wdense[i]);
        }
    } else {
        const uint32_t blocks = rows * (k / 32);
        wq.resize((size_t)blocks * 18);
        for (uint32_t b = 0; b < blocks; ++b) {
            __half d = __float2half(scale(rng));
            std::memcpy(&wq[(size_t)b * 18], &d.x, 2);
            for (int j = 0; j < 16; ++j) wq[(size_t)b * 18 + 2 + j] = (uint8_t)nib(rng);
            const double df = __half2float(d);
            for (int j = 0; j < 16; ++j) {
                wd[(size_t)b * 32 + j] = df * ((wq[(size_t)b * 18 + 2 + j] & 15) - 8);
                wd[(size_t)b * 32 + j + 16] = df * ((wq[(size_t)b * 18 + 2 + j] >> 4) - 8);
            }
        }
    }
    std::vector<T> x((size_t)(m / x_div) * k), y((size_t)m * n);
    for (auto& v : x) v = from_f32<T>(act(rng));
    for (auto& v : y) v = from_f32<T>(NAN);

    if (q4 && stages != Q4_MMA_STAGES) {
        std::fprintf(stderr, "q4_gemm.cu is built with %d copy stages, not %d\n", Q4_MMA_STAGES, stages);
        return 2;
    }
    if (kind == "dense-mma") {
        // dense_gemv_mma with 1 token tile up to 8 tokens, else 2 (the host's choice); its partial sums in
        // a buffer poisoned before every block.
        std::vector<float> part((size_t)8 * 16 * 16);
        g_before_block = [&] { std::fill(part.begin(), part.end(), NAN); };
        const unsigned tiles = m <= 8 ? 1 : 2, gx = (m + 8 * tiles - 1) / (8 * tiles), gy = silu ? (n + 7) / 8 : (n + 15) / 16;
        auto body = [&]<int NT>() {
            auto* p = reinterpret_cast<float (*)[16][8 * NT]>(part.data());
            launch(gx, gy, 256, [&] {
                if (silu) dense_gemv_mma<T, true, NT>(y.data(), wdense.data(), x.data(), m, n, k, p);
                else dense_gemv_mma<T, false, NT>(y.data(), wdense.data(), x.data(), m, n, k, p);
            });
        };
        if (tiles == 1) body.template operator()<1>();
        else body.template operator()<2>();
    } else if (kind == "moe-dense") {
        launch(1, (n + 7) / 8, m, 256, [&] {
            if (silu) moe_dense_gemv<T, true>(y.data(), wdense.data(), x.data(), ids.data(), n, k, x_div, experts);
            else moe_dense_gemv<T, false>(y.data(), wdense.data(), x.data(), ids.data(), n, k, x_div, experts);
        });
    } else if (kind == "dense") {
        const unsigned gx = m == 1 ? m : (m + 3) / 4, gy = (n + 7) / 8;
        launch(gx, gy, 256, [&] {
            if (m == 1 && silu) dense_gemv<T, true, 1>(y.data(), wdense.data(), x.data(), m, n, k);
            else if (m == 1) dense_gemv<T, false, 1>(y.data(), wdense.data(), x.data(), m, n, k);
            else if (silu) dense_gemv<T, true, 4>(y.data(), wdense.data(), x.data(), m, n, k);
            else dense_gemv<T, false, 4>(y.data(), wdense.data(), x.data(), m, n, k);
        });
    } else {
        std::vector<uint8_t> smem((size_t)8 * stages * Q4_STAGE_BYTES + 16);
        uint8_t* s = smem.data() + (16 - (uintptr_t)smem.data() % 16) % 16;
        g_before_block = [&] { std::memset(s, 0xff, (size_t)8 * stages * Q4_STAGE_BYTES); };
        if (moe) {
            launch(1, silu ? (n + 7) / 8 : (n + 15) / 16, m, 256, [&] {
                if (silu) moe_q4_gemv<T, true>(y.data(), wq.data(), x.data(), ids.data(), n, k, x_div, experts, s);
                else moe_q4_gemv<T, false>(y.data(), wq.data(), x.data(), ids.data(), n, k, x_div, experts, s);
            });
            return check(kind, silu, m, n, k, stages, wd, x, y, ids, rows_per_expert, x_div);
        }
        // kernels::q4_gemv_mma_tiles; "q4-t1": one tile a block (the engine's default, q4::gemv_max_tiles)
        const unsigned tiles = kind == "q4-t1" ? 1 : (m + 7) / 8 <= 4 ? (m + 7) / 8 : 8;
        const unsigned gx = (m + 8 * tiles - 1) / (8 * tiles), gy = silu ? (n + 7) / 8 : (n + 15) / 16;
        auto body = [&]<int NT>() {
            launch(gx, gy, 256, [&] {
                if (silu) q4_gemv_mma<T, true, Q4_MMA_STAGES, NT>(y.data(), wq.data(), x.data(), m, n, k, s);
                else q4_gemv_mma<T, false, Q4_MMA_STAGES, NT>(y.data(), wq.data(), x.data(), m, n, k, s);
            });
        };
        switch (tiles) {
            case 1: body.template operator()<1>(); break;
            case 2: body.template operator()<2>(); break;
            case 3: body.template operator()<3>(); break;
            case 4: body.template operator()<4>(); break;
            default: body.template operator()<8>(); break;
        }
    }

    return check(kind, silu, m, n, k, stages, wd, x, y, ids, rows_per_expert, x_div);
}

int main(int argc, char** argv) {
    if (argc != 9) {
        std::fprintf(stderr, "usage: gemv_driver dense|dense-mma|q4|q4-t1|moe-dense|moe-q4 bf16|f16 SILU M N K STAGES SEED\n");
        return 2;
    }
    const std::string kind = argv[1], dtype = argv[2];
    const bool silu = std::atoi(argv[3]) != 0;
    const uint32_t m = std::atoi(argv[4]), n = std::atoi(argv[5]), k = std::atoi(argv[6]);
    const int stages = std::atoi(argv[7]);
    const uint32_t seed = std::atoi(argv[8]);
    if (dtype == "bf16") return run<__nv_bfloat16>(kind, silu, m, n, k, stages, seed);
    return run<__half>(kind, silu, m, n, k, stages, seed);
}
