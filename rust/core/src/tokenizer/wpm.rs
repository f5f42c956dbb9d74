//! WordPiece vocabularies from GGUF (`tokenizer.ggml.model == "bert"`: BERT, BGE, MiniLM, E5) as an HF
//! WordPiece pipeline.
//!
//! llama.cpp's converter respells BERT's vocabulary with a "phantom space": a word-initial piece `the`
//! is stored as `▁the`, a continuation `##s` as `s`, control tokens ([CLS], [SEP], ...) as they are.
//! Spelled back, the vocabulary is HF's again. llama.cpp's tokenizer (llm_tokenizer_wpm) lower-cases
//! after NFD without stripping accents, drops control characters, splits on whitespace, punctuation and
//! CJK characters, and matches each word greedily longest-first, a word with an unmatched rest becoming
//! one unknown token: HF's BertNormalizer (accents kept) + NFD, BertPreTokenizer and WordPiece.

use std::collections::HashMap;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::{BertNormalizer, Sequence as NormalizerSequence, NFD};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::NormalizerWrapper;

use super::gguf::{TokenType, Vocabulary};

const PHANTOM_SPACE: &str = "\u{2581}";

/// Builds the pipeline; `unk` is the unknown token's id. Errors are plain messages for the caller to
/// attach the file name to.
pub(super) fn build(vocab: &Vocabulary, unk: Option<u32>) -> std::result::Result<tokenizers::Tokenizer, String> {
    let mut ids: HashMap<String, u32> = HashMap::with_capacity(vocab.tokens.len());
    for ((text, kind), id) in vocab.tokens.iter().zip(&vocab.types).zip(0u32..) {
        let hf = match kind {
            TokenType::Control | TokenType::Unknown | TokenType::UserDefined => text.to_string(),
            _ => match text.strip_prefix(PHANTOM_SPACE) {
                Some(word_start) => word_start.to_string(),
                None => format!("##{text}"),
            },
        };
        // The first spelling wins, as in llama.cpp's token_to_id.
        ids.entry(hf).or_insert(id);
    }
    let unk_text = match unk {
        Some(id) => vocab.tokens.get(id as usize).ok_or_else(|| format!("unknown token id {id} is past the vocabulary"))?.to_string(),
        None => "[UNK]".to_string(),
    };
    if !ids.contains_key(&unk_text) {
        return Err(format!("the unknown token {unk_text:?} is not in the vocabulary"));
    }
    let model = WordPiece::builder()
        .vocab(ids.into_iter().collect::<tokenizers::models::bpe::Vocab>())
        .unk_token(unk_text)
        .continuing_subword_prefix("##".into())
        // llama.cpp puts no limit on a word's length.
        .max_input_chars_per_word(usize::MAX)
        .build()
        .map_err(|e| format!("WordPiece vocabulary: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let normalizers: Vec<NormalizerWrapper> = vec![BertNormalizer::new(true, true, Some(false), true).into(), NFD.into()];
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(WordPieceDecoder::default()));
    let (special, plain) = vocab.added_tokens();
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok(tokenizer)
}
