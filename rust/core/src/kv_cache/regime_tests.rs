//! KV regimes (Phi-3's long rope): each regime has its own hash chain, the base chain is the plain
//! one, and prefix hits never cross regimes (`block_size` 4).

use super::{BlockHash, KvCacheManager, KvRegime};

/// Tokens `start..start + n`.
fn toks(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

/// The cached hash of entry `i` of the table of `seq`, as `BlockHash(..)`.
fn hash_of(kv: &KvCacheManager, seq: u64, i: usize) -> String {
    let b = kv.block_table(seq)[i];
    format!("{:?}", kv.pool().hash(b).expect("a cached block"))
}

/// The base chain is exactly the chain of before regimes existed: the values are SHA-256 over
/// (tag byte 0 | 1, parent as 16 little-endian bytes, tokens as u32 little-endian), first 16 bytes
/// read little-endian, computed outside Rust.
#[test]
fn base_regime_hashes_are_the_plain_chain() {
    assert_eq!(KvRegime::Base.first_parent(), None);
    assert_eq!(KvRegime::default(), KvRegime::Base);
    let first = BlockHash::new(None, &[0, 1, 2, 3]);
    assert_eq!(
        format!("{first:?}"),
        "BlockHash(2024526536790082770122177716871009606)"
    );
    assert_eq!(
        format!("{:?}", BlockHash::new(Some(first), &[4, 5, 6, 7])),
        "BlockHash(212133913721081240833749200893779301336)"
    );

    let mut plain = KvCacheManager::new(8, 4, true);
    let mut base = KvCacheManager::new(8, 4, true);
    let a = toks(0, 9);
    assert_eq!(plain.allocate_with_prefix(1, &a, 9), Some(0));
    assert_eq!(
        base.allocate_with_prefix_in(KvRegime::Base, 1, &a, 9),
        Some(0)
    );
    plain.commit_full_blocks(1, &a, 9);
    base.commit_full_blocks(1, &a, 9);
    for i in 0..2 {
        assert_eq!(hash_of(&plain, 1, i), hash_of(&base, 1, i));
    }
    assert_eq!(
        hash_of(&base, 1, 1),
        "BlockHash(212133913721081240833749200893779301336)"
    );
    assert_eq!(plain.regime(1), Some(KvRegime::Base));
    assert_eq!(plain.regime(2), None);
}

#[test]
fn the_long_rope_chain_starts_from_a_fixed_seed() {
    let seed = KvRegime::LongRope.first_parent().expect("a seed");
    assert_eq!(
        format!("{seed:?}"),
        "BlockHash(322001800390717079220395685469649876986)"
    );
    let mut kv = KvCacheManager::new(8, 4, true);
    let a = toks(0, 5);
    assert_eq!(
        kv.allocate_with_prefix_in(KvRegime::LongRope, 1, &a, 5),
        Some(0)
    );
    kv.commit_full_blocks(1, &a, 5);
    assert_eq!(
        hash_of(&kv, 1, 0),
        "BlockHash(272379802981736036934131063999624442706)"
    );
    assert_eq!(
        hash_of(&kv, 1, 0),
        format!("{:?}", BlockHash::new(Some(seed), &a[..4]))
    );
    assert_eq!(kv.regime(1), Some(KvRegime::LongRope));
}

#[test]
fn prefix_hits_stay_within_one_regime() {
    let mut kv = KvCacheManager::new(16, 4, true);
    let a = toks(0, 9);
    let long = KvRegime::LongRope;
    assert_eq!(
        kv.allocate_with_prefix_in(KvRegime::Base, 1, &a, 9),
        Some(0)
    );
    kv.commit_full_blocks(1, &a, 9);
    assert_eq!(kv.block_table(1), [0, 1, 2]);
    // Same tokens, other regime: nothing matches; its own blocks are cached on its own chain.
    assert_eq!(kv.allocate_with_prefix_in(long, 2, &a, 9), Some(0));
    kv.commit_full_blocks(2, &a, 9);
    assert_eq!(kv.block_table(2), [3, 4, 5]);
    assert_ne!(hash_of(&kv, 1, 0), hash_of(&kv, 2, 0));
    // Within a regime the blocks are shared.
    assert_eq!(kv.allocate_with_prefix_in(long, 3, &a, 9), Some(8));
    assert_eq!(kv.block_table(3), [3, 4, 6]);
    assert_eq!(kv.allocate_with_prefix(4, &a, 9), Some(8));
    assert_eq!(kv.block_table(4), [0, 1, 7]);
    assert_eq!(
        (0..6).map(|b| kv.pool().ref_count(b)).collect::<Vec<_>>(),
        [Some(2), Some(2), Some(1), Some(2), Some(2), Some(1)]
    );
    kv.assert_consistent();

    // Freed blocks stay findable, each on its own chain only.
    for seq in 1..=4 {
        kv.free(seq);
    }
    assert_eq!(kv.allocate_with_prefix_in(long, 5, &a, 1), Some(8));
    assert_eq!(&kv.block_table(5)[..2], [3, 4]);
    assert_eq!(kv.allocate_with_prefix(6, &a, 1), Some(8));
    assert_eq!(&kv.block_table(6)[..2], [0, 1]);
    kv.assert_consistent();
}

/// A sequence that changes regime is allocated anew: it gives up its old blocks and does not find
/// them again.
#[test]
fn reallocating_in_another_regime_drops_the_old_table() {
    let mut kv = KvCacheManager::new(8, 4, true);
    let a = toks(0, 9);
    assert_eq!(kv.allocate_with_prefix(1, &a, 9), Some(0));
    kv.commit_full_blocks(1, &a, 9);
    assert_eq!(
        kv.allocate_with_prefix_in(KvRegime::LongRope, 1, &a, 9),
        Some(0)
    );
    assert_eq!(kv.regime(1), Some(KvRegime::LongRope));
    assert_eq!(kv.num_held(1), 3);
    assert_eq!(kv.num_free(), 5);
    kv.assert_consistent();
}
