//! x86 kernels over [`kpack`](super::kpack)'s interleaved Q4_K / Q6_K groups (16 rows x `N` tokens;
//! [`kmat`](super::kmat) holds the scalar reference, the bounds and the float order they follow).
//!
//! A 64-byte chunk of nibbles unpacks to four vectors of 32 i16 (8 values of 16 rows), each scaled by
//! its sub-block's scales (`vpmullw`, once per group, not per token); each then meets a broadcast pair
//! of a token's 16-bit activations in `vpdpwssd` (AVX-512 VNNI) or `vpmaddwd` + `vpaddd` (AVX2, 8 rows
//! per register). With fewer than 4 tokens each token gets 4 accumulators, so the dot products do not
//! wait on one another (integer sums: the split does not change the result).

// Index loops, not iterator adapters: a generic adapter the optimizer leaves out of line runs without
// the kernel's target features and takes its vector operands through memory (seen in release builds).
#![allow(clippy::needless_range_loop)]

use super::kmat::{KAct, SUB};
use super::kpack::{q41, q4k, q6k, q80, ROWS, SB};
use super::x86::{rows_out256, token_rows};
use std::arch::x86_64::*;

/// Accumulator slots per token: 4 independent chains for narrow tiles.
const fn slots(n: usize) -> usize {
    if n < 4 {
        4
    } else {
        1
    }
}

macro_rules! check {
    ($g:expr, $x:expr, $t0:expr, $n:expr, $bytes:expr) => {
        assert!($g.len() == $x.k / SB * $bytes && $t0 + $n <= $x.t, "packed group and activations differ")
    };
}

/// The token pair `p` (two i16 as one i32) of token row `xq`.
macro_rules! pair {
    ($xq:expr, $p:expr) => {
        ($xq as *const i32).add($p).read_unaligned()
    };
}

/// `acc + w . x` in i16 pairs with `vpdpwssd` itself: LLVM otherwise splits the intrinsic into
/// `vpmaddwd` + `vpaddd` (two instructions for one).
macro_rules! dpwssd512 {
    ($acc:expr, $w:expr, $x:expr) => {{
        let mut a = $acc;
        std::arch::asm!("vpdpwssd {a}, {w}, {x}", a = inout(zmm_reg) a, w = in(zmm_reg) $w, x = in(zmm_reg) $x, options(pure, nomem, nostack));
        a
    }};
}

/// Adds 8 values of 16 rows (`$w`: 4 vectors of i16 pairs, k-pairs `$p0 ..= $p0 + 3`) times each token's
/// activations into the token's accumulators.
macro_rules! dots512 {
    ($ia:ident, $w:expr, $xq:expr, $p0:expr, $n:expr) => {
        for m in 0..4 {
            let slot = if slots($n) == 4 { m } else { 0 };
            for t in 0..$n {
                $ia[slot][t] = dpwssd512!($ia[slot][t], $w[m], _mm512_set1_epi32(pair!($xq[t], $p0 + m)));
            }
        }
    };
}

/// Ends an activation block: `inner = fma(sum, d_x, inner)` per token, accumulators back to zero.
macro_rules! close512 {
    ($ia:ident, $inner:ident, $x:expr, $blk:expr, $t0:expr, $n:expr) => {
        for t in 0..$n {
            let mut isum = $ia[0][t];
            if slots($n) == 4 {
                isum = _mm512_add_epi32(_mm512_add_epi32(isum, $ia[1][t]), _mm512_add_epi32($ia[2][t], $ia[3][t]));
            }
            let dx = _mm512_set1_ps(*$x.d.get_unchecked(($t0 + t) * ($x.k / SUB) + $blk));
            $inner[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dx, $inner[t]);
            for s in 0..slots($n) {
                $ia[s][t] = _mm512_setzero_si512();
            }
        }
    };
}

