//! Streaming text out of generated token ids.
//!
//! A byte-level token can end in the middle of a UTF-8 character (an emoji is often two or three
//! tokens). Decoding each token alone would emit U+FFFD, and diffing `decode()` of the growing sequence
//! costs O(n) per token. Instead the detokenizer appends each token's raw bytes to a small pending buffer
//! and emits only complete characters; at most three bytes of an unfinished character ever wait.

use super::{TokenJoin, Tokenizer};

/// Per-request streaming state; one per sequence, owned by the engine thread.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDetokenizer {
    skip_special_tokens: bool,
    /// Bytes of a character that is not complete yet.
    pending: Vec<u8>,
    /// Whether a token has been taken in (space-joined vocabularies separate every later token).
    started: bool,
}

impl IncrementalDetokenizer {
    pub fn new(skip_special_tokens: bool) -> Self {
        IncrementalDetokenizer {
            skip_special_tokens,
            pending: Vec::new(),
            started: false,
        }
    }

    /// Adds one token and returns the text that became complete with it (often empty mid-character).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if self.skip_special_tokens && tokenizer.is_special(id) {
            return String::new();
        }
        if self.started && tokenizer.token_join() == TokenJoin::Spaces {
            self.pending.push(b' ');
        }
        self.started = true;
        self.pending
            .extend_from_slice(tokenizer.token_bytes_ref(id));
        self.drain(false)
    }

    /// Ends the stream: bytes of a character that never completed come out as U+FFFD, as `decode` does.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    /// Moves every complete character (and every byte that can never start one, as U+FFFD) from
    /// `pending` to the output; an incomplete tail stays unless `at_end`.
    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                }
                Err(err) => {
                    let valid_end = start + err.valid_up_to();
                    // The prefix up to `valid_up_to` is valid UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match err.error_len() {
                        Some(invalid) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + invalid;
                        }
                        None if at_end => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = self.pending.len();
                        }
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
