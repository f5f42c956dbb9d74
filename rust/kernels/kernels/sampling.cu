// Batched token sampling: one block per row of f32 logits [B, V]; only the token ids, their logprobs and
// the requested top logprobs leave the device. The semantics are those of the CPU sampler
// (mlc_core::sampler, the reference), step by step:
//
//   1. penalties and logit_bias on the row's few listed tokens (repetition penalty HF-style, frequency and
//      presence OpenAI-style, then the bias) into a work copy of the row (only rows that list tokens),
//      NaN -> -inf and +inf -> FLT_MAX as the row is read;
//      a row with no finite value left becomes a point mass (see `degenerate_peak`);
//   2. logprobs: log_softmax of that processed row (the normaliser summed in f64);
//   3. greedy (temperature <= 0): argmax, lowest id on ties. Otherwise weights exp((x - max) / T), with
//      top_k (the k-th largest value as a threshold, ties with it kept), top_p (the smallest best-first
//      prefix reaching top_p of the top_k mass; best first = larger value, then lower id) and min_p
//      dropping tokens, and an inverse-CDF draw in id order: the first token whose cumulative weight
//      exceeds uniform * total, with the uniform number drawn on the host from the row's own generator.
//
// The thresholds are found by radix selection over the order-preserving bits of the values (4 bits per
// pass, per-thread register histograms reduced across the block): a fixed number of passes over the row,
// no sort, and no floating-point atomics, so a row's result does not depend on the batch or on timing.
//
// Roundings follow the CPU where it matters for agreement: the penalty arithmetic is written with
// explicit _rn intrinsics (no fused multiply-add), and exp is taken in f64 and rounded to f32, which is
// the correctly rounded f32 exp that the host's libm returns in all but rare cases. Sums run in f64 in a
// different order than on the CPU, so a token can differ only where the uniform lands within about 1e-16
// of a CDF boundary, or where a top_p boundary is equally close.
//
//   sample_rows_f32  logits [B, V] f32, work [W, V] f32 (scratch: one row per row with listed tokens),
//                    params (RowParams [B] then Entry [E], as 32-bit words), out [B, SAMPLE_OUT_WORDS] u32
#include "common.cuh"
#include <float.h>

// Fixed at 1024 for the device (mlc_kernels::SAMPLING_THREADS); the CPU emulation (rust/kernels/emulate)
// builds smaller blocks.
#ifndef SAMPLE_THREADS
#define SAMPLE_THREADS 1024
#endif
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define SAMPLE_MAX_TOP 20
// out row: token, logprob bits, number of top entries, 0, then SAMPLE_MAX_TOP (id, logprob bits) pairs.
#define SAMPLE_OUT_WORDS (4 + 2 * SAMPLE_MAX_TOP)
#define RADIX_BITS 4
#define RADIX_BINS (1 << RADIX_BITS)

// Per-row parameters: 16 words, mirrored by mlc_core::sampler::device_rows.
struct RowParams {
    double uniform;               // words 0-1: in [0, 1), one per row and call
    float temperature;            // 2
    float top_p;                  // 3
    float min_p;                  // 4
    float repetition_penalty;     // 5
    float frequency_penalty;      // 6
    float presence_penalty;       // 7
    int32_t top_k;                // 8: <= 0 disabled
    uint32_t num_top;             // 9: top logprobs to return (0 without logprobs), <= SAMPLE_MAX_TOP
    uint32_t entry_start;         // 10: this row's entries are [entry_start, entry_end)
    uint32_t entry_end;           // 11
    uint32_t work_row;            // 12: row of the work buffer holding the processed copy (rows with entries)
    uint32_t reserved[3];         // 13-15
};

// One listed token of a row (each token at most once per row, always < V): 4 words.
#define ENTRY_SEEN 1u     // in the prompt or output: repetition penalty applies
#define ENTRY_COUNTED 2u  // generated `count` times: frequency and presence penalties apply
#define ENTRY_BIAS 4u     // logit_bias applies
struct Entry {
    uint32_t token;
    uint32_t count;
    float bias;
    uint32_t flags;
};