/// The 64 bytes at `$p` as 4 vectors of 16 rows' value pairs (kpack's chunk order), low nibbles only.
macro_rules! nibbles512 {
    ($p:expr) => {{
        let raw = _mm512_loadu_si512($p as *const __m512i);
        let nib = _mm512_set1_epi8(0xF);
        let lo = _mm512_and_si512(raw, nib);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nib);
        [_mm512_castsi512_si256(lo), _mm512_extracti64x4_epi64::<1>(lo), _mm512_castsi512_si256(hi), _mm512_extracti64x4_epi64::<1>(hi)]
    }};
}

/// Q6_K's high 2 bits of a chunk (32 bytes at `$p`) as 4 x 32 bytes of 0..=3 for `m = 0..4`.
macro_rules! q6_highs {
    ($p:expr) => {{
        let qh = _mm256_loadu_si256($p as *const __m256i);
        let two = _mm256_set1_epi8(3);
        [
            _mm256_and_si256(qh, two),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), two),
            _mm256_and_si256(_mm256_srli_epi16::<4>(qh), two),
            _mm256_and_si256(_mm256_srli_epi16::<6>(qh), two),
        ]
    }};
}

/// 16 per-row scale bytes at `$p` as i16 pairs (`$ext`: zero or sign extension to i32).
macro_rules! scales512 {
    ($p:expr, $ext:ident) => {{
        let v = $ext(_mm_loadu_si128($p as *const __m128i));
        _mm512_or_si512(_mm512_and_si512(v, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32::<16>(v))
    }};
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI (the dispatcher checks it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4k_avx512<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q4k::BYTES);
    let (k, nsb) = (x.k, x.k / SB);
    let xq = token_rows!(x, t0, N);
    // The sums live in `out` between super-blocks: registers go to the integer and block sums.
    let mut out = [[0f32; ROWS]; N];
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q4k::BYTES);
        let mut inner = [_mm512_setzero_ps(); N];
        let mut ia = [[_mm512_setzero_si512(); N]; 4];
        for j in 0..SB / SUB {
            let s = scales512!(b.add(q4k::SC + 16 * j), _mm512_cvtepu8_epi32);
            for c in 0..4 {
                let ch = 4 * j + c;
                _mm_prefetch::<_MM_HINT_T0>(b.add(64 * ch + 8 * q4k::BYTES) as *const i8);
                let n = nibbles512!(b.add(64 * ch));
                let w = [
                    _mm512_mullo_epi16(_mm512_cvtepu8_epi16(n[0]), s),
                    _mm512_mullo_epi16(_mm512_cvtepu8_epi16(n[1]), s),
                    _mm512_mullo_epi16(_mm512_cvtepu8_epi16(n[2]), s),
                    _mm512_mullo_epi16(_mm512_cvtepu8_epi16(n[3]), s),
                ];
                dots512!(ia, w, xq, sb * SB / 2 + 4 * ch, N);
            }
            close512!(ia, inner, x, sb * (SB / SUB) + j, t0, N);
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(b.add(q4k::D) as *const __m256i));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(b.add(q4k::DMIN) as *const __m256i));
        let mut mf = [_mm512_setzero_ps(); SB / SUB];
        for sj in 0..SB / SUB {
            let m = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.add(q4k::M + 16 * sj) as *const __m128i));
            mf[sj] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(m));
        }
        for t in 0..N {
            let mut a = _mm512_fmadd_ps(inner[t], d, _mm512_loadu_ps(out[t].as_ptr()));
            let s = x.s.as_ptr().add((t0 + t) * (k / SUB) + sb * (SB / SUB));
            for sj in 0..SB / SUB {
                a = _mm512_fnmadd_ps(mf[sj], _mm512_set1_ps(*s.add(sj)), a);
            }
            _mm512_storeu_ps(out[t].as_mut_ptr(), a);
        }
    }
    out
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI (the dispatcher checks it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q6k_avx512<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q6k::BYTES);
    let nsb = x.k / SB;
    let xq = token_rows!(x, t0, N);
    let mut out = [[0f32; ROWS]; N];
    let bias = _mm512_set1_epi16(32);
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q6k::BYTES);
        let mut inner = [_mm512_setzero_ps(); N];
        let mut ia = [[_mm512_setzero_si512(); N]; 4];
        let mut s = _mm512_setzero_si512();
        for j in 0..SB / SUB {
            for c in 0..4 {
                let ch = 4 * j + c;
                // One scale per 16 values: two chunks.
                if c % 2 == 0 {
                    s = scales512!(b.add(q6k::SC + 16 * (ch / 2)), _mm512_cvtepi8_epi32);
                }
                _mm_prefetch::<_MM_HINT_T0>(b.add(q6k::QL + 64 * ch + 4 * q6k::BYTES) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.add(q6k::QH + 32 * ch + 4 * q6k::BYTES) as *const i8);
                let nibs = nibbles512!(b.add(q6k::QL + 64 * ch));
                let highs = q6_highs!(b.add(q6k::QH + 32 * ch));
                let mut w = [_mm512_setzero_si512(); 4];
                for m in 0..4 {
                    let q = _mm256_or_si256(nibs[m], _mm256_slli_epi16::<4>(highs[m]));
                    w[m] = _mm512_mullo_epi16(_mm512_sub_epi16(_mm512_cvtepu8_epi16(q), bias), s);
                }
                dots512!(ia, w, xq, sb * SB / 2 + 4 * ch, N);
            }
            close512!(ia, inner, x, sb * (SB / SUB) + j, t0, N);
        }
        let d = _mm512_loadu_ps(b.add(q6k::D) as *const f32);
        for t in 0..N {
            _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_fmadd_ps(inner[t], d, _mm512_loadu_ps(out[t].as_ptr())));
        }
    }
    out
}

