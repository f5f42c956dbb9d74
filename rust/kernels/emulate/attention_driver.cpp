// Runs paged_attention.cu and prefill_attention.cu (compiled on the host against shim.cuh,
// attention_shim.h and mma_shim.cuh) block by block, one OS thread per CUDA thread, on one random step,
// and compares every output row with a dense reference in double: causal, within the sliding window,
// scores soft-capped after the scale. The step is planned as mlc_core::attention::plan does (decode and
// short chunks split into partitions of SPLIT_KEYS = 128 keys, at most 64; longer chunks in query tiles of 64), or as a
// fixed decode plan (every token given as many partition rows as the most split one).
//
//   attention_driver DTYPE HEADS KV_HEADS HEAD_DIM BLOCK WINDOW SOFTCAP PLACEHOLDERS FIXED TILED SEED Q:C,Q:C,.. [SINKS [PAD]]
//
// WINDOW 0: none; SOFTCAP 0: none; PLACEHOLDERS 1: block-table entries wholly before each sequence's first
// query's window point at a block of NaNs (any read of it, even masked, shows as a NaN output); TILED 1:
// tiles go to the tiled kernel where it has an instance; SINKS (optional, 0: none) gives every head a sink
// logit (gpt-oss), SINKS * {2, -1, 0.5, 0.1}[h % 4] plus uniform noise of +-0.25 (with SINKS 4, sinks of 8
// and -4: above every score of a row, below all of them, and among them). PAD (fixed plans; optional, 0:
// none): padding rows after the sequences, as plan_fixed_decode lays them out for a CUDA-graph bucket larger
// than the batch (token 0 at position 0, context 1, an all-zero block table); their outputs are ignored,
// the real rows' must not change.
//
// Poisoned as the GPU leaves memory (cuda.rs allocates out, part_o and part_ml uninitialised): out, the
// partials and every shared-memory variable (harness.h, before each block) start as NaN; the counters are
// zero only where cuda.rs zeroes them (a step with split tokens), else one word of garbage; block 0 of the
// cache (where the zero padding of the block tables and the placeholders point) and one block no table
// names hold NaNs. A read of anything the kernels should not read, or did not write, shows as a NaN.
// Prints one line; exit status 1 if the error exceeds the dtype's tolerance or any output is not finite.
#define DECODE_TC_HOST 1  // decode_tc.cuh: the device function only (its entry points take dynamic shared memory)
#include "paged_attention.cu"
#include "prefill_attention.cu"
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

struct Case {
    std::string dtype;
    uint32_t heads, kv_heads, d, bs, window;
    float softcap;
    bool placeholders, fixed, tiled;
    uint32_t seed;
    std::vector<std::pair<uint32_t, uint32_t>> seqs;  // (query_len, context_len)
    float sinks = 0.f;                                 // 0: none
    uint32_t pad = 0;                                  // padding rows of a fixed plan
    bool scalar = false;                               // the per-token kernel's element-wise copies
    bool fp8 = false;                                  // dtype "<q dtype>/fp8": an FP8 e4m3 cache
};

// e4m3 as the CPU cache reads it (attention/cpu.rs): 0x7F / 0xFF NaN, exponent 0 subnormal.
static float e4m3_value(uint8_t b) {
    const float sign = b & 0x80 ? -1.f : 1.f;
    const int e = (b >> 3) & 0xF, m = b & 7;
    if ((b & 0x7F) == 0x7F) return NAN;
    return e == 0 ? sign * m * std::ldexp(1.f, -9) : sign * (1.f + m / 8.f) * std::ldexp(1.f, e - 7);
}
// The nearest e4m3 byte of |x| <= 448 (ties either way: the kernel reads whatever bytes the cache holds).
static uint8_t e4m3_byte(float x) {
    uint8_t best = 0;
    for (int b = 1; b < 0x7F; ++b)
        if (std::fabs(e4m3_value(b) - std::fabs(x)) < std::fabs(e4m3_value(best) - std::fabs(x))) best = b;
    return best | (x < 0 ? 0x80 : 0);
}

