//! Block ids, reference counts and cache hits worked out by hand on toy pools (`block_size` 4).

use super::{BlockHash, KvCacheManager};

/// Tokens `start..start + n`.
fn toks(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

fn free_order(kv: &KvCacheManager) -> Vec<u32> {
    kv.pool().free_blocks().collect()
}

#[test]
fn hands_out_blocks_in_id_order() {
    let mut kv = KvCacheManager::new(8, 4, false);
    assert!(kv.ensure_slots(1, 10));
    assert_eq!(kv.block_table(1), [0, 1, 2]);
    assert!(kv.ensure_slots(2, 5));
    assert_eq!(kv.block_table(2), [3, 4]);
    assert!(kv.ensure_slots(1, 12), "12 tokens still fit in 3 blocks");
    assert_eq!(kv.block_table(1), [0, 1, 2]);
    assert!(kv.ensure_slots(1, 13));
    assert_eq!(kv.block_table(1), [0, 1, 2, 5]);
    assert_eq!((kv.num_free(), kv.num_total()), (2, 8));
    kv.assert_consistent();
}

#[test]
fn ensure_slots_changes_nothing_when_blocks_run_out() {
    let mut kv = KvCacheManager::new(4, 4, false);
    assert!(kv.ensure_slots(1, 8));
    assert!(!kv.ensure_slots(2, 9), "needs 3 blocks, 2 free");
    assert_eq!(kv.block_table(2), [] as [u32; 0]);
    assert!(!kv.ensure_slots(1, 17), "needs 3 more blocks, 2 free");
    assert_eq!(kv.block_table(1), [0, 1]);
    assert_eq!(kv.num_free(), 2);
    assert!(kv.ensure_slots(2, 8));
    assert_eq!(kv.num_free(), 0);
    kv.assert_consistent();
}

#[test]
fn freed_blocks_are_reused_least_recently_freed_first_tail_first() {
    let mut kv = KvCacheManager::new(8, 4, false);
    assert!(kv.ensure_slots(1, 16)); // 0 1 2 3
    assert!(kv.ensure_slots(2, 8)); // 4 5
    kv.free(1);
    assert_eq!(free_order(&kv), [6, 7, 3, 2, 1, 0]);
    kv.free(2);
    assert_eq!(free_order(&kv), [6, 7, 3, 2, 1, 0, 5, 4]);
    assert!(kv.ensure_slots(3, 12));
    assert_eq!(kv.block_table(3), [6, 7, 3]);
    kv.free(3);
    assert_eq!((kv.num_free(), kv.num_total()), (8, 8));
    kv.assert_consistent();
}

#[test]
fn two_sequences_share_a_cached_prefix() {
    let mut kv = KvCacheManager::new(8, 4, true);
    let a = toks(100, 10);
    assert_eq!(kv.allocate_prefix(1, &a), 0, "empty cache");
    assert!(kv.ensure_slots(1, 10));
    assert_eq!(kv.block_table(1), [0, 1, 2]);
    kv.commit_full_blocks(1, &a, 10); // blocks 0 and 1 are full; block 2 holds 2 tokens

    let mut b = a[..8].to_vec();
    b.extend([7, 7, 7]);
    assert_eq!(kv.allocate_prefix(2, &b), 8);
    assert_eq!(kv.block_table(2), [0, 1]);
    assert_eq!(kv.prefix_hit_tokens_total(), 8);
    let pool = kv.pool();
    assert_eq!(
        [0, 1, 2].map(|i| pool.ref_count(i)),
        [Some(2), Some(2), Some(1)]
    );
    assert!(kv.ensure_slots(2, 11));
    assert_eq!(kv.block_table(2), [0, 1, 3]);
    assert_eq!(kv.num_free(), 4);
    kv.assert_consistent();

    kv.free(1);
    assert_eq!(
        [0, 1, 2].map(|i| kv.pool().ref_count(i)),
        [Some(1), Some(1), Some(0)]
    );
    assert_eq!(kv.num_free(), 5);
    kv.free(2);
    assert_eq!(kv.num_free(), 8);
    // Free, but blocks 0 and 1 keep their prefix: counted apart from the empty ones.
    assert_eq!(kv.num_free_cached(), 2);
    kv.assert_consistent();

    // Freed, still cached: a third request finds both blocks although nobody holds them.
    assert_eq!(kv.allocate_prefix(3, &a), 8);
    assert_eq!(kv.block_table(3), [0, 1]);
    assert_eq!(kv.num_free(), 6);
    assert_eq!(kv.num_free_cached(), 0, "revived from the cache: held again");
    assert_eq!(kv.prefix_hit_tokens_total(), 16);
    kv.assert_consistent();
}

#[test]
fn never_reports_every_token_cached() {
    let mut kv = KvCacheManager::new(8, 4, true);
    let a = toks(0, 8);
    assert!(kv.ensure_slots(1, 8));
    kv.commit_full_blocks(1, &a, 8);
    assert_eq!(
        kv.allocate_prefix(2, &a),
        4,
        "the last token must be computed, so block 1 is not reused"
    );
    assert_eq!(kv.block_table(2), [0]);
    let mut longer = a.clone();
    longer.push(8);
    assert_eq!(kv.allocate_prefix(3, &longer), 8);
    assert_eq!(kv.block_table(3), [0, 1]);
    assert_eq!(
        kv.allocate_prefix(4, &a[..4]),
        0,
        "a one-block prompt reuses nothing"
    );
    assert_eq!(kv.allocate_prefix(5, &[]), 0);
    kv.assert_consistent();
}

#[test]
fn only_full_computed_blocks_are_cached() {
    let mut kv = KvCacheManager::new(8, 4, true);
    let a = toks(0, 12);
    assert!(kv.ensure_slots(1, 12));
    kv.commit_full_blocks(1, &a, 7); // block 0 full and computed, block 1 not yet
    assert_eq!(kv.allocate_prefix(2, &a), 4);
    kv.commit_full_blocks(1, &a, 12);
    kv.free(2);
    assert_eq!(
        kv.allocate_prefix(2, &a),
        8,
        "block 2 holds the last token, so it is not reused"
    );
    kv.assert_consistent();
}

#[test]
fn a_cached_block_is_forgotten_once_reallocated() {
    let mut kv = KvCacheManager::new(4, 4, true);
    let a = toks(0, 8);
    assert!(kv.ensure_slots(1, 8));
    kv.commit_full_blocks(1, &a, 8);
    let second = BlockHash::new(kv.pool().hash(0), &a[4..]);
    assert_eq!(kv.pool().lookup(second), Some(1));
    kv.free(1);
    assert_eq!(free_order(&kv), [2, 3, 1, 0]);
    assert!(kv.ensure_slots(2, 12)); // takes 2, 3, then block 1 with its cached content
    assert_eq!(kv.block_table(2), [2, 3, 1]);
    assert_eq!(kv.pool().lookup(second), None);
    assert_eq!(kv.pool().hash(1), None);
    let mut longer = a.clone();
    longer.push(9);
    assert_eq!(kv.allocate_prefix(3, &longer), 4, "block 0 is still cached");
    assert_eq!(kv.block_table(3), [0]);
    kv.assert_consistent();
}

#[test]
fn equal_blocks_computed_twice_keep_one_cached_copy() {
    let mut kv = KvCacheManager::new(8, 4, true);
    let a = toks(0, 5);
    // Both admitted before either computed anything, so neither could reuse the other.
    assert!(kv.ensure_slots(1, 5)); // 0 1
    assert!(kv.ensure_slots(2, 5)); // 2 3
    kv.commit_full_blocks(1, &a, 5);
    kv.commit_full_blocks(2, &a, 5);
    assert_eq!(
        (kv.pool().hash(0).is_some(), kv.pool().hash(2)),
        (true, None)
    );
    kv.free(1);
    kv.free(2);
    assert_eq!(kv.allocate_prefix(3, &a), 4);
    assert_eq!(kv.block_table(3), [0]);
    kv.assert_consistent();
}

#[test]
fn allocate_with_prefix_is_all_or_nothing() {
    let mut kv = KvCacheManager::new(4, 4, true);
    let a = toks(0, 12);
    assert!(kv.ensure_slots(1, 8)); // 0 1
    kv.commit_full_blocks(1, &a, 8);
    kv.free(1); // free queue: 2 3 1 0
    assert!(kv.ensure_slots(2, 8)); // 2 3
    assert_eq!(free_order(&kv), [1, 0]);
    // The prefix hit takes the 2 cached free blocks, and 4 more tokens need a third block.
    assert_eq!(kv.allocate_with_prefix(3, &a, 4), None);
    assert_eq!(kv.block_table(3), [] as [u32; 0]);
    assert_eq!((kv.num_free(), kv.prefix_hit_tokens_total()), (2, 0));
    assert_eq!(
        free_order(&kv),
        [1, 0],
        "a failed admission does not reorder the free queue"
    );
    assert_eq!(kv.allocate_with_prefix(3, &a, 0), Some(8));
    assert_eq!(kv.block_table(3), [0, 1]);
    assert_eq!(kv.num_free(), 0);
    kv.assert_consistent();
}

#[test]
fn allocate_with_prefix_caps_new_tokens() {
    let mut kv = KvCacheManager::new(8, 4, true);
    assert_eq!(kv.allocate_with_prefix(1, &toks(0, 30), 9), Some(0));
    assert_eq!(kv.block_table(1), [0, 1, 2], "9 tokens need 3 blocks");
    assert_eq!(kv.allocate_with_prefix(2, &toks(50, 3), 9), Some(0));
    assert_eq!(kv.block_table(2), [3], "3 tokens need 1 block");
    kv.assert_consistent();
}

#[test]
fn disabled_prefix_cache_reuses_nothing() {
    let mut kv = KvCacheManager::new(8, 4, false);
    let a = toks(0, 9);
    assert!(kv.ensure_slots(1, 9));
    kv.commit_full_blocks(1, &a, 9);
    assert_eq!(kv.pool().hash(0), None);
    assert_eq!(kv.allocate_prefix(2, &a), 0);
    assert_eq!(kv.prefix_hit_tokens_total(), 0);
}

#[test]
fn hashes_chain_through_the_parent() {
    let first = BlockHash::new(None, &[1, 2]);
    assert_eq!(first, BlockHash::new(None, &[1, 2]));
    assert_ne!(first, BlockHash::new(None, &[2, 1]));
    let other_first = BlockHash::new(None, &[9, 9]);
    assert_ne!(
        BlockHash::new(Some(first), &[3, 4]),
        BlockHash::new(Some(other_first), &[3, 4])
    );
    assert_ne!(
        BlockHash::new(Some(first), &[3, 4]),
        BlockHash::new(None, &[3, 4])
    );
}

#[test]
fn free_returns_every_block_and_unknown_seqs_are_harmless() {
    let mut kv = KvCacheManager::new(6, 4, true);
    let a = toks(0, 9);
    assert_eq!(kv.allocate_with_prefix(1, &a, 9), Some(0));
    kv.commit_full_blocks(1, &a, 9);
    assert_eq!(kv.allocate_with_prefix(2, &a, 9), Some(8));
    kv.free(7);
    kv.commit_full_blocks(7, &a, 9);
    assert_eq!(kv.block_table(7), [] as [u32; 0]);
    kv.free(1);
    kv.free(2);
    kv.free(2);
    assert_eq!(kv.num_free(), kv.num_total());
    assert_eq!(kv.num_seqs(), 0);
    kv.assert_consistent();
}

#[test]
fn prefix_cache_events_report_stored_runs_with_parents_and_removals() {
    use crate::kv_cache::KvEvent;
    let mut m = KvCacheManager::new(4, 2, true);
    // Off by default: nothing recorded.
    let t: Vec<u32> = (10..16).collect();
    assert_eq!(m.allocate_prefix(1, &t), 0);
    assert!(m.ensure_slots(1, 6));
    m.commit_full_blocks(1, &t, 6);
    assert!(m.take_events().is_empty());
    m.free(1);

    let mut m = KvCacheManager::new(4, 2, true);
    m.enable_events(100);
    assert_eq!(m.allocate_prefix(1, &t), 0);
    assert!(m.ensure_slots(1, 6));
    m.commit_full_blocks(1, &t, 4); // blocks 0 and 1 computed
    m.commit_full_blocks(1, &t, 6); // block 2
    let ev = m.take_events();
    let h0 = BlockHash::new(None, &t[0..2]);
    let h1 = BlockHash::new(Some(h0), &t[2..4]);
    match &ev[..] {
        [KvEvent::BlockStored { block_hashes: a, parent_block_hash: None, token_ids: ta, block_size: 2 },
         KvEvent::BlockStored { block_hashes: b, parent_block_hash: Some(p), token_ids: tb, block_size: 2 }] => {
            assert_eq!(a, &vec![h0.external(), h1.external()]);
            assert_eq!(ta, &t[0..4].to_vec());
            assert_eq!(*p, h1.external());
            assert_eq!(b.len(), 1);
            assert_eq!(tb, &t[4..6].to_vec());
        }
        other => panic!("unexpected events {other:?}"),
    }
    // Freed blocks stay cached; handing them out for new content removes them from the cache.
    m.free(1);
    let other: Vec<u32> = (50..58).collect();
    assert_eq!(m.allocate_prefix(2, &other), 0);
    assert!(m.ensure_slots(2, 8));
    let removed: Vec<u64> = m
        .take_events()
        .into_iter()
        .flat_map(|e| match e {
            KvEvent::BlockRemoved { block_hashes } => block_hashes,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(removed.len(), 3);
    assert!(removed.contains(&h0.external()) && removed.contains(&h1.external()));
}