/// 32 bytes' low 128 bits / high 128 bits zero-extended to 16 i16 each: rows 0..8 / 8..16 of a pair vector.
macro_rules! halves_u8 {
    ($v:expr) => {{
        let v = $v;
        [_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)), _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v))]
    }};
}

/// `[u8; 16]` per-row scales at `p` as i16 pairs for rows 0..8 and 8..16 (`$ext`: zero or sign extension).
macro_rules! scale_pairs {
    ($p:expr, $ext:ident) => {{
        let p = $p as *const u8;
        let lo = $ext(_mm_loadl_epi64(p as *const __m128i));
        let hi = $ext(_mm_loadl_epi64(p.add(8) as *const __m128i));
        let m = _mm256_set1_epi32(0xFFFF);
        [
            _mm256_or_si256(_mm256_and_si256(lo, m), _mm256_slli_epi32::<16>(lo)),
            _mm256_or_si256(_mm256_and_si256(hi, m), _mm256_slli_epi32::<16>(hi)),
        ]
    }};
}

/// AVX2's `dots512!`: 8 rows per register, `vpmaddwd` then `vpaddd`.
macro_rules! dots256 {
    ($ia:ident, $w:expr, $xq:expr, $p0:expr) => {
        for m in 0..4 {
            for t in 0..$xq.len() {
                let xv = _mm256_set1_epi32(pair!($xq[t], $p0 + m));
                $ia[t][0] = _mm256_add_epi32($ia[t][0], _mm256_madd_epi16($w[m][0], xv));
                $ia[t][1] = _mm256_add_epi32($ia[t][1], _mm256_madd_epi16($w[m][1], xv));
            }
        }
    };
}

/// AVX2's `close512!`.
macro_rules! close256 {
    ($ia:ident, $inner:ident, $x:expr, $blk:expr, $t0:expr, $n:expr) => {
        for t in 0..$n {
            let dx = _mm256_set1_ps(*$x.d.get_unchecked(($t0 + t) * ($x.k / SUB) + $blk));
            for hf in 0..2 {
                $inner[t][hf] = _mm256_fmadd_ps(_mm256_cvtepi32_ps($ia[t][hf]), dx, $inner[t][hf]);
                $ia[t][hf] = _mm256_setzero_si256();
            }
        }
    };
}

