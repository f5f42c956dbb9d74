//! Grammar-constrained decoding: `response_format` JSON (with or without a schema) and forced tool
//! calls are enforced while sampling, by llguidance (never a hand-written JSON-schema matcher).
//!
//! Flow per request: the handle compiles the request's [`GrammarSpec`] into a [`GrammarMatcher`] when
//! the request is added (an invalid schema is a bad request, reported before anything is queued);
//! every step the engine asks the matcher for the allowed tokens and sets every other logit to -inf
//! before the sampler sees the row ([`GrammarMatcher::mask_logits`]), then commits the sampled token
//! ([`GrammarMatcher::commit`]). EOS is allowed exactly when the grammar accepts the output so far,
//! and is the only choice once the grammar cannot be extended.
//!
//! [`GrammarCompiler`] holds what all requests of one tokenizer share (the token trie and
//! llguidance's parser factory); it is built on the first constrained request, so engines that never
//! see one pay nothing.

mod compiler;
mod matcher;
mod spec;
#[cfg(test)]
mod tests;
mod vocab;

pub use compiler::GrammarCompiler;
pub use matcher::GrammarMatcher;
pub use spec::GrammarSpec;
pub use vocab::Vocab;
