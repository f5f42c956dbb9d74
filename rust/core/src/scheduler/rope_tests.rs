//! The long rope regime (Phi-3 longrope) worked out by hand on toy configurations: `block_size` 4
//! and `long_context_from` T = 8 unless said otherwise.

use super::{Scheduler, SchedulerConfig, SchedulerOutput, SeqId};
use crate::kv_cache::PLACEHOLDER_BLOCK as P;

const T: usize = 8;

fn config(chunk: usize, num_blocks: usize, prefix: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        prefill_chunk_size: chunk,
        block_size: 4,
        num_blocks,
        enable_prefix_cache: prefix,
        sliding_window: None,
        long_context_from: Some(T),
    }
}

/// Tokens `start..start + n`.
fn toks(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

/// One engine step that samples `token` for every sequence that samples, checked against the rule:
/// a sequence is long iff its known tokens exceed T, and a short one computes only positions < T.
fn step(s: &mut Scheduler, token: u32) -> SchedulerOutput {
    super::tests::step_checked(s, token, check_regimes)
}

fn check_regimes(s: &Scheduler, out: &SchedulerOutput) {
    for x in &out.seqs {
        let known = s.tokens(x.seq_id).map_or(0, <[u32]>::len);
        assert_eq!(x.long_rope, known > T, "seq {}", x.seq_id);
        assert!(x.long_rope || x.start_pos + x.token_ids.len() <= T);
    }
    assert!(out
        .rope_recomputes
        .iter()
        .all(|r| !out.preempted.contains(r)));
}

/// (seq, start_pos, number of tokens, sample, long_rope) per scheduled sequence.
fn chunks(out: &SchedulerOutput) -> Vec<(SeqId, usize, usize, bool, bool)> {
    out.seqs
        .iter()
        .map(|x| {
            (
                x.seq_id,
                x.start_pos,
                x.token_ids.len(),
                x.sample,
                x.long_rope,
            )
        })
        .collect()
}

#[test]
fn a_short_prompt_that_grows_past_t_is_recomputed_once_in_the_long_regime() {
    let mut s = Scheduler::new(config(64, 16, false));
    s.add(1, toks(100, 6));
    assert_eq!(chunks(&step(&mut s, 1)), [(1, 0, 6, true, false)]);
    assert_eq!(chunks(&step(&mut s, 2)), [(1, 6, 1, true, false)]);
    // 8 known tokens: the decode at position 7 is still short.
    let out = step(&mut s, 3);
    assert_eq!(chunks(&out), [(1, 7, 1, true, false)]);
    assert_eq!(out.seqs[0].block_table, [0, 1]);
    assert!(out.rope_recomputes.is_empty());

    // 9 known tokens: position 8 is long. Blocks 1, 0 go back; all 9 tokens are fed again.
    let out = step(&mut s, 4);
    assert_eq!(chunks(&out), [(1, 0, 9, true, true)]);
    assert_eq!(
        out.seqs[0].token_ids,
        [&toks(100, 6)[..], &[1, 2, 3]].concat()
    );
    assert_eq!(out.seqs[0].block_table, [2, 3, 4]);
    assert_eq!(out.rope_recomputes, [1]);
    assert!(out.preempted.is_empty());
    assert_eq!(out.num_batched_tokens, 9);
    assert_eq!(s.num_free_blocks(), 13);

    for i in 0..20 {
        let out = step(&mut s, 5);
        assert_eq!(chunks(&out), [(1, 9 + i, 1, true, true)]);
        assert!(out.rope_recomputes.is_empty() && out.preempted.is_empty());
    }
    assert_eq!(s.tokens(1).map(<[u32]>::len), Some(30));
}

#[test]
fn a_prompt_of_exactly_t_tokens_switches_at_its_first_decode() {
    let mut s = Scheduler::new(config(64, 16, false));
    s.add(1, toks(0, 8));
    assert_eq!(chunks(&step(&mut s, 1)), [(1, 0, 8, true, false)]);
    let out = step(&mut s, 2);
    assert_eq!(chunks(&out), [(1, 0, 9, true, true)]);
    assert_eq!(out.rope_recomputes, [1]);
    assert_eq!(chunks(&step(&mut s, 3)), [(1, 9, 1, true, true)]);
}

#[test]
fn a_long_prompt_is_long_from_the_start_and_never_switches() {
    let mut s = Scheduler::new(config(4, 16, false));
    s.add(1, toks(0, 9));
    s.add(2, toks(50, 3));
    let out = step(&mut s, 1);
    assert_eq!(
        chunks(&out),
        [(1, 0, 4, false, true), (2, 0, 3, true, false)]
    );
    assert_eq!(
        chunks(&step(&mut s, 1)),
        [(1, 4, 4, false, true), (2, 3, 1, true, false)]
    );
    assert_eq!(
        chunks(&step(&mut s, 1)),
        [(1, 8, 1, true, true), (2, 4, 1, true, false)]
    );
    let mut recomputes = Vec::new();
    for _ in 0..20 {
        let out = step(&mut s, 1);
        assert!(out.seqs[0].long_rope);
        recomputes.extend(out.rope_recomputes);
    }
    assert_eq!(recomputes, [2], "only the short one switches, once");
}

#[test]
fn the_switch_is_recomputed_in_chunks() {
    let mut s = Scheduler::new(config(3, 16, false));
    s.add(1, toks(0, 8));
    assert_eq!(chunks(&step(&mut s, 1)), [(1, 0, 3, false, false)]);
    assert_eq!(chunks(&step(&mut s, 1)), [(1, 3, 3, false, false)]);
    assert_eq!(chunks(&step(&mut s, 1)), [(1, 6, 2, true, false)]);
    let out = step(&mut s, 2);
    assert_eq!(
        (chunks(&out), out.rope_recomputes),
        (vec![(1, 0, 3, false, true)], vec![1])
    );
    assert_eq!(chunks(&step(&mut s, 3)), [(1, 3, 3, false, true)]);
    let out = step(&mut s, 3);
    assert_eq!(chunks(&out), [(1, 6, 3, true, true)]);
    assert_eq!(out.seqs[0].token_ids, [6, 7, 1]);
    assert_eq!(chunks(&step(&mut s, 4)), [(1, 9, 1, true, true)]);
    assert_eq!(
        s.tokens(1),
        Some(&[&toks(0, 8)[..], &[1, 3, 4]].concat()[..])
    );
}

/// A short-regime draft is cut at T: verifying past T would need long KV, and switching for a
/// draft would sample the pending token's successor from long logits where HF uses short ones.
#[test]
fn drafts_stay_below_t_and_the_switch_drops_them() {
    let mut s = Scheduler::new(config(64, 16, false));
    s.add(1, toks(0, 5));
    step(&mut s, 9);
    assert_eq!(s.decoding(), [1]);
    s.set_draft(1, vec![1, 2, 3]);
    let out = s.schedule();
    check_regimes(&s, &out);
    // Positions 5 (pending), 6 and 7 (draft): the third draft token would sit at 8.
    assert_eq!(chunks(&out), [(1, 5, 3, true, false)]);
    assert_eq!(
        (out.seqs[0].token_ids.clone(), out.seqs[0].num_draft),
        (vec![9, 1, 2], 2)
    );
    assert!(out.rope_recomputes.is_empty());
    s.update_emitted(&out, &[(1, vec![1, 2, 7])]);
    assert_eq!(s.seqs[&1].num_computed, 8);

    // 9 known tokens: no decode but a recompute, so no draft.
    assert!(s.decoding().is_empty());
    s.set_draft(1, vec![1, 2]);
    let out = s.schedule();
    check_regimes(&s, &out);
    assert_eq!(
        (chunks(&out), out.rope_recomputes.clone()),
        (vec![(1, 0, 9, true, true)], vec![1])
    );
    assert_eq!(out.seqs[0].num_draft, 0);
    s.update(&out, &[(1, 4)]);

    // Long: drafts go on uncut.
    s.set_draft(1, vec![1, 2, 3]);
    let out = s.schedule();
    assert_eq!(
        (chunks(&out), out.seqs[0].num_draft),
        (vec![(1, 9, 4, true, true)], 3)
    );
}

#[test]
fn a_draft_with_no_room_below_t_is_dropped() {
    let mut s = Scheduler::new(config(64, 16, false));
    s.add(1, toks(0, 7));
    step(&mut s, 9); // 8 known tokens, the pending one at position 7
    s.set_draft(1, vec![1, 2]);
    let out = step(&mut s, 3);
    assert_eq!(
        (chunks(&out), out.seqs[0].num_draft),
        (vec![(1, 7, 1, true, false)], 0)
    );
    let out = step(&mut s, 3);
    assert_eq!(
        (chunks(&out), out.rope_recomputes),
        (vec![(1, 0, 9, true, true)], vec![1])
    );
}

#[test]
fn prefix_hits_never_cross_regimes() {
    let mut s = Scheduler::new(config(64, 32, true));
    s.add(1, toks(0, 12)); // long
    s.add(2, toks(0, 6)); // short: same first block, other regime
    let out = step(&mut s, 1);
    assert_eq!(
        chunks(&out),
        [(1, 0, 12, true, true), (2, 0, 6, true, false)]
    );
    assert_eq!(out.prefix_hit_tokens, 0);
    let tables: Vec<_> = out.seqs.iter().map(|x| x.block_table.clone()).collect();
    assert_eq!(tables, [vec![0, 1, 2], vec![3, 4]]);

    s.add(3, toks(0, 10)); // long: shares seq 1's first two blocks
    s.add(4, toks(0, 7)); // short: shares seq 2's first block
    let out = step(&mut s, 1);
    assert_eq!(out.prefix_hit_tokens, 8 + 4);
    assert_eq!(
        chunks(&out)[2..],
        [(3, 8, 2, true, true), (4, 4, 3, true, false)]
    );
    assert_eq!(out.seqs[0].block_table, [0, 1, 2, 5], "seq 1 grew first");
    assert_eq!(out.seqs[2].block_table, [0, 1, 6]);
    assert_eq!(out.seqs[3].block_table, [3, 7]);
    let pool = s.kv_cache().pool();
    assert_eq!(
        [0, 1, 3].map(|b| pool.ref_count(b)),
        [Some(2), Some(2), Some(2)]
    );
}

/// The switch recomputes from position 0 in the long regime: its own short blocks never match,
/// long blocks of another sequence with the same tokens do.
#[test]
fn a_switching_sequence_reuses_long_kv_only() {
    let mut s = Scheduler::new(config(64, 32, true));
    s.add(2, toks(0, 12)); // long: hashes blocks 0..8 on the long chain
    assert_eq!(step(&mut s, 1).seqs[0].block_table, [0, 1, 2]);
    s.add(1, toks(0, 8)); // short: the same first 8 tokens, other regime
    let out = step(&mut s, 8);
    assert_eq!(chunks(&out)[1], (1, 0, 8, true, false));
    assert_eq!(
        (out.prefix_hit_tokens, &out.seqs[1].block_table),
        (0, &vec![4, 5])
    );

    // Seq 1 knows 0..=8 now: readmitted long, it finds seq 2's long blocks, not its own.
    let out = step(&mut s, 8);
    assert_eq!(out.rope_recomputes, [1]);
    assert_eq!(
        chunks(&out),
        [(2, 13, 1, true, true), (1, 8, 1, true, true)]
    );
    assert_eq!(out.prefix_hit_tokens, 8);
    assert_eq!(out.seqs[1].block_table, [0, 1, 6]);
    let pool = s.kv_cache().pool();
    assert_eq!([4, 5].map(|b| pool.ref_count(b)), [Some(0), Some(0)]);
    assert!(
        pool.hash(4).is_some() && pool.hash(5).is_some(),
        "still cached, short"
    );
}

/// Three sequences fill 5 blocks; in one step the oldest needs a block (and preempts the newest)
/// while the middle one switches regime: one preemption, one rope recompute, and the switched
/// sequence goes back first.
#[test]
fn a_switch_and_a_preemption_in_the_same_step() {
    let mut s = Scheduler::new(config(64, 5, false));
    s.add(1, toks(0, 4));
    s.add(2, toks(100, 8));
    s.add(3, toks(200, 7));
    let out = step(&mut s, 1);
    let tables: Vec<_> = out.seqs.iter().map(|x| x.block_table.clone()).collect();
    assert_eq!(tables, [vec![0], vec![1, 2], vec![3, 4]]);

    let out = step(&mut s, 2);
    assert_eq!(chunks(&out), [(1, 4, 1, true, false)]);
    assert_eq!(out.seqs[0].block_table, [0, 4]);
    assert_eq!(
        (out.preempted.clone(), out.rope_recomputes.clone()),
        (vec![3], vec![2])
    );
    assert_eq!(s.waiting, [2, 3]);
    assert_eq!(s.num_free_blocks(), 3);

    // Seq 2 (9 tokens, long) takes the 3 free blocks; seq 3 (8 tokens, short) waits.
    let out = step(&mut s, 3);
    assert_eq!(
        chunks(&out),
        [(1, 5, 1, true, false), (2, 0, 9, true, true)]
    );
    assert!(out.preempted.is_empty() && out.rope_recomputes.is_empty());
    assert_eq!(s.waiting, [3]);

    s.finish(1);
    s.finish(2);
    let out = step(&mut s, 4);
    assert_eq!(chunks(&out), [(3, 0, 8, true, false)]);
    let out = step(&mut s, 5);
    assert_eq!(
        (chunks(&out), out.rope_recomputes),
        (vec![(3, 0, 9, true, true)], vec![3])
    );
}

/// A sequence preempted at its switch point (more than T known tokens, short KV) comes back long
/// without a rope recompute: preemption already recomputes it from position 0.
#[test]
fn a_preempted_sequence_is_readmitted_in_the_regime_of_its_tokens() {
    let mut s = Scheduler::new(config(64, 3, false));
    s.add(1, toks(0, 4));
    s.add(2, toks(100, 8));
    let out = step(&mut s, 1);
    assert_eq!(
        chunks(&out),
        [(1, 0, 4, true, false), (2, 0, 8, true, false)]
    );
    // Seq 1 needs a second block before seq 2 (9 known tokens) gets its turn to switch.
    let out = step(&mut s, 1);
    assert_eq!(chunks(&out), [(1, 4, 1, true, false)]);
    assert_eq!((out.preempted, out.rope_recomputes), (vec![2], vec![]));
    assert_eq!(chunks(&step(&mut s, 1)), [(1, 5, 1, true, false)]);
    s.finish(1);
    let out = step(&mut s, 1);
    assert_eq!(chunks(&out), [(2, 0, 9, true, true)]);
    assert!(out.rope_recomputes.is_empty());
    for _ in 0..3 {
        let out = step(&mut s, 1);
        assert!(out.seqs[0].long_rope && out.rope_recomputes.is_empty());
    }
}

#[test]
fn the_switch_composes_with_a_sliding_window() {
    // 6 blocks of 4 = 24 token slots, a window of 4: the sequence grows far past the cache.
    let cfg = SchedulerConfig {
        sliding_window: Some(4),
        ..config(64, 6, false)
    };
    let mut s = Scheduler::new(cfg);
    s.add(1, toks(0, 6));
    step(&mut s, 1);
    step(&mut s, 1);
    let out = step(&mut s, 1); // position 7 reads 4..=7
    assert_eq!(chunks(&out), [(1, 7, 1, true, false)]);
    assert_eq!(out.seqs[0].block_table, [P, 1]);
    let out = step(&mut s, 1);
    assert_eq!(
        (chunks(&out), out.rope_recomputes.clone()),
        (vec![(1, 0, 9, true, true)], vec![1])
    );
    assert!(!out.seqs[0].block_table.contains(&P), "a fresh table");
    assert_eq!(
        s.kv_cache().num_released(1),
        1,
        "released behind the recompute"
    );
    for _ in 0..60 {
        let out = step(&mut s, 1);
        assert!(out.seqs[0].long_rope);
        assert!(out.rope_recomputes.is_empty() && out.preempted.is_empty());
        assert!(s.kv_cache().num_held(1) <= 2);
    }
    assert_eq!(s.tokens(1).map(<[u32]>::len), Some(70));
}

#[test]
fn without_long_context_from_every_step_is_short() {
    let cfg = SchedulerConfig {
        long_context_from: None,
        ..config(64, 16, true)
    };
    let mut s = Scheduler::new(cfg.clone());
    s.add(1, toks(0, 20));
    for _ in 0..20 {
        let out = s.schedule();
        assert!(out.seqs.iter().all(|x| !x.long_rope));
        assert!(out.rope_recomputes.is_empty());
        s.update(&out, &[(1, 1)]);
    }
    assert!(!cfg.is_long_context(usize::MAX));
}

#[test]
fn validate_rejects_a_zero_threshold() {
    assert!(config(1, 1, false).validate().is_ok());
    let zero = SchedulerConfig {
        long_context_from: Some(0),
        ..config(1, 1, false)
    };
    assert!(zero.validate().is_err());
}
