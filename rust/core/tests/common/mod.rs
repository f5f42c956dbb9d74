//! Helpers shared by the logit-parity tests: reference fixtures written by the generators in
//! tests/fixtures/ and a run of the full engine core that captures every sampled-from logits row.

#![allow(dead_code)]

use mlc_core::engine::{build, EngineArgs, Mode};
use mlc_core::request::SamplingParams;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub struct Reference {
    pub prompts: Vec<Vec<u32>>,
    pub greedy: Vec<Vec<u32>>,
    /// [num_prompts][rows][vocab]
    pub logits: Vec<Vec<Vec<f32>>>,
}

/// `reference.json` (prompts, greedy, logits_file, logits_shape) and its raw little-endian f32 logits.
pub fn load_reference(dir: &Path) -> Reference {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<u32>> { serde_json::from_value(v[k].clone()).unwrap() };
    let shape: Vec<usize> = serde_json::from_value(v["logits_shape"].clone()).unwrap();
    let bytes = std::fs::read(dir.join(v["logits_file"].as_str().unwrap())).unwrap();
    let flat: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(flat.len(), shape.iter().product::<usize>());
    let (p, r, vocab) = (shape[0], shape[1], shape[2]);
    let logits = (0..p).map(|i| (0..r).map(|j| flat[(i * r + j) * vocab..(i * r + j + 1) * vocab].to_vec()).collect()).collect();
    Reference { prompts: ids("prompts"), greedy: ids("greedy"), logits }
}

/// Greedy runs of `prompts` through one engine core on the CPU: per prompt, the new tokens and the logits
/// rows they were sampled from. `together` batches the prompts in the same steps.
pub fn run_greedy(model: &Path, args: EngineArgs, prompts: &[Vec<u32>], max_tokens: usize, together: bool) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let (mut core, info, _) = build(model.to_str().unwrap(), "cpu", &args).unwrap();
    core.capture_logits = true;
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() };
    let mut deltas = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let max_new = info.validate(p, &params).unwrap();
        core.add(format!("r{i}"), p.clone(), params.clone(), max_new);
        if !together {
            deltas.extend(core.run_to_completion().unwrap());
        }
    }
    deltas.extend(core.run_to_completion().unwrap());
    (0..prompts.len())
        .map(|i| {
            let id = format!("r{i}");
            let toks: Vec<u32> = deltas.iter().filter(|d| d.request_id == id).flat_map(|d| d.token_ids.clone()).collect();
            let rows: Vec<Vec<f32>> = core.captured.iter().filter(|(rid, _)| *rid == id).map(|(_, l)| l.clone()).collect();
            (toks, rows)
        })
        .collect()
}

/// Engine arguments for parity runs: local mode, the given prefill chunk, room for the fixtures' prompts.
pub fn parity_args(chunk: usize) -> EngineArgs {
    // The f32 KV cache: these are exact-reference checks (the CPU's default f16 cache moves logits by ~5e-4
    // relative; its cost is measured in smollm2_gguf.rs).
    let kv_cache_dtype = Some("float32".to_string());
    EngineArgs { mode: Mode::Local, prefill_chunk_size: Some(chunk), max_total_sequence_length: Some(512), verbose: false, kv_cache_dtype, ..Default::default() }
}

/// max |got - want| / max |want|.
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}
