//! Per-sequence block tables on top of the [`BlockPool`], with prefix-cache reuse on allocation and,
//! for sliding-window attention, release of the blocks that fell out of the window.
//!
//! # Sliding window
//!
//! With a window of `W` positions a query at position `p` attends keys `p - W + 1 ..= p`, so once a
//! sequence's next query is at `p` (or later), positions below [`KvCacheManager::window_start`]`(p)`
//! are never read again and the blocks wholly below it go back to the pool. Released blocks are
//! always a leading run of the table (the window only moves forward); their entries keep their place,
//! holding [`PLACEHOLDER_BLOCK`], so that entry `i` still means positions `i * block_size ..`.
//!
//! # Regimes
//!
//! Each table belongs to one [`KvRegime`], fixed when it is allocated: its blocks are hashed on
//! that regime's chain and its prefix hits come from that chain only. A sequence that changes regime
//! is freed and allocated anew.

use super::{BlockHash, BlockId, BlockPool, KvEvent, KvRegime, SeqId};
use std::collections::HashMap;

/// Stands in a block table for a block released because it fell out of the sliding window. A real
/// block id, so a table stays a list of valid indices; the attention kernels never read entries
/// wholly before the window, and nothing writes there (writes go to positions past the window).
pub const PLACEHOLDER_BLOCK: BlockId = 0;

/// The blocks of one sequence.
#[derive(Debug, Clone, Default)]
struct SeqBlocks {
    /// Block `i` holds token positions `i * block_size .. (i + 1) * block_size`; the first
    /// `released` entries are [`PLACEHOLDER_BLOCK`].
    blocks: Vec<BlockId>,
    /// Leading entries of `blocks` given back because they fell out of the sliding window.
    released: usize,
    /// Chain hashes of the leading full, computed blocks; the last one is the parent of the next.
    /// Released blocks keep their place here: the chain continues through them.
    hashes: Vec<BlockHash>,
    /// The chain these blocks are hashed on.
    regime: KvRegime,
}

impl SeqBlocks {
    /// The blocks this sequence holds a reference on.
    fn held(&self) -> &[BlockId] {
        &self.blocks[self.released..]
    }
}

/// Cached blocks matching a prefix of some tokens, found but not yet taken.
struct PrefixMatch {
    blocks: Vec<BlockId>,
    hashes: Vec<BlockHash>,
}

/// Owns the block pool and every sequence's block table.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    seqs: HashMap<SeqId, SeqBlocks>,
    prefix_cache: bool,
    prefix_hit_tokens: usize,
    /// Every query attends only to the last `W` positions; `None`: full attention, blocks are
    /// kept for the sequence's life.
    sliding_window: Option<usize>,
}

