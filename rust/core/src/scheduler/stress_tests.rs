//! Randomized add / schedule / update / abort / finish (fixed seeds) against a shadow KV cache, with
//! every invariant checked after every step.
//!
//! With a sliding window the harness also proposes drafts (speculative decoding) and accepts a random
//! prefix of each, so that rollback and the release of blocks behind the window meet.
//!
//! The shadow cache records, for each slot, the tokens its KV was computed from: the token at that
//! position and every token before it (attention makes K and V depend on the whole prefix). Before a
//! sequence is fed, every slot below its `start_pos` must hold exactly its own prefix: that catches a
//! prefix hit on the wrong content, a block freed or overwritten while in use, and a block table
//! that lost a block. Under a sliding window of `W` only the slots from `start_pos - W + 1` on are
//! read, so only those are checked, and every entry before them must be a placeholder.
//!
//! With `long_context_from` a slot also records the rope regime it was written in, and is valid only
//! for a sequence in that same regime: that catches a prefix hit across regimes and a switch that
//! kept short KV. Every step's regime must be "known tokens > T", and a short step must compute
//! only positions below T.

use super::{ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput, SeqId};
use crate::kv_cache::PLACEHOLDER_BLOCK;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};

/// What the test expects of a live sequence.
struct Expected {
    tokens: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    /// The regime of its last scheduled step.
    long_rope: Option<bool>,
    /// It has switched to the long regime (at most once).
    switched: bool,
}

/// What one KV slot was computed from.
#[derive(Clone, Default, PartialEq, Debug)]
struct Slot {
    /// The token at the slot's position and every token before it.
    prefix: Vec<u32>,
    long_rope: bool,
}

#[derive(Default)]
struct Counts {
    steps: usize,
    preemptions: usize,
    prefix_hit_tokens: usize,
    unschedulable: usize,
    finished: usize,
    aborted: usize,
    drafts_accepted: usize,
    drafts_rejected: usize,
    rope_recomputes: usize,
    /// Steps computed in the long regime, and prefix-hit tokens of long admissions.
    long_steps: usize,
    long_prefix_hit_tokens: usize,
    /// Most tokens of a sequence that finished normally.
    longest_finished: usize,
    /// Every step's output, to compare runs.
    outputs: Vec<SchedulerOutput>,
}

/// What the random workload looks like beyond the scheduler's own configuration.
#[derive(Clone, Copy)]
struct Workload {
    max_new: usize,
    /// Most draft tokens proposed for a decoding sequence; 0: no speculative decoding.
    max_draft: usize,
}

const PLAIN: Workload = Workload {
    max_new: 30,
    max_draft: 0,
};

struct Harness {
    s: Scheduler,
    rng: StdRng,
    live: HashMap<SeqId, Expected>,
    /// `[num_blocks][block_size]`: what each slot was computed from.
    shadow: Vec<Vec<Slot>>,
    families: Vec<Vec<u32>>,
    next_id: SeqId,
    counts: Counts,
    workload: Workload,
}

