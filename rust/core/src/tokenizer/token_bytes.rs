//! The raw bytes behind every token id, precomputed once per tokenizer.
//!
//! Streaming detokenization and logprob `bytes` need the exact bytes of a single token, which `decode`
//! cannot give: it returns a `String`, so half of a multi-byte character comes out as U+FFFD. Vocabulary
//! strings spell their bytes in one of a few ways (GPT-2 byte-level characters, SentencePiece `▁` and
//! `<0xAB>` pieces, or plain text for added tokens); the table undoes the spelling once at load time.

/// How a vocabulary string spells the bytes it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ByteSpelling {
    /// GPT-2 byte-level BPE: every byte is one printable character (a space is `Ġ`).
    ByteLevel,
    /// SentencePiece: `▁` is a space and `<0xAB>` is the raw byte 0xAB (byte fallback).
    SentencePiece,
    /// The string is the text itself (added and special tokens).
    Raw,
}

/// Bytes of all ids in one buffer; `offsets[id]..offsets[id + 1]` is the token's slice.
#[derive(Debug, Clone)]
pub(crate) struct TokenBytes {
    data: Vec<u8>,
    offsets: Vec<usize>,
}

impl TokenBytes {
    /// `tokens[id]` is the vocabulary string of `id` and its spelling; `None` marks an id that the
    /// vocabulary skips (it gets no bytes).
    pub fn build(tokens: &[Option<(&str, ByteSpelling)>]) -> Self {
        let byte_level = ByteLevelAlphabet::new();
        let mut data = Vec::with_capacity(tokens.len() * 6);
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0);
        for token in tokens {
            if let Some((text, spelling)) = token {
                match spelling {
                    ByteSpelling::ByteLevel => byte_level.decode_into(text, &mut data),
                    ByteSpelling::SentencePiece => decode_sentencepiece_into(text, &mut data),
                    ByteSpelling::Raw => data.extend_from_slice(text.as_bytes()),
                }
            }
            offsets.push(data.len());
        }
        TokenBytes { data, offsets }
    }

    /// The bytes of `id`; empty for ids outside the vocabulary.
    pub fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.offsets.get(id), self.offsets.get(id + 1)) {
            (Some(&start), Some(&end)) => &self.data[start..end],
            _ => &[],
        }
    }

    /// Number of ids covered (the largest id + 1).
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// GPT-2's reversible byte-to-character map: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes (controls, space, 0x7F-0xA0, 0xAD) are shifted to U+0100.. in byte order.
struct ByteLevelAlphabet {
    /// Indexed by code point; `None` for characters outside the alphabet.
    to_byte: Vec<Option<u8>>,
}

impl ByteLevelAlphabet {
    fn new() -> Self {
        let mut to_byte = vec![None; 0x100 + 68];
        let mut shifted = 0x100;
        for b in 0..=255u8 {
            let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            if printable {
                to_byte[b as usize] = Some(b);
            } else {
                to_byte[shifted] = Some(b);
                shifted += 1;
            }
        }
        ByteLevelAlphabet { to_byte }
    }

    /// Like HF's ByteLevel decoder: a string with any character outside the alphabet is taken as plain
    /// text (this is how added tokens such as `<|im_start|>` survive decoding).
    fn decode_into(&self, text: &str, out: &mut Vec<u8>) {
        let start = out.len();
        for c in text.chars() {
            match self.to_byte.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                None => {
                    out.truncate(start);
                    out.extend_from_slice(text.as_bytes());
                    return;
                }
            }
        }
    }
}

fn decode_sentencepiece_into(text: &str, out: &mut Vec<u8>) {
    if let Some(byte) = parse_byte_piece(text) {
        out.push(byte);
        return;
    }
    for c in text.chars() {
        if c == '\u{2581}' {
            out.push(b' ');
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// `<0xAB>` -> 0xAB, the byte-fallback pieces of SentencePiece vocabularies.
fn parse_byte_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_decode_to_bytes() {
        let tokens = [
            Some(("Ġhello", ByteSpelling::ByteLevel)),
            Some(("ĊĠ", ByteSpelling::ByteLevel)),
            // "é" is 0xC3 0xA9; byte-level spells them "Ã" and "©".
            Some(("Ã", ByteSpelling::ByteLevel)),
            Some(("©", ByteSpelling::ByteLevel)),
            None,
            Some(("<|im_start|>", ByteSpelling::Raw)),
            Some(("▁the", ByteSpelling::SentencePiece)),
            Some(("<0xE4>", ByteSpelling::SentencePiece)),
            Some(("a b", ByteSpelling::ByteLevel)),
        ];
        let table = TokenBytes::build(&tokens);
        assert_eq!(table.len(), 9);
        assert_eq!(table.get(0), b" hello");
        assert_eq!(table.get(1), b"\n ");
        assert_eq!(table.get(2), &[0xC3]);
        assert_eq!(table.get(3), &[0xA9]);
        assert_eq!(table.get(4), b"");
        assert_eq!(table.get(5), b"<|im_start|>");
        assert_eq!(table.get(6), b" the");
        assert_eq!(table.get(7), &[0xE4]);
        assert_eq!(
            table.get(8),
            b"a b",
            "a space is outside the alphabet: plain text"
        );
        assert_eq!(table.get(9), b"");
    }
}
