//! Time of `quant::cpu::matmul` per weight type and shape, at 1, 8 and 256 tokens: the matmuls of
//! Qwen2.5-1.5B Q4_K_M (q/k/v/o, gate+up stacked, down, the 151936-row lm_head) and SmolLM2-135M Q4_1
//! (and its Q8_0 tied lm_head),
//! on random blocks (the kernels' speed does not depend on the values). Prints ms per call, weight
//! bytes read per second and integer multiply-adds per second.
//!
//!     cargo bench -p mlc-core --bench cpu_qmatmul [-- FILTER]     (MLC_CPU_ISA / MLC_CPU_THREADS /
//!     MLC_CPU_KQUANT_ACT apply)
//!
//! `-- attn` times the CPU attention of a decode step instead ([`cpu_attention`]), `-- step` a whole
//! Qwen decode step's matmuls with their weights cold ([`cpu_step`]).

#[path = "cpu_attention.rs"]
mod cpu_attention;
#[path = "cpu_step.rs"]
mod cpu_step;

use mlc_core::quant::cpu::kpack::{KLayout, PackedK};
use mlc_core::quant::cpu::{dispatch, matmul, matmul_packed, QMatrix, QType};
use std::time::Instant;

fn random_weight(qtype: QType, n: usize, k: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let bytes = qtype.block_bytes();
    let mut out: Vec<u8> = (0..n * k / qtype.block_values() * bytes).map(|_| next() as u8).collect();
    // Finite f16 scales (random bytes could be NaN): 0.01 = 0x211f.
    let f16s: &[usize] = match qtype {
        QType::Q4_0 | QType::Q8_0 => &[0],
        QType::Q4_1 | QType::Q4K => &[0, 2],
        QType::Q6K => &[208],
        QType::Mxfp4 => &[],
    };
    for blk in out.chunks_mut(bytes) {
        for &f in f16s {
            blk[f..f + 2].copy_from_slice(&0x211fu16.to_le_bytes());
        }
    }
    out
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    let shapes: &[(&str, QType, usize, usize)] = &[
        ("qwen q", QType::Q4K, 1536, 1536),
        ("qwen k", QType::Q4K, 256, 1536),
        ("qwen v6", QType::Q6K, 256, 1536),
        ("qwen o", QType::Q4K, 1536, 1536),
        ("qwen gate+up", QType::Q4K, 17920, 1536),
        ("qwen down4", QType::Q4K, 1536, 8960),
        ("qwen down6", QType::Q6K, 1536, 8960),
        ("qwen lm_head", QType::Q6K, 151936, 1536),
        ("smol qkv", QType::Q4_1, 960, 576),
        ("smol gate+up", QType::Q4_1, 3072, 576),
        ("smol down", QType::Q4_1, 576, 1536),
        ("smol lm_head", QType::Q8_0, 49152, 576),
    ];
    println!("isa {:?}, K-quant layout {:?}", dispatch::active(), KLayout::active());
    if filter.starts_with("attn") {
        return cpu_attention::run(&filter);
    }
    if filter == "step" {
        return cpu_step::run(random_weight);
    }
    println!("{:<14} {:>4} {:>6} {:>6} {:>5} {:>9} {:>7} {:>7}", "shape", "type", "n", "k", "t", "ms", "GB/s", "Gmac/s");
    for &(name, qtype, n, k) in shapes {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let data = random_weight(qtype, n, k);
        let w = QMatrix::new(qtype, &data, n, k).expect("shape");
        // Weights the matmul repacks are repacked once, as at load.
        let packed = PackedK::for_matmul(&w, dispatch::active());
        for t in [1usize, 2, 4, 8, 256] {
            if t == 256 && n > 20000 {
                continue; // the lm_head runs for the last token only
            }
            let x: Vec<f32> = (0..t * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
            let reps = ((2e8 / (n * k * t) as f64).ceil() as usize).clamp(3, 200);
            let mut times = Vec::with_capacity(reps);
            for _ in 0..reps + 1 {
                let start = Instant::now();
                match &packed {
                    Some(p) => std::hint::black_box(matmul_packed(p, &x, dispatch::active())),
                    None => std::hint::black_box(matmul(&w, &x, dispatch::active()).expect("matmul")),
                };
                times.push(start.elapsed().as_secs_f64());
            }
            times.remove(0);
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            // The fastest run: on a shared machine the others measure the neighbours.
            let s = times[0];
            println!(
                "{name:<14} {:>4} {n:>6} {k:>6} {t:>5} {:>9.3} {:>7.1} {:>7.1}",
                format!("{qtype:?}"),
                s * 1e3,
                data.len() as f64 / s / 1e9,
                (n * k * t) as f64 / s / 1e9
            );
        }
    }
}
