//! The AVX-512 tile for 4 tokens: two tokens share each 512-bit register (the weight block broadcast to
//! both halves), which halves the dot-product, conversion and FMA instructions per (row, token) of the
//! 256-bit [`x86_tile`](super::tile) at prefill and batched decode. Each half does, lane for lane, what
//! the 256-bit kernel does for its token, so results are bit for bit the same (tested).
//!
//! At decode (one token) the pairs are of rows instead ([`avx512_rowpairs_tile`]): two rows' weight blocks
//! share a register and meet the token's activation block broadcast to both halves, which halves the
//! arithmetic per row of a batch-1 GEMV, where these kernels are bound by instructions, not by memory.
//!
//! For types whose unpacked weights are the unsigned operand of `vpdpbusd` as they are (Q4_0, Q4_1,
//! Q4_K, Q8_0 biased); Q6_K's signed weights keep the 256-bit kernel.

/// `$name<R, N>` (N even) from a type's `$load` (as for [`x86_tile`](super::tile)).
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_pairs_tile {
    ($name:ident, $row_bytes:expr, $load:ident, $offset:expr) => {
        /// # Safety
        /// The CPU has AVX-512 F/BW/VL and VNNI (the dispatcher checks it).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[ActBlock]; N]) -> [[f32; N]; R] {
            assert!(N % 2 == 0, "token pairs");
            let nb = tile_blocks!(w, x, $row_bytes);
            // Pair j (tokens 2j, 2j + 1) accumulates in acc[r][j]; entries past N / 2 stay unused.
            let mut acc = [[_mm512_setzero_ps(); N]; R];
            let row_len = $row_bytes(nb);
            let step = row_len / nb;
            // Two 256-bit halves as one 512-bit value.
            let join_ps = |lo: __m256, hi: __m256| {
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi)))
            };
            // Per-row scratch a type's `$load` may fill at a weight block's first activation block and
            // read at the others (Q4_K's 8 decoded scales and mins).
            #[allow(unused_mut, unused_variables)]
            let mut st = [[0f32; 16]; R];
            for b in 0..nb {
                let mut wv = [_mm512_setzero_si512(); R];
                let mut dv = [_mm512_setzero_ps(); R];
                let mut ov = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    // SAFETY: as in x86_tile: block b lies within w[r]; prefetching past the end is harmless.
                    _mm_prefetch::<_MM_HINT_T0>(w[r].as_ptr().wrapping_add(R * row_len + b * step) as *const i8);
                    let (v, _aux, d, o) = $load!(w[r].as_ptr(), b, &mut st[r]);
                    wv[r] = _mm512_broadcast_i64x4(v);
                    dv[r] = _mm512_set1_ps(d);
                    ov[r] = _mm512_set1_ps(o);
                }
                for j in 0..N / 2 {
                    let (a0, a1) = (x[2 * j].get_unchecked(b), x[2 * j + 1].get_unchecked(b));
                    let load = |q: &[i8; 32]| _mm256_loadu_si256(q.as_ptr() as *const __m256i);
                    let xv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(&a0.q)), load(&a1.q));
                    let rv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(&a0.r)), load(&a1.r));
                    let dx = join_ps(_mm256_set1_ps(a0.fine_scale()), _mm256_set1_ps(a1.fine_scale()));
                    let sv = join_ps(_mm256_set1_ps(a0.s * 0.125), _mm256_set1_ps(a1.s * 0.125));
                    for r in 0..R {
                        let p = _mm512_dpbusd_epi32(_mm512_slli_epi32::<7>(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv)), wv[r], rv);
                        acc[r][j] = _mm512_fmadd_ps(_mm512_mul_ps(dv[r], dx), _mm512_cvtepi32_ps(p), acc[r][j]);
                        if $offset {
                            acc[r][j] = _mm512_fmadd_ps(ov[r], sv, acc[r][j]);
                        }
                    }
                }
            }
            let mut out = [[0f32; N]; R];
            for r in 0..R {
                for j in 0..N / 2 {
                    let both = acc[r][j];
                    out[r][2 * j] = hsum_ps!(_mm512_castps512_ps256(both));
                    out[r][2 * j + 1] = hsum_ps!(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(both))));
                }
            }
            out
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512_pairs_tile;

