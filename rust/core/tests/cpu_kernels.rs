//! The CPU quantized-matmul kernels against the f32 reference, at every instruction set level this CPU
//! has (each level's kernels are called directly, so the scalar and AVX2 ones are tested on an AVX-512
//! machine too), on shapes that leave remainders everywhere (odd rows, token counts not a multiple of 4).

use mlc_core::quant::cpu::act::{quantize_rows, ActBlock, QK};
use mlc_core::quant::cpu::{dispatch, matmul, Isa, Kernels, QMatrix, QType};

const TYPES: [QType; 3] = [QType::Q4_0, QType::Q4_1, QType::Q8_0];

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

/// `n` rows of random blocks: random quant bytes, f16 scales (and Q4_1 offsets) of either sign.
fn random_weight(qtype: QType, n: usize, k: usize, rng: &mut Lcg) -> Vec<u8> {
    let blocks = n * k / qtype.block_values();
    let mut out = Vec::with_capacity(blocks * qtype.block_bytes());
    for _ in 0..blocks {
        let scales = if qtype == QType::Q4_1 { 2 } else { 1 };
        for _ in 0..scales {
            out.extend_from_slice(&half::f16::from_f32(rng.unit() * 0.05).to_le_bytes());
        }
        while out.len() % qtype.block_bytes() != 0 {
            out.push(rng.next() as u8);
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
        let xd: Vec<f64> = act[g * kb..(g + 1) * kb].iter().flat_map(|b| b.q.iter().map(move |&q| b.d as f64 * q as f64)).collect();
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
fn every_kernel_matches_the_dequantized_reference_at_every_level() {
    let mut rng = Lcg(7);
    for qtype in TYPES {
        for (n, k) in [(1, 32), (7, 96), (19, 224)] {
            let data = random_weight(qtype, n, k, &mut rng);
            let w = QMatrix::new(qtype, &data, n, k).unwrap();
            let t = 6;
            let act = quantize_rows(&random_x(t * k, &mut rng), k);
            let want = reference(&w, &act, t);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            let kb = k / QK;
            let tok = |g: usize| &act[g * kb..(g + 1) * kb];
            for isa in Isa::available() {
                let kern = Kernels::for_type(qtype, isa);
                for r in 0..n {
                    // SAFETY: `Isa::available` lists only levels this CPU has.
                    let one: Vec<f32> = (0..t).map(|g| unsafe { (kern.one)(w.row(r), [tok(g)]) }[0]).collect();
                    let four = unsafe { (kern.four)(w.row(r), [tok(0), tok(1), tok(2), tok(3)]) };
                    let want_r: Vec<f64> = (0..t).map(|g| want[g * n + r]).collect();
                    let what = format!("{qtype:?} {isa:?} [{n}, {k}] row {r}");
                    assert_close(&one, &want_r, scale, &what);
                    // Four tokens per call give each token bit for bit what one per call gives.
                    assert_eq!(four.as_slice(), &one[..4], "{what}: four-token kernel");
                }
            }
        }
    }
}

#[test]
fn matmul_handles_odd_shapes_and_is_batch_invariant() {
    let mut rng = Lcg(11);
    for qtype in TYPES {
        let (n, k) = (37, 160);
        let data = random_weight(qtype, n, k, &mut rng);
        let w = QMatrix::new(qtype, &data, n, k).unwrap();
        for t in [1, 3, 5, 9] {
            let x = random_x(t * k, &mut rng);
            let want = reference(&w, &quantize_rows(&x, k), t);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            for isa in Isa::available() {
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
    // The one approximation on top of the weights' own: 8-bit activations. Relative to the f32 product
    // of the same dequantized weights the error stays at the 8-bit rounding level.
    let mut rng = Lcg(3);
    let (n, k, t) = (16, 576, 2);
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
                assert!((y[g * n + r] as f64 - exact).abs() <= 0.01 * norm, "{qtype:?}: {} vs {exact}", y[g * n + r]);
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
