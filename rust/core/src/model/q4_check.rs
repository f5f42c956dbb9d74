//! Test support for the CUDA Q4_0 matmul ([`super::q4`]): random weights quantized to Q4_0 by candle's
//! CPU quantizer, random activations rounded to the case's dtype, the matmul on the device, and a
//! reference on the CPU: the blocks dequantized by [`dequantize_q4_0`] (plain Rust, written from the
//! GGML block layout, not candle's code) and dot products accumulated in f64. The GPU tests drive it
//! through `mlc_llm._core._q4_check`; the CPU unit tests below check the reference against candle's own
//! dequantizer.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, DType, Device, Result, Tensor};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Bytes of one Q4_0 block: an f16 scale `d`, then 16 bytes whose low nibbles are elements 0..15 and
/// high nibbles elements 16..31; element = d * (nibble - 8).
const BLOCK_BYTES: usize = 18;
const BLOCK_WEIGHTS: usize = 32;

/// The raw Q4_0 blocks of an `[n, k]` weight (rows of `k / 32` blocks) as f32, row-major.
pub fn dequantize_q4_0(raw: &[u8], n: usize, k: usize) -> Result<Vec<f32>> {
    if k % BLOCK_WEIGHTS != 0 || raw.len() != n * (k / BLOCK_WEIGHTS) * BLOCK_BYTES {
        bail!("q4_0 reference: {} bytes are not [{n}, {k}] in Q4_0 blocks", raw.len());
    }
    let mut out = vec![0f32; n * k];
    for (block, dst) in raw.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(BLOCK_WEIGHTS)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (j, &byte) in block[2..].iter().enumerate() {
            dst[j] = d * (f32::from(byte & 0x0f) - 8.0);
            dst[j + 16] = d * (f32::from(byte >> 4) - 8.0);
        }
    }
    Ok(out)
}

/// One random case.
#[derive(Debug, Clone, Deserialize)]
pub struct Q4Case {
    /// Activations' dtype: "f32", "bf16" or "f16" (the output's too).
    pub dtype: String,
    /// T of `x: [T, K]`.
    pub tokens: usize,
    /// N (output features) and K (inputs, a multiple of 32).
    pub rows: usize,
    pub cols: usize,
    /// Split the rows into three weights and stack them ([`super::linear::Linear::stack`]) first.
    #[serde(default)]
    pub stacked: bool,
    /// Offset x by one element inside its buffer (the kernels' unaligned path).
    #[serde(default)]
    pub misaligned_x: bool,
    /// Treat the rows as a stacked gate/up weight (gate rows, then up rows; `rows` even) and check
    /// `forward_silu_mul`: outputs are silu(gate) * up, `[tokens, rows / 2]`.
    #[serde(default)]
    pub silu: bool,
    #[serde(default)]
    pub seed: u64,
    /// Force a path ("gemv", "gemm" or "dequant") instead of the one `forward` picks, or time "dense"
    /// (the weight dequantized beforehand, candle's matmul) beside them (not with `silu`).
    #[serde(default)]
    pub path: Option<String>,
    /// With `path` "gemv": the most token tiles (of 8) a tensor-core block takes (1, 2, 3, 4 or 8) instead
    /// of `q4::gemv_max_tiles()`, the engine's.
    #[serde(default)]
    pub tiles: Option<usize>,
    /// After the check, time this many further calls (one synchronize at the end).
    #[serde(default)]
    pub repeat: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Q4Report {
    pub tokens: usize,
    pub rows: usize,
    pub cols: usize,
    /// Rows compared against the reference (all of them, or an even sample plus the last 17 for very
    /// large weights).
    pub rows_checked: usize,
    /// "gemv", "gemm" (our kernels), "dequant_matmul" (dequantized slices and candle's matmul) or "dense".
    pub path: String,
    pub stacked: bool,
    /// max |device - reference| and max |reference| over the checked outputs.
    pub max_abs_err: f64,
    pub max_abs_ref: f64,
    /// max |device - reference| / max |reference|.
    pub max_rel_err: f64,
    /// max |device - reference| / |reference| over outputs with |reference| >= max |reference| / 8
    /// (there the output's own rounding bounds the error).
    pub max_elem_rel_err: f64,
    /// The device's dequantization to f32 against the reference dequantization (checked rows).
    pub dequant_max_abs_err: f64,
    /// Mean time of one device matmul over `repeat` back-to-back calls.
    pub device_us: Option<f64>,
    /// `silu` cases: max |fused - (GEMV, then silu_mul)| over every output.
    pub silu_unfused_max_abs_diff: Option<f64>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => bail!("unknown dtype {other:?}"),
    }
}

