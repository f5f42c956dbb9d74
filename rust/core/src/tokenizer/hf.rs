//! Tokenizers of HF model directories: `tokenizer.json` for the pipeline itself, `tokenizer_config.json`
//! for the chat template, BOS/EOS and `add_bos_token`, and `generation_config.json` for the extra ids
//! that end generation (Llama 3.1 lists `<|eom_id|>` and `<|eot_id|>` there, not in the tokenizer).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::DecoderWrapper;

use super::token_bytes::{ByteSpelling, TokenBytes};
use super::{TokenJoin, TokenizerParts};
use crate::error::{EngineError, Result};

pub(super) fn load(dir: &Path) -> Result<TokenizerParts> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(EngineError::model_load(
            dir.display().to_string(),
            "no tokenizer.json (a SentencePiece tokenizer.model alone is not supported)",
        ));
    }
    let inner = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
        EngineError::model_load(tokenizer_path.display().to_string(), e.to_string())
    })?;
    let config = read_optional_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let generation = read_optional_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);

    let generation_eos = token_ids(generation.get("eos_token_id"));
    let bos_id = special_token_text(config.get("bos_token"))
        .and_then(|text| inner.token_to_id(&text))
        .or_else(|| token_ids(generation.get("bos_token_id")).first().copied());
    let eos_id = special_token_text(config.get("eos_token"))
        .and_then(|text| inner.token_to_id(&text))
        .or_else(|| generation_eos.first().copied());
    let add_bos = match config.get("add_bos_token").and_then(Json::as_bool) {
        Some(flag) => flag,
        None => post_processor_adds(&inner, bos_id),
    };
    let join = match inner.get_decoder() {
        None => TokenJoin::Spaces,
        Some(_) => TokenJoin::Concatenate,
    };
    Ok(TokenizerParts {
        bytes: token_bytes(&inner),
        join,
        special_ids: special_ids(&inner),
        bos_id,
        eos_id,
        extra_eos_ids: generation_eos,
        add_bos,
        chat_template: chat_template(dir, &config)?,
        inner,
    })
}

fn read_optional_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        EngineError::model_load(path.display().to_string(), format!("invalid JSON: {e}"))
    })
}

/// `bos_token` / `eos_token` are either the token text or an AddedToken object `{"content": ...}`.
fn special_token_text(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Object(obj) => obj
            .get("content")
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// An id field that may be one integer or a list of them.
fn token_ids(value: Option<&Json>) -> Vec<u32> {
    let to_id = |v: &Json| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        Some(Json::Array(items)) => items.iter().filter_map(to_id).collect(),
        Some(v) => to_id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Without an explicit `add_bos_token`, the tokenizer.json post-processor decides, as in HF.
fn post_processor_adds(inner: &tokenizers::Tokenizer, bos_id: Option<u32>) -> bool {
    let Some(bos) = bos_id else { return false };
    let with = inner
        .encode_fast("a", true)
        .map(|e| e.get_ids().first() == Some(&bos));
    let without = inner
        .encode_fast("a", false)
        .map(|e| e.get_ids().first() == Some(&bos));
    matches!((with, without), (Ok(true), Ok(false)))
}

fn special_ids(inner: &tokenizers::Tokenizer) -> HashSet<u32> {
    inner
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, token)| token.special)
        .map(|(id, _)| *id)
        .collect()
}

fn token_bytes(inner: &tokenizers::Tokenizer) -> TokenBytes {
    let vocab = inner.get_vocab(true);
    let added = inner.get_added_tokens_decoder();
    let spelling = spelling_of(inner.get_decoder());
    let len = vocab.values().max().map_or(0, |&max| max as usize + 1);
    let mut entries: Vec<Option<(&str, ByteSpelling)>> = vec![None; len];
    for (text, &id) in &vocab {
        let kind = if added.contains_key(&id) {
            ByteSpelling::Raw
        } else {
            spelling
        };
        entries[id as usize] = Some((text.as_str(), kind));
    }
    TokenBytes::build(&entries)
}

/// How the vocabulary spells bytes, read off the decoder that undoes the spelling.
fn spelling_of(decoder: Option<&DecoderWrapper>) -> ByteSpelling {
    let steps: Vec<&DecoderWrapper> = match decoder {
        Some(DecoderWrapper::Sequence(seq)) => seq.get_decoders().iter().collect(),
        Some(single) => vec![single],
        None => Vec::new(),
    };
    if steps
        .iter()
        .any(|d| matches!(d, DecoderWrapper::ByteLevel(_)))
    {
        ByteSpelling::ByteLevel
    } else if steps.iter().any(|d| {
        matches!(
            d,
            DecoderWrapper::Metaspace(_) | DecoderWrapper::ByteFallback(_)
        )
    }) {
        ByteSpelling::SentencePiece
    } else {
        ByteSpelling::Raw
    }
}

/// The template from `tokenizer_config.json` (a string, or named templates of which "default" is the
/// chat one), else from the `chat_template.jinja` file that newer transformers versions write.
fn chat_template(dir: &Path, config: &Json) -> Result<Option<String>> {
    match config.get("chat_template") {
        Some(Json::String(source)) => return Ok(Some(source.clone())),
        Some(Json::Array(named)) => {
            let template_of = |entry: &Json| {
                entry
                    .get("template")
                    .and_then(Json::as_str)
                    .map(str::to_string)
            };
            let default = named
                .iter()
                .find(|e| e.get("name").and_then(Json::as_str) == Some("default"));
            if let Some(source) = default.or_else(|| named.first()).and_then(template_of) {
                return Ok(Some(source));
            }
        }
        _ => {}
    }
    let jinja: PathBuf = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(std::fs::read_to_string(jinja)?));
    }
    Ok(None)
}
