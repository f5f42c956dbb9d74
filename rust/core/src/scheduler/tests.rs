//! Scheduling decisions worked out by hand on toy configurations.

use super::{ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput, SeqId};

fn config(
    max_num_seqs: usize,
    budget: usize,
    chunk: usize,
    block_size: usize,
    num_blocks: usize,
    prefix: bool,
) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        prefill_chunk_size: chunk,
        block_size,
        num_blocks,
        enable_prefix_cache: prefix,
        sliding_window: None,
        long_context_from: None,
    }
}

/// Tokens `start..start + n`.
fn toks(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

fn cat(a: &[u32], b: &[u32]) -> Vec<u32> {
    [a, b].concat()
}

/// One engine step that samples `token` for every sequence that samples.
fn step(s: &mut Scheduler, token: u32) -> SchedulerOutput {
    step_checked(s, token, |_, _| {})
}

/// [`step`] with `check` run on the schedule before the update, and the KV manager's invariants after.
pub(super) fn step_checked(s: &mut Scheduler, token: u32, check: impl Fn(&Scheduler, &SchedulerOutput)) -> SchedulerOutput {
    let out = s.schedule();
    check(s, &out);
    let sampled: Vec<(SeqId, u32)> = out
        .seqs
        .iter()
        .filter(|x| x.sample)
        .map(|x| (x.seq_id, token))
        .collect();
    s.update(&out, &sampled);
    s.kv_cache().assert_consistent();
    out
}

/// (seq, start_pos, number of tokens, sample) per scheduled sequence.
fn chunks(out: &SchedulerOutput) -> Vec<(SeqId, usize, usize, bool)> {
    out.seqs
        .iter()
        .map(|x| (x.seq_id, x.start_pos, x.token_ids.len(), x.sample))
        .collect()
}

fn seq(out: &SchedulerOutput, id: SeqId) -> &ScheduledSeq {
    out.seqs
        .iter()
        .find(|x| x.seq_id == id)
        .expect("sequence scheduled")
}

#[test]
fn chunked_prefill_samples_only_on_the_last_chunk() {
    let mut s = Scheduler::new(config(4, 64, 32, 16, 16, false));
    s.add(1, toks(0, 100));
    let out = step(&mut s, 500);
    assert_eq!(chunks(&out), [(1, 0, 32, false)]);
    assert_eq!(
        (out.seqs[0].block_table.clone(), out.num_batched_tokens),
        (vec![0, 1], 32)
    );
    let out = step(&mut s, 500);
    assert_eq!(chunks(&out), [(1, 32, 32, false)]);
    assert_eq!(out.seqs[0].block_table, [0, 1, 2, 3]);
    let out = step(&mut s, 500);
    assert_eq!(chunks(&out), [(1, 64, 32, false)]);
    assert_eq!(out.seqs[0].block_table, [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        s.tokens(1).map(<[u32]>::len),
        Some(100),
        "nothing sampled yet"
    );
    let out = step(&mut s, 500);
    assert_eq!(chunks(&out), [(1, 96, 4, true)]);
    assert_eq!(out.seqs[0].token_ids, [96, 97, 98, 99]);
    assert_eq!(out.seqs[0].block_table, [0, 1, 2, 3, 4, 5, 6]);
    let out = step(&mut s, 501);
    assert_eq!(chunks(&out), [(1, 100, 1, true)]);
    assert_eq!(out.seqs[0].token_ids, [500]);
    assert_eq!(out.seqs[0].block_table.len(), 7);
    assert_eq!(s.tokens(1), Some(&cat(&toks(0, 100), &[500, 501])[..]));
}

#[test]
fn decode_and_new_prefills_share_the_token_budget() {
    let mut s = Scheduler::new(config(8, 10, 8, 4, 32, false));
    s.add(1, toks(0, 3));
    assert_eq!(chunks(&step(&mut s, 900)), [(1, 0, 3, true)]);
    s.add(2, toks(100, 20));
    s.add(3, toks(200, 5));
    // Decode first (1 token), then a full chunk for seq 2 (8), and the last token of budget for 3.
    let out = step(&mut s, 901);
    assert_eq!(
        chunks(&out),
        [(1, 3, 1, true), (2, 0, 8, false), (3, 0, 1, false)]
    );
    assert_eq!(out.num_batched_tokens, 10);
    assert_eq!(
        [1, 2, 3].map(|id| seq(&out, id).block_table.clone()),
        [vec![0], vec![1, 2], vec![3]]
    );
    let out = step(&mut s, 902);
    assert_eq!(
        chunks(&out),
        [(1, 4, 1, true), (2, 8, 8, false), (3, 1, 1, false)]
    );
    assert_eq!(
        [1, 2, 3].map(|id| seq(&out, id).block_table.clone()),
        [vec![0, 4], vec![1, 2, 5, 6], vec![3]]
    );
    assert_eq!(s.tokens(1), Some(&[0, 1, 2, 900, 901, 902][..]));
}

#[test]
fn max_num_seqs_bounds_the_running_set() {
    let mut s = Scheduler::new(config(2, 64, 64, 4, 32, false));
    for id in 1..=3 {
        s.add(id, toks(10 * id as u32, 2));
    }
    assert_eq!(chunks(&step(&mut s, 7)), [(1, 0, 2, true), (2, 0, 2, true)]);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
    assert_eq!(chunks(&step(&mut s, 7)), [(1, 2, 1, true), (2, 2, 1, true)]);
    s.finish(1);
    assert_eq!(chunks(&step(&mut s, 7)), [(2, 3, 1, true), (3, 0, 2, true)]);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 0));
}

