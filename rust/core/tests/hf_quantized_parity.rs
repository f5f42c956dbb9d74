//! Quantized HF checkpoints against HF transformers in f32 on the same quantized weights, through the full
//! engine core: prompts whole, chunked and batched, every logits row within 1e-4 relative and 32 greedy
//! tokens identical.
//! - FP8 (block-scaled `fp8`, per-row `fbgemm_fp8`, per-tensor `compressed-tensors`): tests/fixtures/models/
//!   llama_fp8_*, made by tests/fixtures/gen_fp8_fixtures.py (the block one is transformers' own
//!   dequantizing reading of the file).
//! - MXFP4 gpt-oss experts: tests/fixtures/models/gpt_oss_mxfp4, made by gen_mxfp4_fixtures.py; the
//!   reference is transformers reading the file with Mxfp4Config(dequantize=True).

mod common;

use common::{fixtures, load_reference, max_rel_err, parity_args, run_greedy};

fn check(name: &str) {
    check_with(name, None)
}

/// `quantized`: the engine's `quantized_matmul` (`None`: its default).
fn check_with(name: &str, quantized: Option<bool>) {
    let dir = fixtures().join("models").join(name);
    let r = load_reference(&dir);
    for (chunk, together) in [(512, false), (5, false), (16, true)] {
        let args = mlc_core::engine::EngineArgs { quantized_matmul: quantized, ..parity_args(chunk) };
        for (i, (toks, rows)) in run_greedy(&dir, args, &r.prompts, 32, together).iter().enumerate() {
            let errs: Vec<f32> = rows.iter().zip(&r.logits[i]).map(|(g, w)| max_rel_err(g, w)).collect();
            if let Some(row) = errs.iter().position(|e| *e >= 1e-4) {
                panic!("{name}: prompt {i} row {row} relative logit error {:e} (chunk {chunk}, batched {together})", errs[row]);
            }
            assert_eq!(toks, &r.greedy[i], "{name}: greedy tokens differ for prompt {i} (chunk {chunk}, batched {together})");
        }
    }
}

#[test]
fn fp8_block_scaled_matches_transformers() {
    check("llama_fp8_block");
}

#[test]
fn fbgemm_fp8_per_row_matches_transformers() {
    check("llama_fp8_channel");
}

#[test]
fn compressed_tensors_fp8_per_tensor_matches_transformers() {
    check("llama_fp8_tensor");
}

#[test]
fn gpt_oss_mxfp4_experts_match_transformers() {
    // Dequantized at load (quantized_matmul off): the exact path.
    check_with("gpt_oss_mxfp4", Some(false));
}

/// The CPU's default path keeps the MXFP4 experts in 4 bits (converted to llama.cpp's blocks, multiplied by
/// the CPU's MXFP4 kernels with ~15-bit activations): against the exact path, rows up to the first greedy
/// token that differs (a router near-tie can send a token to another expert), their median error, and
/// the greedy tokens themselves.
#[test]
fn gpt_oss_mxfp4_experts_kept_in_4_bits_on_the_cpu() {
    let dir = fixtures().join("models").join("gpt_oss_mxfp4");
    let r = load_reference(&dir);
    let exact = run_greedy(&dir, mlc_core::engine::EngineArgs { quantized_matmul: Some(false), ..parity_args(512) }, &r.prompts, 32, false);
    let quant = run_greedy(&dir, parity_args(512), &r.prompts, 32, false);
    let (mut errs, mut same, mut total) = (Vec::new(), 0, 0);
    for ((qt, qr), (xt, xr)) in quant.iter().zip(&exact) {
        let shared = qt.iter().zip(xt).take_while(|(a, b)| a == b).count();
        errs.extend(qr.iter().zip(xr).take(shared + 1).map(|(a, b)| max_rel_err(a, b)));
        same += qt.iter().zip(xt).filter(|(a, b)| a == b).count();
        total += xt.len();
    }
    errs.sort_by(f32::total_cmp);
    let median = errs[errs.len() / 2];
    eprintln!("gpt_oss_mxfp4 (HF): MXFP4 kept vs dequantized: median row error {median:e}, worst {:e}, same greedy tokens {same}/{total}", errs[errs.len() - 1]);
    // Every other weight of the fixture is dense on either path: equal rows would mean the experts were
    // dequantized at load.
    assert!(errs[errs.len() - 1] > 0.0, "the default path gave the dequantized path's logits: experts not kept as MXFP4");
    assert!(median <= 1e-3, "median relative logit error {median:e}");
    assert!(same * 10 >= total * 9, "{same} of {total} greedy tokens agree");
}

/// The scales are applied where they belong: reading the block fixture's scales as one per tensor (the
/// first) moves the logits far off the reference, so the parity above cannot pass by accident.
#[test]
fn misread_scales_are_caught_by_the_reference() {
    use candle_core::{DType, Device};
    let dir = fixtures().join("models").join("llama_fp8_block");
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(dir.join("model.safetensors")) }.unwrap();
    let q = st.load("model.layers.0.mlp.up_proj.weight", &Device::Cpu).unwrap();
    let s = st.load("model.layers.0.mlp.up_proj.weight_scale_inv", &Device::Cpu).unwrap();
    assert_eq!((q.dtype(), s.dims()), (DType::F8E4M3, &[3usize, 2][..]));
    let cfg = mlc_core::quant::fp8::Fp8Config { block: Some([128, 128]) };
    let right = mlc_core::quant::fp8::dequantize(&q, &s, &cfg, "up").unwrap();
    let first = s.flatten_all().unwrap().narrow(0, 0, 1).unwrap();
    let wrong = mlc_core::quant::fp8::dequantize(&q, &first, &cfg, "up").unwrap();
    let diff = (right - wrong).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff > 1e-2, "{diff}");
}
