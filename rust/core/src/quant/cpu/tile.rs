//! The kernel shape every weight type shares: a tile of `R` weight rows times `N` tokens, walked block
//! by block. A block of weights is `d * q + o` per value (`q` integers, `d` and `o` per block), so its
//! dot product with an activation block `dx * qx` is `d dx sum(q qx) + o * (dx sum(qx))`: an integer dot
//! product, one scale, and the activation's precomputed `s` times the block's offset.
//!
//! Tiles amortize loads: each weight block is unpacked once for `N` tokens and each activation block is
//! loaded once for `R` rows, and the `R * N` accumulators are independent, so the loop is not bound by
//! one accumulator's FMA latency. Every `(row, token)` accumulator sees the same operations in the same
//! order whatever the tile's shape, so results do not depend on the batch a token runs in.

use super::act::{ActBlock, QK};

/// `R` weight rows (`k / 32` blocks each) times `N` tokens' activation blocks -> `[R][N]` dot products.
///
/// # Safety
/// The kernel's instruction set is available ([`Kernels::for_type`](super::Kernels::for_type) hands out
/// only those). Kernels check the lengths themselves.
pub type Tile<const R: usize, const N: usize> = unsafe fn([&[u8]; R], [&[ActBlock]; N]) -> [[f32; N]; R];

/// One weight type's kernels at one instruction set level, in the tile shapes `gemm` uses.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub t1x1: Tile<1, 1>,
    pub t4x1: Tile<4, 1>,
    pub t1x4: Tile<1, 4>,
    pub t4x4: Tile<4, 4>,
    /// 4 rows x 8 tokens where a level has registers for it (AVX-512's token pairs): each weight block
    /// unpacked once for 8 tokens at batched decode.
    pub t4x8: Option<Tile<4, 8>>,
}

/// Instantiates [`Kernels`] from a kernel generic over `<R, N>`.
macro_rules! kernels_of {
    ($($f:ident)::+) => {
        $crate::quant::cpu::tile::Kernels {
            t1x1: $($f)::+::<1, 1>,
            t4x1: $($f)::+::<4, 1>,
            t1x4: $($f)::+::<1, 4>,
            t4x4: $($f)::+::<4, 4>,
            t4x8: None,
        }
    };
}
pub(crate) use kernels_of;

/// Bytes of a row holding `nb` activation blocks' worth of weights in blocks of `per_block` activation
/// blocks; `usize::MAX` (never a row's length, so the kernels' length check fails) when `nb` is not whole
/// blocks.
pub const fn row_bytes_of(nb: usize, per_block: usize, block_bytes: usize) -> usize {
    if nb % per_block == 0 {
        nb / per_block * block_bytes
    } else {
        usize::MAX
    }
}

/// A type file's `dequantize_row`, `kernels(isa)` and scalar tile, from its `BLOCK_BYTES`, `SUBS`
/// (activation blocks per weight block), `decode` and `x86::{avx2, avx512}`.
macro_rules! type_kernels {
    () => {
        $crate::quant::cpu::tile::type_kernels!(@with x86::avx512::<4, 1>, x86::avx512::<1, 4>, x86::avx512::<4, 4>, None);
    };
    // AVX-512 tiles of 4 tokens from `x86::avx512_pairs`, of 4 rows x 1 token from `x86::avx512_rowpairs`
    // (see `pairs.rs`).
    (pairs) => {
        $crate::quant::cpu::tile::type_kernels!(@with x86::avx512_rowpairs::<4, 1>, x86::avx512_pairs::<1, 4>, x86::avx512_pairs::<4, 4>, Some(x86::avx512_pairs::<4, 8>));
    };
    (@with $t4x1:expr, $t1x4:expr, $t4x4:expr, $t4x8:expr) => {
        /// One row's blocks -> `out: [k]` f32, the reference.
        pub fn dequantize_row(w: &[u8], out: &mut [f32]) {
            $crate::quant::cpu::tile::dequantize(w, out, decode)
        }

        fn row_bytes(nb: usize) -> usize {
            $crate::quant::cpu::tile::row_bytes_of(nb, SUBS, BLOCK_BYTES)
        }

        fn scalar<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[$crate::quant::cpu::act::ActBlock]; N]) -> [[f32; N]; R] {
            $crate::quant::cpu::tile::scalar(w, x, row_bytes, decode)
        }

        /// This type's kernels at `isa` (which the caller has checked the CPU has).
        pub fn kernels(isa: $crate::quant::cpu::dispatch::Isa) -> $crate::quant::cpu::tile::Kernels {
            use $crate::quant::cpu::dispatch::Isa;
            use $crate::quant::cpu::tile::kernels_of;
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => kernels_of!(x86::avx2),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => $crate::quant::cpu::tile::Kernels {
                    t1x1: x86::avx512::<1, 1>,
                    t4x1: $t4x1,
                    t1x4: $t1x4,
                    t4x4: $t4x4,
                    t4x8: $t4x8,
                },
                _ => kernels_of!(scalar),
            }
        }
    };
}
pub(crate) use type_kernels;