/// `acc = fma(inner, d, acc)` with `$d` the 16 rows' scales as two halves.
macro_rules! scale_rows256 {
    ($acc:ident, $inner:ident, $d:expr) => {
        for t in 0..$acc.len() {
            for hf in 0..2 {
                $acc[t][hf] = _mm256_fmadd_ps($inner[t][hf], $d[hf], $acc[t][hf]);
            }
        }
    };
}

/// The 64 bytes of a chunk as 4 x 32 nibble bytes (value pairs for `m = 0..4`, kpack's order).
macro_rules! nibbles256 {
    ($p:expr) => {{
        let p = $p;
        let nib = _mm256_set1_epi8(0xF);
        let r0 = _mm256_loadu_si256(p as *const __m256i);
        let r1 = _mm256_loadu_si256(p.add(32) as *const __m256i);
        [
            _mm256_and_si256(r0, nib),
            _mm256_and_si256(r1, nib),
            _mm256_and_si256(_mm256_srli_epi16::<4>(r0), nib),
            _mm256_and_si256(_mm256_srli_epi16::<4>(r1), nib),
        ]
    }};
}

/// # Safety
/// The CPU has AVX2, FMA and F16C (the dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4k_avx2<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q4k::BYTES);
    let (k, nsb) = (x.k, x.k / SB);
    let xq = token_rows!(x, t0, N);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q4k::BYTES);
        let mut inner = [[_mm256_setzero_ps(); 2]; N];
        let mut ia = [[_mm256_setzero_si256(); 2]; N];
        for j in 0..SB / SUB {
            let s = scale_pairs!(b.add(q4k::SC + 16 * j), _mm256_cvtepu8_epi32);
            for c in 0..4 {
                let ch = 4 * j + c;
                let mut w = [[_mm256_setzero_si256(); 2]; 4];
                let parts = nibbles256!(b.add(64 * ch));
                for m in 0..4 {
                    let [w0, w1] = halves_u8!(parts[m]);
                    w[m] = [_mm256_mullo_epi16(w0, s[0]), _mm256_mullo_epi16(w1, s[1])];
                }
                dots256!(ia, w, xq, sb * SB / 2 + 4 * ch);
            }
            close256!(ia, inner, x, sb * (SB / SUB) + j, t0, N);
        }
        let d = [
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::D) as *const __m128i)),
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::D + 16) as *const __m128i)),
        ];
        scale_rows256!(acc, inner, d);
        let dmin = [
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::DMIN) as *const __m128i)),
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::DMIN + 16) as *const __m128i)),
        ];
        for sj in 0..SB / SUB {
            let mp = b.add(q4k::M + 16 * sj);
            let m = [
                _mm256_mul_ps(dmin[0], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(mp as *const __m128i)))),
                _mm256_mul_ps(dmin[1], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(mp.add(8) as *const __m128i)))),
            ];
            for t in 0..N {
                let s = _mm256_set1_ps(*x.s.get_unchecked((t0 + t) * (k / SUB) + sb * (SB / SUB) + sj));
                for hf in 0..2 {
                    acc[t][hf] = _mm256_fnmadd_ps(m[hf], s, acc[t][hf]);
                }
            }
        }
    }
    rows_out256!(acc, N)
}

