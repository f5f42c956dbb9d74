//! x86 kernels of the 8-bit activation path ([`kmat8`](super::kmat8) holds the scalar reference, the
//! bounds and the float order they follow) over [`KLayout::Quads`](super::kpack::KLayout) groups.
//!
//! A 64-byte chunk of nibbles is two registers of 16 rows x 4 consecutive values as bytes (`and 0xF`,
//! `shift 4`), each meeting a token's 4 activation bytes, broadcast from memory, in `vpdpbusd`
//! (AVX-512 VNNI, 4 accumulators per token below 4 tokens, so the dot products do not wait on one
//! another: integer sums, the split does not change the result) or `vpmaddubsw` + `vpaddw` (AVX2, 8 rows
//! per 32-byte half), the i16 sums widened once per scale (`vpmaddwd` by the scale pairs): two vector
//! instructions per 32 products where `vpmaddubsw` + `vpmaddwd` by ones + `vpaddd` and a `vpmulld` per
//! scale took three and more (Qwen's Q4_K at 2-8 tokens about 1.3x as fast on Zen 3).

// Index loops, not iterator adapters: see kx86.rs (adapters left out of line lose the target features).
#![allow(clippy::needless_range_loop)]

use super::kmat::SUB;
use super::kmat8::{KAct8, HALF};
use super::kpack::{q4k, q6k, ROWS, SB};
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

/// `acc + w . x` in u8 x i8 quads, `x` the 4 activation bytes at `$p` broadcast from memory, in one
/// `vpdpbusd` (written out: the intrinsic may be split into `vpmaddubsw`-style sequences or lose the
/// memory broadcast).
macro_rules! dpbusd512 {
    ($acc:expr, $w:expr, $p:expr) => {{
        let mut a = $acc;
        std::arch::asm!("vpdpbusd {a}, {w}, dword ptr [{p}]{{1to16}}", a = inout(zmm_reg) a, w = in(zmm_reg) $w, p = in(reg) $p, options(pure, readonly, nostack));
        a
    }};
}

/// Adds the two registers `$w` (values `$v0 .. $v0 + 8` of 16 rows) times each token's activations into
/// the token's accumulators; `$c` (0..4) picks the slots for narrow tiles.
macro_rules! dots512 {
    ($ia:ident, $w:expr, $xq:expr, $v0:expr, $c:expr, $n:expr) => {
        for h in 0..2 {
            let slot = if slots($n) == 4 { (2 * $c + h) % 4 } else { 0 };
            for t in 0..$n {
                $ia[slot][t] = dpbusd512!($ia[slot][t], $w[h], $xq[t].add($v0 + 4 * h));
            }
        }
    };
}

/// A token's accumulator slots summed.
macro_rules! slot_sum512 {
    ($ia:ident, $t:expr, $n:expr) => {{
        let mut isum = $ia[0][$t];
        if slots($n) == 4 {
            isum = _mm512_add_epi32(_mm512_add_epi32(isum, $ia[1][$t]), _mm512_add_epi32($ia[2][$t], $ia[3][$t]));
        }
        isum
    }};
}

/// Token `t`'s activation scale of block `blk` of its row, broadcast.
macro_rules! dx {
    ($set1:ident, $x:expr, $t:expr, $blk:expr) => {
        $set1(*$x.d.get_unchecked($t * ($x.k / SUB) + $blk))
    };
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI (the dispatcher checks it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4k_avx512<const N: usize>(g: &[u8], x: &KAct8, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q4k::BYTES);
    let (k, nsb) = (x.k, x.k / SB);
    let xq = token_rows!(x, t0, N);
    let nib = _mm512_set1_epi8(0xF);
    // The sums live in `out` between super-blocks: registers go to the integer and block sums.
    let mut out = [[0f32; ROWS]; N];
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q4k::BYTES);
        let mut inner = [_mm512_setzero_ps(); N];
        for j in 0..SB / SUB {
            let mut ia = [[_mm512_setzero_si512(); N]; 4];
            for c in 0..4 {
                let ch = 4 * j + c;
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(64 * ch + 8 * q4k::BYTES) as *const i8);
                let raw = _mm512_loadu_si512(b.add(64 * ch) as *const __m512i);
                let w = [_mm512_and_si512(raw, nib), _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nib)];
                dots512!(ia, w, xq, sb * SB + 8 * ch, c, N);
            }
            let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.add(q4k::SC + 16 * j) as *const __m128i));
            for t in 0..N {
                let isum = _mm512_mullo_epi32(slot_sum512!(ia, t, N), sc);
                inner[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dx!(_mm512_set1_ps, x, t0 + t, sb * (SB / SUB) + j), inner[t]);
            }
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

