//! SentencePiece vocabularies from GGUF (`tokenizer.ggml.model == "llama"`: Llama 2, Mistral v0.1, ...)
//! as an HF BPE pipeline.
//!
//! GGUF stores pieces and scores but no merges. SentencePiece-BPE repeatedly joins the adjacent pair
//! whose joined piece has the highest score; a BPE whose merge list holds every (left, right) split of
//! every piece, ranked by the joined piece's score, performs the same joins. Characters with no piece
//! fall back to `<0xAB>` byte pieces. Spaces are spelled `▁`, and a `▁` is prepended to each stretch of
//! text (llama.cpp's `add_space_prefix`, HF's legacy Llama tokenizer).

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper};

use super::gguf::{TokenType, Vocabulary};

const SPACE: &str = "\u{2581}";

/// Builds the pipeline; errors are plain messages for the caller to attach the file name to.
pub(super) fn build(
    vocab: &Vocabulary,
    scores: &[f32],
    add_space_prefix: bool,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    if scores.len() != vocab.tokens.len() {
        return Err(format!(
            "{} scores for {} tokens",
            scores.len(),
            vocab.tokens.len()
        ));
    }
    let ids: Vocab = vocab
        .tokens
        .iter()
        .zip(0u32..)
        .map(|(t, id)| (t.to_string(), id))
        .collect();
    let merges = merges_by_score(vocab, scores, &ids);
    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = vocab.types.iter().position(|t| *t == TokenType::Unknown) {
        builder = builder.unk_token(vocab.tokens[unk].to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| format!("SentencePiece vocabulary: {e}"))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let replace_space = Replace::new(" ", SPACE).map_err(|e| e.to_string())?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new(SPACE.to_string()).into());
    }
    normalizers.push(replace_space.into());
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));

    let restore_space = Replace::new(SPACE, " ").map_err(|e| e.to_string())?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        restore_space.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        // The prefix added on encode is not part of the text.
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    let (special, plain) = vocab.added_tokens();
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok(tokenizer)
}

/// Every split of every mergeable piece into two pieces, highest joined score first; ties (the same
/// piece split differently) go to the lower id so the order is deterministic.
fn merges_by_score(vocab: &Vocabulary, scores: &[f32], ids: &Vocab) -> Vec<(String, String)> {
    let mergeable = |id: u32| {
        matches!(
            vocab.types.get(id as usize),
            Some(TokenType::Normal | TokenType::UserDefined)
        )
    };
    let mut ranked: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (piece, id) in vocab.tokens.iter().zip(0u32..) {
        if !mergeable(id) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            let (Some(&left_id), Some(&right_id)) = (ids.get(left), ids.get(right)) else {
                continue;
            };
            if mergeable(left_id) && mergeable(right_id) {
                ranked.push((scores[id as usize], id, left_id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}
