//! Unigram vocabularies from GGUF (`tokenizer.ggml.model == "t5"`: T5, and the XLM-RoBERTa encoders that
//! llama.cpp's converter writes as `bert`: BGE-M3, multilingual-e5) as an HF Unigram pipeline.
//!
//! llama.cpp's tokenizer (llm_tokenizer_ugm) applies the SentencePiece normalizer's precompiled charsmap,
//! then, with `remove_extra_whitespaces`, drops leading and trailing spaces and merges runs of them, spells
//! spaces `▁` with one prepended, and runs SentencePiece's Viterbi over the whole text: normal, unused and
//! user-defined pieces (the latter scored 0), an unmatched character costing the lowest score minus 10,
//! adjacent unknowns fused. HF's Unigram model is that Viterbi.

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Precompiled, Replace, Sequence as NormalizerSequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::NormalizerWrapper;

use super::gguf::{TokenType, Vocabulary};

/// How the GGUF says to treat whitespace.
pub(super) struct Whitespace {
    pub add_space_prefix: bool,
    pub remove_extra_whitespaces: bool,
}

/// Builds the pipeline; errors are plain messages for the caller to attach the file name to.
pub(super) fn build(
    vocab: &Vocabulary,
    scores: &[f32],
    unk: Option<u32>,
    charsmap: Option<&[u8]>,
    ws: Whitespace,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    if scores.len() != vocab.tokens.len() {
        return Err(format!("{} scores for {} tokens", scores.len(), vocab.tokens.len()));
    }
    let pieces: Vec<(String, f64)> = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .zip(scores)
        .map(|((text, kind), &score)| {
            let score = match kind {
                TokenType::UserDefined => 0.0,
                _ => f64::from(score),
            };
            (text.to_string(), score)
        })
        .collect();
    let unk = unk.map(|id| id as usize).or_else(|| vocab.types.iter().position(|t| *t == TokenType::Unknown));
    let model = Unigram::from(pieces, unk, false).map_err(|e| format!("Unigram vocabulary: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if let Some(bytes) = charsmap.filter(|b| !b.is_empty()) {
        steps.push(Precompiled::from(bytes).map_err(|e| format!("precompiled charsmap: {e}"))?.into());
    }
    if ws.remove_extra_whitespaces {
        steps.push(Strip::new(true, true).into());
        let runs = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ").map_err(|e| format!("whitespace rule: {e}"))?;
        steps.push(runs.into());
    }
    tokenizer.with_normalizer(Some(NormalizerSequence::new(steps)));
    // llama.cpp prepends the space marker when merging spaces even without add_space_prefix.
    let prepend = if ws.add_space_prefix || ws.remove_extra_whitespaces { PrependScheme::Always } else { PrependScheme::Never };
    // No split: llama.cpp's Viterbi runs over the whole text, pieces may span a `▁`.
    let metaspace = Metaspace::new('\u{2581}', prepend, false);
    tokenizer.with_pre_tokenizer(Some(metaspace.clone()));
    tokenizer.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));
    let (special, plain) = vocab.added_tokens();
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok(tokenizer)
}