/// Super-blocks ahead of the one being read that [`q6k_avx512`] asks the memory for (2 and 4 measured
/// alike; see there).
const Q6_PREFETCH_SB: usize = 2;

/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI (the dispatcher checks it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q6k_avx512<const N: usize>(g: &[u8], x: &KAct8, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q6k::BYTES);
    let (k, nsb) = (x.k, x.k / SB);
    let xq = token_rows!(x, t0, N);
    let nib = _mm512_set1_epi8(0xF);
    let top = _mm512_set1_epi8(0x30);
    // The high-bit planes (kpack): rows 0..8 of the first register at bits 0-1 (<< 4), rows 8..16 at
    // bits 2-3 (<< 2); of the second at bits 4-5 and 6-7 (>> 2). Per 16-bit lane, by 256-bit half.
    let shl = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let shr = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
    let mut out = [[0f32; ROWS]; N];
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q6k::BYTES);
        let mut inner = [_mm512_setzero_ps(); N];
        for j in 0..SB / SUB {
            let mut blk = [_mm512_setzero_si512(); N];
            for hf in 0..2 {
                let h = 2 * j + hf;
                let mut ia = [[_mm512_setzero_si512(); N]; 4];
                for t in 0..N {
                    ia[0][t] = _mm512_set1_epi32(*x.bias.get_unchecked((t0 + t) * (k / HALF) + sb * (SB / HALF) + h));
                }
                for cc in 0..2 {
                    let ch = 2 * h + cc;
                    // Two lines per chunk in address order from Q6_PREFETCH_SB super-blocks ahead (64 lines
                    // over a super-block's 32 chunks: all 53 of the one ahead, its scales included, and the
                    // next one's first). Asking for the QL and QH lines of each chunk instead, two places
                    // 2 KB apart and the scales not at all, streamed Qwen2.5-1.5B's Q6_K lm_head at 9.6-10.6
                    // ms per token where this takes 5.4-6.8 (MLC_CPU_PROFILE, 3 interleaved runs each).
                    let ahead = b.wrapping_add(Q6_PREFETCH_SB * q6k::BYTES + 128 * ch);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
                    let raw = _mm512_loadu_si512(b.add(q6k::QL + 64 * ch) as *const __m512i);
                    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(q6k::QH + 32 * ch) as *const __m256i));
                    let w = [
                        _mm512_or_si512(_mm512_and_si512(raw, nib), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), top)),
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(raw), nib), _mm512_and_si512(_mm512_srlv_epi16(qh, shr), top)),
                    ];
                    dots512!(ia, w, xq, sb * SB + 8 * ch, 2 * hf + cc, N);
                }
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(q6k::SC + 16 * h) as *const __m128i));
                for t in 0..N {
                    blk[t] = _mm512_add_epi32(blk[t], _mm512_mullo_epi32(slot_sum512!(ia, t, N), sc));
                }
            }
            for t in 0..N {
                inner[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(blk[t]), dx!(_mm512_set1_ps, x, t0 + t, sb * (SB / SUB) + j), inner[t]);
            }
        }
        let d = _mm512_loadu_ps(b.add(q6k::D) as *const f32);
        for t in 0..N {
            _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_fmadd_ps(inner[t], d, _mm512_loadu_ps(out[t].as_ptr())));
        }
    }
    out
}

