//! Tokenizers from HF model directories: the Llama-3 `tokenizer.json` must reproduce llama.cpp's reference
//! ids (which HF's own tokenizer produced), and the config files must be read as transformers reads them.

use std::path::{Path, PathBuf};

use mlc_core::tokenizer::Tokenizer;

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers")
}

fn llama3_dir() -> PathBuf {
    fixtures().join("llama3")
}

/// A scratch model directory holding the Llama-3 tokenizer.json and the given extra files.
fn scratch_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlc-tokenizer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::os::unix::fs::symlink(
        llama3_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("symlink");
    for (file, text) in files {
        std::fs::write(dir.join(file), text).expect("write");
    }
    dir
}

fn render_user(tokenizer: &Tokenizer, text: &str) -> String {
    let messages = serde_json::json!([{"role": "user", "content": text}]);
    tokenizer
        .chat_template()
        .expect("chat template")
        .render(&messages, true, None)
        .expect("render")
}

#[test]
fn llama3_tokenizer_json_matches_reference_ids() {
    let tokenizer = Tokenizer::from_hf_dir(&llama3_dir()).expect("load");
    let dir = fixtures().join("llamacpp");
    let inp = std::fs::read_to_string(dir.join("ggml-vocab-llama-bpe.gguf.inp")).expect(".inp");
    let out = std::fs::read_to_string(dir.join("ggml-vocab-llama-bpe.gguf.out")).expect(".out");
    let texts: Vec<&str> = inp.split(SEPARATOR).collect();
    let lines: Vec<&str> = out.split('\n').collect();
    assert_eq!((texts.len(), lines.len()), (47, 47));
    let mut exact = 0;
    for (text, line) in texts.iter().zip(&lines) {
        let want: Vec<u32> = line
            .split_whitespace()
            .map(|t| t.parse().expect("id"))
            .collect();
        assert_eq!(
            tokenizer.encode(text, false).expect("encode"),
            want,
            "{text:?}"
        );
        assert_eq!(tokenizer.decode(&want, false).expect("decode"), *text);
        exact += 1;
    }
    println!("llama3 tokenizer.json: {exact}/47 exact");
}

#[test]
fn llama3_config_tokens_and_template() {
    let tokenizer = Tokenizer::from_hf_dir(&llama3_dir()).expect("load");
    assert_eq!(tokenizer.vocab_size(), 128256);
    assert_eq!(
        (tokenizer.bos_token(), tokenizer.bos_token_id()),
        (Some("<|begin_of_text|>"), Some(128000))
    );
    assert_eq!(tokenizer.eos_token(), Some("<|end_of_text|>"));
    assert_eq!(tokenizer.eos_token_ids(), &[128001]);
    // No add_bos_token in the config and a ByteLevel post-processor: HF adds no BOS on encode.
    assert!(!tokenizer.add_bos());
    assert_eq!(tokenizer.encode("Hello", true).expect("encode"), vec![9906]);
    assert!(tokenizer.is_special(128009));
    assert_eq!(tokenizer.token_bytes(9906), b"Hello");
    assert_eq!(tokenizer.token_bytes(128000), b"<|begin_of_text|>");
    assert_eq!(
        render_user(&tokenizer, "Hi"),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn config_variants_as_transformers_reads_them() {
    let config = r#"{
        "add_bos_token": true,
        "bos_token": {"__type": "AddedToken", "content": "<|begin_of_text|>", "special": true},
        "eos_token": {"content": "<|eot_id|>"},
        "chat_template": [
            {"name": "tool_use", "template": "tools{{ bos_token }}"},
            {"name": "default", "template": "[{{ bos_token }}|{{ eos_token }}|{{ messages[0].content }}]"}
        ]
    }"#;
    let generation = r#"{"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}"#;
    let dir = scratch_dir(
        "variants",
        &[
            ("tokenizer_config.json", config),
            ("generation_config.json", generation),
        ],
    );
    let tokenizer = Tokenizer::from_hf_dir(&dir).expect("load");
    assert_eq!(tokenizer.eos_token(), Some("<|eot_id|>"));
    assert_eq!(tokenizer.eos_token_ids(), &[128009, 128001, 128008]);
    assert!(tokenizer.add_bos());
    assert_eq!(
        tokenizer.encode("Hello", true).expect("encode"),
        vec![128000, 9906]
    );
    assert_eq!(
        tokenizer.encode("Hello", false).expect("encode"),
        vec![9906]
    );
    assert_eq!(
        render_user(&tokenizer, "Hi"),
        "[<|begin_of_text|>|<|eot_id|>|Hi]"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn template_file_and_generation_config_only() {
    let dir = scratch_dir(
        "jinja",
        &[
            ("chat_template.jinja", "{{ messages[0].content }}!\n"),
            ("generation_config.json", r#"{"eos_token_id": 128009}"#),
        ],
    );
    let tokenizer = Tokenizer::from_hf_dir(&dir).expect("load");
    assert_eq!(
        (tokenizer.eos_token(), tokenizer.eos_token_ids()),
        (Some("<|eot_id|>"), &[128009][..])
    );
    assert_eq!(tokenizer.bos_token(), None);
    assert_eq!(
        render_user(&tokenizer, "Hi"),
        "Hi!",
        "jinja drops the single trailing newline"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_tokenizer_json_is_a_model_load_error() {
    let err = Tokenizer::from_hf_dir(Path::new("/nonexistent/model")).unwrap_err();
    assert!(
        matches!(err, mlc_core::EngineError::ModelLoad { .. }),
        "{err:?}"
    );
}

/// A tokenizer.json without a decoder (word-level vocabularies of test models): HF's `decode` joins the
/// tokens with spaces, and streaming must produce the same text.
#[test]
fn decoderless_vocabulary_streams_like_decode() {
    let tokenizer_json = r#"{
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": {"t0": 0, "hello": 1, "world": 2}, "unk_token": "t0"}
    }"#;
    let dir = std::env::temp_dir().join(format!("mlc-tokenizer-wordlevel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json).expect("write");
    let tokenizer = Tokenizer::from_hf_dir(&dir).expect("load");
    let ids = tokenizer
        .encode("hello world  hello", true)
        .expect("encode");
    assert_eq!(ids, vec![1, 2, 1]);
    let mut detok = mlc_core::tokenizer::IncrementalDetokenizer::new(true);
    let streamed: String = ids.iter().map(|&id| detok.push(&tokenizer, id)).collect();
    assert_eq!(streamed, tokenizer.decode(&ids, true).expect("decode"));
    assert_eq!(streamed, "hello world hello");
    let _ = std::fs::remove_dir_all(&dir);
}