/// # Safety
/// The CPU has AVX2, FMA and F16C (the dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6k_avx2<const N: usize>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q6k::BYTES);
    let nsb = x.k / SB;
    let xq = token_rows!(x, t0, N);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let bias = _mm256_set1_epi16(32);
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q6k::BYTES);
        let mut inner = [[_mm256_setzero_ps(); 2]; N];
        let mut ia = [[_mm256_setzero_si256(); 2]; N];
        let mut s = [_mm256_setzero_si256(); 2];
        for j in 0..SB / SUB {
            for c in 0..4 {
                let ch = 4 * j + c;
                if c % 2 == 0 {
                    s = scale_pairs!(b.add(q6k::SC + 16 * (ch / 2)), _mm256_cvtepi8_epi32);
                }
                let highs = q6_highs!(b.add(q6k::QH + 32 * ch));
                let mut w = [[_mm256_setzero_si256(); 2]; 4];
                let parts = nibbles256!(b.add(q6k::QL + 64 * ch));
                for m in 0..4 {
                    let [w0, w1] = halves_u8!(_mm256_or_si256(parts[m], _mm256_slli_epi16::<4>(highs[m])));
                    w[m] = [_mm256_mullo_epi16(_mm256_sub_epi16(w0, bias), s[0]), _mm256_mullo_epi16(_mm256_sub_epi16(w1, bias), s[1])];
                }
                dots256!(ia, w, xq, sb * SB / 2 + 4 * ch);
            }
            close256!(ia, inner, x, sb * (SB / SUB) + j, t0, N);
        }
        let d = [_mm256_loadu_ps(b.add(q6k::D) as *const f32), _mm256_loadu_ps(b.add(q6k::D + 32) as *const f32)];
        scale_rows256!(acc, inner, d);
    }
    rows_out256!(acc, N)
}

/// A Q4_0 / Q4_1 (`$q8` false) or Q8_0 group's kernel start: `(bytes per block, offset of the row scales,
/// the tile's token rows)`, the lengths checked.
macro_rules! b32_start {
    ($g:expr, $x:expr, $t0:expr, $n:expr, $q8:expr) => {{
        let (bytes, d_at) = if $q8 { (q80::BYTES, q80::D) } else { (q41::BYTES, q41::D) };
        assert!($g.len() == $x.k / SUB * bytes && $t0 + $n <= $x.t, "packed group and activations differ");
        (bytes, d_at, token_rows!($x, $t0, $n))
    }};
}

/// Q4_0 / Q4_1 ([`q41`], `Q8 = false`) and Q8_0 ([`q80`], `Q8 = true`) groups: per block of 32 values,
/// the weights unpacked once for all `N` tokens to 2 x 8 rows of i16 pairs (Q4: the nibbles, zero-extended;
/// Q8_0: the bytes, `vpmovsxbw`), then 16 `vpmaddwd` + `vpaddd` per token and half, then
/// `acc = fma(sum d, d_x, acc)` and (Q4) `acc = fma(m, s_x, acc)` per half, as `kmat::scalar_b32` does lane
/// by lane. Bounds: `32 * 15 * 16383 < 2^24` (Q4: exact as f32) and `32 * 128 * 16383 < 2^27` (Q8_0:
/// exact in i32, its conversion to f32 rounds the same way in the reference).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (the dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn b32_avx2<const N: usize, const Q8: bool>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    let (bytes, d_at, xq) = b32_start!(g, x, t0, N, Q8);
    let (k, nb) = (x.k, x.k / SUB);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for j in 0..nb {
        let b = g.as_ptr().add(j * bytes);
        let mut ia = [[_mm256_setzero_si256(); 2]; N];
        for c in 0..4 {
            let mut w = [[_mm256_setzero_si256(); 2]; 4];
            if Q8 {
                for m in 0..4 {
                    let p = b.add(q80::QS + 32 * (4 * c + m));
                    w[m] = [_mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)), _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i))];
                }
            } else {
                let parts = nibbles256!(b.add(q41::QS + 64 * c));
                for m in 0..4 {
                    w[m] = halves_u8!(parts[m]);
                }
            }
            dots256!(ia, w, xq, j * SUB / 2 + 4 * c);
        }
        let f16x8 = |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(b.add(at) as *const __m128i));
        let d = [f16x8(d_at), f16x8(d_at + 16)];
        let m = if Q8 { [_mm256_setzero_ps(); 2] } else { [f16x8(q41::M), f16x8(q41::M + 16)] };
        for t in 0..N {
            let blk = (t0 + t) * (k / SUB) + j;
            let dx = _mm256_set1_ps(*x.d.get_unchecked(blk));
            for hf in 0..2 {
                acc[t][hf] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ia[t][hf]), d[hf]), dx, acc[t][hf]);
                if !Q8 {
                    acc[t][hf] = _mm256_fmadd_ps(m[hf], _mm256_set1_ps(*x.s.get_unchecked(blk)), acc[t][hf]);
                }
            }
        }
    }
    rows_out256!(acc, N)
}

