// Runs the fused mixture of experts (moe.cu: route, align, combine; moe_gemm.cu: the grouped GEMM, gate/up
// with its activation then down) compiled on the host against shim.cuh, attention_shim.h, q4_shim.h and
// mma_shim.cuh, block by block with one OS thread per CUDA thread, and checks it (moe_check.h).
//
//   moe_driver DTYPE T E K H I ROUTING NORM ACT BIAS LOGITS SEED
//   moe_driver mxfp4-dequant      (mxfp4_dequant.cuh's fragments against the reference, bit for bit)
//   DTYPE: bf16 f16 q4bf16 q4f16 mxfp4bf16; ROUTING: 0 softmax-top-k, 1 top-k-softmax; ACT: silu swiglu;
//   LOGITS: rand | ties (values in {0, 1, 2}) | one (every token's best expert is expert E / 2)
// Prints one line; exit status 1 on a failed check.
#define MOE_HOST 1
#define MG_HOST 1
#include <type_traits>
#include "moe.cu"
#include "mxfp4_shim.h"
#include "moe_gemm.cu"
#include "harness.h"
#include "moe_check.h"

template <typename T> struct Emulate {
    static void run(MoeCase<T>& d) {
        const Case& c = d.c;
        launch((c.t + MOE_ROUTE_WARPS - 1) / MOE_ROUTE_WARPS, 1, 32 * MOE_ROUTE_WARPS,
               [&] { moe_route(d.logits.data(), d.ids.data(), d.wts.data(), c.t, c.e, c.k, c.routing, c.norm); });
        launch(c.e, 1, MOE_ALIGN_THREADS, [&] { moe_align(d.ids.data(), d.slots, c.e, d.sorted.data(), d.tile_expert.data(), d.tiles); });
        std::vector<T> a((size_t)d.slots * c.i, hto<T>(NAN)), y((size_t)d.slots * c.h, hto<T>(NAN));
        std::vector<uint8_t> smem((d.fmt == MG_W_Q4 ? MG_Q4_SMEM_BYTES : d.fmt == MG_W_MXFP4 ? MG_MX_SMEM_BYTES : MG_DENSE_SMEM_BYTES) + 16);
        uint8_t* s = smem.data() + (16 - (uintptr_t)smem.data() % 16) % 16;
        // The dynamic shared memory starts each block as 0xff bytes (NaN), as a GPU leaves it: a read of a
        // stage or slot entry the block did not fill shows (harness.h poisons the __shared__ variables).
        g_before_block = [&] { std::memset(smem.data(), 0xff, smem.size()); };
        const float alpha = 1.702f, limit = 7.0f;
        auto gemm = [&](T* o, const T* in, const uint8_t* w, const T* b, uint32_t n, uint32_t k, uint32_t div, uint32_t md) {
            const uint32_t row_tiles = md == MG_PLAIN ? (n + MG_ROWS - 1) / MG_ROWS : (n + MG_ROWS / 2 - 1) / (MG_ROWS / 2);
            launch(row_tiles, d.tiles, MG_THREADS, [&] {
                const uint32_t *so = d.sorted.data();
                const int32_t* te = d.tile_expert.data();
                if (d.fmt == MG_W_Q4) moe_gemm<T, MG_W_Q4>(o, in, w, b, so, te, n, k, div, d.slots, md, alpha, limit, blockIdx.x, blockIdx.y, s);
                else if (d.fmt == MG_W_DENSE) moe_gemm<T, MG_W_DENSE>(o, in, w, b, so, te, n, k, div, d.slots, md, alpha, limit, blockIdx.x, blockIdx.y, s);
                else if constexpr (std::is_same_v<T, __nv_bfloat16>)
                    moe_gemm<T, MG_W_MXFP4>(o, in, w, b, so, te, n, k, div, d.slots, md, alpha, limit, blockIdx.x, blockIdx.y, s);
            });
        };
        gemm(a.data(), d.x.data(), d.gu.raw.data(), c.bias ? d.gu_bias.data() : nullptr, c.i, c.h, c.k, c.swiglu ? MG_SWIGLU : MG_SILU);
        gemm(y.data(), a.data(), d.dn.raw.data(), c.bias ? d.dn_bias.data() : nullptr, c.h, c.i, 1, MG_PLAIN);
        g_before_block = nullptr;
        launch(3, 1, 64, [&] { moe_combine<T>(d.out.data(), y.data(), d.wts.data(), c.t, c.k, c.h); });
    }
    // Plain host calls: the fragment code is per thread (no shuffles, no barriers).
    static void mx_frags(const std::vector<uint8_t>& buf, const std::vector<uint32_t>& offsets, std::vector<uint32_t>& out) {
        for (size_t b = 0; b < offsets.size(); ++b)
            for (int c = 0; c < 4; ++c) {
                uint32_t a[2][4];
                mx_a_fragments(a, &buf[offsets[b]], &buf[offsets[b]], c);
                std::memcpy(&out[(b * 4 + c) * 8], a, sizeof a);
            }
    }
};

int main(int argc, char** argv) { return run_cli<Emulate>(argc, argv); }
