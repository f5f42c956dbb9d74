// Runs the fused mixture-of-experts (moe.cu: route, align, combine; moe_gemm.cu: the grouped GEMM, gate/up
// with its activation then down) compiled on the host against shim.cuh, attention_shim.h, q4_shim.h and
// mma_shim.cuh, block by block with one OS thread per CUDA thread, and checks it against references
// written here from the math, not from the kernels:
//   routing: moe.rs `route` (a sort with ties to the lower index) in f32: ids equal, weights within 1e-5
//   align:   every slot exactly once, in a tile of its expert; pads and unused tiles marked
//   output:  the whole layer in double from the routing, rounding to T where the unfused path does (gate /
//            up outputs, biases, activation ops, expert outputs); error <= 2 u (|ref| + sum of |terms|)
//
//   moe_driver DTYPE T E K H I ROUTING NORM ACT BIAS LOGITS SEED
//   DTYPE: bf16 f16 q4bf16 q4f16; ROUTING: 0 softmax-top-k, 1 top-k-softmax; ACT: silu swiglu;
//   LOGITS: rand | ties (values in {0, 1, 2}) | one (every token's best expert is expert E / 2)
// Prints one line; exit status 1 on a failed check.
#define Q4T_HOST 1
#define MOE_HOST 1
#define MG_HOST 1
#include "moe.cu"
#include "moe_gemm.cu"
#include "harness.h"
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

struct Case {
    uint32_t t, e, k, h, i, routing, norm, swiglu, bias;
    std::string logits;
    uint32_t seed;
};

// Stacked expert weights [E, rows, K] in T (dense) or Q4_0 blocks, and their values as the kernel uses them.
template <typename T> struct Weights {
    std::vector<uint8_t> raw;
    std::vector<double> val;  // [E * rows, K]
};

template <typename T> static Weights<T> make_weights(std::mt19937& rng, bool q4, size_t rows, size_t k, float scale) {
    Weights<T> w;
    w.val.resize(rows * k);
    if (q4) {
        std::uniform_real_distribution<float> d(-scale / 8, scale / 8);
        std::uniform_int_distribution<int> nib(0, 255);
        const size_t blocks = rows * k / 32;
        w.raw.resize(blocks * 18);
        for (size_t b = 0; b < blocks; ++b) {
            __half s = __float2half(d(rng));
            std::memcpy(&w.raw[b * 18], &s.x, 2);
            for (int j = 0; j < 16; ++j) w.raw[b * 18 + 2 + j] = (uint8_t)nib(rng);
            const float sf = __half2float(s);
            for (int j = 0; j < 16; ++j) {
                w.val[b * 32 + j] = to_f32(from_f32<T>(sf * (float)((w.raw[b * 18 + 2 + j] & 15) - 8)));
                w.val[b * 32 + j + 16] = to_f32(from_f32<T>(sf * (float)((w.raw[b * 18 + 2 + j] >> 4) - 8)));
            }
        }
    } else {
        std::uniform_real_distribution<float> d(-scale, scale);
        w.raw.resize(rows * k * sizeof(T));
        T* p = reinterpret_cast<T*>(w.raw.data());
        for (size_t j = 0; j < rows * k; ++j) {
            p[j] = from_f32<T>(d(rng));
            w.val[j] = to_f32(p[j]);
        }
    }
    return w;
}

// moe.rs `route` for one token, in f32: experts and weights in descending order of score.
static void route_ref(const float* logits, uint32_t e, uint32_t k, uint32_t routing, bool norm, std::vector<uint32_t>& ids, std::vector<float>& ws) {
    std::vector<float> p(logits, logits + e);
    if (routing == MOE_SOFTMAX_TOPK) {
        const float mx = *std::max_element(p.begin(), p.end());
        float sum = 0;
        for (float& v : p) sum += expf(v - mx);
        for (float& v : p) v = expf(v - mx) / sum;
    }
    std::vector<uint32_t> order(e);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return p[a] > p[b]; });
    ids.assign(order.begin(), order.begin() + k);
    ws.clear();
    float sum = 0;
    if (routing == MOE_SOFTMAX_TOPK) {
        for (uint32_t r = 0; r < k; ++r) sum += p[ids[r]];
        for (uint32_t r = 0; r < k; ++r) ws.push_back(norm ? p[ids[r]] / sum : p[ids[r]]);
    } else {
        for (uint32_t r = 0; r < k; ++r) sum += expf(p[ids[r]] - p[ids[0]]);
        for (uint32_t r = 0; r < k; ++r) ws.push_back(expf(p[ids[r]] - p[ids[0]]) / sum);
    }
}