/// Random Q4_0 blocks of an `[n, k]` weight (candle's quantizer on normal values with a per-row spread,
/// so scales differ across rows) and `x: [t, k]` rounded to `dtype`, as f32 values.
fn inputs(case: &Q4Case, dtype: DType) -> Result<(Vec<u8>, Vec<f32>)> {
    let (n, k, t) = (case.rows, case.cols, case.tokens);
    let mut rng = StdRng::seed_from_u64(case.seed);
    let row_scale: Vec<f32> = (0..n).map(|_| rng.random_range(0.02f32..0.2)).collect();
    let seeds: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    let w: Vec<f32> = (0..n)
        .into_par_iter()
        .flat_map_iter(|r| {
            let mut rr = StdRng::seed_from_u64(seeds[r]);
            let s = row_scale[r];
            (0..k).map(move |_| s * (rr.random_range(-1.0f32..1.0) + rr.random_range(-1.0f32..1.0)))
        })
        .collect();
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu)?;
    let raw = QTensor::quantize(&w, GgmlDType::Q4_0)?.data()?.into_owned();
    let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let x = Tensor::from_vec(x, (t, k), &Device::Cpu)?.to_dtype(dtype)?.to_dtype(DType::F32)?;
    Ok((raw, x.flatten_all()?.to_vec1::<f32>()?))
}