/// 32 weights (one activation block's worth) as the scalar kernel reads them: `w_i = d * q[i] + o`.
pub struct ScalarBlock {
    pub q: [i32; QK],
    pub d: f32,
    pub o: f32,
}

/// How a type's scalar code reads activation-block `b` (values `32 b .. 32 b + 32`) of a weight row.
pub type Decode = fn(&[u8], usize) -> ScalarBlock;

/// `w: one row's blocks -> out: [k]` f32 through a type's block decoder: the reference.
pub fn dequantize(w: &[u8], out: &mut [f32], decode: Decode) {
    for (b, y) in out.chunks_exact_mut(QK).enumerate() {
        let wb = decode(w, b);
        for (y, &q) in y.iter_mut().zip(&wb.q) {
            *y = wb.d * q as f32 + wb.o;
        }
    }
}

/// The portable tile kernel over a type's block decoder: the reference for the SIMD ones.
/// `row_bytes(nb)` is the byte length of a row of `nb` activation blocks' worth of weights.
pub fn scalar<const R: usize, const N: usize>(
    w: [&[u8]; R],
    x: [&[ActBlock]; N],
    row_bytes: fn(usize) -> usize,
    decode: Decode,
) -> [[f32; N]; R] {
    let nb = x[0].len();
    assert!(w.iter().all(|wr| wr.len() == row_bytes(nb)) && x.iter().all(|xt| xt.len() == nb), "weight rows and activations differ in length");
    let mut out = [[0f32; N]; R];
    for (row, o_row) in w.iter().zip(out.iter_mut()) {
        for b in 0..nb {
            let wb = decode(row, b);
            for (o, xt) in o_row.iter_mut().zip(&x) {
                let a = &xt[b];
                let sum: i32 = wb.q.iter().zip(a.q.iter().zip(&a.r)).map(|(&q, (&qx, &rx))| q * (128 * qx as i32 + rx as i32)).sum();
                *o += wb.d * a.fine_scale() * sum as f32 + wb.o * a.s;
            }
        }
    }
    out
}

