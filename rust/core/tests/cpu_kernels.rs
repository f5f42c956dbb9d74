//! The CPU quantized-matmul kernels against the f32 reference, at every instruction set level this CPU
//! has (each level's kernels are called directly, so the scalar and AVX2 ones are tested on an AVX-512
//! machine too), on shapes that leave remainders everywhere (odd rows, token counts not a multiple of 4).

use mlc_core::quant::cpu::act::{quantize_rows, ActBlock, QK};
use mlc_core::quant::cpu::{dispatch, kernels, matmul, Isa, QMatrix, QType};

const TYPES: [QType; 6] = [QType::Q4_0, QType::Q4_1, QType::Q8_0, QType::Q4K, QType::Q6K, QType::Mxfp4];

/// Deterministic pseudo-random numbers (no rand dependency in the test's arithmetic).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn unit(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
    }
}

/// Byte offsets of a block's f16 fields (scales, offsets); every other byte is quantized data.
fn f16_fields(qtype: QType) -> &'static [usize] {
    match qtype {
        QType::Q4_0 | QType::Q8_0 => &[0],
        QType::Q4_1 | QType::Q4K => &[0, 2],
        QType::Q6K => &[208],
        QType::Mxfp4 => &[],
    }
}

/// `n` rows of random blocks: random quantized bytes (and K-quant sub-scales), f16 scales of either sign.
fn random_weight(qtype: QType, n: usize, k: usize, rng: &mut Lcg) -> Vec<u8> {
    let (bytes, blocks) = (qtype.block_bytes(), n * k / qtype.block_values());
    let mut out: Vec<u8> = (0..blocks * bytes).map(|_| rng.next() as u8).collect();
    for blk in out.chunks_mut(bytes) {
        for &f in f16_fields(qtype) {
            blk[f..f + 2].copy_from_slice(&half::f16::from_f32(rng.unit() * 0.05).to_le_bytes());
        }
        if qtype == QType::Mxfp4 {
            blk[0] = 118 + (rng.next() % 10) as u8; // e8m0 scales 2^-9 .. 2^0
        }
    }
    out
}

fn random_x(len: usize, rng: &mut Lcg) -> Vec<f32> {
    // A few large values per row, as real activations have.
    (0..len).map(|i| rng.unit() * if i % 97 == 5 { 20.0 } else { 1.0 }).collect()
}

/// The exact value the integer kernels approximate: dequantized weights times dequantized activations,
/// accumulated in f64.
fn reference(w: &QMatrix, act: &[ActBlock], t: usize) -> Vec<f64> {
    let wf = w.dequantize();
    let kb = w.k / QK;
    let mut out = vec![0f64; t * w.n];
    for g in 0..t {
        let xd: Vec<f64> = act[g * kb..(g + 1) * kb]
            .iter()
            .flat_map(|b| b.q.iter().zip(&b.r).map(move |(&q, &r)| b.d as f64 * (q as f64 + r as f64 / 128.0)))
            .collect();
        for r in 0..w.n {
            out[g * w.n + r] = wf[r * w.k..(r + 1) * w.k].iter().zip(&xd).map(|(&a, &b)| a as f64 * b).sum();
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], scale: f64, what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-4 * scale + 1e-5 * w.abs(), "{what}: element {i}: {g} vs {w}");
    }
}

#[test]
fn every_level_this_cpu_has_is_tested() {
    let levels = Isa::available();
    assert_eq!(levels.first(), Some(&Isa::Scalar));
    assert_eq!(levels.last(), Some(&dispatch::detect()));
}