struct Plan {
    uint32_t num_tokens = 0, max_blocks = 1, num_short_work = 0, num_partials = 0, num_split_tokens = 0;
    std::vector<uint32_t> tables, query_start, context_len, token_seq, token_pos, token_splits, token_part;
    std::vector<uint32_t> work_token, work_split, tile_seq, tile_start;
};

// plan.rs's SPLIT_MIN_KEYS: two 64-key tiles per partition, so the tensor-core decode kernel's pipeline
// across tiles runs in every case with more than 64 keys.
constexpr uint32_t SPLIT_KEYS = 128;

static uint32_t num_splits(uint32_t q, uint32_t pos) {
    if (q > 16) return 1;
    return std::min<uint32_t>(std::max<uint32_t>((pos + SPLIT_KEYS) / SPLIT_KEYS, 1), ATTN_MAX_SPLITS);
}

static Plan make_plan(const Case& c, const std::vector<std::vector<uint32_t>>& tables) {
    Plan p;
    for (auto& [q, ctx] : c.seqs) p.max_blocks = std::max(p.max_blocks, (ctx + c.bs - 1) / c.bs);
    uint32_t cap = 1;
    for (auto& [q, ctx] : c.seqs) while (cap < num_splits(q, ctx - 1)) cap *= 2;
    std::vector<uint32_t> long_tokens;
    for (uint32_t s = 0; s < c.seqs.size(); ++s) {
        auto [q, ctx] = c.seqs[s];
        auto row = tables[s];
        row.resize(p.max_blocks, 0);
        p.tables.insert(p.tables.end(), row.begin(), row.end());
        p.query_start.push_back(p.num_tokens);
        p.context_len.push_back(ctx);
        if (q > 16)
            for (uint32_t start = 0; start < q; start += PREFILL_TILE_M) {
                p.tile_seq.push_back(s);
                p.tile_start.push_back(start);
            }
        for (uint32_t i = 0; i < q; ++i) {
            const uint32_t t = p.num_tokens++, pos = ctx - q + i, splits = num_splits(q, pos);
            p.token_seq.push_back(s);
            p.token_pos.push_back(pos);
            p.token_splits.push_back(splits);
            p.token_part.push_back(c.fixed ? t * cap : (splits > 1 ? p.num_partials : 0));
            if (c.fixed) p.num_partials += cap;
            else if (splits > 1) p.num_partials += splits;
            p.num_split_tokens += c.fixed || splits > 1;
            if (q > 16 && !c.fixed) {
                long_tokens.push_back(t);
                continue;
            }
            for (uint32_t z = 0; z < (c.fixed ? cap : splits); ++z) {
                p.work_token.push_back(t);
                p.work_split.push_back(z);
            }
        }
    }
    p.query_start.push_back(p.num_tokens);
    p.num_short_work = p.work_token.size();
    for (uint32_t t : long_tokens) {
        p.work_token.push_back(t);
        p.work_split.push_back(0);
    }
    return p;
}

template <typename T> static T from_float(float x) { return from_f32<T>(x); }

// cuda.rs's heads_per_block: the largest divisor of the GQA group up to ATTN_MAX_GROUP.
static uint32_t heads_per_block(uint32_t heads, uint32_t kv_heads) {
    const uint32_t g = heads / kv_heads;
    for (uint32_t d = std::min<uint32_t>(g, ATTN_MAX_GROUP); d > 1; --d)
        if (g % d == 0) return d;
    return 1;
}