// ---------------------------------------------------------------------------------------------------
// Values, keys and weights.

__device__ __forceinline__ float sanitize(float x) {
    if (isnan(x)) return -INFINITY;
    return x == INFINITY ? FLT_MAX : x;
}

// Order-preserving bits: a larger float gives a larger key; -0.0 and 0.0 share the key of 0.0 (they
// compare equal everywhere on the CPU).
__device__ __forceinline__ uint32_t ordered_key(float x) {
    const uint32_t b = __float_as_uint(__fadd_rn(x, 0.0f));
    return (b >> 31) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k >> 31) ? (k & 0x7fffffffu) : ~k);
}

// Best first as one integer: smaller is better (larger value, then lower id), as the CPU's rank_key.
__device__ __forceinline__ unsigned long long rank_key(uint32_t id, float x) {
    return ((unsigned long long)(~ordered_key(x)) << 32) | id;
}

__device__ __forceinline__ float exp_f32(float y) { return (float)exp((double)y); }

// The keep-or-drop rule of the CPU's Truncation. Disabled filters hold values that keep everything.
struct Rule {
    float max;          // row maximum
    float temperature;
    float min_logit;    // top_k threshold (-inf: none)
    float end_x;        // top_p: last kept (value, id); (-inf, UINT_MAX): none
    uint32_t end_id;
    float min_weight;   // min_p (0: none)
};

__device__ __forceinline__ float rule_weight(const Rule& r, uint32_t id, float x) {
    if (x < r.min_logit) return 0.0f;
    if (x < r.end_x || (x == r.end_x && id > r.end_id)) return 0.0f;
    const float w = exp_f32(__fdiv_rn(__fsub_rn(x, r.max), r.temperature));
    return w < r.min_weight ? 0.0f : w;
}

// The processed row as every pass reads it: sanitized on the fly from the raw logits, or from the work
// copy where penalties or biases changed some tokens, or a point mass. Rows without listed tokens (most)
// thus need no copy of their own.
#define NO_POINT 0xffffffffu
struct Row {
    const float* data;
    uint32_t point;  // the point-mass token, or NO_POINT
    __device__ __forceinline__ float operator[](uint32_t i) const {
        if (point != NO_POINT) return i == point ? 0.0f : -INFINITY;
        return sanitize(data[i]);
    }
};

// ---------------------------------------------------------------------------------------------------
// Block-wide reductions (SAMPLE_THREADS threads). Every result is computed in a fixed order and is the
// same in all threads; each helper ends with a barrier so its scratch can be reused at once.

struct Scratch {
    double sum[SAMPLE_WARPS];
    unsigned long long key[SAMPLE_WARPS];
    int32_t idx[SAMPLE_WARPS];
    uint32_t cnt[SAMPLE_WARPS];
    double hist_mass[SAMPLE_WARPS][RADIX_BINS];
    uint32_t hist_count[SAMPLE_WARPS][RADIX_BINS];
    double bins_mass[RADIX_BINS];
    uint32_t bins_count[RADIX_BINS];
    uint32_t nonempty;
    uint32_t found;
};

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ uint32_t warp_sum_u32(uint32_t v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ unsigned long long warp_min_u64(unsigned long long v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const unsigned long long o = __shfl_xor_sync(0xffffffffu, v, off);
        v = o < v ? o : v;
    }
    return v;
}

__device__ __forceinline__ int32_t warp_max_i32(int32_t v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ double block_sum(double v, Scratch& s) {
    v = warp_sum_f64(v);
    if ((threadIdx.x & 31) == 0) s.sum[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < SAMPLE_WARPS; ++w) total += s.sum[w];
    __syncthreads();
    return total;
}

__device__ unsigned long long block_min(unsigned long long v, Scratch& s) {
    v = warp_min_u64(v);
    if ((threadIdx.x & 31) == 0) s.key[threadIdx.x >> 5] = v;
    __syncthreads();
    unsigned long long best = ~0ull;
    for (int w = 0; w < SAMPLE_WARPS; ++w) best = s.key[w] < best ? s.key[w] : best;
    __syncthreads();
    return best;
}

// Sums per-thread counts over the block into s.bins_count (read it before the next histogram).
__device__ void block_hist_count(const uint32_t (&count)[RADIX_BINS], Scratch& s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int b = 0; b < RADIX_BINS; ++b) {
        const uint32_t c = warp_sum_u32(count[b]);
        if (lane == 0) s.hist_count[warp][b] = c;
    }
    __syncthreads();
    if (threadIdx.x < RADIX_BINS) {
        uint32_t c = 0;
        for (int w = 0; w < SAMPLE_WARPS; ++w) c += s.hist_count[w][threadIdx.x];
        s.bins_count[threadIdx.x] = c;
    }
    __syncthreads();
}