/// An AVX2 Q4_K tile of `N` tokens: up to 4 tokens both row halves (rows 0..8 and 8..16, one register
/// each) in one pass over the weights, 8 tokens one half per pass (each half's bytes loaded on their
/// own, the activations broadcast twice), so the `2 N` or `N` i16 sums, the weights and a broadcast stay
/// within the 16 registers. The halves are const parameters of `$part` (`R0`, `H`): indexed at run time,
/// the sums went to the stack. Two 4-token tiles beat one of 8 on Zen 3 (the driver's widest is 4).
macro_rules! tile256 {
    ($part:ident, $g:expr, $x:expr, $t0:expr, $n:expr) => {{
        let mut out = [[0f32; ROWS]; $n];
        if $n <= 4 {
            $part::<$n, 0, 2>($g, $x, $t0, &mut out);
        } else {
            $part::<$n, 0, 1>($g, $x, $t0, &mut out);
            $part::<$n, 1, 1>($g, $x, $t0, &mut out);
        }
        out
    }};
}

/// Adds `u . x` (`vpmaddubsw`: pairs of u8 weight x i8 activation products in i16 lanes) of the Q4_K
/// `$chunks` chunks from `$p` to the i16 sums `$acc[t][r]`, `r` in `$r0 .. $r0 + $h`, token `t`'s
/// activations from value `$v0`. Widening to i32 (`vpmaddwd`, which multiplies in the sub-block scale)
/// waits until the caller's scale boundary: kmat8's bounds say why the i16 lanes hold.
macro_rules! sums16 {
    ($acc:ident, $p:expr, $chunks:expr, $xq:expr, $v0:expr, $r0:expr, $h:expr, $n:expr) => {{
        let p: *const u8 = $p;
        // With 1 or 2 tokens the high nibbles' products go to sums of their own, so the adds do not
        // wait on one another (integers: the split does not change the result).
        let mut high = [[_mm256_setzero_si256(); 2]; $n];
        let nib = _mm256_set1_epi8(0xF);
        for c in 0..$chunks {
            for v in 0..2 {
                let mut w = [_mm256_setzero_si256(); 2];
                for r in $r0..$r0 + $h {
                    // Loaded again for the high nibbles: an L1 hit where a register would be short.
                    let raw = _mm256_loadu_si256(p.add(64 * c + 32 * r) as *const __m256i);
                    w[r] = _mm256_and_si256(if v == 0 { raw } else { _mm256_srli_epi16::<4>(raw) }, nib);
                }
                for t in 0..$n {
                    let xv = _mm256_set1_epi32(($xq[t].add($v0 + 8 * c + 4 * v) as *const i32).read_unaligned());
                    for r in $r0..$r0 + $h {
                        if v == 1 && $n <= 2 {
                            high[t][r] = maddubs_add!(high[t][r], w[r], xv);
                        } else {
                            $acc[t][r] = maddubs_add!($acc[t][r], w[r], xv);
                        }
                    }
                }
            }
        }
        if $n <= 2 {
            for t in 0..$n {
                for r in $r0..$r0 + $h {
                    $acc[t][r] = _mm256_add_epi16($acc[t][r], high[t][r]);
                }
            }
        }
    }};
}

/// `$acc + maddubs($w, $x)` in i16 lanes, in one asm block: as intrinsics LLVM regrouped the sums by
/// token, which kept every unpacked weight register of a sub-block alive at once and spilled them.
macro_rules! maddubs_add {
    ($acc:expr, $w:expr, $x:expr) => {{
        let mut a = $acc;
        std::arch::asm!(
            "vpmaddubsw {p}, {w}, {x}",
            "vpaddw {a}, {a}, {p}",
            a = inout(ymm_reg) a, w = in(ymm_reg) $w, x = in(ymm_reg) $x, p = out(ymm_reg) _,
            options(pure, nomem, nostack, preserves_flags)
        );
        a
    }};
}