template <typename T, typename KT, int D>
static void per_token(T* out, std::vector<float>& po, std::vector<float>& pml, std::vector<uint32_t>& counters,
                      const T* q, const KT* k, const KT* v, const Plan& p, const Case& c, uint32_t rows, float scale,
                      const float* sinks, const float* k_scales = nullptr, const float* v_scales = nullptr) {
    const uint32_t group = heads_per_block(c.heads, c.kv_heads);
    // As cuda.rs: 16-byte copies when rows are whole 16-byte words (the caches here are vector storage,
    // 16-byte aligned), unless the case asks for the element-wise copies (cuda.rs: unaligned caches).
    const uint32_t vec_ok = (c.d * sizeof(KT)) % 16 == 0 && !c.scalar;
    // As cuda.rs: the tensor-core instances for bf16 / f16 q at head_dim 64 / 128 exactly with 16-byte rows.
    if constexpr (!std::is_same_v<T, float> && (D == 64 || D == 128)) {
        if (c.d == (uint32_t)D && vec_ok) {
            // The kernel's dynamic shared memory, poisoned before every block as the static variables are.
            struct alignas(16) Chunk { uint8_t b[16]; };
            std::vector<Chunk> smem((decode_tc_smem_bytes<KT, D>() + 15) / 16);
            uint8_t* sm = reinterpret_cast<uint8_t*>(smem.data());
            g_before_block = [&] { std::memset(sm, 0xff, smem.size() * 16); };
            launch(rows, c.heads / group, DECODE_TC_THREADS, [&] {
                decode_attention_tc<T, KT, D>(out, po.data(), pml.data(), counters.data(), q, k, v, p.tables.data(),
                                              p.token_seq.data(), p.token_pos.data(), p.token_splits.data(),
                                              p.token_part.data(), p.work_token.data(), p.work_split.data(), c.heads,
                                              c.kv_heads, c.bs, p.max_blocks, scale, SPLIT_KEYS, c.window ? c.window : UINT32_MAX,
                                              c.softcap, sinks, group, k_scales, v_scales, sm);
            });
            g_before_block = nullptr;
            return;
        }
    }
    launch(rows, c.heads / group, ATTN_THREADS, [&] {
        paged_attention<T, KT, D>(out, po.data(), pml.data(), counters.data(), q, k, v, p.tables.data(), p.token_seq.data(),
                              p.token_pos.data(), p.token_splits.data(), p.token_part.data(), p.work_token.data(),
                              p.work_split.data(), c.heads, c.kv_heads, c.d, c.bs, p.max_blocks, scale, SPLIT_KEYS,
                              c.window ? c.window : UINT32_MAX, c.softcap, sinks, group, vec_ok, k_scales, v_scales);
    });
}

template <typename T, typename KT, int D, int BN>
static void tiled(T* out, const T* q, const KT* k, const KT* v, const Plan& p, const Case& c, float scale,
                  const float* sinks, const float* k_scales = nullptr, const float* v_scales = nullptr) {
    launch(p.tile_seq.size(), c.heads, PREFILL_THREADS, [&] {
        const uint32_t w = c.window ? c.window : UINT32_MAX;
        if (c.softcap > 0.f)
            prefill_attention<T, KT, D, BN, true>(out, q, k, v, p.tables.data(), p.query_start.data(), p.context_len.data(),
                                                  p.tile_seq.data(), p.tile_start.data(), c.heads, c.kv_heads, c.bs,
                                                  p.max_blocks, scale, w, c.softcap, sinks, k_scales, v_scales);
        else
            prefill_attention<T, KT, D, BN, false>(out, q, k, v, p.tables.data(), p.query_start.data(), p.context_len.data(),
                                                   p.tile_seq.data(), p.tile_start.data(), c.heads, c.kv_heads, c.bs,
                                                   p.max_blocks, scale, w, c.softcap, sinks, k_scales, v_scales);
    });
}