/// `acc + w . x` with `x` the i16 pair at `$p` broadcast to every lane, folded into the `vpdpwssd`
/// (one instruction, where `_mm512_set1_epi32` would add a broadcast).
macro_rules! dpwssd512_at {
    ($acc:expr, $w:expr, $p:expr) => {{
        let mut a = $acc;
        std::arch::asm!("vpdpwssd {a}, {w}, dword ptr [{p}]{{1to16}}", a = inout(zmm_reg) a, w = in(zmm_reg) $w, p = in(reg) $p, options(pure, readonly, nostack));
        a
    }};
}

/// [`b32_avx2`] with the 16 rows of a group in one register: per block of 32 values the weights unpack
/// once for all `N` tokens to 4 x 4 vectors of 16 rows' i16 pairs, then 16 `vpdpwssd` per token (4
/// accumulators below 4 tokens, so the products do not wait on one another; integer sums, so the split
/// changes nothing), then the same float steps lane by lane: the bits of [`b32_avx2`] and
/// `kmat::scalar_b32`. Against the row-by-row AVX-512 tiles on GGUF blocks (`pairs.rs`) this takes about a
/// third of the instructions per row at batch 1 (no per-row nibble unpacking, scale broadcasts or
/// horizontal sums), where those are bound by instructions rather than memory.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI (the dispatcher checks it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn b32_avx512<const N: usize, const Q8: bool>(g: &[u8], x: &KAct, t0: usize) -> [[f32; ROWS]; N] {
    let (bytes, d_at, xq) = b32_start!(g, x, t0, N, Q8);
    let (k, nb) = (x.k, x.k / SUB);
    let mut acc = [_mm512_setzero_ps(); N];
    for j in 0..nb {
        let b = g.as_ptr().add(j * bytes);
        // The group's blocks are contiguous; ask for the one 4 blocks ahead (a prefetch past the end is
        // harmless).
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bytes + line) as *const i8);
        }
        let mut ia = [[_mm512_setzero_si512(); N]; 4];
        for c in 0..4 {
            let mut w = [_mm512_setzero_si512(); 4];
            if Q8 {
                for m in 0..4 {
                    w[m] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(b.add(q80::QS + 32 * (4 * c + m)) as *const __m256i));
                }
            } else {
                let n = nibbles512!(b.add(q41::QS + 64 * c));
                for m in 0..4 {
                    w[m] = _mm512_cvtepu8_epi16(n[m]);
                }
            }
            for m in 0..4 {
                let slot = if slots(N) == 4 { m } else { 0 };
                for t in 0..N {
                    // pair j * 16 + 4 c + m of the token's row: 2 i16 each
                    ia[slot][t] = dpwssd512_at!(ia[slot][t], w[m], xq[t].add(j * SUB + 8 * c + 2 * m));
                }
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(b.add(d_at) as *const __m256i));
        let m = if Q8 { _mm512_setzero_ps() } else { _mm512_cvtph_ps(_mm256_loadu_si256(b.add(q41::M) as *const __m256i)) };
        for t in 0..N {
            let mut isum = ia[0][t];
            if slots(N) == 4 {
                isum = _mm512_add_epi32(_mm512_add_epi32(isum, ia[1][t]), _mm512_add_epi32(ia[2][t], ia[3][t]));
            }
            let blk = (t0 + t) * (k / SUB) + j;
            let dx = _mm512_set1_ps(*x.d.get_unchecked(blk));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum), d), dx, acc[t]);
            if !Q8 {
                acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(*x.s.get_unchecked(blk)), acc[t]);
            }
        }
    }
    let mut out = [[0f32; ROWS]; N];
    for t in 0..N {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
    out
}