// Sums per-thread masses over the block into s.bins_mass, and ORs the masks of bins holding a kept token
// into s.nonempty (read them before the next histogram).
__device__ void block_hist_mass(const double (&mass)[RADIX_BINS], uint32_t nonempty, Scratch& s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int b = 0; b < RADIX_BINS; ++b) {
        const double m = warp_sum_f64(mass[b]);
        if (lane == 0) s.hist_mass[warp][b] = m;
    }
    nonempty = __reduce_or_sync(0xffffffffu, nonempty);
    if (lane == 0) s.cnt[warp] = nonempty;
    __syncthreads();
    if (threadIdx.x < RADIX_BINS) {
        double m = 0.0;
        for (int w = 0; w < SAMPLE_WARPS; ++w) m += s.hist_mass[w][threadIdx.x];
        s.bins_mass[threadIdx.x] = m;
    }
    if (threadIdx.x == 0) {
        uint32_t any = 0;
        for (int w = 0; w < SAMPLE_WARPS; ++w) any |= s.cnt[w];
        s.nonempty = any;
    }
    __syncthreads();
}

// The digit at `shift` of `key` when its higher digits equal those of `prefix`, else -1.
__device__ __forceinline__ int radix_digit(uint32_t key, uint32_t prefix, int shift) {
    const uint32_t high = shift + RADIX_BITS >= 32 ? 0u : (0xffffffffu << (shift + RADIX_BITS));
    return (key & high) == (prefix & high) ? (int)((key >> shift) & (RADIX_BINS - 1)) : -1;
}

// ---------------------------------------------------------------------------------------------------
// Selections over the processed row.

// top_k: the k-th largest value (1 <= k <= n, repeated values counted separately).
__device__ __noinline__ float kth_largest(const Row& row, uint32_t n, uint32_t k, Scratch& s) {
    uint32_t prefix = 0, above = 0;
    for (int shift = 32 - RADIX_BITS; shift >= 0; shift -= RADIX_BITS) {
        uint32_t count[RADIX_BINS];
#pragma unroll
        for (int b = 0; b < RADIX_BINS; ++b) count[b] = 0;
        for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
            const int d = radix_digit(ordered_key(row[i]), prefix, shift);
#pragma unroll
            for (int b = 0; b < RADIX_BINS; ++b) count[b] += d == b;
        }
        block_hist_count(count, s);
        // above < k <= above + (entries matching prefix): the k-th lies in one of these bins.
        for (int d = RADIX_BINS - 1; d >= 0; --d) {
            const uint32_t c = s.bins_count[d];
            if (above + c >= k) { prefix |= (uint32_t)d << shift; break; }
            above += c;
        }
    }
    return key_value(prefix);
}