impl Harness {
    fn new(cfg: SchedulerConfig, seed: u64, workload: Workload) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // Shared system prompts of 0..=14 tokens, so that requests often share full blocks.
        let families = (0..4)
            .map(|_| {
                (0..rng.random_range(0..=14))
                    .map(|_| rng.random_range(0..50))
                    .collect()
            })
            .collect();
        let shadow = vec![vec![Slot::default(); cfg.block_size]; cfg.num_blocks];
        Harness {
            s: Scheduler::new(cfg),
            rng,
            live: HashMap::new(),
            shadow,
            families,
            next_id: 1,
            counts: Counts::default(),
            workload,
        }
    }

    fn add_random(&mut self) {
        let rng = &mut self.rng;
        let mut prompt = self.families[rng.random_range(0..self.families.len())].clone();
        let tail = if rng.random_bool(0.03) {
            rng.random_range(80..=100)
        } else {
            rng.random_range(1..=24)
        };
        // A tiny vocabulary makes equal blocks appear by chance too.
        prompt.extend((0..tail).map(|_| rng.random_range(0..3)));
        let max_new = rng.random_range(1..=self.workload.max_new);
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(
            id,
            Expected {
                prompt_len: prompt.len(),
                tokens: prompt.clone(),
                max_new,
                long_rope: None,
                switched: false,
            },
        );
        self.s.add(id, prompt);
    }

    fn abort_random(&mut self) {
        let mut ids: Vec<SeqId> = self.live.keys().copied().collect();
        ids.sort_unstable();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rng.random_range(0..ids.len())];
        assert!(self.s.abort(id));
        self.live.remove(&id);
        self.counts.aborted += 1;
    }

    fn propose_drafts(&mut self) {
        if self.workload.max_draft == 0 {
            return;
        }
        for id in self.s.decoding() {
            if self.rng.random_bool(0.5) {
                let k = self.rng.random_range(1..=self.workload.max_draft);
                let draft = (0..k).map(|_| self.rng.random_range(0..3)).collect();
                self.s.set_draft(id, draft);
            }
        }
    }

    /// What a verification step emits: a random prefix of the draft, then a token of its own.
    fn emit(&mut self, draft: &[u32]) -> Vec<u32> {
        let accepted = self.rng.random_range(0..=draft.len());
        self.counts.drafts_accepted += accepted;
        self.counts.drafts_rejected += draft.len() - accepted;
        let mut tokens = draft[..accepted].to_vec();
        tokens.push(self.rng.random_range(0..3));
        tokens
    }

    /// schedule, check, "run the model" on the shadow cache, sample, update, finish.
    fn step(&mut self) {
        self.propose_drafts();
        let running_before: HashSet<SeqId> = self.s.running.iter().copied().collect();
        let out = self.s.schedule();
        self.check_output(&out, &running_before);
        for &id in &out.unschedulable {
            let e = self
                .live
                .remove(&id)
                .expect("unschedulable sequence was live");
            assert!(
                e.tokens.is_empty() || !self.s.cfg.can_ever_run(e.tokens.len()),
                "seq {id} dropped while it fits"
            );
            self.counts.unschedulable += 1;
        }
        self.counts.preemptions += out.preempted.len();
        self.counts.prefix_hit_tokens += out.prefix_hit_tokens;
        self.note_regimes(&out, &running_before);

        let mut emitted = Vec::new();
        for x in &out.seqs {
            // Drafts are computed like any fed token, after the known ones.
            let known = &self.live[&x.seq_id].tokens[..x.start_pos];
            let tokens = [known, &x.token_ids[..]].concat();
            self.write_shadow(x, &tokens);
            if x.sample && x.num_draft > 0 {
                let draft = &x.token_ids[x.token_ids.len() - x.num_draft..];
                let tokens = self.emit(draft);
                emitted.push((x.seq_id, tokens));
            } else if x.sample {
                emitted.push((x.seq_id, vec![self.rng.random_range(0..3)]));
            }
        }
        self.s.update_emitted(&out, &emitted);
        for (id, tokens) in &emitted {
            let e = self.live.get_mut(id).expect("sampled sequence is live");
            e.tokens.extend_from_slice(tokens);
            if e.tokens.len() - e.prompt_len >= e.max_new {
                self.counts.longest_finished = self.counts.longest_finished.max(e.tokens.len());
                self.s.finish(*id);
                self.live.remove(id);
                self.counts.finished += 1;
            }
        }
        self.check_state();
        self.counts.steps += 1;
        self.counts.outputs.push(out);
    }

    fn check_output(&self, out: &SchedulerOutput, running_before: &HashSet<SeqId>) {
        let cfg = &self.s.cfg;
        let ids: HashSet<SeqId> = out.seqs.iter().map(|x| x.seq_id).collect();
        assert_eq!(ids.len(), out.seqs.len(), "a sequence scheduled twice");
        assert!(out.seqs.len() <= cfg.max_num_seqs);
        assert!(out
            .preempted
            .iter()
            .all(|p| !ids.contains(p) && running_before.contains(p)));
        assert!(out.preempted.iter().all(|p| self.s.waiting.contains(p)));
        assert!(out
            .unschedulable
            .iter()
            .all(|p| !ids.contains(p) && self.s.tokens(*p).is_none()));
        if !out.preempted.is_empty() {
            assert!(
                ids.is_subset(running_before),
                "admitted a sequence in a step that preempted"
            );
        }
        let total: usize = out.seqs.iter().map(|x| x.token_ids.len()).sum();
        assert_eq!(total, out.num_batched_tokens);
        assert!(total <= cfg.max_num_batched_tokens);
        let bs = cfg.block_size;
        for x in &out.seqs {
            let e = &self.live[&x.seq_id];
            let end = x.start_pos + x.token_ids.len();
            let fed_end = end - x.num_draft;
            let fed = x.token_ids.len() - x.num_draft;
            assert!((1..=cfg.prefill_chunk_size).contains(&fed));
            assert!(x.num_draft == 0 || (fed == 1 && x.num_draft <= self.workload.max_draft));
            assert_eq!(
                x.token_ids[..fed],
                e.tokens[x.start_pos..fed_end],
                "seq {} fed the wrong tokens",
                x.seq_id
            );
            assert_eq!(x.sample, fed_end == e.tokens.len());
            assert!(x.block_table.len() * bs >= end, "block table too short");
            let window_start = self.check_window(x.seq_id, x.start_pos, &x.block_table);
            for p in window_start..x.start_pos {
                let slot = &self.shadow[x.block_table[p / bs] as usize][p % bs];
                assert!(
                    slot.prefix == e.tokens[..=p] && slot.long_rope == x.long_rope,
                    "seq {} reads a wrong KV at position {p}",
                    x.seq_id
                );
            }
            assert_eq!(
                x.long_rope,
                cfg.is_long_context(e.tokens.len()),
                "seq {}",
                x.seq_id
            );
            if let Some(t) = cfg.long_context_from.filter(|_| !x.long_rope) {
                assert!(
                    end <= t,
                    "seq {} computes position {} short",
                    x.seq_id,
                    end - 1
                );
            }
        }
        self.check_rope_recomputes(out, &ids, running_before);
    }

    /// Every switch is of a running short-regime sequence that outgrew T, happens once, and puts
    /// the sequence (unless readmitted at once) at the front of the waiting queue, ahead of this
    /// step's victims of preemption, which follow in admission order.
    fn check_rope_recomputes(
        &self,
        out: &SchedulerOutput,
        ids: &HashSet<SeqId>,
        running_before: &HashSet<SeqId>,
    ) {
        let cfg = &self.s.cfg;
        for id in &out.rope_recomputes {
            let e = &self.live[id];
            assert!(running_before.contains(id) && !out.preempted.contains(id));
            assert!(cfg.is_long_context(e.tokens.len()));
            assert_eq!(e.long_rope, Some(false), "seq {id} was short");
            assert!(!e.switched, "seq {id} switched twice");
        }
        let pending: Vec<SeqId> = out
            .rope_recomputes
            .iter()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        let victims = out.preempted.iter().rev().copied();
        let front: Vec<SeqId> = pending.iter().copied().chain(victims).collect();
        assert!(
            self.s.waiting.iter().copied().take(front.len()).eq(front),
            "switched, then preempted, at the front of the queue"
        );
    }

    fn note_regimes(&mut self, out: &SchedulerOutput, running_before: &HashSet<SeqId>) {
        self.counts.rope_recomputes += out.rope_recomputes.len();
        for id in &out.rope_recomputes {
            self.live.get_mut(id).expect("live").switched = true;
        }
        for x in &out.seqs {
            self.live.get_mut(&x.seq_id).expect("live").long_rope = Some(x.long_rope);
            if x.long_rope {
                self.counts.long_steps += 1;
            }
        }
        // An admission starts at its prefix hit.
        self.counts.long_prefix_hit_tokens += out
            .seqs
            .iter()
            .filter(|x| {
                !running_before.contains(&x.seq_id) || out.rope_recomputes.contains(&x.seq_id)
            })
            .filter(|x| x.long_rope)
            .map(|x| x.start_pos)
            .sum::<usize>();
    }

    /// Under a sliding window: exactly the blocks wholly before the window of a chunk starting at
    /// `start` are placeholders, and the sequence holds no more blocks than the bound for the longest
    /// step (a prefill chunk or a decode with its draft). Returns the first position read.
    fn check_window(&self, id: SeqId, start: usize, table: &[u32]) -> usize {
        let cfg = &self.s.cfg;
        let Some(w) = cfg.sliding_window else {
            assert_eq!(self.s.kv.num_released(id), 0);
            return 0;
        };
        let window_start = start.saturating_sub(w - 1);
        let released = self.s.kv.num_released(id);
        assert_eq!(released, window_start / cfg.block_size, "seq {id} released");
        assert!(table[..released].iter().all(|&b| b == PLACEHOLDER_BLOCK));
        let longest = cfg.prefill_chunk_size.max(1 + self.workload.max_draft);
        let bound = cfg.window_blocks(longest).expect("a window");
        assert!(
            self.s.kv.num_held(id) <= bound,
            "seq {id} holds too many blocks"
        );
        window_start
    }

    /// Computes positions `x.start_pos..tokens.len()` of `tokens` (known tokens, then the fed
    /// ones) in the regime of `x`.
    fn write_shadow(&mut self, x: &ScheduledSeq, tokens: &[u32]) {
        let bs = self.s.cfg.block_size;
        for p in x.start_pos..tokens.len() {
            let b = x.block_table[p / bs];
            assert_eq!(
                self.s.kv.pool().ref_count(b),
                Some(1),
                "seq {} writes into shared block {b}",
                x.seq_id
            );
            self.shadow[b as usize][p % bs] = Slot {
                prefix: tokens[..=p].to_vec(),
                long_rope: x.long_rope,
            };
        }
    }

    fn check_state(&self) {
        let s = &self.s;
        s.kv.assert_consistent();
        let running: HashSet<SeqId> = s.running.iter().copied().collect();
        let waiting: HashSet<SeqId> = s.waiting.iter().copied().collect();
        assert_eq!(running.len(), s.running.len());
        assert_eq!(waiting.len(), s.waiting.len());
        assert!(running.is_disjoint(&waiting));
        assert!(s.running.len() <= s.cfg.max_num_seqs);
        let known: HashSet<SeqId> = s.seqs.keys().copied().collect();
        assert_eq!(known, running.union(&waiting).copied().collect());
        assert_eq!(
            known,
            self.live.keys().copied().collect(),
            "scheduler and test disagree on live sequences"
        );
        let mut held = HashSet::new();
        let bs = s.cfg.block_size;
        for (&id, seq) in &s.seqs {
            assert_eq!(seq.tokens, self.live[&id].tokens);
            let table = s.kv.block_table(id);
            if waiting.contains(&id) {
                assert_eq!(
                    (seq.num_computed, table.len()),
                    (0, 0),
                    "waiting seq {id} holds KV"
                );
            } else {
                assert!(seq.num_computed <= seq.tokens.len());
                assert!(table.len() * bs >= seq.num_computed);
                let window_start = s.kv.window_start(seq.num_computed);
                assert_eq!(
                    s.kv.num_released(id),
                    window_start / bs,
                    "seq {id} released"
                );
            }
            held.extend(table[s.kv.num_released(id)..].iter().copied());
        }
        assert_eq!(s.num_free_blocks(), s.num_total_blocks() - held.len());
    }
}

