//! Fuzz target of the model loaders (GGUF, HF safetensors + config.json, MLC tensor cache +
//! mlc-chat-config.json), run as an ordinary `cargo test` with a bounded number of random inputs
//! (proptest; `FUZZ_LOADERS_CASES` per loader, 2,000 by default: 6,000 inputs in about 6 s on 2 cores).
//!
//! Inputs are mutations of small valid models: bytes of a binary header flipped, set or overwritten
//! with boundary values (0, 2^31, 2^63, u64::MAX, the file length), the file truncated, and JSON
//! leaves replaced by hostile values (0, -1, 2^40, 1e300, strings, null, containers). The property:
//! building the engine core returns `Ok` or an error, never panics (and never aborts, which would kill
//! this test binary). Whatever loads must also take one step.

use candle_core::quantized::gguf_file;
use mlc_core::convert::convert_weight;
use mlc_core::engine::{build, EngineArgs};
use mlc_core::request::SamplingParams;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlc-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn runner_config() -> Config {
    let cases = std::env::var("FUZZ_LOADERS_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Builds the engine core from `model`; a model that loads runs one greedy step. Panics are the
/// failures this target looks for.
fn load(model: &Path) {
    let args = EngineArgs { verbose: false, max_total_sequence_length: Some(256), ..Default::default() };
    let Ok((mut core, info, _)) = build(model.to_str().unwrap(), "cpu", &args) else { return };
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(1), ..Default::default() };
    if let Ok(max_new) = info.validate(&[0, 1], &params) {
        core.add("fuzz".into(), vec![0, 1], params, max_new);
        let _ = core.step();
    }
}

/// One edit of a binary file; positions are taken modulo the region they apply to.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Set(usize, u8),
    /// A little-endian u64 boundary value (index into [`boundaries`]) written at the position.
    Word(usize, usize),
    Truncate(usize),
}

fn boundaries(len: usize) -> [u64; 8] {
    [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 40, 1 << 63, u64::MAX, len as u64]
}

fn byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    let edit = prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(p, m)| ByteEdit::Flip(p, m)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| ByteEdit::Set(p, b)),
        3 => (any::<usize>(), 0..8usize).prop_map(|(p, v)| ByteEdit::Word(p, v)),
        1 => any::<usize>().prop_map(ByteEdit::Truncate),
    ];
    proptest::collection::vec(edit, 1..4)
}

/// Applies `edits` to `bytes`, positions falling in `[0, region)` (the header, where parsing happens).
fn apply(bytes: &[u8], region: usize, edits: &[ByteEdit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for e in edits {
        if out.is_empty() {
            break;
        }
        let region = region.min(out.len());
        match *e {
            ByteEdit::Flip(p, m) => out[p % region] ^= m,
            ByteEdit::Set(p, b) => out[p % region] = b,
            ByteEdit::Word(p, v) => {
                let at = p % region;
                let word = boundaries(bytes.len())[v].to_le_bytes();
                let end = (at + 8).min(out.len());
                out[at..end].copy_from_slice(&word[..end - at]);
            }
            ByteEdit::Truncate(p) => out.truncate(p % (out.len() + 1)),
        }
    }
    out
}

/// Hostile values a JSON leaf is replaced with.
fn hostile_json(i: usize) -> Value {
    let all = [
        Value::from(0), Value::from(-1), Value::from(1u64 << 40), Value::from(u64::MAX), Value::from(1e300),
        Value::from(-1e-300), Value::from(0.5), Value::from("x"), Value::Null, Value::Bool(true),
        Value::Array(vec![]), serde_json::json!({"a": 1}),
    ];
    all[i % all.len()].clone()
}

/// JSON pointers of every leaf (and every container) of `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => o.iter().for_each(|(k, x)| pointers(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out)),
        // Long arrays (shard records, token lists) are sampled at a few indices.
        Value::Array(a) => a.iter().enumerate().filter(|(i, _)| *i < 4 || *i + 1 == a.len()).for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
        _ => {}
    }
    out.push(at);
}