template <typename T> static double rnd(double v) { return to_f32(from_f32<T>((float)v)); }

// The gated activation on f32 sums, rounding as the unfused path does.
template <typename T> static double act_ref(double gate, double up, double bg, double bu, const Case& c) {
    gate = rnd<T>(gate);
    up = rnd<T>(up);
    if (c.bias) {
        gate = rnd<T>(gate + bg);
        up = rnd<T>(up + bu);
    }
    if (!c.swiglu) return rnd<T>(rnd<T>(gate / (1.0 + std::exp(-gate))) * up);
    const double limit = 7.0, alpha = (double)1.702f;  // the launch's f32 alpha
    gate = std::min(gate, limit);
    up = std::clamp(up, -limit, limit);
    const double sig = rnd<T>(1.0 / (1.0 + std::exp(-rnd<T>(gate * alpha))));
    return rnd<T>(rnd<T>(up + 1.0) * rnd<T>(gate * sig));
}

static uint32_t max_tiles(uint32_t slots, uint32_t experts) {
    return (slots + std::min(slots, experts) * (MOE_TILE - 1)) / MOE_TILE;  // moe_cuda.rs `max_tiles`
}

template <typename T> static int run(const char* name, bool q4, const Case& c, double u) {
    std::mt19937 rng(c.seed);
    const uint32_t slots = c.t * c.k, tiles = max_tiles(slots, c.e);
    // Inputs
    std::vector<float> logits((size_t)c.t * c.e);
    std::uniform_real_distribution<float> lg(-2.f, 2.f), act(-1.f, 1.f), bias_d(-0.5f, 0.5f);
    std::uniform_int_distribution<int> small(0, 2);
    for (auto& v : logits) v = c.logits == "ties" ? (float)small(rng) : lg(rng);
    if (c.logits == "one")
        for (uint32_t t = 0; t < c.t; ++t) logits[(size_t)t * c.e + c.e / 2] = 20.f;
    std::vector<T> x((size_t)c.t * c.h);
    for (auto& v : x) v = from_f32<T>(act(rng));
    auto gu = make_weights<T>(rng, q4, (size_t)c.e * 2 * c.i, c.h, 2.f / std::sqrt((float)c.h));
    auto dn = make_weights<T>(rng, q4, (size_t)c.e * c.h, c.i, 2.f / std::sqrt((float)c.i));
    std::vector<T> gu_bias((size_t)c.e * 2 * c.i), dn_bias((size_t)c.e * c.h);
    for (auto& v : gu_bias) v = from_f32<T>(bias_d(rng));
    for (auto& v : dn_bias) v = from_f32<T>(bias_d(rng));

    // Kernels
    std::vector<uint32_t> ids(slots, 12345u), sorted((size_t)tiles * MOE_TILE, 0xdeadbeefu);
    std::vector<float> wts(slots, NAN);
    std::vector<int32_t> tile_expert(tiles, 777);
    launch((c.t + MOE_ROUTE_WARPS - 1) / MOE_ROUTE_WARPS, 1, 32 * MOE_ROUTE_WARPS,
           [&] { moe_route(logits.data(), ids.data(), wts.data(), c.t, c.e, c.k, c.routing, c.norm); });
    launch(c.e, 1, MOE_ALIGN_THREADS, [&] { moe_align(ids.data(), slots, c.e, sorted.data(), tile_expert.data(), tiles); });
    std::vector<T> a((size_t)slots * c.i, from_f32<T>(NAN)), y((size_t)slots * c.h, from_f32<T>(NAN)), out((size_t)c.t * c.h, from_f32<T>(NAN));
    std::vector<uint8_t> smem((q4 ? MG_Q4_SMEM_BYTES : MG_DENSE_SMEM_BYTES) + 16);
    uint8_t* s = smem.data() + (16 - (uintptr_t)smem.data() % 16) % 16;
    const float alpha = 1.702f, limit = 7.0f;
    const uint32_t mode = c.swiglu ? MG_SWIGLU : MG_SILU;
    auto gemm = [&](T* o, const T* in, const uint8_t* w, const T* b, uint32_t n, uint32_t k, uint32_t div, uint32_t md) {
        const uint32_t row_tiles = md == MG_PLAIN ? (n + MG_ROWS - 1) / MG_ROWS : (n + MG_ROWS / 2 - 1) / (MG_ROWS / 2);
        launch(row_tiles, tiles, MG_THREADS, [&] {
            if (q4) moe_gemm<T, true>(o, in, w, b, sorted.data(), tile_expert.data(), n, k, div, slots, md, alpha, limit, blockIdx.x, blockIdx.y, s);
            else moe_gemm<T, false>(o, in, w, b, sorted.data(), tile_expert.data(), n, k, div, slots, md, alpha, limit, blockIdx.x, blockIdx.y, s);
        });
    };
    gemm(a.data(), x.data(), gu.raw.data(), c.bias ? gu_bias.data() : nullptr, c.i, c.h, c.k, mode);
    gemm(y.data(), a.data(), dn.raw.data(), c.bias ? dn_bias.data() : nullptr, c.h, c.i, 1, MG_PLAIN);
    launch(3, 1, 64, [&] { moe_combine<T>(out.data(), y.data(), wts.data(), c.t, c.k, c.h); });

    // Routing
    std::string why;
    std::vector<uint32_t> load(c.e, 0);
    std::vector<uint32_t> rid;
    std::vector<float> rw;
    for (uint32_t t = 0; t < c.t && why.empty(); ++t) {
        route_ref(&logits[(size_t)t * c.e], c.e, c.k, c.routing, c.norm, rid, rw);
        for (uint32_t r = 0; r < c.k; ++r) {
            if (ids[t * c.k + r] != rid[r]) why = "token " + std::to_string(t) + " choice " + std::to_string(r) + ": expert " + std::to_string(ids[t * c.k + r]) + " != " + std::to_string(rid[r]);
            else if (!(std::fabs(wts[t * c.k + r] - rw[r]) <= 1e-5 * std::fabs(rw[r]) + 1e-7)) why = "weight of token " + std::to_string(t) + " choice " + std::to_string(r);
            else ++load[rid[r]];
        }
    }
    // Align
    uint32_t real_tiles = 0;
    for (uint32_t e = 0; e < c.e; ++e) real_tiles += (load[e] + MOE_TILE - 1) / MOE_TILE;
    std::vector<int> seen(slots, 0);
    for (uint32_t j = 0; j < tiles && why.empty(); ++j) {
        if (j >= real_tiles) {
            if (tile_expert[j] != -1) why = "unused tile " + std::to_string(j) + " not marked";
            continue;
        }
        if (tile_expert[j] < 0 || tile_expert[j] >= (int32_t)c.e || (j > 0 && tile_expert[j] < tile_expert[j - 1])) { why = "tile expert order"; break; }
        for (uint32_t p = 0; p < MOE_TILE; ++p) {
            const uint32_t sl = sorted[j * MOE_TILE + p];
            if (sl == MOE_NO_SLOT) continue;
            if (sl >= slots || ids[sl] != (uint32_t)tile_expert[j]) { why = "slot in the wrong tile"; break; }
            ++seen[sl];
        }
    }
    if (why.empty() && real_tiles > tiles) why = "more tiles than the grid";
    for (uint32_t sl = 0; sl < slots && why.empty(); ++sl)
        if (seen[sl] != 1) why = "slot " + std::to_string(sl) + " seen " + std::to_string(seen[sl]) + " times";

    // Output
    double worst = 0;
    if (why.empty()) {
        std::vector<double> av(c.i);
        std::vector<double> ref((size_t)c.t * c.h, 0.0), mag((size_t)c.t * c.h, 0.0);
        for (uint32_t t = 0; t < c.t; ++t)
            for (uint32_t r = 0; r < c.k; ++r) {
                const uint32_t e = ids[t * c.k + r];
                const double wt = wts[t * c.k + r];
                for (uint32_t i = 0; i < c.i; ++i) {
                    double g = 0, up = 0;
                    const double* wg = &gu.val[((size_t)e * 2 * c.i + i) * c.h];
                    const double* wu = &gu.val[((size_t)e * 2 * c.i + c.i + i) * c.h];
                    for (uint32_t h = 0; h < c.h; ++h) {
                        g += wg[h] * to_f32(x[(size_t)t * c.h + h]);
                        up += wu[h] * to_f32(x[(size_t)t * c.h + h]);
                    }
                    av[i] = act_ref<T>(g, up, to_f32(gu_bias[(size_t)e * 2 * c.i + i]), to_f32(gu_bias[(size_t)e * 2 * c.i + c.i + i]), c);
                }
                for (uint32_t h = 0; h < c.h; ++h) {
                    double v = 0, m = 0;
                    const double* wd = &dn.val[((size_t)e * c.h + h) * c.i];
                    for (uint32_t i = 0; i < c.i; ++i) {
                        v += wd[i] * av[i];
                        m += std::fabs(wd[i] * av[i]);
                    }
                    if (c.bias) v = rnd<T>(v) + to_f32(dn_bias[(size_t)e * c.h + h]);
                    ref[(size_t)t * c.h + h] += wt * rnd<T>(v);
                    mag[(size_t)t * c.h + h] += std::fabs(wt) * (m + std::fabs(v));
                }
            }
        for (size_t j = 0; j < ref.size(); ++j) {
            const double got = to_f32(out[j]);
            const double err = std::fabs(got - ref[j]) / (2 * u * (std::fabs(ref[j]) + mag[j]) + 1e-30);
            if (!(err <= 1.0)) {
                why = "output " + std::to_string(j / c.h) + "," + std::to_string(j % c.h) + ": " + std::to_string(got) + " vs " + std::to_string(ref[j]);
                break;
            }
            worst = std::max(worst, err);
        }
    }
    uint32_t most = *std::max_element(load.begin(), load.end()), empty = (uint32_t)std::count(load.begin(), load.end(), 0u);
    std::printf("%s %-6s T=%u E=%u k=%u H=%u I=%u %s%s %s%s logits=%s seed=%u | loads max %u, %u empty, %u tiles of %u: %s %.3f\n",
                why.empty() ? "ok  " : "FAIL", name, c.t, c.e, c.k, c.h, c.i, c.routing ? "topk-softmax" : "softmax-topk", c.norm ? "+norm" : "",
                c.swiglu ? "swiglu" : "silu", c.bias ? "+bias" : "", c.logits.c_str(), c.seed, most, empty, real_tiles, tiles,
                why.empty() ? "worst error / allowed" : why.c_str(), worst);
    return why.empty() ? 0 : 1;
}

int main(int argc, char** argv) {
    if (argc != 13) {
        std::fprintf(stderr, "usage: moe_driver DTYPE T E K H I ROUTING NORM ACT BIAS LOGITS SEED\n");
        return 2;
    }
    const std::string dt = argv[1];
    auto u = [&](int i) { return (uint32_t)std::stoul(argv[i]); };
    Case c{u(2), u(3), u(4), u(5), u(6), u(7), u(8), std::string(argv[9]) == "swiglu", u(10), argv[11], u(12)};
    if (c.e > MOE_MAX_EXPERTS || c.k > MOE_MAX_TOPK || c.k > c.e) { std::fprintf(stderr, "E or k out of range\n"); return 2; }
    // u: the unit roundoff of T
    if (dt == "bf16") return run<__nv_bfloat16>("bf16", false, c, 1.0 / 512);
    if (dt == "f16") return run<__half>("f16", false, c, 1.0 / 2048);
    if (dt == "q4bf16") return run<__nv_bfloat16>("q4bf16", true, c, 1.0 / 512);
    if (dt == "q4f16") return run<__half>("q4f16", true, c, 1.0 / 2048);
    std::fprintf(stderr, "dtype must be bf16, f16, q4bf16 or q4f16\n");
    return 2;
}