fn run(cfg: SchedulerConfig, seed: u64, workload: Workload) -> Counts {
    let mut h = Harness::new(cfg, seed, workload);
    for _ in 0..1500 {
        // About as many arrivals as the cache can serve, with bursts that overfill it.
        let arrivals = if h.rng.random_bool(0.04) {
            4
        } else {
            usize::from(h.rng.random_bool(0.3))
        };
        for _ in 0..arrivals {
            h.add_random();
        }
        if h.rng.random_bool(0.03) {
            h.abort_random();
        }
        h.step();
    }
    // Drain: with no new work every sequence must finish (or be dropped) in bounded time.
    let mut steps = 0;
    while h.s.has_work() {
        h.step();
        steps += 1;
        assert!(
            steps < 20_000,
            "no progress: {} running, {} waiting",
            h.s.num_running(),
            h.s.num_waiting()
        );
    }
    assert_eq!(h.s.num_free_blocks(), h.s.num_total_blocks());
    assert_eq!(h.s.kv.num_seqs(), 0);
    assert!(h.live.is_empty());
    h.s.kv.assert_consistent();
    h.counts
}

fn stress_config(prefix: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 6,
        max_num_batched_tokens: 32,
        prefill_chunk_size: 8,
        block_size: 4,
        num_blocks: 24,
        enable_prefix_cache: prefix,
        sliding_window: None,
        long_context_from: None,
    }
}