/// `text` with the JSON leaves at `picks` (modulo the number of pointers) replaced.
fn edit_json(text: &str, picks: &[(usize, usize)]) -> String {
    let mut v: Value = serde_json::from_str(text).unwrap();
    let mut all = Vec::new();
    pointers(&v, String::new(), &mut all);
    for &(p, h) in picks {
        let ptr = &all[p % all.len()];
        if ptr.is_empty() {
            continue;
        }
        if let Some(slot) = v.pointer_mut(ptr) {
            *slot = hostile_json(h);
        }
    }
    v.to_string()
}

fn json_picks() -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((any::<usize>(), any::<usize>()), 1..3)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn gguf_mutations_load_or_fail_cleanly() {
    let path = fixtures().join("gguf_quant/tiny-llama-q5_0.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let content = gguf_file::Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    let header = content.tensor_data_offset as usize;
    let dir = scratch("gguf");
    let file = dir.join("m.gguf");
    let mut runner = TestRunner::new(runner_config());
    runner
        .run(&byte_edits(), |edits| {
            std::fs::write(&file, apply(&bytes, header, &edits)).unwrap();
            load(&file);
            Ok(())
        })
        .unwrap();
}

#[test]
fn safetensors_and_config_mutations_load_or_fail_cleanly() {
    let src = fixtures().join("models/llama");
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let dir = scratch("hf");
    copy_dir(&src, &dir);
    let mut runner = TestRunner::new(runner_config());
    runner
        .run(&(byte_edits(), json_picks(), 0..3u8), |(edits, picks, what)| {
            // 0: the weights' header, 1: config.json, 2: both.
            let w = if what != 1 { apply(&weights, header, &edits) } else { weights.clone() };
            let c = if what != 0 { edit_json(&config, &picks) } else { config.clone() };
            std::fs::write(dir.join("model.safetensors"), w).unwrap();
            std::fs::write(dir.join("config.json"), c).unwrap();
            load(&dir);
            Ok(())
        })
        .unwrap();
}

/// The tiny Llama fixture converted to an MLC directory (q4f16_1), once.
fn mlc_model() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = fixtures().join("models/llama");
        let out = scratch("mlc-src");
        convert_weight(&src, "q4f16_1", &out, &mut |_, _, _| Ok(())).unwrap();
        let hf: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        let chat = serde_json::json!({"model_type": hf["model_type"], "quantization": "q4f16_1", "model_config": hf,
            "context_window_size": 512, "conv_template": "chatml"});
        std::fs::write(out.join("mlc-chat-config.json"), chat.to_string()).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), out.join(f)).unwrap();
        }
        out
    })
}

#[test]
fn mlc_tensor_cache_mutations_load_or_fail_cleanly() {
    let src = mlc_model();
    let cache_name = ["tensor-cache.json", "ndarray-cache.json"].into_iter().find(|n| src.join(n).exists()).unwrap();
    let cache = std::fs::read_to_string(src.join(cache_name)).unwrap();
    let chat = std::fs::read_to_string(src.join("mlc-chat-config.json")).unwrap();
    let shard = std::fs::read(src.join("params_shard_0.bin")).unwrap();
    let dir = scratch("mlc");
    copy_dir(src, &dir);
    let mut runner = TestRunner::new(runner_config());
    runner
        .run(&(json_picks(), byte_edits(), 0..3u8), |(picks, edits, what)| {
            // 0: the tensor cache's records, 1: mlc-chat-config.json, 2: the first shard's bytes.
            let (c, m, s) = match what {
                0 => (edit_json(&cache, &picks), chat.clone(), shard.clone()),
                1 => (cache.clone(), edit_json(&chat, &picks), shard.clone()),
                _ => (cache.clone(), chat.clone(), apply(&shard, shard.len(), &edits)),
            };
            std::fs::write(dir.join(cache_name), c).unwrap();
            std::fs::write(dir.join("mlc-chat-config.json"), m).unwrap();
            std::fs::write(dir.join("params_shard_0.bin"), s).unwrap();
            load(&dir);
            Ok(())
        })
        .unwrap();
}
