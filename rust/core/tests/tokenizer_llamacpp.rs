//! llama.cpp's tokenizer test vectors (`models/ggml-vocab-*.gguf{,.inp,.out}`, MIT, see
//! tests/fixtures/tokenizers/llamacpp/LICENSE-llama.cpp). The `.out` ids were produced by the HF
//! tokenizer of each model with `add_special_tokens=False`, and llama.cpp's test-tokenizer-0 also
//! tokenizes with `add_special = false`, so no BOS is expected.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use mlc_core::tokenizer::Tokenizer;

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizers/llamacpp")
        .join(name)
}

fn load(vocab: &str) -> Tokenizer {
    let path = fixture(&format!("ggml-vocab-{vocab}.gguf"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Content::read issues many small reads.
    let mut file = std::io::BufReader::new(file);
    let content = Content::read(&mut file).expect("GGUF header");
    Tokenizer::from_gguf(&content, &path).expect("tokenizer from GGUF")
}

/// The inputs and their expected ids, read as llama.cpp's test-tokenizer-0 reads them: the `.inp` split
/// at the separator and the `.out` split at newlines. Every input, including the last, is followed by the
/// separator and every id line by a newline, so both splits end with an empty piece: 46 strings plus the
/// empty string with no ids, 47 cases in all.
fn vectors(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let inp =
        std::fs::read_to_string(fixture(&format!("ggml-vocab-{vocab}.gguf.inp"))).expect(".inp");
    let out =
        std::fs::read_to_string(fixture(&format!("ggml-vocab-{vocab}.gguf.out"))).expect(".out");
    let texts: Vec<&str> = inp.split(SEPARATOR).collect();
    let ids: Vec<Vec<u32>> = out
        .split('\n')
        .map(|line| {
            line.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{vocab}: .inp and .out disagree on the number of cases"
    );
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

fn check_vocab(vocab: &str, expected_cases: usize) {
    let tokenizer = load(vocab);
    let cases = vectors(vocab);
    assert_eq!(
        cases.len(),
        expected_cases,
        "{vocab}: number of test strings"
    );
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tokenizer.encode(text, false).expect("encode");
        if &got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
        }
    }
    println!(
        "{vocab}: {}/{} exact",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{vocab}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Decoding the reference ids must give the input back (byte-level BPE is lossless).
fn check_round_trip(vocab: &str) {
    let tokenizer = load(vocab);
    for (text, ids) in vectors(vocab) {
        assert_eq!(
            tokenizer.decode(&ids, false).expect("decode"),
            text,
            "{vocab}"
        );
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| tokenizer.token_bytes(id))
            .collect();
        assert_eq!(bytes, text.as_bytes(), "{vocab}: token_bytes of {text:?}");
    }
}

#[test]
fn llama_bpe_matches_reference_ids() {
    check_vocab("llama-bpe", 47);
    check_round_trip("llama-bpe");
}

#[test]
fn qwen2_matches_reference_ids() {
    check_vocab("qwen2", 47);
    check_round_trip("qwen2");
}

#[test]
fn gpt2_matches_reference_ids() {
    check_vocab("gpt-2", 47);
    check_round_trip("gpt-2");
}

#[test]
fn llama_spm_matches_reference_ids() {
    check_vocab("llama-spm", 47);
}

#[test]
fn special_tokens_and_generation_ids() {
    let llama3 = load("llama-bpe");
    assert_eq!(llama3.vocab_size(), 128256);
    assert_eq!(llama3.bos_token(), Some("<|begin_of_text|>"));
    assert_eq!(llama3.bos_token_id(), Some(128000));
    assert_eq!(llama3.eos_token(), Some("<|end_of_text|>"));
    // EOS first, then the end-of-turn control token that the chat format uses.
    assert_eq!(llama3.eos_token_ids(), &[128001, 128009]);
    // No tokenizer.ggml.add_bos_token in this file: llama.cpp's default for llama-bpe is to add BOS.
    assert!(llama3.add_bos());
    assert_eq!(
        llama3.encode("Hello", true).expect("encode"),
        vec![128000, 9906]
    );
    let header = llama3
        .encode("<|start_header_id|>user<|end_header_id|>", false)
        .expect("encode");
    assert_eq!(header, vec![128006, 882, 128007]);
    assert!(llama3.is_special(128009) && !llama3.is_special(9906));
    assert_eq!(llama3.decode(&header, true).expect("decode"), "user");
    assert_eq!(llama3.token_bytes(128006), b"<|start_header_id|>");
    assert_eq!(llama3.token_to_id("Ġworld"), Some(1917));

    let qwen2 = load("qwen2");
    assert!(!qwen2.add_bos());
    assert_eq!(qwen2.eos_token_ids(), &[151643, 151645]);
    assert!(qwen2.chat_template().is_some());
    // User-defined tokens are matched in text but are not special.
    let pad = qwen2.encode("x[PAD151700]", false).expect("encode");
    assert_eq!(pad, vec![87, 151700]);
    assert!(!qwen2.is_special(151700));
    assert_eq!(qwen2.decode(&pad, true).expect("decode"), "x[PAD151700]");

    let spm = load("llama-spm");
    assert_eq!(
        spm.encode("Hello world", true).expect("encode"),
        vec![1, 15043, 3186]
    );
    assert_eq!(
        spm.decode(&[1, 15043, 3186], true).expect("decode"),
        "Hello world"
    );
    assert_eq!(spm.token_bytes(15043), b" Hello");
}
