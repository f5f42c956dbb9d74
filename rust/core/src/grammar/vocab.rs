//! The vocabulary as llguidance sees it: the raw bytes of every token id, special tokens marked, the
//! ids that end generation, and a tokenizer for text the grammar forces.

use crate::tokenizer::Tokenizer;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use std::sync::Arc;

/// Plain data a [`super::GrammarCompiler`] is built from.
#[derive(Clone)]
pub struct Vocab {
    /// `words[id]`: the bytes of token `id`; special tokens start with [`TokTrie::SPECIAL_TOKEN_MARKER`]
    /// so that no grammar can spell them out of text.
    words: Vec<Vec<u8>>,
    eos_ids: Vec<u32>,
    /// Canonical tokenization of forced text; without it llguidance tokenizes greedily.
    tokenizer: Option<Arc<Tokenizer>>,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab").field("size", &self.words.len()).field("eos_ids", &self.eos_ids).finish()
    }
}

fn special_word(text: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(text.len() + 1);
    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
    w.extend_from_slice(text);
    w
}

/// A placeholder for an id without bytes (a gap in the vocabulary, or padding up to the model's
/// logits width): special, so it is never allowed.
fn placeholder(id: usize) -> Vec<u8> {
    special_word(format!("<[{id}]>").as_bytes())
}

impl Vocab {
    /// The model's tokenizer, padded to `n_logits` ids (the width of a logits row, which may exceed
    /// the tokenizer's vocabulary).
    pub fn from_tokenizer(tokenizer: Arc<Tokenizer>, n_logits: usize) -> Self {
        let n = n_logits.max(tokenizer.vocab_size());
        let words = (0..n)
            .map(|id| {
                let bytes = tokenizer.token_bytes_ref(id as u32);
                if bytes.is_empty() {
                    placeholder(id)
                } else if tokenizer.is_special(id as u32) {
                    special_word(bytes)
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let eos_ids = tokenizer.eos_token_ids().to_vec();
        Vocab { words, eos_ids, tokenizer: Some(tokenizer) }
    }

    /// A vocabulary given as bytes per id (`special` ids are control tokens), tokenized greedily.
    pub fn from_words(words: Vec<Vec<u8>>, special: &[u32], eos_ids: Vec<u32>) -> Self {
        let words = words
            .into_iter()
            .enumerate()
            .map(|(id, w)| {
                if w.is_empty() {
                    placeholder(id)
                } else if special.contains(&(id as u32)) {
                    special_word(&w)
                } else {
                    w
                }
            })
            .collect();
        Vocab { words, eos_ids, tokenizer: None }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The token trie and tokenizer llguidance works with. Fails on a vocabulary without EOS:
    /// a constrained request must be able to end.
    pub(super) fn into_env(self) -> Result<VocabEnv, String> {
        let Some(&eos) = self.eos_ids.first() else {
            return Err("the tokenizer has no end-of-sequence token".into());
        };
        let mut info = TokRxInfo::new(self.words.len() as u32, eos);
        info.tok_end_of_turn = self.eos_ids.get(1).copied();
        let trie = TokTrie::from(&info, &self.words).with_eos_tokens(&self.eos_ids);
        Ok(VocabEnv { trie, tokenizer: self.tokenizer })
    }
}

pub(super) struct VocabEnv {
    trie: TokTrie,
    tokenizer: Option<Arc<Tokenizer>>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // The model's own tokenization where the text is valid UTF-8 (it always is for forced JSON
        // syntax); the trie's greedy split otherwise.
        match (&self.tokenizer, std::str::from_utf8(s)) {
            (Some(tok), Ok(text)) => tok.encode(text, false).unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            _ => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.tokenizer.is_some()
    }
}
