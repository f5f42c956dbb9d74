//! Tokenizers stored in GGUF metadata (`tokenizer.ggml.*`), rebuilt as HF `tokenizers` pipelines.
//!
//! A GGUF file carries the vocabulary, the BPE merges and per-token types, but the pre-tokenizer is only
//! named (`tokenizer.ggml.pre`); its regexes live in llama.cpp's source. [`PreTokenizer`] maps each name
//! to the split rules llama.cpp applies for it, written in the form HF's tokenizer.json uses for the
//! same model, so that both agree with the reference token ids.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::token_bytes::{ByteSpelling, TokenBytes};
use super::{TokenJoin, TokenizerParts};
use crate::error::{EngineError, Result};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenType {
    Normal,
    Unknown,
    /// Special tokens such as `<|im_start|>`: matched in text, dropped by `skip_special_tokens`.
    Control,
    /// Added tokens that are ordinary text (e.g. `<tool_call>` in Qwen): matched in text, kept on decode.
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_code(code: i64) -> Self {
        match code {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// Texts that llama.cpp treats as end-of-generation when they are control tokens, for GGUF files whose
/// converter recorded only `<|end_of_text|>` as EOS while the chat format ends turns with another token.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Typed access to GGUF metadata; every error names the file.
pub(super) struct Metadata<'a> {
    values: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Metadata<'a> {
    pub fn new(content: &'a Content, path: &'a Path) -> Self {
        Metadata {
            values: &content.metadata,
            path,
        }
    }

    pub fn error(&self, message: impl Into<String>) -> EngineError {
        EngineError::model_load(self.path.display().to_string(), message)
    }

    fn wrong_type(&self, key: &str, wanted: &str) -> EngineError {
        self.error(format!("metadata {key} is not {wanted}"))
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(key, "a bool")),
        }
    }

    /// A token id; converters disagree on the integer width, so any integer type is accepted.
    pub fn id(&self, key: &str) -> Result<Option<u32>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => integer(v)
                .and_then(|i| u32::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a token id")),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, "an array of strings"));
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.wrong_type(key, "an array of strings")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn integers(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, "an array of integers"));
        };
        items
            .iter()
            .map(|item| integer(item).ok_or_else(|| self.wrong_type(key, "an array of integers")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, "an array of floats"));
        };
        items
            .iter()
            .map(|item| match item {
                Value::F32(f) => Ok(*f),
                Value::F64(f) => Ok(*f as f32),
                _ => Err(self.wrong_type(key, "an array of floats")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::U8(v) => Some(i64::from(*v)),
        Value::I8(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I32(v) => Some(i64::from(*v)),
        Value::U64(v) => i64::try_from(*v).ok(),
        Value::I64(v) => Some(*v),
        _ => None,
    }
}

/// The vocabulary common to all GGUF tokenizer models.
pub(super) struct Vocabulary<'a> {
    pub tokens: Vec<&'a str>,
    pub types: Vec<TokenType>,
}

impl<'a> Vocabulary<'a> {
    fn read(md: &Metadata<'a>) -> Result<Self> {
        let tokens = md
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| md.error("no tokenizer.ggml.tokens"))?;
        let types = match md.integers("tokenizer.ggml.token_type")? {
            Some(codes) if codes.len() == tokens.len() => {
                codes.into_iter().map(TokenType::from_code).collect()
            }
            Some(codes) => {
                return Err(md.error(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    codes.len(),
                    tokens.len()
                )))
            }
            None => vec![TokenType::Normal; tokens.len()],
        };
        Ok(Vocabulary { tokens, types })
    }

    /// Added tokens for the HF pipeline: control tokens as special, user-defined ones as plain text.
    /// Neither is normalized, so they match the literal text of a rendered chat template.
    pub fn added_tokens(&self) -> (Vec<AddedToken>, Vec<AddedToken>) {
        let mut special = Vec::new();
        let mut plain = Vec::new();
        for (text, kind) in self.tokens.iter().zip(&self.types) {
            if text.is_empty() {
                continue;
            }
            match kind {
                TokenType::Control | TokenType::Unknown => {
                    special.push(AddedToken::from(*text, true).normalized(false))
                }
                TokenType::UserDefined => {
                    plain.push(AddedToken::from(*text, false).normalized(false))
                }
                _ => {}
            }
        }
        (special, plain)
    }

    pub fn special_ids(&self) -> HashSet<u32> {
        self.ids_where(|kind| matches!(kind, TokenType::Control | TokenType::Unknown))
    }

    fn ids_where(&self, keep: impl Fn(TokenType) -> bool) -> HashSet<u32> {
        (0u32..)
            .zip(&self.types)
            .filter(|(_, kind)| keep(**kind))
            .map(|(id, _)| id)
            .collect()
    }

    /// Byte table where normal tokens use `spelling` and added tokens are their own text.
    pub fn token_bytes(&self, spelling: ByteSpelling) -> TokenBytes {
        let entries: Vec<_> = self
            .tokens
            .iter()
            .zip(&self.types)
            .map(|(text, kind)| match kind {
                TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                    Some((*text, ByteSpelling::Raw))
                }
                _ => Some((*text, spelling)),
            })
            .collect();
        TokenBytes::build(&entries)
    }
}