// top_p: the smallest best-first prefix of the tokens `rule` keeps (weight > 0) whose mass reaches
// `target` (> 0); sets rule.end_x / end_id to its last member, or leaves them when the whole row does
// not reach `target` (rounding with top_p close to 1), as the CPU then keeps every candidate.
__device__ __noinline__ void nucleus_end(const Row& row, uint32_t n, double target, Rule& rule, Scratch& s) {
    uint32_t prefix = 0;
    double above = 0.0;  // mass of the keys greater than every key still matching `prefix`
    for (int shift = 32 - RADIX_BITS; shift >= 0; shift -= RADIX_BITS) {
        double mass[RADIX_BINS];
#pragma unroll
        for (int b = 0; b < RADIX_BINS; ++b) mass[b] = 0.0;
        uint32_t nonempty = 0;
        for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
            const float x = row[i];
            const int d = radix_digit(ordered_key(x), prefix, shift);
            if (d < 0) continue;
            const double w = rule_weight(rule, i, x);
            if (w > 0.0) nonempty |= 1u << d;
#pragma unroll
            for (int b = 0; b < RADIX_BINS; ++b) mass[b] += d == b ? w : 0.0;
        }
        block_hist_mass(mass, nonempty, s);
        int chosen = -1;
        for (int d = RADIX_BINS - 1; d >= 0; --d) {
            if (((s.nonempty >> d) & 1u) && above + s.bins_mass[d] >= target) { chosen = d; break; }
            above += s.bins_mass[d];
        }
        if (chosen < 0) return;
        prefix |= (uint32_t)chosen << shift;
    }
    // All keys equal to `prefix` share one value and weight w; in id order the j-th of them ends the
    // nucleus, for the smallest j >= 1 with above + j w >= target.
    const float value = key_value(prefix);
    const double w = rule_weight(rule, 0, value);
    double need = ceil((target - above) / w);
    const uint32_t j = need < 1.0 ? 1u : (need > 4294967295.0 ? 0xffffffffu : (uint32_t)need);

    // Walk the row in tiles of SAMPLE_THREADS ids, counting ties in id order.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t seen = 0, last = 0;
    if (threadIdx.x == 0) s.found = 0xffffffffu;
    __syncthreads();
    for (uint32_t base = 0; base < n; base += SAMPLE_THREADS) {
        const uint32_t i = base + threadIdx.x;
        const bool tie = i < n && ordered_key(row[i]) == prefix;
        const uint32_t ballot = __ballot_sync(0xffffffffu, tie);
        if (lane == 0) s.cnt[warp] = __popc(ballot);
        __syncthreads();
        uint32_t before = 0, tile = 0;
        for (int w2 = 0; w2 < SAMPLE_WARPS; ++w2) {
            before += w2 < warp ? s.cnt[w2] : 0;
            tile += s.cnt[w2];
        }
        const uint32_t rank = seen + before + __popc(ballot & ((1u << lane) - 1)) + 1;
        if (tie && rank == j) s.found = i;
        if (tie && rank == seen + tile) s.idx[0] = (int32_t)i;  // the tile's last tie
        __syncthreads();
        if (tile > 0) last = (uint32_t)s.idx[0];
        seen += tile;
        const bool done = s.found != 0xffffffffu;
        __syncthreads();
        if (done) break;
    }
    // Fewer ties than j (rounding): the last tie ends the nucleus.
    rule.end_x = value;
    rule.end_id = s.found != 0xffffffffu ? s.found : last;
    __syncthreads();
}

// The inverse-CDF draw in id order. Each warp owns a contiguous segment of ids; the warp whose segment
// holds the crossing walks it 32 ids at a time with a prefix sum. Falls back, as the CPU, to the last
// kept token when rounding leaves the crossing past the end, and to `best` when nothing is kept.
__device__ __noinline__ uint32_t draw(const Row& row, uint32_t n, const Rule& rule, double uniform, uint32_t best, Scratch& s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t seg = ((n + SAMPLE_WARPS - 1) / SAMPLE_WARPS + 31) / 32 * 32;
    const uint32_t start = min(n, warp * seg), end = min(n, start + seg);
    double mass = 0.0;
    int32_t last = -1;
    for (uint32_t i = start + lane; i < end; i += 32) {
        const float w = rule_weight(rule, i, row[i]);
        mass += w;
        if (w > 0.0f) last = (int32_t)i;
    }
    mass = warp_sum_f64(mass);
    last = warp_max_i32(last);
    if (lane == 0) {
        s.sum[warp] = mass;
        s.idx[warp] = last;
    }
    __syncthreads();
    double total = 0.0;
    int32_t last_kept = -1;
    for (int w = 0; w < SAMPLE_WARPS; ++w) {
        total += s.sum[w];
        last_kept = max(last_kept, s.idx[w]);
    }
    const double target = uniform * total;
    int chosen = -1;
    double offset = 0.0;
    for (int w = 0; w < SAMPLE_WARPS; ++w) {
        if (offset + s.sum[w] > target) { chosen = w; break; }
        offset += s.sum[w];
    }
    if (threadIdx.x == 0) s.found = 0xffffffffu;
    __syncthreads();
    if (warp == chosen) {
        // Continues past the segment if rounding put the crossing there.
        double running = offset;
        for (uint32_t base = warp * seg; base < n; base += 32) {
            const uint32_t i = base + lane;
            const float w = i < n ? rule_weight(rule, i, row[i]) : 0.0f;
            double scan = w;
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const double o = __shfl_up_sync(0xffffffffu, scan, off);
                if (lane >= off) scan += o;
            }
            const uint32_t hit = __ballot_sync(0xffffffffu, w > 0.0f && running + scan > target);
            if (hit != 0) {
                if (lane == 0) s.found = base + __ffs(hit) - 1;
                break;
            }
            running += __shfl_sync(0xffffffffu, scan, 31);
        }
    }
    __syncthreads();
    const uint32_t token = s.found != 0xffffffffu ? s.found : (last_kept >= 0 ? (uint32_t)last_kept : best);
    __syncthreads();
    return token;
}

