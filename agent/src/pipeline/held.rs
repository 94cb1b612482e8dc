//! Events waiting a moment for their pod's metadata, in a queue of bounded size: a burst of
//! events from pods the API server has not shown yet must not grow the agent without limit.
//! What does not fit is not dropped: it goes out at once, marked `metadataIncomplete`.
use std::collections::VecDeque;

/// How many events may wait for their pod at once.
pub const HELD_CAPACITY: usize = 8192;

pub struct HeldQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
    overflowed: u64,
}

impl<T> HeldQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
            overflowed: 0,
        }
    }

    /// Holds `item`, or hands it back (and counts it) when the queue is full.
    pub fn hold(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.capacity {
            self.overflowed += 1;
            return Err(item);
        }
        self.items.push_back(item);
        Ok(())
    }

    /// Every held item, oldest first; the queue is left empty.
    pub fn take_all(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.items)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items that found the queue full since start.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_hands_items_back_and_counts_them() {
        let mut q = HeldQueue::new(2);
        assert!(q.is_empty());
        assert_eq!(q.hold(1), Ok(()));
        assert_eq!(q.hold(2), Ok(()));
        assert_eq!(q.hold(3), Err(3));
        assert_eq!(q.hold(4), Err(4));
        assert_eq!(q.overflowed(), 2);
        assert_eq!(q.take_all(), VecDeque::from([1, 2]));
        assert!(q.is_empty());
        // Room again once released.
        assert_eq!(q.hold(5), Ok(()));
        assert_eq!(q.overflowed(), 2);
    }
}