/// The pre-tokenizers of llama.cpp's BPE vocabularies (`tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizer {
    /// Llama 3: letters with one leading non-letter, numbers in groups of up to three.
    Llama3,
    /// Qwen2: as Llama 3 but every digit alone; HF's Qwen2 tokenizer also NFC-normalizes.
    Qwen2,
    /// SmolLM / StarCoder family: every digit alone, then the GPT-2 rules.
    DigitsThenGpt2,
    /// The original GPT-2 rules.
    Gpt2,
}

const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizer {
    /// llama.cpp's name table (llama-vocab.cpp) for the rule sets implemented here.
    fn from_name(name: Option<&str>, md: &Metadata) -> Result<Self> {
        Ok(match name.unwrap_or("default") {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
                PreTokenizer::Llama3
            }
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => PreTokenizer::Qwen2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                PreTokenizer::DigitsThenGpt2
            }
            "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de" | "gigachat"
            | "mpt" | "olmo" | "jais" | "mellum" => PreTokenizer::Gpt2,
            "default" => {
                log::warn!(
                    "{}: GGUF has no specific pre-tokenizer (tokenizer.ggml.pre); using GPT-2 rules, \
                     tokenization may differ from the original model",
                    md.path.display()
                );
                PreTokenizer::Gpt2
            }
            other => {
                return Err(EngineError::Unsupported(format!(
                    "GGUF pre-tokenizer '{other}' in {} (supported: llama-bpe and its aliases, qwen2, smollm, \
                     starcoder, gpt-2, default)",
                    md.path.display()
                )))
            }
        })
    }

    /// Llama 3's converter marks the vocabulary "ignore merges": a pre-token that is itself in the
    /// vocabulary is one token even if the merges would split it.
    fn ignore_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// llama.cpp's default when the file has no `tokenizer.ggml.add_bos_token`.
    fn default_add_bos(self) -> bool {
        self == PreTokenizer::Llama3
    }

    fn build(self) -> Result<PreTokenizerWrapper> {
        // After a regex split the ByteLevel step only maps bytes to characters (use_regex = false).
        let bytes_only = ByteLevel::new(false, true, false);
        let gpt2 = ByteLevel::new(false, true, true);
        let split = |regex: &str| {
            Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| EngineError::Tokenizer(format!("pre-tokenizer regex: {e}")))
        };
        let steps: Vec<PreTokenizerWrapper> = match self {
            PreTokenizer::Llama3 => vec![split(LLAMA3_REGEX)?.into(), bytes_only.into()],
            PreTokenizer::Qwen2 => vec![split(QWEN2_REGEX)?.into(), bytes_only.into()],
            PreTokenizer::DigitsThenGpt2 => vec![Digits::new(true).into(), gpt2.into()],
            PreTokenizer::Gpt2 => vec![gpt2.into()],
        };
        Ok(Sequence::new(steps).into())
    }
}

