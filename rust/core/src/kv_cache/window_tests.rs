//! Sliding-window release worked out by hand on toy pools (`block_size` 4).

use super::{KvCacheManager, PLACEHOLDER_BLOCK as P};

/// Tokens `start..start + n`.
fn toks(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

fn free_order(kv: &KvCacheManager) -> Vec<u32> {
    kv.pool().free_blocks().collect()
}

#[test]
fn blocks_wholly_before_the_window_go_back_and_keep_their_place() {
    let mut kv = KvCacheManager::new(8, 4, false).with_sliding_window(Some(6));
    assert!(kv.ensure_slots(1, 12));
    assert_eq!(kv.block_table(1), [0, 1, 2]);
    assert_eq!(kv.window_start(8), 3);
    assert_eq!(
        kv.release_out_of_window(1, 8),
        0,
        "a query at 8 reads from 3: block 0 is still needed"
    );
    assert_eq!(kv.release_out_of_window(1, 9), 1, "from 4: block 0 is not");
    assert_eq!(kv.block_table(1), [P, 1, 2]);
    assert_eq!(
        (kv.num_released(1), kv.num_held(1), kv.num_free()),
        (1, 2, 6)
    );
    assert_eq!(free_order(&kv), [3, 4, 5, 6, 7, 0]);
    assert_eq!(
        kv.release_out_of_window(1, 4),
        0,
        "the window never moves back"
    );
    assert_eq!(kv.block_table(1), [P, 1, 2]);

    // Growing the table takes only blocks past its end; released entries count as present.
    assert!(kv.ensure_slots(1, 16));
    assert_eq!(kv.block_table(1), [P, 1, 2, 3]);
    assert_eq!(kv.release_out_of_window(1, 17), 2);
    assert_eq!(kv.block_table(1), [P, P, P, 3]);
    assert_eq!(free_order(&kv), [4, 5, 6, 7, 0, 2, 1], "last block first");
    assert_eq!(kv.release_out_of_window(1, 100), 1, "never past the table");
    assert_eq!((kv.num_released(1), kv.num_held(1)), (4, 0));
    kv.assert_consistent();
    kv.free(1);
    assert_eq!(kv.num_free(), 8);
    kv.assert_consistent();
}

#[test]
fn without_a_window_nothing_is_released() {
    let mut kv = KvCacheManager::new(8, 4, false);
    assert!(kv.ensure_slots(1, 12));
    assert_eq!(kv.window_start(1000), 0);
    assert_eq!(kv.release_out_of_window(1, 1000), 0);
    assert_eq!(kv.block_table(1), [0, 1, 2]);
    assert_eq!(kv.num_free(), 5);
    assert_eq!(
        KvCacheManager::new(8, 4, false)
            .with_sliding_window(Some(1))
            .window_start(7),
        7,
        "a window of 1 reads only the query's own position"
    );
}

#[test]
fn a_shared_block_is_freed_when_its_last_holder_releases_it() {
    let mut kv = KvCacheManager::new(8, 4, true).with_sliding_window(Some(4));
    let a = toks(0, 9);
    assert!(kv.ensure_slots(1, 9));
    kv.commit_full_blocks(1, &a, 9);
    assert_eq!(kv.allocate_with_prefix(2, &a, 1), Some(8));
    // Seq 2 starts at 8 and reads from 5: block 0 of the match is not taken.
    assert_eq!(kv.block_table(2), [P, 1, 3]);
    assert_eq!([0, 1].map(|b| kv.pool().ref_count(b)), [Some(1), Some(2)]);
    kv.assert_consistent();
    assert_eq!(kv.release_out_of_window(1, 9), 1);
    assert_eq!(kv.pool().ref_count(0), Some(0));
    assert_eq!(kv.release_out_of_window(1, 13), 1);
    assert_eq!(kv.pool().ref_count(1), Some(1), "seq 2 still holds block 1");
    assert_eq!(kv.release_out_of_window(2, 13), 1);
    assert_eq!(kv.pool().ref_count(1), Some(0));
    assert_eq!(free_order(&kv), [4, 5, 6, 7, 0, 1]);
    kv.assert_consistent();
}

#[test]
fn released_blocks_stay_in_the_prefix_cache() {
    let mut kv = KvCacheManager::new(8, 4, true).with_sliding_window(Some(4));
    let a = toks(0, 12);
    assert!(kv.ensure_slots(1, 12));
    kv.commit_full_blocks(1, &a, 12);
    assert_eq!(kv.release_out_of_window(1, 12), 2);
    assert_eq!(kv.block_table(1), [P, P, 2]);
    assert!(kv.pool().hash(0).is_some() && kv.pool().hash(1).is_some());

    // A prompt with the same first 12 tokens: all three blocks match (two of them free, one held
    // by seq 1), but only the one inside the window of position 12 is taken.
    let b = [&a[..], &[50]].concat();
    assert_eq!(kv.allocate_with_prefix(2, &b, 1), Some(12));
    assert_eq!(kv.block_table(2), [P, P, 2, 3]);
    assert_eq!(kv.pool().ref_count(2), Some(2));
    assert_eq!(
        free_order(&kv),
        [4, 5, 6, 7, 1, 0],
        "blocks before the window are not revived"
    );

    // Without a window the same hit takes every matched block.
    let mut full = KvCacheManager::new(8, 4, true);
    assert!(full.ensure_slots(1, 12));
    full.commit_full_blocks(1, &a, 12);
    assert_eq!(full.allocate_with_prefix(2, &b, 1), Some(12));
    assert_eq!(full.block_table(2), [0, 1, 2, 3]);
    kv.assert_consistent();
    full.assert_consistent();
}

#[test]
fn an_admission_fits_when_only_the_window_is_counted() {
    let mut kv = KvCacheManager::new(4, 4, true).with_sliding_window(Some(4));
    let a = toks(0, 16);
    assert!(kv.ensure_slots(1, 16));
    kv.commit_full_blocks(1, &a, 16);
    kv.free(1); // free queue: 3 2 1 0, all cached
    assert!(kv.ensure_slots(2, 8)); // takes 3 and 2
    assert_eq!(free_order(&kv), [1, 0]);
    // 8 cached tokens (blocks 0 and 1, both free) and one new token need 3 entries; with the window
    // only block 1 and one new block are held, so 2 free blocks suffice.
    assert_eq!(kv.allocate_with_prefix(3, &a[..9], 1), Some(8));
    assert_eq!(
        kv.block_table(3),
        [P, 1, 0],
        "the placeholder and the real block 0"
    );
    assert_eq!(kv.num_free(), 0);
    kv.assert_consistent();
    kv.free(3);
    assert_eq!(free_order(&kv), [0, 1]);
    kv.assert_consistent();
}

#[test]
fn a_block_released_before_it_was_hashed_still_chains() {
    let mut kv = KvCacheManager::new(8, 4, true).with_sliding_window(Some(1));
    let a = toks(0, 9);
    assert!(kv.ensure_slots(1, 9));
    assert_eq!(kv.release_out_of_window(1, 8), 2);
    kv.commit_full_blocks(1, &a, 8);
    assert_eq!(
        (kv.pool().hash(0), kv.pool().hash(1)),
        (None, None),
        "released blocks are not registered"
    );
    // Seq 2 computes the same tokens and hashes them: its hashes must equal the chain seq 1 kept.
    assert!(kv.ensure_slots(2, 9));
    kv.commit_full_blocks(2, &a, 8);
    kv.commit_full_blocks(1, &a, 9);
    assert!(kv.ensure_slots(1, 12));
    kv.commit_full_blocks(1, &toks(0, 12), 12);
    let third = kv.block_table(1)[2];
    kv.free(1);
    kv.free(2);
    let mut kv_full = KvCacheManager::new(8, 4, true);
    assert!(kv_full.ensure_slots(1, 12));
    kv_full.commit_full_blocks(1, &toks(0, 12), 12);
    assert_eq!(kv.pool().hash(third), kv_full.pool().hash(2));
    kv.assert_consistent();
}