impl KvCacheManager {
    /// # Panics
    /// As [`BlockPool::new`].
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_cache: bool) -> Self {
        KvCacheManager {
            pool: BlockPool::new(num_blocks, block_size),
            seqs: HashMap::new(),
            prefix_cache: enable_prefix_cache,
            prefix_hit_tokens: 0,
            sliding_window: None,
        }
    }

    /// Lets [`Self::allocate_with_prefix`] skip cached blocks before the window and
    /// [`Self::release_out_of_window`] give blocks back; see the module docs.
    ///
    /// # Panics
    /// If the window is 0; `SchedulerConfig::validate` rejects it first.
    pub fn with_sliding_window(mut self, window: Option<usize>) -> Self {
        assert!(window != Some(0), "sliding_window must be positive");
        self.sliding_window = window;
        self
    }

    pub fn sliding_window(&self) -> Option<usize> {
        self.sliding_window
    }

    /// Lowest position that a query at `pos` or later attends: `pos - W + 1`, 0 without a window.
    pub fn window_start(&self, pos: usize) -> usize {
        self.sliding_window.map_or(0, |w| pos.saturating_sub(w - 1))
    }

    /// Starts the block table of `seq` with the cached full blocks matching the longest prefix of
    /// `tokens`, and returns how many leading tokens already have their KV (a multiple of the block
    /// size, never all of `tokens`). A sequence that still holds blocks gives them up first.
    pub fn allocate_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> usize {
        // Taking only cached blocks never needs more than is free (each one taken from the free
        // queue was counted there), so this cannot fail.
        self.allocate_with_prefix(seq, tokens, 0).unwrap_or(0)
    }

    /// [`Self::allocate_prefix`] and [`Self::ensure_slots`] for the next `max_new_tokens` tokens
    /// after the cached prefix, as one step: either both happen or nothing changes (`None`, not
    /// enough free blocks). Returns the number of cached tokens.
    ///
    /// Doing both at once lets a caller admit a sequence without undoing a prefix match that turns
    /// out not to fit; such an undo would also reorder the free queue.
    ///
    /// With a sliding window, matched blocks wholly before the window of the first computed token
    /// are not taken: their entries start out released.
    pub fn allocate_with_prefix(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        max_new_tokens: usize,
    ) -> Option<usize> {
        self.allocate_with_prefix_in(KvRegime::Base, seq, tokens, max_new_tokens)
    }

    /// [`Self::allocate_with_prefix`] for a sequence whose KV is computed in `regime`: only blocks
    /// of that regime match, and its blocks are hashed on that regime's chain.
    pub fn allocate_with_prefix_in(
        &mut self,
        regime: KvRegime,
        seq: SeqId,
        tokens: &[u32],
        max_new_tokens: usize,
    ) -> Option<usize> {
        self.free(seq);
        let found = self.match_prefix(regime, tokens);
        let num_cached = found.blocks.len() * self.block_size();
        let num_total = num_cached + tokens.len().saturating_sub(num_cached).min(max_new_tokens);
        // At most found.blocks.len(): the window start never passes num_cached.
        let released = self.window_start(num_cached) / self.block_size();
        let taken = &found.blocks[released..];
        // Matched blocks that nobody holds are in the free queue: taking them uses up free blocks.
        let revived = taken
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == Some(0))
            .count();
        let new = self
            .blocks_for(num_total)
            .saturating_sub(found.blocks.len());
        if revived + new > self.pool.num_free() {
            return None;
        }
        for &b in taken {
            self.pool.share(b);
        }
        let mut blocks = vec![PLACEHOLDER_BLOCK; released];
        blocks.extend_from_slice(taken);
        // Cannot fail: checked against num_free above, with the revived blocks already taken out.
        blocks.extend(self.pool.allocate_n(new)?);
        self.seqs.insert(
            seq,
            SeqBlocks {
                blocks,
                released,
                hashes: found.hashes,
                regime,
            },
        );
        self.prefix_hit_tokens += num_cached;
        Some(num_cached)
    }

    /// Grows the block table of `seq` to hold `num_tokens_total` tokens, taking free blocks (and
    /// dropping the cached content of those). Returns false, changing nothing, when too few blocks are
    /// free. An unknown `seq` starts with an empty table in the base regime. Released entries count
    /// as present: only blocks past the end of the table are taken.
    pub fn ensure_slots(&mut self, seq: SeqId, num_tokens_total: usize) -> bool {
        let needed = self.blocks_for(num_tokens_total);
        let held = self.seqs.get(&seq).map_or(0, |s| s.blocks.len());
        if needed <= held {
            return true;
        }
        let Some(new) = self.pool.allocate_n(needed - held) else {
            return false;
        };
        self.seqs.entry(seq).or_default().blocks.extend(new);
        true
    }

    /// Registers the hashes of the blocks of `seq` that are full and computed, now that the first
    /// `num_computed` of `tokens` have their KV, so that later sequences can share them.
    pub fn commit_full_blocks(&mut self, seq: SeqId, tokens: &[u32], num_computed: usize) {
        if !self.prefix_cache {
            return;
        }
        let bs = self.pool.block_size();
        let Some(entry) = self.seqs.get_mut(&seq) else {
            return;
        };
        let num_full = (num_computed.min(tokens.len()) / bs).min(entry.blocks.len());
        // The run of blocks this call makes findable, reported as one event (as vLLM reports them).
        let mut stored: Option<KvEvent> = None;
        for i in entry.hashes.len()..num_full {
            let parent = entry.hashes.last().copied().or(entry.regime.first_parent());
            let hash = BlockHash::new(parent, &tokens[i * bs..(i + 1) * bs]);
            // A block released before it was hashed is gone; the chain still goes through it.
            // (The scheduler commits before it releases, so this does not happen there.)
            let registered = i >= entry.released && self.pool.register(entry.blocks[i], hash);
            if registered && self.pool.events().is_enabled() {
                match &mut stored {
                    Some(KvEvent::BlockStored { block_hashes, token_ids, .. }) => {
                        block_hashes.push(hash.external());
                        token_ids.extend_from_slice(&tokens[i * bs..(i + 1) * bs]);
                    }
                    _ => {
                        stored = Some(KvEvent::BlockStored {
                            block_hashes: vec![hash.external()],
                            parent_block_hash: parent.map(BlockHash::external),
                            token_ids: tokens[i * bs..(i + 1) * bs].to_vec(),
                            block_size: bs,
                        })
                    }
                }
            } else if let Some(e) = stored.take() {
                // Another copy of this block is the cached one: the run breaks here.
                self.pool.events().push(e);
            }
            entry.hashes.push(hash);
        }
        if let Some(e) = stored {
            self.pool.events().push(e);
        }
    }

    /// Records prefix-cache events (at most `capacity` between two [`Self::take_events`]).
    pub fn enable_events(&mut self, capacity: usize) {
        self.pool.events().enable(capacity);
    }

    /// The prefix-cache events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.pool.events().drain()
    }

    /// Gives back the blocks of `seq` that no query at `next_pos` or later attends (wholly before
    /// [`Self::window_start`]`(next_pos)`); returns how many. Without a window, nothing.
    ///
    /// The caller promises that `seq` computes nothing before `next_pos` again while it holds its
    /// table (a sequence that restarts, after preemption, is freed and allocated anew).
    pub fn release_out_of_window(&mut self, seq: SeqId, next_pos: usize) -> usize {
        if self.sliding_window.is_none() {
            return 0;
        }
        let first_kept = self.window_start(next_pos) / self.pool.block_size();
        let Some(entry) = self.seqs.get_mut(&seq) else {
            return 0;
        };
        let end = first_kept.min(entry.blocks.len());
        if end <= entry.released {
            return 0; // the window never moves back: released entries stay released
        }
        // Last block first, as in `free`: of a run released together, the earliest (the one a
        // later prompt is likelier to share) stays cached longest.
        for &b in entry.blocks[entry.released..end].iter().rev() {
            self.pool.release(b);
        }
        entry.blocks[entry.released..end].fill(PLACEHOLDER_BLOCK);
        let n = end - entry.released;
        entry.released = end;
        n
    }

    /// Entry `i` covers positions `i * block_size ..`; released entries hold
    /// [`PLACEHOLDER_BLOCK`]. Empty for a sequence that holds no blocks.
    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// The regime `seq`'s table was allocated in; `None` for a sequence that holds no table.
    pub fn regime(&self, seq: SeqId) -> Option<KvRegime> {
        self.seqs.get(&seq).map(|s| s.regime)
    }

    /// Leading entries of the block table of `seq` released out of the sliding window.
    pub fn num_released(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.released)
    }

    /// Blocks `seq` holds a reference on: its table without the released entries.
    pub fn num_held(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.held().len())
    }

    /// Gives up every block of `seq`; blocks nobody else holds become free and keep their hashes.
    pub fn free(&mut self, seq: SeqId) {
        let Some(entry) = self.seqs.remove(&seq) else {
            return;
        };
        // Last block first: the tail of a sequence is the part least likely to be shared (a later
        // prompt must match everything before it), so it should be the first to be evicted.
        for &b in entry.held().iter().rev() {
            self.pool.release(b);
        }
    }

    pub fn num_free(&self) -> usize {
        self.pool.num_free()
    }

    pub fn num_total(&self) -> usize {
        self.pool.num_total()
    }

    /// Of the free blocks, those still holding a cached prefix.
    pub fn num_free_cached(&self) -> usize {
        self.pool.num_free_cached()
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// Tokens whose KV was reused from the prefix cache since construction.
    pub fn prefix_hit_tokens_total(&self) -> usize {
        self.prefix_hit_tokens
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Number of sequences holding a block table.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.pool.block_size())
    }

    /// Longest run of cached full blocks of `regime` matching `tokens` from the start, leaving at
    /// least the last token uncovered: the engine samples from the last position's logits, so it must
    /// compute it.
    fn match_prefix(&self, regime: KvRegime, tokens: &[u32]) -> PrefixMatch {
        let mut found = PrefixMatch {
            blocks: Vec::new(),
            hashes: Vec::new(),
        };
        if !self.prefix_cache {
            return found;
        }
        let bs = self.pool.block_size();
        for chunk in tokens[..tokens.len().saturating_sub(1)].chunks_exact(bs) {
            let parent = found.hashes.last().copied().or(regime.first_parent());
            let hash = BlockHash::new(parent, chunk);
            let Some(b) = self.pool.lookup(hash) else {
                break;
            };
            found.blocks.push(b);
            found.hashes.push(hash);
        }
        found
    }

    /// Panics unless every block's reference count equals the number of block tables holding it,
    /// no table holds a block twice, blocks held by several tables are cached (shared only
    /// through equal content), released entries are placeholders, and every cached block a table
    /// holds is cached under that table's own chain hash (so never shared across regimes).
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        self.pool.assert_consistent();
        let mut holders = vec![0u32; self.num_total()];
        for (seq, entry) in &self.seqs {
            assert!(
                entry.released <= entry.blocks.len(),
                "seq {seq} released more blocks than its table has"
            );
            assert!(
                entry.blocks[..entry.released]
                    .iter()
                    .all(|&b| b == PLACEHOLDER_BLOCK),
                "seq {seq}: a released entry is not the placeholder"
            );
            let mut own = entry.held().to_vec();
            own.sort_unstable();
            own.dedup();
            assert_eq!(
                own.len(),
                entry.held().len(),
                "seq {seq} holds a block twice"
            );
            assert!(
                entry.hashes.len() <= entry.blocks.len(),
                "seq {seq} hashed more blocks than it holds"
            );
            for (i, &b) in entry.blocks.iter().enumerate().skip(entry.released) {
                holders[b as usize] += 1;
                if let Some(hash) = self.pool.hash(b) {
                    assert_eq!(
                        entry.hashes.get(i),
                        Some(&hash),
                        "seq {seq} holds block {b} cached under another chain"
                    );
                }
            }
        }
        for (b, &n) in holders.iter().enumerate() {
            let b = b as BlockId;
            assert_eq!(
                self.pool.ref_count(b),
                Some(n),
                "reference count of block {b}"
            );
            assert!(
                n <= 1 || self.pool.hash(b).is_some(),
                "block {b} shared by {n} seqs without a hash"
            );
        }
    }
}
