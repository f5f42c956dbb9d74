//! The fixed set of KV blocks: reference counts, the free list and the prefix-cache index.

use super::free_queue::FreeQueue;
use super::{BlockHash, KvEvent, KvEventLog};
use std::collections::HashMap;

/// Index of a block in the device KV tensors.
pub type BlockId = u32;

#[derive(Debug, Clone, Copy, Default)]
struct Block {
    /// Number of sequences whose block table holds this block.
    ref_count: u32,
    /// Set exactly while `BlockPool::cached` maps this hash to this block.
    hash: Option<BlockHash>,
}

/// `num_blocks` blocks of `block_size` token slots.
///
/// A block with reference count 0 is free, whether or not it still holds a cached prefix: it sits in
/// the free queue and is handed out again when the queue reaches it. Blocks are reused least recently
/// freed first, so cached content lives as long as possible, and a cached block keeps its hash (stays
/// findable) until it is handed out for something else.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    blocks: Vec<Block>,
    free: FreeQueue,
    cached: HashMap<BlockHash, BlockId>,
    /// Free blocks that still hold a cached prefix (counted as they move, so reading it is O(1)).
    free_cached: usize,
    /// Blocks stored in and removed from the prefix cache, when a router reads them.
    events: KvEventLog,
}

impl BlockPool {
    /// # Panics
    /// If `block_size` is 0 or `num_blocks` does not fit a [`BlockId`]; `SchedulerConfig::validate`
    /// rejects both before a pool is built from user settings.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        assert!(
            BlockId::try_from(num_blocks).is_ok(),
            "num_blocks must fit in a u32"
        );
        BlockPool {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free: FreeQueue::with_all(num_blocks),
            cached: HashMap::new(),
            free_cached: 0,
            events: KvEventLog::default(),
        }
    }

    /// The prefix-cache event log (see [`KvEvent`]).
    pub fn events(&mut self) -> &mut KvEventLog {
        &mut self.events
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with reference count 0, cached ones included.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Free blocks that still hold prefix-cache content: reusable by a request with that prefix,
    /// handed out for new content only after the empty ones.
    pub fn num_free_cached(&self) -> usize {
        self.free_cached
    }

    /// `None` for an id outside the pool.
    pub fn ref_count(&self, id: BlockId) -> Option<u32> {
        self.blocks.get(id as usize).map(|b| b.ref_count)
    }

    /// The prefix-cache hash under which `id` can be found, if any.
    pub fn hash(&self, id: BlockId) -> Option<BlockHash> {
        self.blocks.get(id as usize).and_then(|b| b.hash)
    }

    /// The hashes of every findable block, in use or free, as [`KvEvent`]s name them: the set a router
    /// rebuilds by replaying the events (unordered).
    pub fn cached_hashes(&self) -> Vec<u64> {
        self.cached.keys().map(|h| h.external()).collect()
    }

    /// The block holding the content of `hash`, whether in use or free.
    pub fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Takes the least recently freed block (reference count 1), dropping its cached content.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = self.free.pop_front()?;
        let block = &mut self.blocks[id as usize];
        if let Some(hash) = block.hash.take() {
            self.cached.remove(&hash);
            self.free_cached -= 1;
            self.events.push(KvEvent::BlockRemoved { block_hashes: vec![hash.external()] });
        }
        block.ref_count = 1;
        Some(id)
    }

    /// `n` blocks, or none at all when fewer than `n` are free.
    pub fn allocate_n(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free() {
            return None;
        }
        (0..n).map(|_| self.allocate()).collect()
    }

    /// Takes one more reference on a block found through [`Self::lookup`], reviving it from the
    /// free queue if nobody held it. Returns false for an id outside the pool.
    pub fn share(&mut self, id: BlockId) -> bool {
        let Some(block) = self.blocks.get_mut(id as usize) else {
            return false;
        };
        if block.ref_count == 0 {
            self.free.remove(id);
            if block.hash.is_some() {
                self.free_cached -= 1;
            }
        }
        block.ref_count += 1;
        true
    }

    /// Drops one reference; at 0 the block joins the back of the free queue, keeping its hash.
    pub fn release(&mut self, id: BlockId) {
        let Some(block) = self.blocks.get_mut(id as usize) else {
            debug_assert!(false, "release of block {id} outside the pool");
            return;
        };
        debug_assert!(block.ref_count > 0, "release of free block {id}");
        block.ref_count = block.ref_count.saturating_sub(1);
        if block.ref_count == 0 {
            self.free.push_back(id);
            if block.hash.is_some() {
                self.free_cached += 1;
            }
        }
    }

    /// Makes a full, computed block findable under `hash`. When another block already holds the
    /// same content (two sequences computed it independently) that one stays the cached copy and
    /// `id` remains unhashed, so the index never maps one hash to two blocks. Returns whether `id`
    /// is now findable under `hash`.
    pub fn register(&mut self, id: BlockId, hash: BlockHash) -> bool {
        let Some(block) = self.blocks.get_mut(id as usize) else {
            return false;
        };
        if block.hash.is_some() || self.cached.contains_key(&hash) {
            return false;
        }
        block.hash = Some(hash);
        self.cached.insert(hash, id);
        if block.ref_count == 0 {
            self.free_cached += 1;
        }
        true
    }

    /// Free blocks in the order they will be reused.
    pub fn free_blocks(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.free.iter()
    }

    /// Panics unless the free queue holds exactly the blocks with reference count 0 and the hash
    /// index and the blocks' hashes agree.
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let queued: Vec<BlockId> = self.free.iter().collect();
        assert_eq!(queued.len(), self.free.len(), "free queue length");
        let mut unique = queued.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), queued.len(), "block queued twice");
        let zero: Vec<BlockId> = (0..self.blocks.len() as BlockId)
            .filter(|&id| self.blocks[id as usize].ref_count == 0)
            .collect();
        assert_eq!(unique, zero, "free queue vs blocks with reference count 0");
        for (&hash, &id) in &self.cached {
            assert_eq!(
                self.blocks[id as usize].hash,
                Some(hash),
                "index entry of block {id}"
            );
        }
        let hashed = self.blocks.iter().filter(|b| b.hash.is_some()).count();
        assert_eq!(hashed, self.cached.len(), "hashed blocks vs index entries");
        let free_cached = self.blocks.iter().filter(|b| b.ref_count == 0 && b.hash.is_some()).count();
        assert_eq!(free_cached, self.free_cached, "free cached blocks vs their count");
    }
}
