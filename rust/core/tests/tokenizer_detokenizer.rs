//! Streaming detokenization over real byte-level vocabularies (llama.cpp's Llama-3 and Qwen2 vocab files):
//! characters split across tokens must come out whole, never as U+FFFD.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use mlc_core::tokenizer::{IncrementalDetokenizer, Tokenizer};

fn load(vocab: &str) -> Tokenizer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizers/llamacpp")
        .join(format!("ggml-vocab-{vocab}.gguf"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Content::read issues many small reads.
    let mut file = std::io::BufReader::new(file);
    let content = Content::read(&mut file).expect("GGUF header");
    Tokenizer::from_gguf(&content, &path).expect("tokenizer")
}

/// The id of the single-byte token for `byte` (byte-level vocabularies have one for every byte).
fn byte_token(tokenizer: &Tokenizer, byte: u8) -> u32 {
    (0..tokenizer.vocab_size() as u32)
        .find(|&id| tokenizer.token_bytes(id) == [byte])
        .unwrap_or_else(|| panic!("no token for byte {byte:#04x}"))
}

fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut detok = IncrementalDetokenizer::new(true);
    let mut chunks: Vec<String> = ids.iter().map(|&id| detok.push(tokenizer, id)).collect();
    chunks.push(detok.finish());
    chunks
}

#[test]
fn multibyte_text_streams_back_exactly() {
    let text = "héllo 世界 🎉 ok, 😶\u{200d}🌫\u{fe0f} Việt Български ~";
    for vocab in ["llama-bpe", "qwen2"] {
        let tokenizer = load(vocab);
        let ids = tokenizer.encode(text, false).expect("encode");
        // The case is only meaningful if some token ends inside a character.
        let split = ids
            .iter()
            .any(|&id| std::str::from_utf8(&tokenizer.token_bytes(id)).is_err());
        assert!(split, "{vocab}: no token splits a character in {text:?}");
        let chunks = stream(&tokenizer, &ids);
        assert!(
            chunks.iter().all(|c| !c.contains('\u{FFFD}')),
            "{vocab}: {chunks:?}"
        );
        assert_eq!(chunks.concat(), text, "{vocab}");
    }
}

#[test]
fn emoji_split_across_tokens_waits_until_complete() {
    let tokenizer = load("llama-bpe");
    let party = "🎉".as_bytes(); // F0 9F 8E 89
    let ok = tokenizer.encode("ok", false).expect("encode");
    let mut ids = ok.clone();
    ids.extend(party.iter().map(|&b| byte_token(&tokenizer, b)));
    ids.extend(&ok);

    let mut detok = IncrementalDetokenizer::new(false);
    let chunks: Vec<String> = ids.iter().map(|&id| detok.push(&tokenizer, id)).collect();
    let n = ok.len();
    assert_eq!(chunks[..n].concat(), "ok");
    assert_eq!(
        chunks[n..n + 3],
        ["", "", ""],
        "nothing until the fourth byte"
    );
    assert_eq!(chunks[n + 3], "🎉");
    assert_eq!(chunks[n + 4..].concat(), "ok");
    assert_eq!(detok.finish(), "");
}

#[test]
fn unfinished_and_invalid_bytes_become_replacement_characters() {
    let tokenizer = load("qwen2");
    let mut detok = IncrementalDetokenizer::new(false);
    // A lone continuation byte can never start a character: replaced at once.
    assert_eq!(
        detok.push(&tokenizer, byte_token(&tokenizer, 0x80)),
        "\u{FFFD}"
    );
    // A lead byte waits, then the stream ends: the decoder's U+FFFD, as in `decode`.
    assert_eq!(detok.push(&tokenizer, byte_token(&tokenizer, 0xE4)), "");
    assert_eq!(detok.finish(), "\u{FFFD}");
    assert_eq!(detok.finish(), "");
}

#[test]
fn special_tokens_are_skipped_only_when_asked() {
    let tokenizer = load("qwen2");
    let ids = tokenizer
        .encode("<|im_start|>user\nhi<|im_end|>", false)
        .expect("encode");
    assert_eq!(ids.first(), Some(&151644));
    let skipped = stream(&tokenizer, &ids).concat();
    assert_eq!(skipped, "user\nhi");
    let mut detok = IncrementalDetokenizer::new(false);
    let kept: String = ids.iter().map(|&id| detok.push(&tokenizer, id)).collect();
    assert_eq!(kept, "<|im_start|>user\nhi<|im_end|>");
}