#[test]
fn every_kernel_matches_the_dequantized_reference_at_every_level() {
    let mut rng = Lcg(7);
    for qtype in TYPES {
        let bv = qtype.block_values();
        for (n, k) in [(1, bv), (7, 3 * bv), (19, 7 * bv)] {
            let data = random_weight(qtype, n, k, &mut rng);
            let w = QMatrix::new(qtype, &data, n, k).unwrap();
            let t = 6;
            let act = quantize_rows(&random_x(t * k, &mut rng), k);
            let want = reference(&w, &act, t);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            let kb = k / QK;
            let tok = |g: usize| &act[g * kb..(g + 1) * kb];
            for isa in Isa::available() {
                let kern = kernels(qtype, isa);
                for r in 0..n {
                    // SAFETY: `Isa::available` lists only levels this CPU has.
                    let one: Vec<f32> = (0..t).map(|g| unsafe { (kern.t1x1)([w.row(r)], [tok(g)]) }[0][0]).collect();
                    let four = unsafe { (kern.t1x4)([w.row(r)], [tok(0), tok(1), tok(2), tok(3)]) }[0];
                    let want_r: Vec<f64> = (0..t).map(|g| want[g * n + r]).collect();
                    let what = format!("{qtype:?} {isa:?} [{n}, {k}] row {r}");
                    assert_close(&one, &want_r, scale, &what);
                    // Every tile shape gives each (row, token) bit for bit what the 1 x 1 tile gives.
                    assert_eq!(four.as_slice(), &one[..4], "{what}: 1 x 4 tile");
                    if r + 4 <= n {
                        let rows = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
                        let t4x4 = unsafe { (kern.t4x4)(rows, [tok(0), tok(1), tok(2), tok(3)]) };
                        let t4x1 = unsafe { (kern.t4x1)(rows, [tok(0)]) };
                        assert_eq!(t4x4[0], four, "{what}: 4 x 4 tile");
                        assert_eq!(t4x1[0][0], one[0], "{what}: 4 x 1 tile");
                        if let Some(t4x8) = kern.t4x8 {
                            let toks: [&[ActBlock]; 8] = std::array::from_fn(|g| tok(g % t));
                            let eight = unsafe { t4x8(rows, toks) }[0];
                            let want8: Vec<f32> = (0..8).map(|g| one[g % t]).collect();
                            assert_eq!(eight.as_slice(), want8.as_slice(), "{what}: 4 x 8 tile");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_handles_odd_shapes_and_is_batch_invariant() {
    let mut rng = Lcg(11);
    for qtype in TYPES {
        let (n, k) = (37, 5 * qtype.block_values());
        let data = random_weight(qtype, n, k, &mut rng);
        let w = QMatrix::new(qtype, &data, n, k).unwrap();
        for t in [1, 3, 5, 9] {
            let x = random_x(t * k, &mut rng);
            for isa in Isa::available() {
                // Against the activations the kernels see: 8 bits plus residual, or the 15 or 8 bits of
                // the repacked layouts (the K-quants', and Q4_0 / Q4_1 / Q8_0's above the scalar level).
                let want = match (qtype, KLayout::active()) {
                    (QType::Q4K | QType::Q6K, KLayout::Quads) => kreference8(&w.dequantize(), n, &KAct8::quantize(&x, k)),
                    _ if PackedK::repacks(qtype, isa) => kreference(&w.dequantize(), n, &KAct::quantize(&x, k)),
                    _ => reference(&w, &quantize_rows(&x, k), t),
                };
                let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
                let y = matmul(&w, &x, isa).unwrap();
                assert_close(&y, &want, scale, &format!("{qtype:?} {isa:?} t={t}"));
                for g in 0..t {
                    let alone = matmul(&w, &x[g * k..(g + 1) * k], isa).unwrap();
                    assert_eq!(alone.as_slice(), &y[g * n..(g + 1) * n], "{qtype:?} {isa:?} token {g} of {t}");
                }
            }
        }
    }
}

#[test]
fn quantized_activations_stay_close_to_the_f32_product() {
    // The one approximation on top of the weights' own: activations as 8 bits plus an 8-bit residual.
    // Relative to the f32 product of the same dequantized weights the error stays near 15-bit rounding;
    // on the K-quants' 8-bit path within its rounding, `sum |w| d / 2` (d the step of x's block).
    let mut rng = Lcg(3);
    let (n, k, t) = (16, 1536, 2);
    for qtype in TYPES {
        let data = random_weight(qtype, n, k, &mut rng);
        let w = QMatrix::new(qtype, &data, n, k).unwrap();
        let x = random_x(t * k, &mut rng);
        let wf = w.dequantize();
        let y = matmul(&w, &x, dispatch::active()).unwrap();
        for g in 0..t {
            for r in 0..n {
                let exact: f64 = (0..k).map(|i| wf[r * k + i] as f64 * x[g * k + i] as f64).sum();
                let norm: f64 = (0..k).map(|i| (wf[r * k + i] as f64 * x[g * k + i] as f64).abs()).sum();
                let mut bound = 2e-4 * norm;
                if matches!(qtype, QType::Q4K | QType::Q6K) && KLayout::active() == KLayout::Quads {
                    let step = |i: usize| x[g * k + i / 32 * 32..][..32].iter().fold(0f64, |m, v| m.max(v.abs() as f64)) / 127.0;
                    bound += (0..k).map(|i| (wf[r * k + i] as f64).abs() * step(i) / 2.0).sum::<f64>();
                }
                assert!((y[g * n + r] as f64 - exact).abs() <= bound, "{qtype:?}: {} vs {exact}", y[g * n + r]);
            }
        }
    }
}

#[test]
fn shapes_are_checked() {
    assert!(QMatrix::new(QType::Q4_0, &[0u8; 18], 1, 33).is_err());
    assert!(QMatrix::new(QType::Q4_0, &[0u8; 17], 1, 32).is_err());
    let w = QMatrix::new(QType::Q4_0, &[0u8; 18], 1, 32).unwrap();
    assert!(matmul(&w, &[0.0; 33], Isa::Scalar).is_err());
}

#[test]
fn dequantization_matches_candles_for_every_type() {
    // The kernels are tested against our dequantization; this ties that to GGML's layouts as candle reads
    // them (an independent implementation).
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
    let mut rng = Lcg(5);
    for (qtype, ggml) in [
        (QType::Q4_0, GgmlDType::Q4_0),
        (QType::Q4_1, GgmlDType::Q4_1),
        (QType::Q8_0, GgmlDType::Q8_0),
        (QType::Q4K, GgmlDType::Q4K),
        (QType::Q6K, GgmlDType::Q6K),
    ] {
        assert_eq!(QType::from_ggml(ggml), Some(qtype));
        let (n, k) = (3, 2 * qtype.block_values());
        let data = random_weight(qtype, n, k, &mut rng);
        let ours = QMatrix::new(qtype, &data, n, k).unwrap().dequantize();
        let q = qtensor_from_ggml(ggml, &data, vec![n, k], &candle_core::Device::Cpu).unwrap();
        let theirs = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{qtype:?} value {i}: {a} vs candle's {b}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Q4_K / Q6_K repacked into interleaved groups of 16 rows (`kpack`) and their kernels (`kmat`).

use mlc_core::quant::cpu::kmat::{self, KAct, KTiles};
use mlc_core::quant::cpu::kmat8::{self, KAct8};
use mlc_core::quant::cpu::kpack::{KLayout, PackedK, ROWS};

const KTYPES: [QType; 2] = [QType::Q4K, QType::Q6K];
/// Every type the `Pairs` layout takes: the K-quants, and Q4_0 / Q4_1 / Q8_0 (the AVX2 and AVX-512 levels' form of them).
const PAIR_TYPES: [QType; 5] = [QType::Q4K, QType::Q6K, QType::Q4_0, QType::Q4_1, QType::Q8_0];

/// `w` in the `Pairs` layout.
fn pack_pairs(w: &QMatrix) -> PackedK {
    match w.qtype {
        QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => PackedK::pack_b32(w),
        _ => PackedK::pack(w),
    }
    .unwrap()
}

#[test]
fn packed_layout_reads_back_the_gguf_weights() {
    let mut rng = Lcg(13);
    for qtype in PAIR_TYPES {
        for (n, k) in [(1, 256), (19, 512), (33, 768)] {
            let data = random_weight(qtype, n, k, &mut rng);
            let w = QMatrix::new(qtype, &data, n, k).unwrap();
            assert_eq!(pack_pairs(&w).dequantize(), w.dequantize(), "{qtype:?} [{n}, {k}]");
        }
    }
    let w = QMatrix::new(QType::Q4_1, &[0u8; 20], 1, 32).unwrap();
    assert!(PackedK::pack(&w).is_none() && PackedK::pack_b32(&w).is_some());
    // Q4_0's offset -8 d is kept as an f16: a scale past 8188 would overflow it, so the matrix stays in
    // place (the row-by-row kernels) rather than change.
    let mut big = [0u8; 18];
    big[..2].copy_from_slice(&half::f16::from_f32(9000.0).to_le_bytes());
    assert!(PackedK::pack_b32(&QMatrix::new(QType::Q4_0, &big, 1, 32).unwrap()).is_none());
}

/// Dequantized weights times the dequantized 16-bit activations, in f64.
fn kreference(wf: &[f32], n: usize, act: &KAct) -> Vec<f64> {
    let k = act.k;
    let mut out = vec![0f64; act.t * n];
    for g in 0..act.t {
        let xd: Vec<f64> = (0..k).map(|i| act.d[(g * k + i) / 32] as f64 * act.q[g * k + i] as f64).collect();
        for r in 0..n {
            out[g * n + r] = wf[r * k..(r + 1) * k].iter().zip(&xd).map(|(&a, &b)| a as f64 * b).sum();
        }
    }
    out
}

/// Tile of `width` tokens from `t0` over group `g` -> `[width][16]`.
fn run_tile<A>(kern: &KTiles<A>, width: usize, p: &PackedK, g: usize, act: &A, t0: usize) -> Vec<[f32; ROWS]> {
    let grp = p.group(g);
    // SAFETY: the tiles come from `kmat::tiles` at a level from `Isa::available`.
    unsafe {
        match width {
            1 => (kern.t1)(grp, act, t0).to_vec(),
            2 => (kern.t2)(grp, act, t0).to_vec(),
            4 => (kern.t4)(grp, act, t0).to_vec(),
            _ => (kern.t8)(grp, act, t0).to_vec(),
        }
    }
}

#[test]
fn packed_kernels_match_the_reference_bit_for_bit_across_levels_and_tile_widths() {
    let mut rng = Lcg(17);
    for qtype in PAIR_TYPES {
        let shapes: &[(usize, usize)] = if KTYPES.contains(&qtype) { &[(16, 256), (21, 768)] } else { &[(16, 32), (21, 576)] };
        for &(n, k) in shapes {
            let data = random_weight(qtype, n, k, &mut rng);
            let w = QMatrix::new(qtype, &data, n, k).unwrap();
            let p = pack_pairs(&w);
            let t = 16;
            let act = KAct::quantize(&random_x(t * k, &mut rng), k);
            let want = kreference(&w.dequantize(), n, &act);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            // The scalar kernel one token at a time is the reference every other tile must equal exactly.
            let scalar = kmat::tiles(qtype, Isa::Scalar);
            let base: Vec<Vec<[f32; ROWS]>> = (0..p.groups()).map(|g| (0..t).map(|t0| run_tile(&scalar, 1, &p, g, &act, t0)[0]).collect()).collect();
            for g in 0..p.groups() {
                for r in 0..ROWS.min(n - g * ROWS) {
                    let got: Vec<f32> = (0..t).map(|tok| base[g][tok][r]).collect();
                    let want_r: Vec<f64> = (0..t).map(|tok| want[tok * n + g * ROWS + r]).collect();
                    assert_close(&got, &want_r, scale, &format!("{qtype:?} scalar [{n}, {k}] row {}", g * ROWS + r));
                }
            }
            for isa in Isa::available() {
                let kern = kmat::tiles(qtype, isa);
                for width in [1, 2, 4, 8] {
                    for g in 0..p.groups() {
                        for t0 in (0..t).step_by(width) {
                            let y = run_tile(&kern, width, &p, g, &act, t0);
                            assert_eq!(y.as_slice(), &base[g][t0..t0 + width], "{qtype:?} {isa:?} [{n}, {k}] width {width} group {g} token {t0}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn packed_integer_sums_are_exact_at_the_extremes() {
    // The largest |weight| x |activation| sums the kernels keep in i32 (kmat's bounds): Q4_K all
    // scales 63, nibbles 15, mins 0; Q6_K all scales -128, values 0 (q - 32 = -32); every activation at
    // +-max (16-bit integer 8191). A wrapped sum would be off by 2^32 times a scale.
    // Q4_0 / Q4_1: nibbles 15 (the packed kernel's unsigned integer), d 1, Q4_1's m 0; Q8_0: -128, d 1.
    let one = half::f16::from_f32(1.0).to_le_bytes();
    let (n, k) = (16, 512);
    for qtype in PAIR_TYPES {
        let mut data = vec![0u8; n * k / qtype.block_values() * qtype.block_bytes()];
        for blk in data.chunks_mut(qtype.block_bytes()) {
            match qtype {
                QType::Q4_0 | QType::Q4_1 => {
                    blk[0..2].copy_from_slice(&one);
                    let qs = if qtype == QType::Q4_0 { 2 } else { 4 };
                    blk[qs..].fill(0xFF);
                }
                QType::Q8_0 => {
                    blk[0..2].copy_from_slice(&one);
                    blk[2..].fill(0x80);
                }
                QType::Q4K => {
                    blk[0..2].copy_from_slice(&one);
                    blk[4..8].fill(0xFF);
                    blk[12..16].fill(0x0F);
                    blk[16..].fill(0xFF);
                }
                _ => {
                    blk[192..208].fill(0x80);
                    blk[208..210].copy_from_slice(&one);
                }
            }
        }
        let w = QMatrix::new(qtype, &data, n, k).unwrap();
        let wf = w.dequantize();
        let peak = match qtype {
            QType::Q4K => 945.0,
            QType::Q6K => 4096.0,
            QType::Q4_0 => 7.0,
            QType::Q8_0 => -128.0,
            _ => 15.0,
        };
        assert!(wf.iter().all(|&v| v == peak), "{qtype:?}: the extreme block decodes to {peak}");
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; 2 * k];
            for isa in Isa::available() {
                let y = matmul(&w, &x, isa).unwrap();
                for &v in &y {
                    let exact = sign as f64 * peak as f64 * k as f64;
                    assert!((v as f64 - exact).abs() <= 1e-6 * exact.abs(), "{qtype:?} {isa:?} x = {sign}: {v} vs {exact}");
                }
            }
        }
    }
}

// The 8-bit activation path (`kmat8`) over the `Quads` layout.

/// Dequantized weights times the dequantized 8-bit activations, in f64.
fn kreference8(wf: &[f32], n: usize, act: &KAct8) -> Vec<f64> {
    let k = act.k;
    let mut out = vec![0f64; act.t * n];
    for g in 0..act.t {
        let xd: Vec<f64> = (0..k).map(|i| act.d[(g * k + i) / 32] as f64 * act.q[g * k + i] as f64).collect();
        for r in 0..n {
            out[g * n + r] = wf[r * k..(r + 1) * k].iter().zip(&xd).map(|(&a, &b)| a as f64 * b).sum();
        }
    }
    out
}

#[test]
fn quads_layout_reads_back_the_gguf_weights() {
    let mut rng = Lcg(19);
    for qtype in KTYPES {
        for (n, k) in [(1, 256), (19, 512), (33, 768)] {
            let data = random_weight(qtype, n, k, &mut rng);
            let w = QMatrix::new(qtype, &data, n, k).unwrap();
            let p = PackedK::pack_as(&w, KLayout::Quads).unwrap();
            assert_eq!(p.dequantize(), w.dequantize(), "{qtype:?} [{n}, {k}]");
        }
    }
}

#[test]
fn kernels8_match_the_reference_bit_for_bit_across_levels_and_tile_widths() {
    let mut rng = Lcg(23);
    for qtype in KTYPES {
        for (n, k) in [(16, 256), (21, 768)] {
            let data = random_weight(qtype, n, k, &mut rng);
            let w = QMatrix::new(qtype, &data, n, k).unwrap();
            let p = PackedK::pack_as(&w, KLayout::Quads).unwrap();
            let t = 16;
            let x = random_x(t * k, &mut rng);
            let act = KAct8::quantize(&x, k);
            let want = kreference8(&w.dequantize(), n, &act);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            let scalar = kmat8::tiles(qtype, Isa::Scalar);
            let base: Vec<Vec<[f32; ROWS]>> = (0..p.groups()).map(|g| (0..t).map(|t0| run_tile(&scalar, 1, &p, g, &act, t0)[0]).collect()).collect();
            for g in 0..p.groups() {
                for r in 0..ROWS.min(n - g * ROWS) {
                    let got: Vec<f32> = (0..t).map(|tok| base[g][tok][r]).collect();
                    let want_r: Vec<f64> = (0..t).map(|tok| want[tok * n + g * ROWS + r]).collect();
                    assert_close(&got, &want_r, scale, &format!("{qtype:?} scalar [{n}, {k}] row {}", g * ROWS + r));
                }
            }
            for isa in Isa::available() {
                let kern = kmat8::tiles(qtype, isa);
                for width in [1, 2, 4, 8] {
                    for g in 0..p.groups() {
                        for t0 in (0..t).step_by(width) {
                            let y = run_tile(&kern, width, &p, g, &act, t0);
                            assert_eq!(y.as_slice(), &base[g][t0..t0 + width], "{qtype:?} {isa:?} [{n}, {k}] width {width} group {g} token {t0}");
                        }
                    }
                }
                // The driver: 11 tokens in tiles of 8, 2 and 1 give each token its result alone.
                let y = kmat::matmul(&p, &KAct8::quantize(&x[..11 * k], k), kern);
                for tok in 0..11 {
                    let alone = kmat::matmul(&p, &KAct8::quantize(&x[tok * k..(tok + 1) * k], k), kern);
                    assert_eq!(alone.as_slice(), &y[tok * n..(tok + 1) * n], "{qtype:?} {isa:?} token {tok}");
                }
            }
        }
    }
}

#[test]
fn kernels8_integer_sums_are_exact_at_the_extremes() {
    // kmat8's bounds at their largest: Q4_K scales 63, nibbles 15, mins 0; Q6_K scales -128, values 0
    // (w = -32, the stored 0 meeting the bias); every activation at +-127.
    // Q6_K once more at the top (values 63, w = 31, scales 127): the AVX2 kernel's i16 sums wrap on the
    // way (4 x 2 x 63 x 127 = 64 008) and end in range once the bias is in.
    let one = half::f16::from_f32(1.0).to_le_bytes();
    let (n, k) = (16, 512);
    for (qtype, top) in [(QType::Q4K, false), (QType::Q6K, false), (QType::Q6K, true)] {
        let mut data = vec![0u8; n * k / 256 * qtype.block_bytes()];
        for blk in data.chunks_mut(qtype.block_bytes()) {
            match qtype {
                QType::Q4K => {
                    blk[0..2].copy_from_slice(&one);
                    blk[4..8].fill(0xFF);
                    blk[12..16].fill(0x0F);
                    blk[16..].fill(0xFF);
                }
                _ if top => {
                    blk[0..192].fill(0xFF);
                    blk[192..208].fill(0x7F);
                    blk[208..210].copy_from_slice(&one);
                }
                _ => {
                    blk[192..208].fill(0x80);
                    blk[208..210].copy_from_slice(&one);
                }
            }
        }
        let w = QMatrix::new(qtype, &data, n, k).unwrap();
        let p = PackedK::pack_as(&w, KLayout::Quads).unwrap();
        let peak = match (qtype, top) {
            (QType::Q4K, _) => 945.0,
            (_, false) => 4096.0,
            _ => 31.0 * 127.0,
        };
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; 2 * k];
            for isa in Isa::available() {
                let y = kmat::matmul(&p, &KAct8::quantize(&x, k), kmat8::tiles(qtype, isa));
                for &v in &y {
                    let exact = sign as f64 * peak * k as f64;
                    assert!((v as f64 - exact).abs() <= 1e-6 * exact.abs(), "{qtype:?} {isa:?} x = {sign}: {v} vs {exact}");
                }
            }
        }
    }
}

/// Qwen2.5-Coder-1.5B Q4_K_M (the K-quant kernels on a real model): teacher-forced log-probabilities
/// of the quantized path against the same file dequantized to f32, held to the CPU fidelity bound
/// (mean |delta| <= 0.05 nats, max <= 0.5). Ignored: the file is 1.1 GB and the f32 copy 7 GB;
/// run with `MLC_QWEN15_GGUF=... cargo test -p mlc-core --test cpu_kernels -- --ignored`.
#[test]
#[ignore = "needs MLC_QWEN15_GGUF (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, see shared/reference/models.md)"]
fn qwen_k_quants_logprobs_within_the_fidelity_bound() {
    use candle_core::{DType, Device, Tensor};
    use mlc_core::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
    use mlc_core::loader::{self, QuantMode};
    use mlc_core::model::registry;
    let path = std::env::var("MLC_QWEN15_GGUF").expect("MLC_QWEN15_GGUF");
    let text = "The history of the city is long and full of stories. In 1820 the river port opened, and \
                merchants came from the coast to trade grain, timber and wool. def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n";
    let logprobs = |quant: QuantMode| -> Vec<f32> {
        let loaded = loader::load(&path, &Device::Cpu, DType::F32, quant).unwrap();
        let ids = loaded.tokenizer.encode(text, false).unwrap();
        let model = registry::build(&loaded.config, &loaded.weights, &Device::Cpu, DType::F32).unwrap();
        let cfg = model.config();
        let (n, bs) = (ids.len(), 16);
        let blocks = n.div_ceil(bs);
        let kv = PagedKvCache::new(cfg.num_hidden_layers, blocks, bs, cfg.num_key_value_heads, cfg.head_dim, DType::F32, &Device::Cpu).unwrap();
        let meta = AttentionMetadata {
            slot_mapping: (0..n as u32).collect(),
            seqs: vec![SeqAttention { query_start: 0, query_len: n, context_len: n, block_table: (0..blocks as u32).collect() }],
            block_size: bs,
        };
        let t = |v: Vec<u32>| Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap();
        let logits = model.forward(&t(ids.clone()), &t((0..n as u32).collect()), &t((0..n as u32 - 1).collect()), &kv, &kv.prepare(meta).unwrap()).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
        (0..n - 1).map(|i| lp[i][ids[i + 1] as usize]).collect()
    };
    let quantized = logprobs(QuantMode::Quantized);
    let exact = logprobs(QuantMode::Dequantize);
    let diffs: Vec<f32> = quantized.iter().zip(&exact).map(|(a, b)| (a - b).abs()).collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let worst = diffs.iter().fold(0f32, |m, &d| m.max(d));
    eprintln!("Qwen Q4_K_M quantized vs dequantized: mean |delta logprob| {mean:.5}, max {worst:.5} over {} positions", diffs.len());
    assert!(mean <= 0.05 && worst <= 0.5, "mean {mean}, max {worst}");
}