/// 16 per-row scale bytes at `$p` (i8; Q4_K's 0..=63 read the same) as `vpmaddwd` operands: each i32
/// lane of rows 0..8 / 8..16 holds its row's scale in both i16 halves.
macro_rules! scale_pairs {
    ($p:expr) => {{
        let s = _mm_loadu_si128($p as *const __m128i);
        [_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(s, s)), _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(s, s))]
    }};
}

/// # Safety
/// The CPU has AVX2, FMA and F16C (the dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4k_avx2<const N: usize>(g: &[u8], x: &KAct8, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q4k::BYTES);
    tile256!(q4k_avx2_rows, g, x, t0, N)
}

/// Rows `8 R0 .. 8 (R0 + H)` of [`q4k_avx2`]'s tile into `out`.
///
/// # Safety
/// As [`q4k_avx2`], which checked the shapes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_avx2_rows<const N: usize, const R0: usize, const H: usize>(g: &[u8], x: &KAct8, t0: usize, out: &mut [[f32; ROWS]; N]) {
    let (k, nsb) = (x.k, x.k / SB);
    let xq = token_rows!(x, t0, N);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q4k::BYTES);
        let mut inner = [[_mm256_setzero_ps(); 2]; N];
        for j in 0..SB / SUB {
            // As q4k_avx512: the group's later blocks requested ahead of use (wrapping_add: past the
            // last block the address lies outside the weights, which a prefetch never faults on).
            for ch in 4 * j..4 * j + 4 {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(64 * ch + 8 * q4k::BYTES) as *const i8);
            }
            let sc = scale_pairs!(b.add(q4k::SC + 16 * j));
            let mut ia = [[_mm256_setzero_si256(); 2]; N];
            sums16!(ia, b.add(64 * 4 * j), 4, xq, sb * SB + SUB * j, R0, H, N);
            for t in 0..N {
                let dx = dx!(_mm256_set1_ps, x, t0 + t, sb * (SB / SUB) + j);
                for r in R0..R0 + H {
                    inner[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(ia[t][r], sc[r])), dx, inner[t][r]);
                }
            }
        }
        let d = [
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::D) as *const __m128i)),
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::D + 16) as *const __m128i)),
        ];
        let dmin = [
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::DMIN) as *const __m128i)),
            _mm256_cvtph_ps(_mm_loadu_si128(b.add(q4k::DMIN + 16) as *const __m128i)),
        ];
        for t in 0..N {
            for hf in R0..R0 + H {
                acc[t][hf] = _mm256_fmadd_ps(inner[t][hf], d[hf], acc[t][hf]);
            }
        }
        for sj in 0..SB / SUB {
            let m = _mm_loadu_si128(b.add(q4k::M + 16 * sj) as *const __m128i);
            let m = [_mm256_cvtepu8_epi32(m), _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(m))];
            let m = [_mm256_mul_ps(dmin[0], _mm256_cvtepi32_ps(m[0])), _mm256_mul_ps(dmin[1], _mm256_cvtepi32_ps(m[1]))];
            for t in 0..N {
                let s = _mm256_set1_ps(*x.s.get_unchecked((t0 + t) * (k / SUB) + sb * (SB / SUB) + sj));
                for hf in R0..R0 + H {
                    acc[t][hf] = _mm256_fnmadd_ps(m[hf], s, acc[t][hf]);
                }
            }
        }
    }
    rows_out256!(acc, out, R0, H, N);
}

