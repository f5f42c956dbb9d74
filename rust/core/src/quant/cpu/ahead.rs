//! The next matmul's weight, read while the threads would wait: a decode step runs the same matmuls in
//! the same order every step, so the weight that followed this one last time is the one that comes
//! next. Once a helper has no task left in a matmul, it reads that weight's first bytes
//! ([`pool::prefetch_when_idle`]) while the calling thread finishes its tasks and runs the ops between
//! the two (norms, rope, attention's start, silu * up), a time in which the memory would otherwise
//! idle: at batch 1 the step is bound by reading ~1 GB of weights (Qwen2.5-1.5B Q4_K_M), and ~4 ms of
//! its ~40 go to those ops.
//!
//! Every weight a successor entry names is alive: a repacked weight leaves the table and the pool's
//! region as it is dropped ([`forget`], from `PackedK`'s `Drop`), so the helpers' loads stay in
//! readable memory. Entries are keyed by address; a key whose weight has gone is never looked up again
//! unless a new weight lands at that address, which then reads a live successor once to no purpose.

use super::pool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Bytes of the next weight read per matmul: half of a Zen 4 core's 1 MiB L2, about what the memory
/// delivers in the longest gap of a Qwen step (~30 us of silu * up).
const BUDGET: usize = 512 * 1024;

#[derive(Default)]
struct Table {
    /// Weight address -> the address and length of the weight that followed it.
    next: HashMap<usize, (usize, usize)>,
    last: usize,
}

impl Table {
    /// The weight at `addr..addr + len` is read next: it follows the last one. Returns what followed
    /// it last time.
    fn record(&mut self, addr: usize, len: usize) -> Option<(usize, usize)> {
        let prev = std::mem::replace(&mut self.last, addr);
        if prev != 0 && prev != addr {
            self.next.insert(prev, (addr, len));
        }
        self.next.get(&addr).copied()
    }

    /// Drops every entry from or to a weight in `addr..addr + len`.
    fn forget(&mut self, addr: usize, len: usize) {
        let gone = addr..addr + len;
        self.next.retain(|k, (a, _)| !gone.contains(a) && !gone.contains(k));
    }
}

fn table() -> &'static Mutex<Table> {
    static T: OnceLock<Mutex<Table>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Bytes read per matmul: [`BUDGET`], or `MLC_CPU_AHEAD_KB` KiB (0 turns it off), or what [`set_budget`]
/// set last.
static SET: AtomicUsize = AtomicUsize::new(usize::MAX);

fn budget() -> usize {
    match SET.load(Ordering::Relaxed) {
        usize::MAX => {
            let b = crate::switches::number("MLC_CPU_AHEAD_KB").map_or(BUDGET, |kb| kb * 1024);
            SET.store(b, Ordering::Relaxed);
            b
        }
        b => b,
    }
}

/// Sets the bytes read per matmul (0: none), so a benchmark can take turns with and without.
pub fn set_budget(bytes: usize) {
    SET.store(bytes.min(usize::MAX - 1), Ordering::Relaxed);
}

/// A matmul reading the weight at `addr..addr + len` starts: it is what followed the previous one, and
/// the helpers, once they have no task left in it, read what followed it last time.
///
/// # Safety
/// `addr..addr + len` is a live repacked weight that calls [`forget`] before its memory goes.
pub unsafe fn starting(addr: usize, len: usize) {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    let b = budget();
    if let Some((next, len)) = t.record(addr, len).filter(|_| b > 0) {
        // SAFETY: entries name live weights (the module's invariant; `forget` runs, under this lock,
        // before one's memory goes).
        unsafe { pool::prefetch_when_idle(next, len.min(b)) };
    }
}

/// The weight at `addr..addr + len` is going: no entry names it, no helper reads it.
pub fn forget(addr: usize, len: usize) {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    t.forget(addr, len);
    pool::forget(addr, len);
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn each_weight_names_the_one_after_it_until_either_is_forgotten() {
        let mut t = Table::default();
        // A step of three weights (at 1000, 2000, 3000), twice.
        let step = [(1000, 100), (2000, 200), (3000, 300)];
        let first: Vec<_> = step.iter().map(|&(a, l)| t.record(a, l)).collect();
        assert_eq!(first, [None, None, None]);
        let second: Vec<_> = step.iter().map(|&(a, l)| t.record(a, l)).collect();
        assert_eq!(second, [Some((2000, 200)), Some((3000, 300)), Some((1000, 100))]);
        // A weight inside the range goes: so do the entries from it and to it.
        t.forget(1950, 100);
        assert_eq!(t.record(1000, 100), None);
        assert_eq!(t.next.get(&2000), None);
        assert_eq!(t.next.get(&3000), Some(&(1000, 100)));
    }
}
