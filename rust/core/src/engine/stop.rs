//! Stop strings matched across token boundaries: text that could still become a stop string is held
//! back, and a matched stop string is never emitted.

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

pub enum StopResult {
    /// Text safe to emit now.
    Continue(String),
    /// A stop string matched; the text before it.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    pub fn push(&mut self, text: &str) -> StopResult {
        if self.stops.is_empty() {
            return StopResult::Continue(text.to_string());
        }
        self.pending.push_str(text);
        let first = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(i) = first {
            let out = self.pending[..i].to_string();
            self.pending.clear();
            return StopResult::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopResult::Continue(out)
    }

    /// Text still held back when the request ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for c in chunks {
            match m.push(c) {
                StopResult::Continue(t) => out.push_str(&t),
                StopResult::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_across_tokens_is_not_emitted() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".to_string(), true));
    }

    #[test]
    fn partial_prefix_is_released_when_it_diverges() {
        assert_eq!(run(&["END"], &["a E", "Nx"]), ("a ENx".to_string(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".to_string(), true));
    }

    #[test]
    fn multibyte_stop() {
        assert_eq!(run(&["世界"], &["你好世", "界!"]), ("你好".to_string(), true));
    }
}