template <typename T>
static int run(const Case& c) {
    std::mt19937 rng(c.seed);
    std::uniform_real_distribution<float> unit(-1.f, 1.f);
    const uint32_t row = c.kv_heads * c.d;
    uint32_t needed = 0;
    for (auto& [q, ctx] : c.seqs) needed += (ctx + c.bs - 1) / c.bs;
    // Block 0: NaNs, named by the tables' zero padding and the placeholders; the last block: NaNs, named by
    // no table.
    const uint32_t num_blocks = needed + 2, poison = 0;
    std::vector<uint32_t> pool(needed);
    for (uint32_t i = 0; i < needed; ++i) pool[i] = i + 1;
    std::shuffle(pool.begin(), pool.end(), rng);
    std::vector<std::vector<uint32_t>> tables, kernel_tables;
    uint32_t next = 0, replaced = 0;
    for (auto& [q, ctx] : c.seqs) {
        std::vector<uint32_t> t(pool.begin() + next, pool.begin() + next + (ctx + c.bs - 1) / c.bs);
        next += t.size();
        tables.push_back(t);
        const uint32_t first = ctx - q, lo = c.window && first + 1 > c.window ? first + 1 - c.window : 0;
        if (c.placeholders)
            for (uint32_t b = 0; b < lo / c.bs; ++b, ++replaced) t[b] = poison;
        kernel_tables.push_back(t);
    }
    // Padding rows of a fixed plan: one query at position 0 over a table of zeros (plan_fixed_decode).
    Case padded = c;
    for (uint32_t i = 0; i < c.pad; ++i) {
        padded.seqs.emplace_back(1, 1);
        kernel_tables.push_back({0});
    }
    std::vector<T> k(num_blocks * c.bs * row), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
        const bool nan = i / (c.bs * row) == poison || i / (c.bs * row) == num_blocks - 1;
        k[i] = from_float<T>(nan ? NAN : unit(rng));
        v[i] = from_float<T>(nan ? NAN : unit(rng));
    }
    const Plan p = make_plan(padded, kernel_tables);
    std::vector<T> q(p.num_tokens * c.heads * c.d), out(q.size(), from_float<T>(NAN));
    for (auto& x : q) x = from_float<T>(3.f * unit(rng));
    std::vector<float> po(std::max(1u, p.num_partials * c.heads * c.d), NAN), pml(std::max(1u, p.num_partials * c.heads * 2), NAN);
    // cuda.rs: zeroed [num_tokens, num_heads] where the step has split tokens, else one uninitialised word.
    std::vector<uint32_t> counters = p.num_split_tokens ? std::vector<uint32_t>(p.num_tokens * c.heads, 0) : std::vector<uint32_t>(1, 0xdeadbeefu);
    const float scale = 1.f / std::sqrt((float)c.d);
    std::vector<float> sink_values;
    for (uint32_t h = 0; c.sinks != 0.f && h < c.heads; ++h) {
        static const float pattern[4] = {2.f, -1.f, 0.5f, 0.1f};
        sink_values.push_back(c.sinks * pattern[h % 4] + 0.25f * unit(rng));
    }
    const float* sinks = sink_values.empty() ? nullptr : sink_values.data();

    // An FP8 cache: each row (token, KV head) quantized by its own scale amax / 448, NaN blocks as e4m3
    // NaNs under NaN scales; the reference reads the same dequantized values.
    std::vector<uint8_t> k8, v8;
    std::vector<float> ks, vs;
    if (c.fp8) {
        for (auto [src, dst, sc] : {std::tuple{&k, &k8, &ks}, std::tuple{&v, &v8, &vs}}) {
            dst->resize(src->size());
            sc->resize(src->size() / c.d);
            for (size_t r = 0; r < sc->size(); ++r) {
                float amax = 0.f;
                for (uint32_t e = 0; e < c.d; ++e) amax = std::max(amax, std::fabs(to_f32((*src)[r * c.d + e])));
                if (std::isnan(to_f32((*src)[r * c.d]))) {
                    (*sc)[r] = NAN;
                    for (uint32_t e = 0; e < c.d; ++e) (*dst)[r * c.d + e] = 0x7F;
                    continue;
                }
                (*sc)[r] = std::max(amax / 448.f, FLT_MIN);
                for (uint32_t e = 0; e < c.d; ++e) {
                    (*dst)[r * c.d + e] = e4m3_byte(to_f32((*src)[r * c.d + e]) / (*sc)[r]);
                    (*src)[r * c.d + e] = from_float<T>(e4m3_value((*dst)[r * c.d + e]) * (*sc)[r]);  // what the reference reads
                }
            }
        }
    }

    const bool has_tiled = c.dtype != "f32" && (c.d == 64 || c.d == 96 || c.d == 128 || c.d == 256);
    const bool use_tiled = c.tiled && has_tiled && !p.tile_seq.empty();
    const uint32_t rows = use_tiled ? p.num_short_work : p.work_token.size();
    auto pt = [&](auto dim) {
        if (c.fp8)
            per_token<T, uint8_t, decltype(dim)::value>(out.data(), po, pml, counters, q.data(), k8.data(), v8.data(), p, c, rows,
                                                        scale, sinks, ks.data(), vs.data());
        else
            per_token<T, T, decltype(dim)::value>(out.data(), po, pml, counters, q.data(), k.data(), v.data(), p, c, rows, scale, sinks);
    };
    if (c.d <= 64) pt(std::integral_constant<int, 64>{});
    else if (c.d <= 128) pt(std::integral_constant<int, 128>{});
    else pt(std::integral_constant<int, 256>{});
    if (use_tiled) {
        if constexpr (!std::is_same_v<T, float>) {
            auto tl = [&](auto dim, auto bn) {
                constexpr int D = decltype(dim)::value, BN = decltype(bn)::value;
                if (c.fp8)
                    tiled<T, uint8_t, D, BN>(out.data(), q.data(), k8.data(), v8.data(), p, c, scale, sinks, ks.data(), vs.data());
                else
                    tiled<T, T, D, BN>(out.data(), q.data(), k.data(), v.data(), p, c, scale, sinks);
            };
            using I = std::integral_constant<int, 64>;
            if (c.d == 64) tl(I{}, I{});
            if (c.d == 96) tl(std::integral_constant<int, 96>{}, I{});
            if (c.d == 128) tl(std::integral_constant<int, 128>{}, I{});
            if (c.d == 256) tl(std::integral_constant<int, 256>{}, std::integral_constant<int, 32>{});
        }
    }

    // Dense reference over the real tables.
    double max_err = 0, max_ref = 0;
    size_t nonfinite = 0;
    const uint32_t group = c.heads / c.kv_heads;
    for (uint32_t s = 0; s < c.seqs.size(); ++s) {
        auto [ql, ctx] = c.seqs[s];
        for (uint32_t i = 0; i < ql; ++i) {
            const uint32_t t = p.query_start[s] + i, pos = ctx - ql + i;
            for (uint32_t h = 0; h < c.heads; ++h) {
                const uint32_t kvh = h / group;
                auto at = [&](const std::vector<T>& cache, uint32_t key, uint32_t dim) {
                    const size_t slot = (size_t)tables[s][key / c.bs] * c.bs + key % c.bs;
                    return (double)to_f32(cache[slot * row + kvh * c.d + dim]);
                };
                std::vector<double> w(ctx, 0.0);
                // A sink joins the max and the denominator and attends to no value.
                const double sink = sinks ? (double)sinks[h] : -INFINITY;
                double mx = sink;
                for (uint32_t key = 0; key < ctx; ++key) {
                    const bool in = key <= pos && (c.window == 0 || pos < key + c.window);
                    if (!in) { w[key] = -INFINITY; continue; }
                    double dot = 0;
                    for (uint32_t e = 0; e < c.d; ++e) dot += (double)to_f32(q[((size_t)t * c.heads + h) * c.d + e]) * at(k, key, e);
                    dot *= scale;
                    if (c.softcap > 0) dot = c.softcap * std::tanh(dot / c.softcap);
                    w[key] = dot;
                    mx = std::max(mx, dot);
                }
                double sum = sinks ? std::exp(sink - mx) : 0.0;
                for (auto& x : w) { x = x == -INFINITY ? 0.0 : std::exp(x - mx); sum += x; }
                for (uint32_t e = 0; e < c.d; ++e) {
                    double o = 0;
                    for (uint32_t key = 0; key < ctx; ++key) if (w[key] > 0) o += w[key] / sum * at(v, key, e);
                    const float got = to_f32(out[((size_t)t * c.heads + h) * c.d + e]);
                    if (!std::isfinite(got)) ++nonfinite;
                    else max_err = std::max(max_err, std::fabs(got - o));
                    max_ref = std::max(max_ref, std::fabs(o));
                }
            }
        }
    }
    const double tol = c.dtype == "f32" ? 1e-4 : c.dtype == "bf16" ? 1e-2 : 2e-3;
    const bool ok = nonfinite == 0 && max_err <= tol && max_ref > 0;
    std::printf("%s %s h=%u/%u d=%u bs=%u window=%u softcap=%g sinks=%g placeholders=%u fixed=%d tiled=%d: tokens=%u rows=%u "
                "tiles=%zu partials=%u pad=%u max_abs_err=%.3g (allowed %.3g) max_abs_ref=%.3g nonfinite=%zu\n",
                ok ? "ok  " : "FAIL", (c.dtype + (c.fp8 ? "/fp8" : "")).c_str(), c.heads, c.kv_heads, c.d, c.bs, c.window, c.softcap, c.sinks, replaced,
                c.fixed, use_tiled, p.num_tokens, rows, use_tiled ? p.tile_seq.size() : 0, p.num_partials, c.pad, max_err, tol,
                max_ref, nonfinite);
    return ok ? 0 : 1;
}