/// Rows compared: all up to 8192, else an even sample of 4096 plus the last 17 (the last row tile).
fn checked_rows(n: usize) -> Vec<usize> {
    if n <= 8192 {
        return (0..n).collect();
    }
    let mut rows: Vec<usize> = (0..4096).map(|i| i * n / 4096).collect();
    rows.extend(n - 17..n);
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Tokens compared: all up to 300, else the first 256 and the last 17 (the last token tiles), so prefill-
/// sized cases keep the f64 reference affordable.
fn checked_tokens(t: usize) -> Vec<usize> {
    if t <= 300 {
        return (0..t).collect();
    }
    (0..256).chain(t - 17..t).collect()
}

/// Runs `case` on `device` (CUDA) and compares with the CPU reference.
pub fn compare_on_device(device: &Device, case: &Q4Case) -> Result<Q4Report> {
    let dtype = parse_dtype(&case.dtype)?;
    if !device.is_cuda() {
        bail!("q4 check: {device:?} is not a CUDA device");
    }
    let (n, k, t) = (case.rows, case.cols, case.tokens);
    if n < 3 || k == 0 || k % BLOCK_WEIGHTS != 0 || t == 0 {
        bail!("q4 check: need rows >= 3, cols a positive multiple of 32 and tokens > 0, got [{t}, {k}] x [{n}, {k}]");
    }
    if case.silu && n % 2 != 0 {
        bail!("q4 check: a gate/up weight needs an even number of rows, got {n}");
    }
    let (raw, x) = inputs(case, dtype)?;
    // Outputs compared, and the weight rows they read (with `silu`, output o reads rows o and f + o).
    let f = if case.silu { n / 2 } else { n };
    let out_rows = checked_rows(f);
    let rows: Vec<usize> = if case.silu { out_rows.iter().copied().chain(out_rows.iter().map(|r| r + f)).collect() } else { out_rows.clone() };
    let row_bytes = k / BLOCK_WEIGHTS * BLOCK_BYTES;
    let wd: Vec<Vec<f32>> = rows
        .par_iter()
        .map(|&r| dequantize_q4_0(&raw[r * row_bytes..(r + 1) * row_bytes], 1, k))
        .collect::<Result<_>>()?;
    // [tokens_checked, rows_checked]: f64 dot products of the dequantized rows and the rounded activations.
    let tokens = checked_tokens(t);
    let reference: Vec<Vec<f64>> = tokens
        .par_iter()
        .map(|&ti| {
            let xt = &x[ti * k..(ti + 1) * k];
            let dots: Vec<f64> = wd.iter().map(|w| w.iter().zip(xt).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()).collect();
            if !case.silu {
                return dots;
            }
            let (gate, up) = dots.split_at(out_rows.len());
            gate.iter().zip(up).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect()
        })
        .collect();
    let (device_y, device_w, device_us, silu_diff, path) = device_run(device, case, dtype, &raw, &x, &rows, &out_rows)?;
    let device_y: Vec<&Vec<f32>> = tokens.iter().map(|&ti| &device_y[ti]).collect();

    let mut report = Q4Report {
        tokens: t,
        rows: n,
        cols: k,
        rows_checked: rows.len(),
        path,
        stacked: case.stacked,
        device_us,
        silu_unfused_max_abs_diff: silu_diff,
        ..Default::default()
    };
    for (ref_t, dev_t) in reference.iter().zip(device_y.iter().copied()) {
        for (&r, &d) in ref_t.iter().zip(dev_t.iter()) {
            report.max_abs_ref = report.max_abs_ref.max(r.abs());
            report.max_abs_err = report.max_abs_err.max((f64::from(d) - r).abs());
        }
    }
    let floor = report.max_abs_ref / 8.0;
    for (ref_t, dev_t) in reference.iter().zip(device_y.iter().copied()) {
        for (&r, &d) in ref_t.iter().zip(dev_t.iter()) {
            if r.abs() >= floor && r != 0.0 {
                report.max_elem_rel_err = report.max_elem_rel_err.max((f64::from(d) - r).abs() / r.abs());
            }
        }
    }
    report.max_rel_err = if report.max_abs_ref > 0.0 { report.max_abs_err / report.max_abs_ref } else { report.max_abs_err };
    for (w_ref, w_dev) in wd.iter().zip(&device_w) {
        for (&a, &b) in w_ref.iter().zip(w_dev) {
            report.dequant_max_abs_err = report.dequant_max_abs_err.max(f64::from((a - b).abs()));
        }
    }
    Ok(report)
}

/// The device's `[t][out_rows]` outputs, its f32 dequantization of `rows`, the optional timing,
/// (`silu`) the fused kernel's largest difference from the unfused GEMV + silu_mul, and the path taken.
type DeviceRun = (Vec<Vec<f32>>, Vec<Vec<f32>>, Option<f64>, Option<f64>, String);

#[cfg(not(feature = "cuda"))]
fn device_run(_: &Device, _: &Q4Case, _: DType, _: &[u8], _: &[f32], _: &[usize], _: &[usize]) -> Result<DeviceRun> {
    bail!("q4 check: this build has no CUDA support")
}

#[cfg(feature = "cuda")]
fn device_run(device: &Device, case: &Q4Case, dtype: DType, raw: &[u8], x: &[f32], rows: &[usize], out_rows: &[usize]) -> Result<DeviceRun> {
    use super::linear::{Linear, StackedLinear, Weight};
    use super::q4::{gemv_max_tiles, Q4Path, Q4Weight};

    let (n, k, t) = (case.rows, case.cols, case.tokens);
    let row_bytes = k / BLOCK_WEIGHTS * BLOCK_BYTES;
    let parts = match (case.silu, case.stacked) {
        (true, _) => vec![n / 2, n / 2], // gate, up
        (false, true) => vec![n / 2, n / 4, n - n / 2 - n / 4],
        (false, false) => vec![n],
    };
    let mut start = 0;
    let mut linears = Vec::with_capacity(parts.len());
    for &p in &parts {
        let w = Q4Weight::from_blocks(&raw[start * row_bytes..(start + p) * row_bytes], p, k, device)?;
        linears.push(Linear { weight: Weight::Q4Cuda(w), bias: None });
        start += p;
    }
    let layer = StackedLinear::new(linears)?;
    if case.stacked && !layer.is_stacked() {
        bail!("q4 check: the parts were not stacked");
    }
    let full = match &layer {
        StackedLinear::Stacked(Linear { weight: Weight::Q4Cuda(w), .. }) => w.clone(),
        _ => bail!("q4 check: expected one stacked Q4_0 weight"),
    };

    let xs = Tensor::from_slice(x, (t, k), &Device::Cpu)?.to_dtype(dtype)?;
    let xd = if case.misaligned_x {
        // One element in front: the view's data starts 2 (or 4) bytes into its buffer.
        let padded = Tensor::cat(&[&Tensor::zeros((t * k + 1,), dtype, &Device::Cpu)?.narrow(0, 0, 1)?, &xs.flatten_all()?], 0)?;
        padded.to_device(device)?.narrow(0, 1, t * k)?.reshape((t, k))?
    } else {
        xs.to_device(device)?
    };
    match case.tiles {
        Some(_) if case.path.as_deref() != Some("gemv") => bail!("q4 check: tiles is for the forced gemv path"),
        Some(v) if ![1, 2, 3, 4, 8].contains(&v) => bail!("q4 check: tiles {v} is not 1, 2, 3, 4 or 8"),
        _ => {}
    }
    let forced = match case.path.as_deref() {
        None | Some("dense") => None,
        Some(_) if case.silu => bail!("q4 check: a forced path is not checked with silu"),
        Some("gemv") => Some(Q4Path::Gemv),
        Some("gemm") => Some(Q4Path::Gemm),
        Some("dequant") => Some(Q4Path::Dequant),
        Some(other) => bail!("q4 check: unknown path {other:?} (gemv, gemm, dequant, dense)"),
    };
    // "dense": the weight dequantized once to the activations' dtype and multiplied by candle's matmul
    // (cuBLAS), what a 16-bit model of the same shape runs: the yardstick of the 4-bit paths' timings.
    let dense = match case.path.as_deref() {
        Some("dense") if case.silu => bail!("q4 check: a forced path is not checked with silu"),
        Some("dense") => Some(full.dequantize(dtype)?),
        _ => None,
    };
    let path = match (&dense, forced.unwrap_or_else(|| full.path_for(&xd))) {
        (Some(_), _) => "dense",
        (None, Q4Path::Gemv) => "gemv",
        (None, Q4Path::Gemm) => "gemm",
        (None, Q4Path::Dequant) => "dequant_matmul",
    };
    let run = |x: &Tensor| match (&dense, forced, case.silu) {
        (Some(w), _, _) => x.matmul(&w.t()?),
        (None, Some(Q4Path::Gemv), _) => full.gemv_with_tiles(x, case.tiles.unwrap_or_else(gemv_max_tiles)),
        (None, Some(p), _) => full.forward_with(x, p),
        (None, None, true) => layer.forward_silu_mul(x),
        (None, None, false) => layer.forward(x),
    };
    let y = run(&xd)?; // [t, f]
    let f = if case.silu { n / 2 } else { n };
    if y.dims() != [t, f] || y.dtype() != dtype {
        bail!("q4 check: output is {:?} {:?}, expected [{t}, {f}] {dtype:?}", y.shape(), y.dtype());
    }
    let silu_diff = if case.silu {
        let unfused = super::fused::silu_mul(&layer.forward(&xd)?)?;
        Some(f64::from((y.to_dtype(DType::F32)? - unfused.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?))
    } else {
        None
    };
    let index = |rs: &[usize]| Tensor::from_vec(rs.iter().map(|&r| r as u32).collect::<Vec<_>>(), rs.len(), device);
    let y_rows = y.index_select(&index(out_rows)?, 1)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    let w_rows = full.dequantize(DType::F32)?.index_select(&index(rows)?, 0)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;

    let device_us = if case.repeat == 0 {
        None
    } else {
        run(&xd)?;
        device.synchronize()?;
        let started = std::time::Instant::now();
        for _ in 0..case.repeat {
            run(&xd)?;
        }
        device.synchronize()?;
        Some(started.elapsed().as_secs_f64() * 1e6 / case.repeat as f64)
    };
    Ok((y_rows, w_rows, device_us, silu_diff, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_q4(n: usize, k: usize, seed: u64) -> (Tensor, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let w = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        let raw = q.data().unwrap().into_owned();
        (q.dequantize(&Device::Cpu).unwrap(), raw)
    }

    #[test]
    fn reference_dequantization_matches_candle() {
        for (n, k) in [(1, 32), (3, 64), (7, 256), (5, 96)] {
            let (candle, raw) = random_q4(n, k, (n * k) as u64);
            assert_eq!(raw.len(), n * k / 32 * 18);
            let ours = dequantize_q4_0(&raw, n, k).unwrap();
            let theirs = candle.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(ours, theirs, "[{n}, {k}]");
        }
    }

    #[test]
    fn reference_dequantization_reads_the_block_layout() {
        // d = 0.5, byte j = (j + 1) << 4 | j: element j = 0.5 * (j - 8), element 16 + j = 0.5 * (j + 1 - 8).
        let mut raw = f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend((0..16u8).map(|j| ((j + 1) & 0x0f) << 4 | j));
        let w = dequantize_q4_0(&raw, 1, 32).unwrap();
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(w[16 + j], 0.5 * (((j + 1) % 16) as f32 - 8.0));
        }
    }

    #[test]
    fn reference_rejects_wrong_sizes() {
        assert!(dequantize_q4_0(&[0u8; 18], 1, 64).is_err());
        assert!(dequantize_q4_0(&[0u8; 18], 1, 16).is_err());
    }

    #[test]
    fn checked_tokens_cover_the_tail() {
        assert_eq!(checked_tokens(5), vec![0, 1, 2, 3, 4]);
        let big = checked_tokens(2048);
        assert_eq!(big.len(), 256 + 17);
        assert_eq!(*big.last().unwrap(), 2047);
        assert!(big.contains(&2031) && !big.contains(&2030));
    }

    #[test]
    fn checked_rows_cover_the_tail() {
        assert_eq!(checked_rows(10), (0..10).collect::<Vec<_>>());
        let r = checked_rows(128_256);
        assert!(r.contains(&0) && r.contains(&128_255) && r.contains(&(128_256 - 17)));
        assert!(r.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_cpu_is_refused() {
        let case = Q4Case { dtype: "f32".into(), tokens: 1, rows: 4, cols: 32, stacked: false, misaligned_x: false, silu: false, seed: 0, repeat: 0, path: None, tiles: None };
        assert!(compare_on_device(&Device::Cpu, &case).is_err());
    }
}
