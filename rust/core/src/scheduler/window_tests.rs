//! Sliding-window scheduling worked out by hand on toy configurations (`block_size` 4).

use super::{Scheduler, SchedulerConfig, SchedulerOutput, SeqId};
use crate::kv_cache::PLACEHOLDER_BLOCK as P;

fn config(window: usize, chunk: usize, num_blocks: usize, prefix: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        prefill_chunk_size: chunk,
        block_size: 4,
        num_blocks,
        enable_prefix_cache: prefix,
        sliding_window: Some(window),
        long_context_from: None,
    }
}

/// Tokens `start..start + n`.
fn toks(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

/// One engine step that samples `token` for every sequence that samples, with the block tables
/// checked against the window as the runner receives them.
fn step(s: &mut Scheduler, token: u32) -> SchedulerOutput {
    super::tests::step_checked(s, token, check_tables)
}

/// Placeholders stand exactly for the blocks wholly before the window of the chunk; every block from
/// the window on is held; a sequence holds no more than the bound for its chunk.
fn check_tables(s: &Scheduler, out: &SchedulerOutput) {
    let (bs, w) = (s.cfg.block_size, s.cfg.sliding_window.expect("a window"));
    let kv = s.kv_cache();
    for x in &out.seqs {
        let released = kv.num_released(x.seq_id);
        let window_start = x.start_pos.saturating_sub(w - 1);
        assert_eq!(released, window_start / bs, "seq {}", x.seq_id);
        assert!(x.block_table[..released].iter().all(|&b| b == P));
        assert!(x.block_table[released..]
            .iter()
            .all(|&b| kv.pool().ref_count(b) >= Some(1)));
        let bound = s.cfg.window_blocks(x.token_ids.len()).expect("a window");
        assert!(kv.num_held(x.seq_id) <= bound, "seq {}", x.seq_id);
    }
}

fn held(s: &Scheduler, id: SeqId) -> usize {
    s.kv_cache().num_held(id)
}

fn chunks(out: &SchedulerOutput) -> Vec<(SeqId, usize, usize, bool)> {
    out.seqs
        .iter()
        .map(|x| (x.seq_id, x.start_pos, x.token_ids.len(), x.sample))
        .collect()
}

#[test]
fn a_long_generation_holds_a_bounded_number_of_blocks() {
    // 6 blocks of 4 = 24 token slots; the sequence grows to 205 tokens.
    let mut s = Scheduler::new(config(8, 64, 6, false));
    s.add(1, toks(0, 5));
    step(&mut s, 7);
    let mut most = 0;
    let mut least = usize::MAX;
    for _ in 0..200 {
        let out = step(&mut s, 7);
        assert_eq!(chunks(&out).len(), 1);
        assert!(out.preempted.is_empty() && out.unschedulable.is_empty());
        most = most.max(held(&s, 1));
        least = least.min(held(&s, 1));
        assert_eq!(s.num_free_blocks(), 6 - held(&s, 1));
    }
    // A decode at p reads p - 7 ..= p: 8 positions, 2 blocks when aligned, 3 otherwise.
    assert_eq!((least, most), (2, 3));
    assert_eq!(s.cfg.window_blocks(1), Some(3));
    assert_eq!(s.tokens(1).map(<[u32]>::len), Some(206));
    assert_eq!(s.kv_cache().num_released(1), (205 - 7) / 4);
    s.finish(1);
    assert_eq!(s.num_free_blocks(), 6);
}

#[test]
fn chunked_prefill_releases_behind_the_chunks() {
    let mut s = Scheduler::new(config(8, 8, 8, false));
    s.add(1, toks(0, 40));
    let tables = [
        vec![0, 1],
        vec![0, 1, 2, 3],
        // The chunk at 16 reads from 9: blocks 0 and 1 went back after the chunk at 8.
        vec![P, P, 2, 3, 4, 5],
        vec![P, P, P, P, 4, 5, 6, 7],
        // Real block 0 comes back from the free queue at entry 9, next to the placeholders.
        vec![P, P, P, P, P, P, 6, 7, 1, 0],
    ];
    for (i, table) in tables.iter().enumerate() {
        let out = step(&mut s, 500);
        assert_eq!(chunks(&out), [(1, 8 * i, 8, i == 4)]);
        assert_eq!(&out.seqs[0].block_table, table);
    }
    let out = step(&mut s, 501);
    assert_eq!(chunks(&out), [(1, 40, 1, true)]);
    assert_eq!(out.seqs[0].block_table, [P, P, P, P, P, P, P, P, 1, 0, 3]);
    assert_eq!(held(&s, 1), 3);
}

#[test]
fn two_sequences_sharing_a_prefix_release_it_independently() {
    let mut s = Scheduler::new(config(8, 64, 16, true));
    s.add(1, toks(0, 10));
    assert_eq!(step(&mut s, 50).seqs[0].block_table, [0, 1, 2]);
    s.add(2, [&toks(0, 8)[..], &[77, 78, 79]].concat());
    let out = step(&mut s, 51);
    assert_eq!(chunks(&out), [(1, 10, 1, true), (2, 8, 3, true)]);
    assert_eq!(out.prefix_hit_tokens, 8);
    assert_eq!(out.seqs[1].block_table, [0, 1, 3]);
    // Both now read from 4: block 0 is free (still cached), block 1 is shared.
    let pool = s.kv_cache().pool();
    assert_eq!([0, 1].map(|b| pool.ref_count(b)), [Some(0), Some(2)]);
    assert!(pool.hash(0).is_some());

    while s.kv_cache().num_released(1) < 2 || s.kv_cache().num_released(2) < 2 {
        step(&mut s, 52);
    }
    let pool = s.kv_cache().pool();
    assert_eq!([0, 1].map(|b| pool.ref_count(b)), [Some(0), Some(0)]);
    assert!(pool.hash(0).is_some() && pool.hash(1).is_some());

    // A later prompt with the same first 8 tokens still finds the chain in the prefix cache.
    s.add(3, [&toks(0, 8)[..], &[5, 5, 5]].concat());
    let out = step(&mut s, 53);
    assert_eq!(out.prefix_hit_tokens, 8);
    assert_eq!(&out.seqs[2].block_table[..2], [0, 1]);
}

#[test]
fn a_prompt_hits_blocks_a_running_sequence_released() {
    let mut s = Scheduler::new(config(4, 64, 16, true));
    s.add(1, toks(0, 12));
    assert_eq!(step(&mut s, 9).seqs[0].block_table, [0, 1, 2]);
    // Seq 1 now reads from 9: blocks 0 and 1 are free but keep their hashes.
    assert_eq!(s.kv_cache().num_released(1), 2);
    s.add(2, [&toks(0, 12)[..], &[50]].concat());
    s.add(3, toks(0, 9));
    let out = step(&mut s, 9);
    assert_eq!(
        chunks(&out),
        [(1, 12, 1, true), (2, 12, 1, true), (3, 8, 1, true)]
    );
    assert_eq!(out.prefix_hit_tokens, 12 + 8);
    let tables: Vec<_> = out.seqs.iter().map(|x| x.block_table.clone()).collect();
    // Seq 2 reads from 9: it shares block 2 only. Seq 3 reads from 5: it revives block 1 only.
    assert_eq!(tables, [vec![P, P, 2, 3], vec![P, P, 2, 4], vec![P, 1, 5]]);
    let pool = s.kv_cache().pool();
    assert_eq!(pool.ref_count(0), Some(0));
    assert!(pool.hash(0).is_some(), "block 0 is still cached");
}

#[test]
fn a_preempted_sequence_recomputes_from_position_zero() {
    let mut s = Scheduler::new(config(8, 64, 5, false));
    s.add(1, toks(100, 6));
    s.add(2, toks(200, 6));
    let out = step(&mut s, 1);
    assert_eq!(
        out.seqs
            .iter()
            .map(|x| x.block_table.clone())
            .collect::<Vec<_>>(),
        [vec![0, 1], vec![2, 3]]
    );
    step(&mut s, 2);
    step(&mut s, 3);
    // Both need a third block for position 8; one is free: seq 2 (the newest) preempts itself.
    let out = step(&mut s, 4);
    assert_eq!(
        (chunks(&out), out.preempted.clone()),
        (vec![(1, 8, 1, true)], vec![2])
    );
    assert_eq!(s.kv_cache().block_table(2), [] as [u32; 0]);
    // Seq 2 needs 3 blocks to recompute its 9 tokens; seq 1 frees its block 0 after position 10.
    assert_eq!(chunks(&step(&mut s, 5)), [(1, 9, 1, true)]);
    assert_eq!(chunks(&step(&mut s, 6)), [(1, 10, 1, true)]);
    let out = step(&mut s, 7);
    assert_eq!(chunks(&out), [(1, 11, 1, true), (2, 0, 9, true)]);
    assert_eq!(out.seqs[0].block_table, [P, 1, 4]);
    assert_eq!(
        out.seqs[1].token_ids,
        [&toks(200, 6)[..], &[1, 2, 3]].concat()
    );
    assert_eq!(
        out.seqs[1].block_table,
        [3, 2, 0],
        "a fresh table, no placeholder"
    );

    // Alone, seq 2 generates far past the 20 token slots of the cache.
    s.finish(1);
    for _ in 0..40 {
        let out = step(&mut s, 8);
        assert!(out.preempted.is_empty() && out.unschedulable.is_empty());
    }
    assert_eq!(s.tokens(2).map(<[u32]>::len), Some(50));
}

#[test]
fn drafts_are_verified_and_rolled_back_inside_the_window() {
    let mut s = Scheduler::new(config(8, 64, 6, false));
    s.add(1, toks(0, 5));
    step(&mut s, 7);
    let mut last_released = 0;
    for i in 0..60 {
        s.set_draft(1, vec![1, 2, 3]);
        let out = s.schedule();
        check_tables(&s, &out);
        assert_eq!(out.seqs[0].num_draft, 3, "step {i}: the draft fits");
        // Accept 0, 1, 2 or 3 drafts in turn; the rejected ones are recomputed from the last kept.
        let accepted = i % 4;
        let emitted = [&[1, 2, 3][..accepted], &[9]].concat();
        s.update_emitted(&out, &[(1, emitted)]);
        s.kv_cache().assert_consistent();
        let computed = s.seqs[&1].num_computed;
        assert_eq!(computed, out.seqs[0].start_pos + 1 + accepted);
        let released = s.kv_cache().num_released(1);
        assert_eq!(released, computed.saturating_sub(7) / 4);
        assert!(released >= last_released);
        last_released = released;
        assert!(held(&s, 1) <= s.cfg.window_blocks(4).expect("a window"));
    }
    assert_eq!(s.cfg.window_blocks(4), Some(4));
}

#[test]
fn only_a_window_too_large_for_the_cache_drops_long_sequences() {
    // 6 blocks: a window of 8 with chunks of 4 needs at most 4 at once, a window of 64 needs 18.
    let mut fits = config(8, 4, 6, false);
    assert_eq!(fits.window_blocks(4), Some(4));
    assert!(fits.can_ever_run(1000));
    fits.sliding_window = Some(64);
    assert_eq!(fits.window_blocks(4), Some(18));
    assert!(fits.can_ever_run(24) && !fits.can_ever_run(25));

    let mut s = Scheduler::new(fits);
    s.add(1, toks(0, 20));
    s.add(2, toks(0, 30));
    let out = step_unchecked(&mut s);
    assert_eq!(out.unschedulable, [2]);
}

#[test]
fn chunks_are_capped_so_that_a_prompt_longer_than_the_cache_runs() {
    // 6 blocks of 4: a chunk of n reads W - 1 + n = 7 + n positions, at most 6 blocks for n <= 14.
    let cfg = config(8, 64, 6, false);
    assert_eq!(cfg.max_chunk_tokens(), 14);
    assert_eq!(
        (cfg.window_blocks(14), cfg.window_blocks(15)),
        (Some(6), Some(7))
    );
    let mut s = Scheduler::new(cfg);
    s.add(1, toks(0, 40));
    let out = step(&mut s, 7);
    assert_eq!(
        (chunks(&out), &out.seqs[0].block_table),
        (vec![(1, 0, 14, false)], &vec![0, 1, 2, 3])
    );
    let out = step(&mut s, 7);
    assert_eq!(chunks(&out), [(1, 14, 14, false)]);
    assert_eq!(out.seqs[0].block_table, [P, 1, 2, 3, 4, 5, 0]);
    assert_eq!(
        s.num_free_blocks(),
        4,
        "all 6 blocks were in use during the step"
    );
    let out = step(&mut s, 7);
    assert_eq!(chunks(&out), [(1, 28, 12, true)]);
    assert_eq!(out.seqs[0].block_table, [P, P, P, P, P, 5, 0, 4, 3, 2]);

    // Without a window, or with one that does not fit the cache at all, chunks are as configured.
    let mut full = config(8, 64, 6, false);
    full.sliding_window = None;
    assert_eq!(full.max_chunk_tokens(), 64);
    full.sliding_window = Some(64);
    assert_eq!(full.max_chunk_tokens(), 64);
}

fn step_unchecked(s: &mut Scheduler) -> SchedulerOutput {
    let out = s.schedule();
    s.update(&out, &[]);
    out
}

#[test]
fn validate_rejects_a_zero_window() {
    assert!(config(1, 1, 1, false).validate().is_ok());
    assert!(config(0, 1, 1, false).validate().is_err());
}
