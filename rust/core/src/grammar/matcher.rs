//! One sequence's grammar state: which tokens may come next, and advancing by the sampled token.

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

pub struct GrammarMatcher {
    inner: Matcher,
    eos_ids: Vec<u32>,
}

impl std::fmt::Debug for GrammarMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarMatcher").field("stopped", &self.inner.is_stopped()).field("error", &self.inner.get_error()).finish()
    }
}

impl GrammarMatcher {
    pub(super) fn new(inner: Matcher, eos_ids: Vec<u32>) -> Self {
        GrammarMatcher { inner, eos_ids }
    }

    /// The tokens allowed next. Once the grammar is complete and cannot grow, only EOS; any EOS id
    /// is allowed wherever one is. A matcher in an error state allows only EOS, so the sequence
    /// ends rather than emit text the grammar rejects.
    pub fn allowed(&mut self) -> SimpleVob {
        let mut mask = match self.inner.compute_mask_or_eos() {
            Ok(m) => m,
            Err(e) => {
                log::warn!("grammar matcher failed, ending the sequence: {e}");
                SimpleVob::alloc(0)
            }
        };
        let eos_allowed = self.eos_ids.iter().any(|&t| (t as usize) < mask.len() && mask.is_allowed(t));
        if eos_allowed || mask.is_zero() {
            for &t in &self.eos_ids {
                if (t as usize) >= mask.len() {
                    mask.resize(t as usize + 1);
                }
                mask.allow_token(t);
            }
        }
        mask
    }

    /// Sets every disallowed logit of `row` (`[vocab_size]`) to -inf, before any other processing.
    pub fn mask_logits(&mut self, row: &mut [f32]) {
        let mask = self.allowed();
        for (id, x) in row.iter_mut().enumerate() {
            if id >= mask.len() || !mask.is_allowed(id as u32) {
                *x = f32::NEG_INFINITY;
            }
        }
    }

    /// Advances by a sampled token. EOS ends the sequence and needs no parsing; a token the grammar
    /// rejects (which masking rules out) puts the matcher into its error state.
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        if self.eos_ids.contains(&token) {
            return Ok(());
        }
        self.inner.consume_token(token).map_err(|e| e.to_string())
    }

    /// Whether the output so far is a complete match (EOS would be accepted now).
    pub fn is_accepting(&mut self) -> bool {
        self.inner.is_stopped() || self.inner.is_accepting().unwrap_or(false)
    }
}