/// `$name<R, N>` (R even) from a type's `$load`: rows `2p` and `2p + 1` in the two halves of one register,
/// each half lane for lane the 256-bit [`x86_tile`](super::tile)'s arithmetic for its row (the same bits,
/// tested against it). No closures: they would not inherit the target features.
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_rowpairs_tile {
    ($name:ident, $row_bytes:expr, $load:ident, $offset:expr) => {
        /// # Safety
        /// The CPU has AVX-512 F/BW/VL and VNNI (the dispatcher checks it).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[ActBlock]; N]) -> [[f32; N]; R] {
            assert!(R % 2 == 0, "row pairs");
            let nb = tile_blocks!(w, x, $row_bytes);
            macro_rules! join_ps {
                ($lo:expr, $hi:expr) => {
                    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(_mm512_castps256_ps512($lo)), _mm256_castps_pd($hi)))
                };
            }
            // Row pair p (rows 2p, 2p + 1) accumulates in acc[p][t]; entries past R / 2 stay unused.
            let mut acc = [[_mm512_setzero_ps(); N]; R];
            let row_len = $row_bytes(nb);
            let step = row_len / nb;
            #[allow(unused_mut, unused_variables)]
            let mut st = [[0f32; 16]; R];
            for b in 0..nb {
                let mut wv = [_mm512_setzero_si512(); R];
                let mut dv = [_mm512_setzero_ps(); R];
                let mut ov = [_mm512_setzero_ps(); R];
                for p in 0..R / 2 {
                    let (r0, r1) = (2 * p, 2 * p + 1);
                    // SAFETY: as in x86_tile: block b lies within the rows; prefetching past the end is harmless.
                    _mm_prefetch::<_MM_HINT_T0>(w[r0].as_ptr().wrapping_add(R * row_len + b * step) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(w[r1].as_ptr().wrapping_add(R * row_len + b * step) as *const i8);
                    let (v0, _aux0, d0, o0) = $load!(w[r0].as_ptr(), b, &mut st[r0]);
                    let (v1, _aux1, d1, o1) = $load!(w[r1].as_ptr(), b, &mut st[r1]);
                    wv[p] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1);
                    dv[p] = join_ps!(_mm256_set1_ps(d0), _mm256_set1_ps(d1));
                    ov[p] = join_ps!(_mm256_set1_ps(o0), _mm256_set1_ps(o1));
                }
                for t in 0..N {
                    let a = x[t].get_unchecked(b);
                    let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(a.q.as_ptr() as *const __m256i));
                    let rv = _mm512_broadcast_i64x4(_mm256_loadu_si256(a.r.as_ptr() as *const __m256i));
                    let dx = _mm512_set1_ps(a.fine_scale());
                    let sv = _mm512_set1_ps(a.s * 0.125);
                    for p in 0..R / 2 {
                        let q = _mm512_dpbusd_epi32(_mm512_slli_epi32::<7>(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[p], xv)), wv[p], rv);
                        acc[p][t] = _mm512_fmadd_ps(_mm512_mul_ps(dv[p], dx), _mm512_cvtepi32_ps(q), acc[p][t]);
                        if $offset {
                            acc[p][t] = _mm512_fmadd_ps(ov[p], sv, acc[p][t]);
                        }
                    }
                }
            }
            let mut out = [[0f32; N]; R];
            for p in 0..R / 2 {
                for t in 0..N {
                    let both = acc[p][t];
                    out[2 * p][t] = hsum_ps!(_mm512_castps512_ps256(both));
                    out[2 * p + 1][t] = hsum_ps!(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(both))));
                }
            }
            out
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512_rowpairs_tile;
