//! The free blocks in eviction order, with removal of any block in O(1): a prefix-cache hit revives
//! a free block from the middle of the queue.

use super::BlockId;

/// A doubly linked list threaded through arrays indexed by block id, so that it allocates nothing
/// after construction. The front is the least recently freed block, the next one to be reused.
#[derive(Debug, Clone)]
pub(crate) struct FreeQueue {
    links: Vec<Links>,
    head: Option<BlockId>,
    tail: Option<BlockId>,
    len: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Links {
    queued: bool,
    prev: Option<BlockId>,
    next: Option<BlockId>,
}

impl FreeQueue {
    /// A queue holding blocks `0..num_blocks` in ascending order. `num_blocks` fits in a [`BlockId`]
    /// (checked by the pool).
    pub fn with_all(num_blocks: usize) -> Self {
        let mut queue = FreeQueue {
            links: vec![Links::default(); num_blocks],
            head: None,
            tail: None,
            len: 0,
        };
        for id in 0..num_blocks as BlockId {
            queue.push_back(id);
        }
        queue
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn contains(&self, id: BlockId) -> bool {
        self.links.get(id as usize).is_some_and(|l| l.queued)
    }

    /// Appends `id`; a block already queued is left where it is.
    pub fn push_back(&mut self, id: BlockId) {
        if self.contains(id) || id as usize >= self.links.len() {
            return;
        }
        self.links[id as usize] = Links {
            queued: true,
            prev: self.tail,
            next: None,
        };
        match self.tail {
            Some(t) => self.links[t as usize].next = Some(id),
            None => self.head = Some(id),
        }
        self.tail = Some(id);
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<BlockId> {
        let id = self.head?;
        self.remove(id);
        Some(id)
    }

    /// Unlinks `id`; returns whether it was queued.
    pub fn remove(&mut self, id: BlockId) -> bool {
        if !self.contains(id) {
            return false;
        }
        let Links { prev, next, .. } = self.links[id as usize];
        match prev {
            Some(p) => self.links[p as usize].next = next,
            None => self.head = next,
        }
        match next {
            Some(n) => self.links[n as usize].prev = prev,
            None => self.tail = prev,
        }
        self.links[id as usize] = Links::default();
        self.len -= 1;
        true
    }

    /// Front to back.
    pub fn iter(&self) -> impl Iterator<Item = BlockId> + '_ {
        std::iter::successors(self.head, |&id| self.links[id as usize].next)
    }
}

#[cfg(test)]
mod tests {
    use super::FreeQueue;

    fn order(q: &FreeQueue) -> Vec<u32> {
        q.iter().collect()
    }

    #[test]
    fn starts_in_id_order_and_pops_from_the_front() {
        let mut q = FreeQueue::with_all(4);
        assert_eq!(order(&q), [0, 1, 2, 3]);
        assert_eq!(q.pop_front(), Some(0));
        q.push_back(0);
        assert_eq!(order(&q), [1, 2, 3, 0]);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn removes_from_head_middle_and_tail() {
        let mut q = FreeQueue::with_all(5);
        assert!(q.remove(2));
        assert!(q.remove(0));
        assert!(q.remove(4));
        assert!(!q.remove(4), "already removed");
        assert_eq!(order(&q), [1, 3]);
        assert_eq!(q.len(), 2);
        q.push_back(4);
        q.push_back(4);
        assert_eq!(order(&q), [1, 3, 4]);
        assert_eq!(
            (q.pop_front(), q.pop_front(), q.pop_front(), q.pop_front()),
            (Some(1), Some(3), Some(4), None)
        );
        assert_eq!(q.len(), 0);
        q.push_back(2);
        assert_eq!(order(&q), [2]);
    }
}
