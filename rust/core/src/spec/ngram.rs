//! Prompt lookup: the continuation of the most recent earlier occurrence of the sequence's last n-gram
//! (longest n first). Costs no model call; pays off where the output repeats its input (summaries,
//! code edits, quoting).

/// Up to `k` tokens proposed after `tokens` (prompt + output so far); empty when no n-gram of length
/// `min_n..=max_n` at the end occurs earlier.
pub fn propose(tokens: &[u32], k: usize, max_n: usize, min_n: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 || min_n == 0 {
        return Vec::new();
    }
    for n in (min_n..=max_n.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // Most recent first: the latest context is the best guess of what follows.
        for start in (0..len - n).rev() {
            if &tokens[start..start + n] == suffix {
                let from = start + n;
                return tokens[from..(from + k).min(len)].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::propose;

    #[test]
    fn continues_the_latest_earlier_occurrence_of_the_longest_suffix() {
        // ... 1 2 3 9 ... 1 2 3 7 8 ... ends in 2 3: the latest earlier "2 3" is followed by 7 8.
        let t = [1, 2, 3, 9, 5, 1, 2, 3, 7, 8, 4, 2, 3];
        assert_eq!(propose(&t, 2, 3, 1), vec![7, 8]);
        // The trigram "4 2 3" never occurred before; the bigram did.
        assert_eq!(propose(&t, 5, 3, 3), Vec::<u32>::new());
    }

    #[test]
    fn proposals_stop_at_the_end_of_the_known_tokens() {
        let t = [5, 6, 7, 5, 6];
        assert_eq!(propose(&t, 4, 2, 1), vec![7, 5, 6]);
        assert_eq!(propose(&[1, 2, 3], 4, 2, 1), Vec::<u32>::new());
        assert_eq!(propose(&[], 4, 2, 1), Vec::<u32>::new());
    }
}