int main(int argc, char** argv) {
    if (argc < 13 || argc > 16) {
        std::fprintf(stderr, "usage: %s DTYPE HEADS KV_HEADS HEAD_DIM BLOCK WINDOW SOFTCAP PLACEHOLDERS FIXED TILED SEED Q:C,.. [SINKS [PAD [SCALAR]]]\n", argv[0]);
        return 2;
    }
    Case c{argv[1], (uint32_t)std::stoul(argv[2]), (uint32_t)std::stoul(argv[3]), (uint32_t)std::stoul(argv[4]),
           (uint32_t)std::stoul(argv[5]), (uint32_t)std::stoul(argv[6]), std::stof(argv[7]), argv[8][0] == '1',
           argv[9][0] == '1', argv[10][0] == '1', (uint32_t)std::stoul(argv[11]), {}};
    if (argc >= 14) c.sinks = std::stof(argv[13]);
    if (argc >= 15) c.pad = (uint32_t)std::stoul(argv[14]);
    if (argc >= 16) c.scalar = argv[15][0] == '1';
    if (c.pad && !c.fixed) {
        std::fprintf(stderr, "PAD needs a fixed plan\n");
        return 2;
    }
    std::string s = argv[12];
    for (size_t at = 0; at < s.size();) {
        size_t comma = s.find(',', at);
        if (comma == std::string::npos) comma = s.size();
        const std::string item = s.substr(at, comma - at);
        const size_t colon = item.find(':');
        c.seqs.emplace_back(std::stoul(item.substr(0, colon)), std::stoul(item.substr(colon + 1)));
        at = comma + 1;
    }
    if (const size_t slash = c.dtype.find("/fp8"); slash != std::string::npos) {
        c.fp8 = true;
        c.dtype = c.dtype.substr(0, slash);
    }
    if (c.dtype == "f32") return run<float>(c);
    if (c.dtype == "bf16") return run<__nv_bfloat16>(c);
    if (c.dtype == "f16") return run<__half>(c);
    std::fprintf(stderr, "unknown dtype %s\n", c.dtype.c_str());
    return 2;
}