/// Reads the tokenizer of a GGUF file.
pub(super) fn load(content: &Content, path: &Path) -> Result<TokenizerParts> {
    let md = Metadata::new(content, path);
    let model = md
        .string("tokenizer.ggml.model")?
        .ok_or_else(|| md.error("no tokenizer.ggml.model"))?;
    let vocab = Vocabulary::read(&md)?;
    let (inner, bytes, default_add_bos) = match model {
        "gpt2" => {
            let pre = PreTokenizer::from_name(md.string("tokenizer.ggml.pre")?, &md)?;
            (
                build_bpe(&md, &vocab, pre)?,
                vocab.token_bytes(ByteSpelling::ByteLevel),
                pre.default_add_bos(),
            )
        }
        "llama" => {
            let scores = md
                .floats("tokenizer.ggml.scores")?
                .ok_or_else(|| md.error("no tokenizer.ggml.scores"))?;
            let add_space_prefix = md.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let inner =
                super::spm::build(&vocab, &scores, add_space_prefix).map_err(|e| md.error(e))?;
            (inner, vocab.token_bytes(ByteSpelling::SentencePiece), true)
        }
        // Encoders' vocabularies (BERT's WordPiece, XLM-RoBERTa's Unigram): their framing tokens
        // ([CLS] / [SEP], <s> / </s>) are added by the embedding engine, not as BOS.
        "bert" => {
            let unk = md.id("tokenizer.ggml.unknown_token_id")?;
            let inner = super::wpm::build(&vocab, unk).map_err(|e| md.error(e))?;
            (inner, vocab.token_bytes(ByteSpelling::SentencePiece), false)
        }
        "t5" => {
            let scores = md.floats("tokenizer.ggml.scores")?.ok_or_else(|| md.error("no tokenizer.ggml.scores"))?;
            let charsmap = md.integers("tokenizer.ggml.precompiled_charsmap")?.map(|b| b.into_iter().map(|x| x as u8).collect::<Vec<u8>>());
            let ws = super::ugm::Whitespace {
                add_space_prefix: md.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true),
                remove_extra_whitespaces: md.bool("tokenizer.ggml.remove_extra_whitespaces")?.unwrap_or(false),
            };
            let unk = md.id("tokenizer.ggml.unknown_token_id")?;
            let inner = super::ugm::build(&vocab, &scores, unk, charsmap.as_deref(), ws).map_err(|e| md.error(e))?;
            (inner, vocab.token_bytes(ByteSpelling::SentencePiece), false)
        }
        other => {
            return Err(EngineError::Unsupported(format!(
                "GGUF tokenizer model '{other}' in {} (supported: gpt2, llama, bert, t5)",
                path.display()
            )))
        }
    };
    let eos_id = md.id("tokenizer.ggml.eos_token_id")?;
    let mut extra_eos_ids = Vec::new();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        extra_eos_ids.extend(md.id(key)?);
    }
    extra_eos_ids.extend(end_of_generation_controls(&vocab));
    Ok(TokenizerParts {
        inner,
        bytes,
        join: TokenJoin::Concatenate,
        special_ids: vocab.special_ids(),
        bos_id: md.id("tokenizer.ggml.bos_token_id")?,
        eos_id,
        extra_eos_ids,
        add_bos: md
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(default_add_bos),
        chat_template: md.string("tokenizer.chat_template")?.map(str::to_string),
    })
}

fn end_of_generation_controls(vocab: &Vocabulary) -> Vec<u32> {
    (0u32..)
        .zip(vocab.tokens.iter().zip(&vocab.types))
        .filter(|(_, (text, kind))| {
            **kind == TokenType::Control && END_OF_GENERATION_TEXTS.contains(text)
        })
        .map(|(id, _)| id)
        .collect()
}

fn build_bpe(
    md: &Metadata,
    vocab: &Vocabulary,
    pre: PreTokenizer,
) -> Result<tokenizers::Tokenizer> {
    let merge_lines = md
        .strings("tokenizer.ggml.merges")?
        .ok_or_else(|| md.error("no tokenizer.ggml.merges"))?;
    let merges = merge_lines
        .iter()
        .map(|line| {
            line.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| md.error(format!("malformed merge '{line}'")))
        })
        .collect::<Result<Vec<_>>>()?;
    let ids: Vocab = vocab
        .tokens
        .iter()
        .zip(0u32..)
        .map(|(t, id)| (t.to_string(), id))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|e| md.error(format!("BPE vocabulary: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    if pre == PreTokenizer::Qwen2 {
        tokenizer.with_normalizer(Some(NFC));
    }
    tokenizer.with_pre_tokenizer(Some(pre.build()?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let (special, plain) = vocab.added_tokens();
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok(tokenizer)
}