/// The x86 tile kernel for one block type at one level, generic over `<R, N>`:
/// `$load!(row_ptr, b, &mut scratch) -> (w, aux, d, o)` unpacks the 32 weights of activation block `b` to operands for
/// `$dot!(acc, w, x) -> acc + [8 x i32]`; `$post!(p, aux)` applies per-lane integer scales where a type has them
/// (`aux`), after the activation's two stages are combined; `$row_bytes(nb)` is a row's length; `$offset`
/// says whether the type has an offset term at all.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_tile {
    ($name:ident, $feat:literal, $row_bytes:expr, $load:ident, $dot:ident, $post:ident, $offset:expr) => {
        $crate::quant::cpu::tile::x86_tile!(@body $name, $feat, $row_bytes, $load, x_bytes, idot_bytes, $dot, $post, $offset);
    };
    // AVX2 with 16-bit operands (see `tile16`): `$load!` gives the block's weights 0..16 and 16..32 as i16
    // in its `w` and `aux` slots.
    (i16 $name:ident, $row_bytes:expr, $load:ident, $offset:expr) => {
        $crate::quant::cpu::tile::x86_tile!(@body $name, "avx2,fma,f16c", $row_bytes, $load, x_i16, idot_i16, no_dot, no_post, $offset);
    };
    // `$xload!(a)`: a token's activation operands for one block; `$idot!(w, aux, x, $dot, $post)`: the
    // block's exact integer dot product with them, 8 lanes of i32.
    (@body $name:ident, $feat:literal, $row_bytes:expr, $load:ident, $xload:ident, $idot:ident, $dot:ident, $post:ident, $offset:expr) => {
        /// # Safety
        /// The CPU has the features in `$feat` (the dispatcher checks it).
        #[target_feature(enable = $feat)]
        pub unsafe fn $name<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[ActBlock]; N]) -> [[f32; N]; R] {
            let nb = tile_blocks!(w, x, $row_bytes);
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            // Rows are short (576 inputs: 6-10 cache lines), too short for the hardware prefetcher to
            // ramp up on each new tile's rows, so the next tile (the R rows after these, contiguous in a
            // matrix) is prefetched while this one runs; a prefetch past the end is harmless.
            let row_len = $row_bytes(nb);
            let step = row_len / nb;
            // Per-row scratch a type's `$load` may fill at a weight block's first activation block and
            // read at the others (Q4_K's 8 decoded scales and mins).
            #[allow(unused_mut, unused_variables)]
            let mut st = [[0f32; 16]; R];
            for b in 0..nb {
                let mut wv = [_mm256_setzero_si256(); R];
                let mut av = [_mm256_setzero_si256(); R];
                let mut dv = [_mm256_setzero_ps(); R];
                let mut ov = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    // SAFETY: activation block b's weights lie within w[r] (lengths checked above).
                    _mm_prefetch::<_MM_HINT_T0>(w[r].as_ptr().wrapping_add(R * row_len + b * step) as *const i8);
                    let (v, aux, d, o) = $load!(w[r].as_ptr(), b, &mut st[r]);
                    wv[r] = v;
                    av[r] = aux;
                    dv[r] = _mm256_set1_ps(d);
                    ov[r] = _mm256_set1_ps(o);
                }
                for t in 0..N {
                    let a = x[t].get_unchecked(b);
                    let xo = $xload!(a);
                    let dx = _mm256_set1_ps(a.fine_scale());
                    // The offset goes into all 8 lanes, so each carries an eighth (exact: a power of 2).
                    let sv = _mm256_set1_ps(a.s * 0.125);
                    for r in 0..R {
                        let p = $idot!(wv[r], av[r], xo, $dot, $post);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dv[r], dx), _mm256_cvtepi32_ps(p), acc[r][t]);
                        if $offset {
                            acc[r][t] = _mm256_fmadd_ps(ov[r], sv, acc[r][t]);
                        }
                    }
                }
            }
            let mut out = [[0f32; N]; R];
            for r in 0..R {
                for t in 0..N {
                    out[r][t] = hsum_ps!(acc[r][t]);
                }
            }
            out
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_tile;

/// A token's two activation stages as bytes: `(q, r)`.
#[cfg(target_arch = "x86_64")]
macro_rules! x_bytes {
    ($a:expr) => {
        (_mm256_loadu_si256($a.q.as_ptr() as *const __m256i), _mm256_loadu_si256($a.r.as_ptr() as *const __m256i))
    };
}

/// `128 p_q + p_r` per lane of 4 u8 x i8 products through `$dot`, then `$post`: at most
/// `128 * 4 * 255 * 127 + 4 * 255 * 64 < 2^24`, so also exact as an f32.
#[cfg(target_arch = "x86_64")]
macro_rules! idot_bytes {
    ($w:expr, $aux:expr, $x:expr, $dot:ident, $post:ident) => {
        $post!($dot!(_mm256_slli_epi32($dot!(_mm256_setzero_si256(), $w, $x.0), 7), $w, $x.1), $aux)
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use {idot_bytes, x_bytes};