// ---------------------------------------------------------------------------------------------------
// Row preparation.

// Step 1 for one listed token, from its raw logit; `unbiased` receives the value before the bias.
__device__ __forceinline__ float process_entry(float x, const Entry& e, const RowParams& p, float* unbiased) {
    if (e.flags & ENTRY_SEEN) {
        x = x > 0.0f ? __fdiv_rn(x, p.repetition_penalty) : __fmul_rn(x, p.repetition_penalty);
    }
    if (e.flags & ENTRY_COUNTED) {
        const float penalty = __fadd_rn(__fmul_rn((float)e.count, p.frequency_penalty), p.presence_penalty);
        x = __fsub_rn(x, penalty);
    }
    *unbiased = sanitize(x);
    if (e.flags & ENTRY_BIAS) x = __fadd_rn(x, e.bias);
    return sanitize(x);
}

// A row with no finite value after step 1 becomes a point mass (logprob 0) on the argmax of the row
// before logit_bias, lowest id on ties, or on token 0 when that has no finite value either. Only biased
// tokens can differ there from the processed row, which is -inf everywhere. Returns the token.
__device__ __noinline__ uint32_t degenerate_peak(const Entry* entries, const RowParams& p, const float* logits, Scratch& s) {
    unsigned long long best = ~0ull;
    for (uint32_t e = p.entry_start + threadIdx.x; e < p.entry_end; e += SAMPLE_THREADS) {
        const Entry en = entries[e];
        float unbiased;
        process_entry(logits[en.token], en, p, &unbiased);
        if (unbiased > -INFINITY) {
            const unsigned long long k = rank_key(en.token, unbiased);
            best = k < best ? k : best;
        }
    }
    best = block_min(best, s);
    return best == ~0ull ? 0u : (uint32_t)best;
}

__device__ __noinline__ void write_top(const Row& row, uint32_t n, uint32_t num_top, float peak, double ln_total,
                          uint32_t* out, Scratch& s) {
    unsigned long long prev = 0;
    for (uint32_t j = 0; j < num_top && j < n; ++j) {
        unsigned long long best = ~0ull;
        for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
            const unsigned long long k = rank_key(i, row[i]);
            if ((j == 0 || k > prev) && k < best) best = k;
        }
        best = block_min(best, s);
        prev = best;
        if (threadIdx.x == 0) {
            const uint32_t id = (uint32_t)best;
            out[4 + 2 * j] = id;
            out[5 + 2 * j] = __float_as_uint((float)((double)__fsub_rn(row[id], peak) - ln_total));
        }
    }
}