/// Per 16 values (2 chunks) the 8 registers of both row halves' 6-bit values are built once and then
/// meet every token of the tile in turn (the weights stay in registers, each token's 2 i16 sums start
/// at its bias): the unpacking (high-bit planes: a shift, an `and` and an `or` per register) is shared by
/// all `N` tokens, up to 8.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (the dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6k_avx2<const N: usize>(g: &[u8], x: &KAct8, t0: usize) -> [[f32; ROWS]; N] {
    check!(g, x, t0, N, q6k::BYTES);
    let (k, nsb) = (x.k, x.k / SB);
    let xq = token_rows!(x, t0, N);
    let nib = _mm256_set1_epi8(0xF);
    let top = _mm256_set1_epi8(0x30);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for sb in 0..nsb {
        let b = g.as_ptr().add(sb * q6k::BYTES);
        let mut inner = [[_mm256_setzero_ps(); 2]; N];
        for j in 0..SB / SUB {
            // As q6k_avx512: the group's later blocks requested ahead of use (wrapping_add: see q4k_avx2).
            for ch in 4 * j..4 * j + 4 {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(q6k::QL + 64 * ch + 4 * q6k::BYTES) as *const i8);
            }
            for ch in [4 * j, 4 * j + 2] {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(q6k::QH + 32 * ch + 4 * q6k::BYTES) as *const i8);
            }
            let mut blk = [[_mm256_setzero_si256(); 2]; N];
            for h in 2 * j..2 * j + 2 {
                // [chunk][values 0..4, 4..8][rows 0..8, 8..16]; the high-bit planes as in kpack: values
                // 0..4 of rows 0..8 / 8..16 at bits 0-1 / 2-3, values 4..8 at bits 4-5 / 6-7.
                let mut w = [[[_mm256_setzero_si256(); 2]; 2]; 2];
                for c in 0..2 {
                    let ch = 2 * h + c;
                    let qh = _mm256_loadu_si256(b.add(q6k::QH + 32 * ch) as *const __m256i);
                    let planes = [[_mm256_slli_epi16::<4>(qh), _mm256_slli_epi16::<2>(qh)], [qh, _mm256_srli_epi16::<2>(qh)]];
                    for r in 0..2 {
                        let raw = _mm256_loadu_si256(b.add(q6k::QL + 64 * ch + 32 * r) as *const __m256i);
                        let lo = [_mm256_and_si256(raw, nib), _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nib)];
                        for v in 0..2 {
                            w[c][v][r] = _mm256_or_si256(lo[v], _mm256_and_si256(planes[v][r], top));
                        }
                    }
                }
                let sc = scale_pairs!(b.add(q6k::SC + 16 * h));
                for t in 0..N {
                    // The i16 sums start at -32 sum(x) (the stored `w + 32` taken off); they may wrap in
                    // between, their end value fits (kmat8's bounds).
                    let bias = _mm256_set1_epi32(*x.bias16.get_unchecked((t0 + t) * (k / HALF) + sb * (SB / HALF) + h));
                    let mut ia = [bias, bias];
                    for c in 0..2 {
                        for v in 0..2 {
                            let xv = _mm256_set1_epi32((xq[t].add(sb * SB + HALF * h + 8 * c + 4 * v) as *const i32).read_unaligned());
                            for r in 0..2 {
                                ia[r] = maddubs_add!(ia[r], w[c][v][r], xv);
                            }
                        }
                    }
                    for r in 0..2 {
                        blk[t][r] = _mm256_add_epi32(blk[t][r], _mm256_madd_epi16(ia[r], sc[r]));
                    }
                }
            }
            for t in 0..N {
                let dx = dx!(_mm256_set1_ps, x, t0 + t, sb * (SB / SUB) + j);
                for r in 0..2 {
                    inner[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(blk[t][r]), dx, inner[t][r]);
                }
            }
        }
        let d = [_mm256_loadu_ps(b.add(q6k::D) as *const f32), _mm256_loadu_ps(b.add(q6k::D + 32) as *const f32)];
        for t in 0..N {
            for r in 0..2 {
                acc[t][r] = _mm256_fmadd_ps(inner[t][r], d[r], acc[t][r]);
            }
        }
    }
    rows_out256!(acc, N)
}
