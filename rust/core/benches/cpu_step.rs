//! The matmuls of a Qwen2.5-1.5B Q4_K_M decode step at batch 1, cold, as the engine runs them: 28 layers
//! of q, k, v, o, gate+up and down (v and down in Q6_K every other layer, as the GGUF has half of them),
//! then the 151936-row Q6_K lm_head, each weight read from memory once per step (1 GB: no cache keeps
//! it). Prints ms per step and GB/s per kind of matmul: which ones run below the machine's read
//! bandwidth. Between matmuls the calling thread spins for the time the engine's other ops take there
//! (`STEP_GAPS=0` leaves them out; defaults from `MLC_CPU_PROFILE` on the engine: rope + attention ~100
//! us after v, add + norm ~7 after o and down, silu * up ~32 after gate+up), since what the threads do in
//! those gaps changes the matmuls after them. Part of the `cpu_qmatmul` bench (its `step` filter):
//!
//!     cargo bench -p mlc-core --bench cpu_qmatmul -- step

use mlc_core::quant::cpu::ahead;
use mlc_core::quant::cpu::kpack::PackedK;
use mlc_core::quant::cpu::{dispatch, matmul_packed, QMatrix, QType};
use std::time::{Duration, Instant};

const LAYERS: usize = 28;
const STEPS: usize = 24;

struct Op {
    kind: usize,
    w: PackedK,
    bytes: usize,
    k: usize,
    /// The engine's other ops after this matmul.
    gap: Duration,
}

const KINDS: [&str; 5] = ["q/k/v", "o", "gate+up", "down", "lm_head"];

pub fn run(random_weight: fn(QType, usize, usize) -> Vec<u8>) {
    // `STEP_GAPS=x` scales the gaps by x (0: none).
    let scale: f64 = std::env::var("STEP_GAPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let gaps = scale > 0.0;
    let us = |u: u64| Duration::from_secs_f64(u as f64 * 1e-6 * scale);
    let mut ops = Vec::new();
    let mut add = |kind: usize, qtype: QType, n: usize, k: usize, gap: Duration| {
        let data = random_weight(qtype, n, k);
        let m = QMatrix::new(qtype, &data, n, k).expect("shape");
        let w = PackedK::for_matmul(&m, dispatch::active()).expect("K-quants are repacked");
        ops.push(Op { kind, w, bytes: data.len(), k, gap });
    };
    for l in 0..LAYERS {
        let six = if l % 2 == 0 { QType::Q6K } else { QType::Q4K };
        add(0, QType::Q4K, 1536, 1536, Duration::ZERO);
        add(0, QType::Q4K, 256, 1536, Duration::ZERO);
        add(0, six, 256, 1536, us(100));
        add(1, QType::Q4K, 1536, 1536, us(7));
        add(2, QType::Q4K, 17920, 1536, us(32));
        add(3, six, 1536, 8960, us(7));
    }
    add(4, QType::Q6K, 151936, 1536, us(20));
    let total: usize = ops.iter().map(|o| o.bytes).sum();
    println!("qwen step: {} matmuls, {:.0} MB of GGUF blocks, gaps {}", ops.len(), total as f64 / 1e6, if gaps { "on" } else { "off" });
    let xs: Vec<Vec<f32>> = [1536usize, 8960].iter().map(|&k| (0..k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect()).collect();
    // Steps take turns at each setting of the next weight's prefetch (`ahead`), so the machine's
    // neighbours, which move its bandwidth by 2x from one second to the next, weigh on each alike.
    let budgets: Vec<usize> = std::env::var("STEP_AHEAD_KB").unwrap_or_else(|_| "0,512".into()).split(',').filter_map(|v| v.trim().parse::<usize>().ok()).map(|kb| kb * 1024).collect();
    let mut steps: Vec<Vec<(f64, [f64; 5])>> = vec![Vec::new(); budgets.len()];
    for step in 0..STEPS * budgets.len() + 1 {
        let b = step % budgets.len();
        ahead::set_budget(budgets[b]);
        let start = Instant::now();
        let mut kind_ms = [0f64; 5];
        for op in &ops {
            let t = Instant::now();
            std::hint::black_box(matmul_packed(&op.w, if op.k == 1536 { &xs[0] } else { &xs[1] }, dispatch::active()));
            kind_ms[op.kind] += t.elapsed().as_secs_f64() * 1e3;
            let g = Instant::now();
            while g.elapsed() < op.gap {
                std::hint::spin_loop();
            }
        }
        if step > 0 {
            steps[b].push((start.elapsed().as_secs_f64() * 1e3, kind_ms));
        }
    }
    let kind_bytes = |k: usize| ops.iter().filter(|o| o.kind == k).map(|o| o.bytes).sum::<usize>() as f64;
    for (b, runs) in budgets.iter().zip(steps.iter_mut()) {
        runs.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap());
        // The median step and its parts (a neighbour's burst moves single steps).
        let (ms, parts) = runs[runs.len() / 2];
        let parts: Vec<String> = (0..5).map(|k| format!("{} {:.2} ({:.1} GB/s)", KINDS[k], parts[k], kind_bytes(k) / parts[k] / 1e6)).collect();
        println!("ahead {:>4} KiB: step {ms:.2} ms (min {:.2}): {}", b / 1024, runs[0].0, parts.join(", "));
    }
}
