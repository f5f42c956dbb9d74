//! What the prefix cache did, for routers that keep an index of which replica holds which prefix (llm-d's
//! KV-cache indexer, through vLLM's KV-event stream): full blocks that became findable and blocks whose
//! content was dropped. The engine drains the log after every step; the Python server publishes it
//! (python/mlc_llm/serve/server/kv_events.py).

use std::collections::VecDeque;

/// One change of the prefix cache. Hashes are the low 64 bits of our block hashes
/// ([`super::BlockHash::external`]): a router only compares them with each other.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type")]
pub enum KvEvent {
    /// Consecutive full blocks of one sequence became findable: their hashes in chain order, the hash of the
    /// block before the first (`None` at the start of a sequence in the base regime), and their token ids
    /// (`block_size` per block).
    BlockStored { block_hashes: Vec<u64>, parent_block_hash: Option<u64>, token_ids: Vec<u32>, block_size: usize },
    /// Blocks whose cached content was dropped (their slots were handed out for new content).
    BlockRemoved { block_hashes: Vec<u64> },
    /// Every cached block was dropped.
    AllBlocksCleared,
}

/// A bounded log, off unless enabled: without a reader nothing is recorded, and a reader that falls
/// behind loses the oldest events (counted) rather than the engine's memory.
#[derive(Debug, Clone, Default)]
pub struct KvEventLog {
    capacity: usize,
    events: VecDeque<KvEvent>,
    dropped: u64,
}

impl KvEventLog {
    /// Records up to `capacity` events between two drains (0: off).
    pub fn enable(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn push(&mut self, e: KvEvent) {
        if self.capacity == 0 {
            return;
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(e);
    }

    /// The events since the last drain, oldest first.
    pub fn drain(&mut self) -> Vec<KvEvent> {
        self.events.drain(..).collect()
    }

    /// Events lost because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing_and_a_full_log_drops_the_oldest() {
        let mut log = KvEventLog::default();
        log.push(KvEvent::AllBlocksCleared);
        assert!(log.drain().is_empty());
        log.enable(2);
        for h in 0..3 {
            log.push(KvEvent::BlockRemoved { block_hashes: vec![h] });
        }
        assert_eq!(log.drain(), vec![KvEvent::BlockRemoved { block_hashes: vec![1] }, KvEvent::BlockRemoved { block_hashes: vec![2] }]);
        assert_eq!(log.dropped(), 1);
    }
}