#[test]
fn random_workload_with_prefix_cache() {
    for seed in [1, 2, 3] {
        let c = run(stress_config(true), seed, PLAIN);
        // The workload must reach the paths it is meant to check.
        assert!(
            c.preemptions > 0 && c.prefix_hit_tokens > 0 && c.unschedulable > 0,
            "seed {seed}"
        );
        assert!(c.finished > 300 && c.aborted > 0, "seed {seed}");
    }
}

#[test]
fn random_workload_without_prefix_cache() {
    for seed in [4, 5] {
        let c = run(stress_config(false), seed, PLAIN);
        assert_eq!(c.prefix_hit_tokens, 0);
        assert!(
            c.preemptions > 0 && c.unschedulable > 0 && c.finished > 300,
            "seed {seed}"
        );
    }
}

/// A window of 10 positions: at most `window_blocks(8)` = 5 blocks a sequence, so prompts longer
/// than the 96 token slots run too; drafts of up to 3 tokens are verified and partly rolled back.
#[test]
fn random_workload_with_a_sliding_window_and_drafts() {
    for (seed, prefix) in [(6, true), (7, true), (8, false)] {
        let cfg = SchedulerConfig {
            sliding_window: Some(10),
            ..stress_config(prefix)
        };
        let workload = Workload {
            max_new: 60,
            max_draft: 3,
        };
        let c = run(cfg.clone(), seed, workload);
        assert_eq!(
            c.unschedulable, 0,
            "seed {seed}: every sequence fits its window"
        );
        assert!(
            c.longest_finished > cfg.capacity_tokens(),
            "seed {seed}: {}",
            c.longest_finished
        );
        assert!(c.preemptions > 0 && c.finished > 300, "seed {seed}");
        assert!(
            c.drafts_accepted > 0 && c.drafts_rejected > 0,
            "seed {seed}"
        );
        assert_eq!(c.prefix_hit_tokens > 0, prefix, "seed {seed}");
    }
}

