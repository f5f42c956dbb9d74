// The fused mixture of experts' check, shared by the CPU emulation (moe_driver.cpp) and the GPU runner
// (moe_gpu_check.cu): random inputs of a case (dense, Q4_0 or MXFP4 experts), the kernels' outputs as an executor leaves them, and the
// references they are checked against, written from the math, not from the kernels:
//   routing: moe.rs `route` (a sort with ties to the lower index) in f32: ids equal, weights within 1e-5
//   align:   every slot exactly once, in a tile of its expert; pads and unused tiles marked
//   output:  the whole layer in double from the routing, rounding to T where the unfused path does (gate /
//            up outputs, biases, activation ops, expert outputs); error <= 2 u (|ref| + sum of |terms|)
// Include after moe.cu and moe_gemm.cu (their constants). Host code only: conversions through the
// host-callable functions of cuda_bf16.h / cuda_fp16.h (or the emulation's stand-ins).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

inline float hf32(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float hf32(__half v) { return __half2float(v); }
template <typename T> T hto(float v);
template <> inline __nv_bfloat16 hto<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> inline __half hto<__half>(float v) { return __float2half(v); }

struct Case {
    uint32_t t, e, k, h, i, routing, norm, swiglu, bias;
    std::string logits;
    uint32_t seed;
};

// Stacked expert weights [E, rows, K] in T (dense), Q4_0 blocks or MXFP4 blocks (then MG_MX_TAIL_BYTES of
// padding, as moe_cuda.rs uploads them), and their values as the kernel uses them (exact in float).
template <typename T> struct Weights {
    std::vector<uint8_t> raw;
    std::vector<float> val;  // [E * rows, K]
};

// quant/mxfp4.rs `dequantize_ggml` on one value, in f32 as it computes: 2 e2m1[q] (ggml's doubled table)
// times 2^(e - 128) (subnormal below e = 2; e = 255 is 2^127).
inline float mx_ref(uint8_t e, int q) {
    static const float e2m1[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float half;
    std::memcpy(&half, &bits, 4);
    volatile float two = 2.0f * e2m1[q];  // f32 steps, as the reference (no contraction)
    return two * half;
}

template <typename T> inline Weights<T> make_weights(std::mt19937& rng, int fmt, size_t rows, size_t k, float scale) {
    Weights<T> w;
    w.val.resize(rows * k);
    if (fmt == MG_W_Q4) {
        std::uniform_real_distribution<float> d(-scale / 8, scale / 8);
        std::uniform_int_distribution<int> nib(0, 255);
        const size_t blocks = rows * k / 32;
        w.raw.resize(blocks * 18);
        for (size_t b = 0; b < blocks; ++b) {
            __half s = __float2half(d(rng));
            std::memcpy(&w.raw[b * 18], &s, 2);  // the f16 bits (the type is 2 bytes in CUDA and in the shim)
            for (int j = 0; j < 16; ++j) w.raw[b * 18 + 2 + j] = (uint8_t)nib(rng);
            const float sf = __half2float(s);
            for (int j = 0; j < 16; ++j) {
                w.val[b * 32 + j] = hf32(hto<T>(sf * (float)((w.raw[b * 18 + 2 + j] & 15) - 8)));
                w.val[b * 32 + j + 16] = hf32(hto<T>(sf * (float)((w.raw[b * 18 + 2 + j] >> 4) - 8)));
            }
        }
    } else if (fmt == MG_W_MXFP4) {
        // Scales 2^-8 .. 2^2 around the case's magnitude (an e2m1 value averages ~2.6 doubled), and one block
        // in 32 at an edge exponent: 0, 1 (subnormal powers) or 2 (the smallest normal one).
        const int centre = 128 + (int)std::lround(std::log2(scale / 5.0));
        std::uniform_int_distribution<int> ex(std::max(centre - 3, 3), std::min(centre + 2, 250)), edge(0, 95), byte(0, 255);
        const size_t blocks = rows * k / 32;
        w.raw.assign(blocks * 17 + MG_MX_TAIL_BYTES, 0xff);  // the tail: garbage the kernel may load, never use
        for (size_t b = 0; b < blocks; ++b) {
            const int r = edge(rng);
            uint8_t* blk = &w.raw[b * 17];
            blk[0] = (uint8_t)(r < 3 ? r : ex(rng));
            for (int j = 0; j < 16; ++j) blk[1 + j] = (uint8_t)byte(rng);
            for (int j = 0; j < 16; ++j) {
                w.val[b * 32 + j] = mx_ref(blk[0], blk[1 + j] & 15);
                w.val[b * 32 + j + 16] = mx_ref(blk[0], blk[1 + j] >> 4);
            }
        }
    } else {
        std::uniform_real_distribution<float> d(-scale, scale);
        w.raw.resize(rows * k * sizeof(T));
        T* p = reinterpret_cast<T*>(w.raw.data());
        for (size_t j = 0; j < rows * k; ++j) {
            p[j] = hto<T>(d(rng));
            w.val[j] = hf32(p[j]);
        }
    }
    return w;
}

// moe.rs `route` for one token, in f32: experts and weights in descending order of score.
inline void route_ref(const float* logits, uint32_t e, uint32_t k, uint32_t routing, bool norm, std::vector<uint32_t>& ids, std::vector<float>& ws) {
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

template <typename T> inline double rnd(double v) { return hf32(hto<T>((float)v)); }

// The gated activation on f32 sums, rounding as the unfused path does.
template <typename T> inline double act_ref(double gate, double up, double bg, double bu, const Case& c) {
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

inline uint32_t max_tiles(uint32_t slots, uint32_t experts) {
    return (slots + std::min(slots, experts) * (MOE_TILE - 1)) / MOE_TILE;  // moe_cuda.rs `max_tiles`
}

// A case's inputs and the buffers the executor fills (initialized to values no kernel writes).
template <typename T> struct MoeCase {
    Case c;
    int fmt;  // MG_W_DENSE / MG_W_Q4 / MG_W_MXFP4
    uint32_t slots, tiles;
    std::vector<float> logits;  // [T, E]
    std::vector<T> x;           // [T, H]
    Weights<T> gu, dn;          // [E, 2I, H], [E, H, I]
    std::vector<T> gu_bias, dn_bias;
    std::vector<uint32_t> ids, sorted;
    std::vector<float> wts;
    std::vector<int32_t> tile_expert;
    std::vector<T> out;  // [T, H]
};

template <typename T> MoeCase<T> make_case(const Case& c, int fmt) {
    MoeCase<T> d;
    d.c = c;
    d.fmt = fmt;
    d.slots = c.t * c.k;
    d.tiles = max_tiles(d.slots, c.e);
    std::mt19937 rng(c.seed);
    d.logits.resize((size_t)c.t * c.e);
    std::uniform_real_distribution<float> lg(-2.f, 2.f), act(-1.f, 1.f), bias_d(-0.5f, 0.5f);
    std::uniform_int_distribution<int> small(0, 2);
    for (auto& v : d.logits) v = c.logits == "ties" ? (float)small(rng) : lg(rng);
    if (c.logits == "one")
        for (uint32_t t = 0; t < c.t; ++t) d.logits[(size_t)t * c.e + c.e / 2] = 20.f;
    d.x.resize((size_t)c.t * c.h);
    for (auto& v : d.x) v = hto<T>(act(rng));
    d.gu = make_weights<T>(rng, fmt, (size_t)c.e * 2 * c.i, c.h, 2.f / std::sqrt((float)c.h));
    d.dn = make_weights<T>(rng, fmt, (size_t)c.e * c.h, c.i, 2.f / std::sqrt((float)c.i));
    d.gu_bias.resize((size_t)c.e * 2 * c.i);
    d.dn_bias.resize((size_t)c.e * c.h);
    for (auto& v : d.gu_bias) v = hto<T>(bias_d(rng));
    for (auto& v : d.dn_bias) v = hto<T>(bias_d(rng));
    d.ids.assign(d.slots, 12345u);
    d.sorted.assign((size_t)d.tiles * MOE_TILE, 0xdeadbeefu);
    d.wts.assign(d.slots, NAN);
    d.tile_expert.assign(d.tiles, 777);
    d.out.assign((size_t)c.t * c.h, hto<T>(NAN));
    return d;
}

// Checks what the executor left in `d`; prints one line; 0 if every check passed.
template <typename T> int check_case(const char* name, const MoeCase<T>& d, double u) {
    const Case& c = d.c;
    const uint32_t slots = d.slots, tiles = d.tiles;
    const auto &logits = d.logits, &wts = d.wts;
    const auto &ids = d.ids, &sorted = d.sorted;
    const auto& tile_expert = d.tile_expert;
    const auto &x = d.x, &gu_bias = d.gu_bias, &dn_bias = d.dn_bias, &out = d.out;
    const auto &gu = d.gu, &dn = d.dn;
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
                    const float* wg = &gu.val[((size_t)e * 2 * c.i + i) * c.h];
                    const float* wu = &gu.val[((size_t)e * 2 * c.i + c.i + i) * c.h];
                    for (uint32_t h = 0; h < c.h; ++h) {
                        g += (double)wg[h] * hf32(x[(size_t)t * c.h + h]);
                        up += (double)wu[h] * hf32(x[(size_t)t * c.h + h]);
                    }
                    av[i] = act_ref<T>(g, up, hf32(gu_bias[(size_t)e * 2 * c.i + i]), hf32(gu_bias[(size_t)e * 2 * c.i + c.i + i]), c);
                }
                for (uint32_t h = 0; h < c.h; ++h) {
                    double v = 0, m = 0;
                    const float* wd = &dn.val[((size_t)e * c.h + h) * c.i];
                    for (uint32_t i = 0; i < c.i; ++i) {
                        v += (double)wd[i] * av[i];
                        m += std::fabs((double)wd[i] * av[i]);
                    }
                    if (c.bias) v = rnd<T>(v) + hf32(dn_bias[(size_t)e * c.h + h]);
                    ref[(size_t)t * c.h + h] += wt * rnd<T>(v);
                    mag[(size_t)t * c.h + h] += std::fabs(wt) * (m + std::fabs(v));
                }
            }
        for (size_t j = 0; j < ref.size(); ++j) {
            const double got = hf32(out[j]);
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


// mxfp4_dequant.cuh's fragments against mx_ref, bit for bit (inf and -0 included): every scale byte, every
// nibble in every position (block j's 16 bytes are (j + 37 i) mod 256), at each of the 4 offsets from a
// 32-bit boundary a block can start at. `frags(buf, offsets, out)` runs mx_a_fragments(a, buf + off,
// buf + off, c) for every offset and lane column c and stores a[2][4] at out[(block * 4 + c) * 8].
template <typename F> int check_mx_dequant(F frags) {
    std::vector<uint8_t> buf;
    std::vector<uint32_t> offsets;
    for (int e = 0; e < 256; ++e)
        for (int j = 0; j < 256; ++j) {
            while (buf.size() % 4 != (size_t)((e + j) % 4)) buf.push_back(0xa5);
            offsets.push_back((uint32_t)buf.size());
            buf.push_back((uint8_t)e);
            for (int i = 0; i < 16; ++i) buf.push_back((uint8_t)((j + 37 * i) & 255));
        }
    buf.resize(buf.size() + 16, 0x5a);  // the last block's aligned words
    std::vector<uint32_t> out(offsets.size() * 4 * 8, 0xdeadbeefu);
    frags(buf, offsets, out);
    size_t bad = 0;
    std::string first;
    for (size_t b = 0; b < offsets.size(); ++b)
        for (int c = 0; c < 4; ++c)
            for (int step = 0; step < 2; ++step)
                for (int reg = 0; reg < 4; ++reg)
                    for (int h = 0; h < 2; ++h) {
                        const int el = step * 16 + 2 * c + (reg >= 2 ? 8 : 0) + h;  // rows g, g + 8 alike
                        const uint8_t* blk = &buf[offsets[b]];
                        const int q = el < 16 ? blk[1 + el] & 15 : blk[1 + el - 16] >> 4;
                        const __nv_bfloat16 want = __float2bfloat16(mx_ref(blk[0], q));
                        const uint16_t got = (uint16_t)(out[(b * 4 + c) * 8 + step * 4 + reg] >> (16 * h));
                        uint16_t wb;
                        std::memcpy(&wb, &want, 2);
                        if (got != wb && bad++ == 0)
                            first = "e " + std::to_string(blk[0]) + " nibble " + std::to_string(q) + ": " + std::to_string(got) + " != " + std::to_string(wb);
                    }
    std::printf("%s mxfp4 dequant: %zu blocks x 4 lanes, every e8m0 byte and nibble, offsets 0..3 mod 4: %s\n", bad ? "FAIL" : "ok  ",
                offsets.size(), bad ? (std::to_string(bad) + " wrong, first " + first).c_str() : "bit-exact");
    return bad ? 1 : 0;
}

// The command line of both runners: DTYPE T E K H I ROUTING NORM ACT BIAS LOGITS SEED; runs `exec` on the
// case. `mxfp4-dequant` alone: check_mx_dequant through Exec<__nv_bfloat16>::mx_frags.
template <template <typename> class Exec> int run_cli(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == "mxfp4-dequant") return check_mx_dequant(Exec<__nv_bfloat16>::mx_frags);
    if (argc != 13) {
        std::fprintf(stderr, "usage: %s DTYPE T E K H I ROUTING NORM ACT BIAS LOGITS SEED | mxfp4-dequant\n", argv[0]);
        return 2;
    }
    const std::string dt = argv[1];
    auto u = [&](int i) { return (uint32_t)std::stoul(argv[i]); };
    Case c{u(2), u(3), u(4), u(5), u(6), u(7), u(8), std::string(argv[9]) == "swiglu", u(10), argv[11], u(12)};
    if (c.e > MOE_MAX_EXPERTS || c.k > MOE_MAX_TOPK || c.k > c.e) { std::fprintf(stderr, "E or k out of range\n"); return 2; }
    auto go = [&](auto tag, const char* name, int fmt, double unit) {
        using T = decltype(tag);
        MoeCase<T> d = make_case<T>(c, fmt);
        Exec<T>::run(d);
        return check_case<T>(name, d, unit);
    };
    // the unit roundoff of T
    if (dt == "bf16") return go(__nv_bfloat16{}, "bf16", MG_W_DENSE, 1.0 / 512);
    if (dt == "f16") return go(__half{}, "f16", MG_W_DENSE, 1.0 / 2048);
    if (dt == "q4bf16") return go(__nv_bfloat16{}, "q4bf16", MG_W_Q4, 1.0 / 512);
    if (dt == "q4f16") return go(__half{}, "q4f16", MG_W_Q4, 1.0 / 2048);
    if (dt == "mxfp4bf16") return go(__nv_bfloat16{}, "mxfp4bf16", MG_W_MXFP4, 1.0 / 512);
    std::fprintf(stderr, "dtype must be bf16, f16, q4bf16, q4f16 or mxfp4bf16\n");
    return 2;
}
