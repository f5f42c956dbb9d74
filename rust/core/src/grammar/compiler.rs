//! Compiling a request's [`GrammarSpec`] against the model's vocabulary.

use super::matcher::GrammarMatcher;
use super::spec::GrammarSpec;
use super::vocab::Vocab;
use crate::error::{EngineError, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::TokEnv;
use llguidance::{Matcher, ParserFactory};
use std::sync::{Arc, OnceLock};

/// Shared by the handle (which compiles when a request is added) and the engine core; cheap to
/// create, the expensive part (trie and parser factory) is built on first use.
pub struct GrammarCompiler {
    vocab: Vocab,
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").field("vocab", &self.vocab).field("ready", &self.factory.get().is_some()).finish()
    }
}

impl GrammarCompiler {
    pub fn new(vocab: Vocab) -> Self {
        GrammarCompiler { vocab, factory: OnceLock::new() }
    }

    fn factory(&self) -> Result<&ParserFactory> {
        let built = self.factory.get_or_init(|| {
            let env: TokEnv = Arc::new(self.vocab.clone().into_env()?);
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
            // Grammar problems are reported to the caller as errors, not printed.
            factory.quiet();
            Ok(factory)
        });
        built.as_ref().map_err(|e| EngineError::Unsupported(format!("constrained decoding with this tokenizer: {e}")))
    }

    /// A fresh matcher for one sequence. An invalid or unsatisfiable schema is a bad request
    /// naming the field it came from.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<GrammarMatcher> {
        let field = spec.field();
        let lark = spec.to_lark().map_err(|m| EngineError::bad_request(field, format!("invalid JSON schema: {m}")))?;
        let factory = self.factory()?;
        // llguidance reports bad schemas as errors; a panic on some exotic input must still not
        // take the caller's thread down.
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            factory.create_parser(TopLevelGrammar::from_lark(lark)).map(|p| Matcher::new(Ok(p)))
        }));
        let matcher = match made {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(EngineError::bad_request(field, format!("invalid JSON schema: {e}"))),
            Err(_) => return Err(EngineError::bad_request(field, "invalid JSON schema: the grammar compiler failed on it")),
        };
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::bad_request(field, format!("invalid JSON schema: {e}")));
        }
        Ok(GrammarMatcher::new(matcher, self.vocab.eos_ids().to_vec()))
    }
}
