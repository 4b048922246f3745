//! The nodes callers have reported: one bit per node, so routing reads the
//! flags of up to 64 nodes with one atomic load.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-size set of node indexes, shared by every node and the routing
/// view; callers set bits, the monitor clears them.
#[derive(Debug)]
pub(crate) struct Suspects {
    words: Box<[AtomicU64]>,
}

impl Suspects {
    pub(crate) fn new(nodes: usize) -> Self {
        let words = nodes.div_ceil(64).max(1);
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn locate(&self, index: usize) -> (&AtomicU64, u64) {
        (&self.words[index / 64], 1 << (index % 64))
    }

    /// Adds `index`; true when it was not there before.
    pub(crate) fn mark(&self, index: usize) -> bool {
        let (word, bit) = self.locate(index);
        word.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Removes `index`; true when it was there.
    pub(crate) fn clear(&self, index: usize) -> bool {
        let (word, bit) = self.locate(index);
        word.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    pub(crate) fn contains(&self, index: usize) -> bool {
        let (word, bit) = self.locate(index);
        word.load(Ordering::Acquire) & bit != 0
    }

    /// The bits of nodes 0 to 63.
    pub(crate) fn first_word(&self) -> u64 {
        self.words[0].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_clears_bits_across_words() {
        let set = Suspects::new(70);
        assert!(set.mark(3) && !set.mark(3));
        assert!(set.mark(69));
        assert!(set.contains(3) && set.contains(69) && !set.contains(4));
        assert_eq!(set.first_word(), 1 << 3);
        assert!(set.clear(69) && !set.clear(69));
        assert!(!set.contains(69));
    }
}