/// A window no sequence reaches releases nothing: every step is the one full attention schedules.
#[test]
fn a_window_longer_than_any_sequence_changes_nothing() {
    let workload = Workload {
        max_new: 30,
        max_draft: 2,
    };
    let full = run(stress_config(true), 9, workload);
    let wide = SchedulerConfig {
        sliding_window: Some(10_000),
        ..stress_config(true)
    };
    let windowed = run(wide, 9, workload);
    assert!(full.preemptions > 0 && full.drafts_rejected > 0);
    assert_eq!(full.steps, windowed.steps);
    assert!(full.outputs == windowed.outputs);
}

/// The long rope regime from 20 tokens on: most sequences cross it while decoding (and switch once),
/// some prompts are long from the start; with drafts, prefix caching and a sliding window in turn.
#[test]
fn random_workload_with_a_long_rope_regime() {
    let drafts = Workload {
        max_new: 30,
        max_draft: 3,
    };
    for (seed, prefix, window, workload) in [
        (10, true, None, drafts),
        (11, false, None, PLAIN),
        (12, true, Some(10), drafts),
        (13, true, Some(10), PLAIN),
    ] {
        let cfg = SchedulerConfig {
            sliding_window: window,
            long_context_from: Some(20),
            ..stress_config(prefix)
        };
        let c = run(cfg, seed, workload);
        assert!(c.rope_recomputes > 50 && c.long_steps > 0, "seed {seed}");
        assert!(c.preemptions > 0 && c.finished > 300, "seed {seed}");
        assert_eq!(c.long_prefix_hit_tokens > 0, prefix, "seed {seed}");
        if workload.max_draft > 0 {
            assert!(
                c.drafts_accepted > 0 && c.drafts_rejected > 0,
                "seed {seed}"
            );
        }
    }
}

/// A threshold no sequence reaches changes nothing: every step is the one a single regime schedules.
#[test]
fn a_long_context_threshold_beyond_any_sequence_changes_nothing() {
    let workload = Workload {
        max_new: 30,
        max_draft: 2,
    };
    let one = run(stress_config(true), 14, workload);
    let high = SchedulerConfig {
        long_context_from: Some(10_000),
        ..stress_config(true)
    };
    let two = run(high, 14, workload);
    assert!(one.preemptions > 0 && one.prefix_hit_tokens > 0 && one.drafts_rejected > 0);
    assert_eq!((two.rope_recomputes, two.long_steps), (0, 0));
    assert_eq!(one.steps, two.steps);
    assert!(one.outputs == two.outputs);
}
