//! Pieces the x86 kernels of every block type share, as macros: a `#[target_feature]` function cannot be
//! `#[inline(always)]`, and a helper that is not inlined into the kernel would run without the kernel's
//! instruction set. Each macro expands inside a kernel compiled for AVX2 or AVX-512, so the intrinsics
//! it names are available there. The two levels' feature lists, written at each kernel:
//! AVX2 = `"avx2,fma,f16c"`, AVX-512 = `"avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"`.

/// `acc + [32 x u8] . [32 x i8]` in groups of 4 -> `[8 x i32]` with AVX2: `maddubs` sums pairs into i16, which
/// saturates only past 32767; every caller keeps `|u8 * i8| * 2 <= 2 * 128 * 127 = 32512`.
macro_rules! dot_u8i8_avx2 {
    ($acc:expr, $a:expr, $b:expr) => {
        _mm256_add_epi32($acc, _mm256_madd_epi16(_mm256_maddubs_epi16($a, $b), _mm256_set1_epi16(1)))
    };
}

/// The same with VNNI's `vpdpbusd` (no i16 intermediate, accumulating in one instruction).
macro_rules! dot_u8i8_vnni {
    ($acc:expr, $a:expr, $b:expr) => {
        _mm256_dpbusd_epi32($acc, $a, $b)
    };
}

/// `$post!(p, aux)` for types without per-lane scales.
macro_rules! no_post {
    ($p:expr, $aux:expr) => {
        $p
    };
}

/// Signed x signed: `|w|` times `x` with `w`'s sign, through the u8 x i8 form `$dot` (exact; the
/// products stay within `128 * 127`).
macro_rules! dot_signed {
    ($dot:ident, $acc:expr, $w:expr, $x:expr) => {{
        let w = $w;
        $dot!($acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8($x, w))
    }};
}

/// Horizontal sum of an `__m256` in a fixed order (the same for every batch size, so results do not
/// depend on how many tokens share a kernel call).
macro_rules! hsum_ps {
    ($v:expr) => {{
        let v = $v;
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }};
}

/// The f16 at `p` (a `*const u8`, unaligned) as f32, with F16C.
macro_rules! f16_at {
    ($p:expr) => {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(($p as *const u16).read_unaligned() as i32)))
    };
}

/// 16 bytes of packed nibbles -> 32 u8 values, low nibbles first (GGML's order: byte `j` holds values
/// `j` and `j + 16`).
macro_rules! unpack_nibbles {
    ($p:expr) => {{
        let raw = _mm_loadu_si128($p as *const __m128i);
        let mask = _mm_set1_epi8(0xF);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask))
    }};
}

/// The 32 f32 at `p` (four `__m256`) and their largest magnitude, exact in any order (activation
/// quantizers).
macro_rules! load32_amax {
    ($p:expr) => {{
        let p = $p;
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)), _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        (v, _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))))
    }};
}

/// Sum of the 8 i32 lanes of an `__m256i` (exact).
macro_rules! hsum_epi32 {
    ($v:expr) => {{
        let v = $v;
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
        _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2)))
    }};
}

/// The activation blocks per token of a tile call, after checking every weight row holds that many
/// blocks' worth of bytes and every token that many blocks.
macro_rules! tile_blocks {
    ($w:expr, $x:expr, $row_bytes:expr) => {{
        let nb = $x[0].len();
        assert!(
            $w.iter().all(|wr| wr.len() == $row_bytes(nb)) && $x.iter().all(|xt| xt.len() == nb),
            "weight rows and activations differ in length"
        );
        nb
    }};
}

/// Token row pointers of a 16-row tile over packed groups (`$x.q` of `$x.k` values per token).
macro_rules! token_rows {
    ($x:expr, $t0:expr, $n:expr) => {{
        let mut xq = [$x.q.as_ptr(); $n];
        for t in 0..$n {
            xq[t] = $x.q.as_ptr().add(($t0 + t) * $x.k);
        }
        xq
    }};
}

/// An AVX2 16-row tile's accumulators `[N][2] x __m256` (rows 0..8, 8..16) -> `[[f32; 16]; N]`.
macro_rules! rows_out256 {
    ($acc:expr, $n:expr) => {{
        let mut out = [[0f32; 16]; $n];
        for t in 0..$n {
            _mm256_storeu_ps(out[t].as_mut_ptr(), $acc[t][0]);
            _mm256_storeu_ps(out[t].as_mut_ptr().add(8), $acc[t][1]);
        }
        out
    }};
    // Row halves `$r0 .. $r0 + $h` only, into `$out`.
    ($acc:expr, $out:expr, $r0:expr, $h:expr, $n:expr) => {{
        for t in 0..$n {
            for r in $r0..$r0 + $h {
                _mm256_storeu_ps($out[t].as_mut_ptr().add(8 * r), $acc[t][r]);
            }
        }
    }};
}

pub(crate) use {dot_signed, dot_u8i8_avx2, dot_u8i8_vnni, f16_at, hsum_epi32, hsum_ps, load32_amax, no_post, rows_out256, tile_blocks, token_rows, unpack_nibbles};