// ---------------------------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows_f32(const float* __restrict__ logits, float* work_all, const uint32_t* __restrict__ params,
                uint32_t* __restrict__ out_all, uint32_t batch, uint32_t vocab) {
    __shared__ Scratch s;
    const uint32_t r = blockIdx.x;
    if (r >= batch || vocab == 0) return;
    const RowParams p = reinterpret_cast<const RowParams*>(params)[r];
    const Entry* entries = reinterpret_cast<const Entry*>(params + (size_t)batch * (sizeof(RowParams) / 4));
    const float* raw = logits + (size_t)r * vocab;
    uint32_t* out = out_all + (size_t)r * SAMPLE_OUT_WORDS;
    const uint32_t n = vocab;

    // 1. the processed row
    Row row{raw, NO_POINT};
    if (p.entry_end > p.entry_start) {
        float* work = work_all + (size_t)p.work_row * vocab;
        for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) work[i] = sanitize(raw[i]);
        __syncthreads();
        for (uint32_t e = p.entry_start + threadIdx.x; e < p.entry_end; e += SAMPLE_THREADS) {
            const Entry en = entries[e];
            float unbiased;
            work[en.token] = process_entry(raw[en.token], en, p, &unbiased);
        }
        __syncthreads();
        row.data = work;
    }
    unsigned long long best = ~0ull;
    for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
        const unsigned long long k = rank_key(i, row[i]);
        best = k < best ? k : best;
    }
    best = block_min(best, s);
    uint32_t peak_id = (uint32_t)best;
    float peak = row[peak_id];
    if (!(peak > -INFINITY)) {
        peak_id = degenerate_peak(entries, p, raw, s);
        row.point = peak_id;
        peak = 0.0f;
    }

    // 2. the log-softmax normaliser
    double z = 0.0;
    for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) z += (double)exp_f32(__fsub_rn(row[i], peak));
    const double ln_total = log(block_sum(z, s));

    // 3. the token
    uint32_t token = peak_id;
    if (!(p.temperature <= 0.0f)) {
        Rule rule;
        rule.max = peak;
        rule.temperature = p.temperature;
        rule.min_logit = p.top_k > 0 && (uint32_t)p.top_k <= n ? kth_largest(row, n, (uint32_t)p.top_k, s) : -INFINITY;
        rule.end_x = -INFINITY;
        rule.end_id = 0xffffffffu;
        rule.min_weight = 0.0f;
        if (p.top_p < 1.0f) {
            // The nucleus is measured after top_k and before min_p, as on the CPU.
            double mass = 0.0;
            for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) mass += rule_weight(rule, i, row[i]);
            const double target = (double)p.top_p * block_sum(mass, s);
            if (target > 0.0) {
                nucleus_end(row, n, target, rule, s);
            } else {
                rule.end_x = peak;  // an empty target keeps the best token alone
                rule.end_id = peak_id;
            }
        }
        rule.min_weight = fmaxf(p.min_p, 0.0f);
        token = draw(row, n, rule, p.uniform, peak_id, s);
    }

    // 4. outputs
    const uint32_t num_top = min(min(p.num_top, (uint32_t)SAMPLE_MAX_TOP), n);
    write_top(row, n, num_top, peak, ln_total, out, s);
    if (threadIdx.x == 0) {
        out[0] = token;
        out[1] = __float_as_uint((float)((double)__fsub_rn(row[token], peak) - ln_total));
        out[2] = num_top;
        out[3] = 0;
    }
}

// ---------------------------------------------------------------------------------------------------
// Plain greedy rows: out[r] = the argmax of row r (sanitized as above; lowest id on ties), one block per
// row. The whole row is read by every thread block in parallel, unlike a generic one-block reduction.

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
argmax_rows_f32(const float* __restrict__ logits, uint32_t* __restrict__ out, uint32_t batch, uint32_t vocab) {
    __shared__ Scratch s;
    const uint32_t r = blockIdx.x;
    if (r >= batch) return;
    const float* row = logits + (size_t)r * vocab;
    unsigned long long best = ~0ull;
    for (uint32_t i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const unsigned long long key = rank_key(i, sanitize(row[i]));
        best = key < best ? key : best;
    }
    best = block_min(best, s);
    if (threadIdx.x == 0) out[r] = vocab == 0 ? 0u : (uint32_t)(best & 0xffffffffull);
}