#[test]
fn waiting_sequences_are_admitted_in_order_without_skipping() {
    let mut s = Scheduler::new(config(4, 64, 64, 4, 4, false));
    s.add(1, toks(0, 8));
    assert_eq!(chunks(&step(&mut s, 7)), [(1, 0, 8, true)]);
    s.add(2, toks(100, 12)); // 3 blocks, 2 free
    s.add(3, toks(200, 2)); // would fit, but arrived later
    assert_eq!(chunks(&step(&mut s, 7)), [(1, 8, 1, true)]);
    assert_eq!(s.num_waiting(), 2);
}

/// Two sequences of 6 tokens fill 4 blocks of 4; both grow until one needs a third block.
#[test]
fn preempts_the_newest_and_resumes_it_by_recomputing() {
    let mut s = Scheduler::new(config(4, 64, 64, 4, 4, false));
    s.add(1, toks(100, 6));
    s.add(2, toks(200, 6));
    let out = step(&mut s, 1);
    assert_eq!(
        [1, 2].map(|id| seq(&out, id).block_table.clone()),
        [vec![0, 1], vec![2, 3]]
    );
    assert_eq!(chunks(&step(&mut s, 2)), [(1, 6, 1, true), (2, 6, 1, true)]);
    assert_eq!(chunks(&step(&mut s, 3)), [(1, 7, 1, true), (2, 7, 1, true)]);

    // Seq 1 needs a 9th slot: seq 2 (the newest) gives up blocks 2 and 3.
    let out = step(&mut s, 4);
    assert_eq!(chunks(&out), [(1, 8, 1, true)]);
    assert_eq!(out.seqs[0].block_table, [0, 1, 3]);
    assert_eq!(out.preempted, [2]);
    assert_eq!(
        (s.num_running(), s.num_waiting(), s.num_free_blocks()),
        (1, 1, 1)
    );
    assert_eq!(s.seqs[&2].num_computed, 0);
    assert_eq!(s.kv_cache().block_table(2), [] as [u32; 0]);
    let prompt_and_generated = cat(&toks(200, 6), &[1, 2, 3]);
    assert_eq!(
        s.tokens(2),
        Some(&prompt_and_generated[..]),
        "generated tokens are kept"
    );

    s.finish(1); // blocks 3, 1, 0 join the free queue behind 2
    let out = step(&mut s, 5);
    assert_eq!(chunks(&out), [(2, 0, 9, true)]);
    assert_eq!(out.seqs[0].token_ids, prompt_and_generated);
    assert_eq!(out.seqs[0].block_table, [2, 3, 1]);
    assert_eq!(s.tokens(2), Some(&cat(&prompt_and_generated, &[5])[..]));
    s.finish(2);
    assert_eq!(s.num_free_blocks(), s.num_total_blocks());
}

#[test]
fn the_newest_sequence_preempts_itself() {
    let mut s = Scheduler::new(config(4, 64, 64, 4, 4, false));
    s.add(1, toks(100, 5));
    s.add(2, toks(200, 6));
    for token in 1..=3 {
        step(&mut s, token);
    }
    // Seq 1 (8 tokens) still fits in 2 blocks; seq 2 needs a 9th slot and is the newest itself.
    let out = step(&mut s, 4);
    assert_eq!(chunks(&out), [(1, 7, 1, true)]);
    assert_eq!(out.preempted, [2]);
    assert_eq!(
        s.kv_cache().pool().free_blocks().collect::<Vec<_>>(),
        [3, 2]
    );
    let out = step(&mut s, 5);
    assert_eq!(
        chunks(&out),
        [(1, 8, 1, true)],
        "seq 2 needs 3 blocks, 1 is free"
    );
    assert_eq!(out.seqs[0].block_table, [0, 1, 3]);
    assert!(out.preempted.is_empty());
}

#[test]
fn a_resumed_sequence_reuses_its_cached_blocks() {
    let mut s = Scheduler::new(config(4, 64, 64, 4, 4, true));
    s.add(1, toks(100, 5));
    s.add(2, toks(200, 6));
    for token in 1..=4 {
        step(&mut s, token); // as above: seq 2 preempts itself in the 4th step
    }
    // Seq 1 takes block 3, dropping seq 2's second cached block; its first (block 2) survives.
    let out = step(&mut s, 5);
    assert_eq!(chunks(&out), [(1, 8, 1, true)]);
    s.finish(1);
    let out = step(&mut s, 6);
    assert_eq!(chunks(&out), [(2, 4, 5, true)]);
    assert_eq!(out.seqs[0].token_ids, [204, 205, 1, 2, 3]);
    assert_eq!(out.seqs[0].block_table, [2, 3, 1]);
    assert_eq!(out.prefix_hit_tokens, 4);
    assert_eq!(s.kv_cache().prefix_hit_tokens_total(), 4);
}

