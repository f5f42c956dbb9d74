//! Partial selection over a logit row: the few best entries without sorting the vocabulary.
//!
//! Rows reaching here are sanitized (no NaN), so IEEE comparisons are a total order up to
//! -0.0 == 0.0, which every caller treats as equal values as well.

use std::cmp::Ordering;

/// Up to this many, a sorted insertion buffer beats copying the row for `select_nth_unstable`: most
/// entries fail the single comparison against the current worst kept entry.
const SMALL_SELECTION: usize = 64;

/// A sort key ordering entries best first (larger value, then lower id) as plain integers, which
/// sort several times faster than float pairs. Every selection ranks this way so that their tie
/// rules agree; -0.0 and 0.0 get the same key, as they compare equal everywhere else.
pub(crate) fn rank_key(id: u32, x: f32) -> u64 {
    let bits = (x + 0.0).to_bits();
    // Flipping all bits of negatives and the sign bit of positives orders floats as unsigned ints.
    let ascending = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(!ascending) << 32) | u64::from(id)
}

pub(crate) fn key_id(key: u64) -> u32 {
    key as u32
}

/// The `n` best entries of `row` as `(id, value)`, best first (larger value, then lower id).
/// Returns fewer than `n` only when the row is shorter.
pub(crate) fn top_n(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(row.len());
    if n == 0 {
        return Vec::new();
    }
    if n > SMALL_SELECTION {
        let mut keys: Vec<u64> = row
            .iter()
            .enumerate()
            .map(|(i, &x)| rank_key(i as u32, x))
            .collect();
        keys.select_nth_unstable(n - 1);
        keys.truncate(n);
        keys.sort_unstable();
        return keys
            .into_iter()
            .map(|key| (key_id(key), row[key_id(key) as usize]))
            .collect();
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &x) in row.iter().enumerate() {
        // Ids arrive in increasing order, so an entry equal to a kept one ranks after it: strict `>`
        // against the worst kept, and insertion after all entries >= x.
        if best.len() == n {
            match best.last() {
                Some(&(_, worst)) if x > worst => {
                    best.pop();
                }
                _ => continue,
            }
        }
        let at = best.partition_point(|&(_, v)| v >= x);
        best.insert(at, (i as u32, x));
    }
    best
}

/// The `k`-th largest value of `row` (1-based, counting repeated values separately), or `None` when
/// `k` is 0 or exceeds the row, where no threshold applies.
pub(crate) fn kth_largest(row: &[f32], k: usize) -> Option<f32> {
    if k == 0 || k > row.len() {
        return None;
    }
    if k <= SMALL_SELECTION {
        return top_n(row, k).last().map(|&(_, v)| v);
    }
    let mut values = row.to_vec();
    let (_, kth, _) =
        values.select_nth_unstable_by(k - 1, |a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
    Some(*kth)
}
