//! Randomized add / schedule / update / abort / finish (fixed seeds) against a shadow KV cache, with
//! every invariant checked after every step.
//!
//! The shadow cache records, for each slot, the tokens its KV was computed from: the token at that
//! position and every token before it (attention makes K and V depend on the whole prefix). Before a
//! sequence is fed, every slot below its `start_pos` must hold exactly its own prefix: that catches a
//! prefix hit on the wrong content, a block freed or overwritten while in use, and a block table
//! that lost a block.

use super::{Scheduler, SchedulerConfig, SchedulerOutput, SeqId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};

/// What the test expects of a live sequence.
struct Expected {
    tokens: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
}

#[derive(Default)]
struct Counts {
    preemptions: usize,
    prefix_hit_tokens: usize,
    unschedulable: usize,
    finished: usize,
    aborted: usize,
}

struct Harness {
    s: Scheduler,
    rng: StdRng,
    live: HashMap<SeqId, Expected>,
    /// `[num_blocks][block_size]`: the tokens up to and including each slot's position.
    shadow: Vec<Vec<Vec<u32>>>,
    families: Vec<Vec<u32>>,
    next_id: SeqId,
    counts: Counts,
}

impl Harness {
    fn new(cfg: SchedulerConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // Shared system prompts of 0..=14 tokens, so that requests often share full blocks.
        let families = (0..4)
            .map(|_| {
                (0..rng.random_range(0..=14))
                    .map(|_| rng.random_range(0..50))
                    .collect()
            })
            .collect();
        let shadow = vec![vec![Vec::new(); cfg.block_size]; cfg.num_blocks];
        Harness {
            s: Scheduler::new(cfg),
            rng,
            live: HashMap::new(),
            shadow,
            families,
            next_id: 1,
            counts: Counts::default(),
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
        let max_new = rng.random_range(1..=30);
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(
            id,
            Expected {
                prompt_len: prompt.len(),
                tokens: prompt.clone(),
                max_new,
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

    /// schedule, check, "run the model" on the shadow cache, sample, update, finish.
    fn step(&mut self) {
        let running_before: HashSet<SeqId> = self.s.running.iter().copied().collect();
        let out = self.s.schedule();
        self.check_output(&out, &running_before);
        for &id in &out.unschedulable {
            let e = self
                .live
                .remove(&id)
                .expect("unschedulable sequence was live");
            assert!(
                e.tokens.is_empty() || e.tokens.len() > self.s.cfg.capacity_tokens(),
                "seq {id} dropped while it fits"
            );
            self.counts.unschedulable += 1;
        }
        self.counts.preemptions += out.preempted.len();
        self.counts.prefix_hit_tokens += out.prefix_hit_tokens;

        let mut sampled = Vec::new();
        for x in &out.seqs {
            let end = x.start_pos + x.token_ids.len();
            let tokens = self.live[&x.seq_id].tokens[..end].to_vec();
            self.write_shadow(x.seq_id, x.start_pos, &tokens, &x.block_table);
            if x.sample {
                sampled.push((x.seq_id, self.rng.random_range(0..3)));
            }
        }
        self.s.update(&out, &sampled);
        for &(id, token) in &sampled {
            let e = self.live.get_mut(&id).expect("sampled sequence is live");
            e.tokens.push(token);
            if e.tokens.len() - e.prompt_len >= e.max_new {
                self.s.finish(id);
                self.live.remove(&id);
                self.counts.finished += 1;
            }
        }
        self.check_state();
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
            assert!((1..=cfg.prefill_chunk_size).contains(&x.token_ids.len()));
            assert_eq!(
                x.token_ids,
                e.tokens[x.start_pos..end],
                "seq {} fed the wrong tokens",
                x.seq_id
            );
            assert_eq!(x.sample, end == e.tokens.len());
            assert!(x.block_table.len() * bs >= end, "block table too short");
            for p in 0..x.start_pos {
                let slot = &self.shadow[x.block_table[p / bs] as usize][p % bs];
                assert!(
                    *slot == e.tokens[..=p],
                    "seq {} reads a wrong KV at position {p}",
                    x.seq_id
                );
            }
        }
    }

    /// Computes positions `start..tokens.len()` of `tokens` (prompt + generated up to there).
    fn write_shadow(&mut self, id: SeqId, start: usize, tokens: &[u32], table: &[u32]) {
        let bs = self.s.cfg.block_size;
        for p in start..tokens.len() {
            let b = table[p / bs];
            assert_eq!(
                self.s.kv.pool().ref_count(b),
                Some(1),
                "seq {id} writes into shared block {b}"
            );
            self.shadow[b as usize][p % bs] = tokens[..=p].to_vec();
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
                assert!(table.len() * s.cfg.block_size >= seq.num_computed);
            }
            held.extend(table.iter().copied());
        }
        assert_eq!(s.num_free_blocks(), s.num_total_blocks() - held.len());
    }
}

fn run(cfg: SchedulerConfig, seed: u64) -> Counts {
    let mut h = Harness::new(cfg, seed);
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
    }
}

#[test]
fn random_workload_with_prefix_cache() {
    for seed in [1, 2, 3] {
        let c = run(stress_config(true), seed);
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
        let c = run(stress_config(false), seed);
        assert_eq!(c.prefix_hit_tokens, 0);
        assert!(
            c.preemptions > 0 && c.unschedulable > 0 && c.finished > 300,
            "seed {seed}"
        );
    }
}