#[test]
fn a_new_request_shares_a_running_requests_prefix() {
    let mut s = Scheduler::new(config(4, 64, 64, 4, 16, true));
    s.add(1, toks(0, 10));
    assert_eq!(seq(&step(&mut s, 50), 1).block_table, [0, 1, 2]);
    s.add(2, cat(&toks(0, 8), &[77, 78, 79]));
    let out = step(&mut s, 51);
    assert_eq!(chunks(&out), [(1, 10, 1, true), (2, 8, 3, true)]);
    assert_eq!(seq(&out, 2).token_ids, [77, 78, 79]);
    assert_eq!(seq(&out, 2).block_table, [0, 1, 3]);
    assert_eq!(out.prefix_hit_tokens, 8);
    assert_eq!(
        (0..4)
            .map(|b| s.kv_cache().pool().ref_count(b))
            .collect::<Vec<_>>(),
        [Some(2), Some(2), Some(1), Some(1)]
    );
    s.finish(1);
    s.finish(2);
    assert_eq!(s.num_free_blocks(), 16);
}

#[test]
fn finish_and_abort_return_every_block() {
    let mut s = Scheduler::new(config(2, 64, 64, 4, 6, true));
    s.add(1, toks(0, 9));
    s.add(2, toks(100, 9));
    s.add(3, toks(200, 9));
    assert_eq!(chunks(&step(&mut s, 7)).len(), 2);
    assert_eq!(s.num_free_blocks(), 0);
    assert!(s.abort(3), "waiting");
    assert!(!s.abort(3), "already gone");
    assert!(!s.abort(99), "never known");
    // Decode until seq 1 needs a 4th block and preempts seq 2.
    let mut preempted = Vec::new();
    for _ in 0..4 {
        preempted.extend(step(&mut s, 7).preempted);
    }
    assert_eq!(preempted, [2]);
    assert!(s.abort(2), "preempted, waiting again");
    assert_eq!(s.num_free_blocks(), 2);
    assert!(s.abort(1), "running");
    assert_eq!((s.num_free_blocks(), s.num_total_blocks()), (6, 6));
    assert!(!s.has_work());

    s.add(4, toks(0, 9));
    step(&mut s, 7);
    s.finish(4);
    assert_eq!(s.num_free_blocks(), 6);
    assert_eq!(s.tokens(4), None);
    s.kv_cache().assert_consistent();
}

#[test]
fn sequences_that_can_never_fit_are_dropped() {
    let mut s = Scheduler::new(config(4, 64, 64, 4, 2, false)); // 8 token slots in all
    s.add(1, toks(0, 7));
    s.add(2, toks(100, 9));
    s.add(3, Vec::new());
    let out = step(&mut s, 7);
    assert_eq!(chunks(&out), [(1, 0, 7, true)]);
    assert_eq!(out.unschedulable, [2, 3]);
    assert_eq!(chunks(&step(&mut s, 7)), [(1, 7, 1, true)]);
    // 9 tokens now: the next one can never be computed, even alone.
    let out = step(&mut s, 7);
    assert!(out.seqs.is_empty());
    assert_eq!(out.unschedulable, [1]);
    assert!(!s.has_work());
    assert_eq!((s.num_free_blocks(), s.tokens(1)), (2, None));
}

#[test]
fn update_ignores_stale_and_unexpected_entries() {
    let mut s = Scheduler::new(config(4, 64, 4, 4, 8, false));
    s.add(1, toks(0, 10));
    let out = s.schedule();
    assert_eq!(chunks(&out), [(1, 0, 4, false)]);
    s.update(&out, &[(1, 99), (5, 99)]);
    assert_eq!(
        s.tokens(1),
        Some(&toks(0, 10)[..]),
        "no token for a chunk that does not sample"
    );
    s.update(&out, &[]);
    assert_eq!(
        s.seqs[&1].num_computed, 4,
        "the same output applied twice advances once"
    );
    let out = s.schedule();
    assert_eq!(chunks(&out), [(1, 4, 4, false)]);
    s.finish(1);
    s.update(&out, &[(1, 99)]);
    assert!(!s.has_work());
    assert_eq!(s.num_free_blocks(), 8);
}

#[test]
fn validate_rejects_zero_sizes() {
    assert!(config(1, 1, 1, 1, 1, true).validate().is_ok());
    for bad in [
        config(0, 1, 1, 1, 1, true),
        config(1, 0, 1, 1, 1, true),
        config(1, 1, 0, 1, 1, true),
        config(1, 1, 1, 0, 1, true),
        config(1, 1, 1, 1, 0, true),
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}
