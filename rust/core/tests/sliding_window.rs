//! A model whose every layer slides over a window gives KV blocks back to the pool while it generates:
//! blocks in use stay bounded by the window however long the sequence grows, and the tokens are the same
//! as with the blocks kept (the released blocks were never read again).

mod common;

use common::fixtures;
use mlc_core::engine::{build, EngineArgs, Mode};
use mlc_core::request::SamplingParams;
use std::path::{Path, PathBuf};

/// The tiny Mistral fixture with `sliding_window` set to `window` (`None`: removed), in a temp dir.
fn mistral_with_window(window: Option<usize>, tag: &str) -> PathBuf {
    let src = fixtures().join("models").join("mistral");
    let dir = std::env::temp_dir().join(format!("mlc-swa-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["sliding_window"] = window.map_or(serde_json::Value::Null, |w| w.into());
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// Greedy tokens of one long generation and the most KV blocks in use at any step.
fn generate(model: &Path, prompt: Vec<u32>, new_tokens: usize) -> (Vec<u32>, usize, usize) {
    let args = EngineArgs {
        mode: Mode::Local,
        max_total_sequence_length: Some(1024),
        prefill_chunk_size: Some(8),
        kv_cache_page_size: Some(4),
        prefix_cache: false,
        verbose: false,
        ..Default::default()
    };
    let (mut core, info, _) = build(model.to_str().unwrap(), "cpu", &args).unwrap();
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(new_tokens), ignore_eos: true, ..Default::default() };
    let max_new = info.validate(&prompt, &params).unwrap();
    core.add("r".into(), prompt, params, max_new);
    let (mut tokens, mut peak) = (Vec::new(), 0);
    while core.has_work() {
        tokens.extend(core.step().into_iter().flat_map(|d| d.token_ids));
        let m = core.metrics();
        peak = peak.max(m.num_total_blocks - m.num_free_blocks);
    }
    (tokens, peak, info.kv_block_size)
}

#[test]
fn blocks_in_use_stay_bounded_by_the_window() {
    let window = 16;
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 2000).collect();
    let (tokens, peak, bs) = generate(&mistral_with_window(Some(window), "on"), prompt.clone(), 400);
    assert_eq!(tokens.len(), 400);
    // A step of n tokens at most reads the window plus itself: ceil((W - 1 + n) / bs) + 1 blocks (one more
    // when the span starts inside a block), n = the prefill chunk.
    let bound = (window - 1 + 8).div_ceil(bs) + 1;
    assert!(peak <= bound, "{peak} blocks in use, bound {bound} (window {window}, block size {bs})");
    // Without the window the same run holds every block of its 440 positions.
    let (_, full_peak, _) = generate(&mistral_with_window(None, "off"), prompt, 400);
    assert!(full_peak >= 440 / bs, "full attention held only {full_peak} blocks");
}
