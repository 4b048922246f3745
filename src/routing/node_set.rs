//! A set of node indexes, one bit per node, shared between callers and the
//! monitor: routing reads the suspect flags of up to 64 nodes with one
//! atomic load.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-size set of node indexes; callers add, the monitor removes.
#[derive(Debug)]
pub(crate) struct NodeSet {
    words: Box<[AtomicU64]>,
}

/// A copy of a [`NodeSet`] taken with one load per word, so one decision
/// sees one state however often it asks.
#[derive(Debug, Clone)]
pub(crate) enum Members {
    /// Nodes 0 to 63: no allocation.
    Word(u64),
    /// Larger topologies.
    Words(Box<[u64]>),
}

impl NodeSet {
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
    pub(crate) fn insert(&self, index: usize) -> bool {
        let (word, bit) = self.locate(index);
        word.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Removes `index`; true when it was there.
    pub(crate) fn remove(&self, index: usize) -> bool {
        let (word, bit) = self.locate(index);
        word.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    pub(crate) fn contains(&self, index: usize) -> bool {
        let (word, bit) = self.locate(index);
        word.load(Ordering::Acquire) & bit != 0
    }

    /// The members now, each word loaded once. Allocates only beyond 64 nodes.
    pub(crate) fn load(&self) -> Members {
        match &*self.words {
            [word] => Members::Word(word.load(Ordering::Acquire)),
            words => Members::Words(words.iter().map(|w| w.load(Ordering::Acquire)).collect()),
        }
    }
}

impl Members {
    pub(crate) fn contains(&self, index: usize) -> bool {
        let word = match self {
            Members::Word(word) if index < 64 => *word,
            Members::Word(_) => 0,
            Members::Words(words) => words.get(index / 64).copied().unwrap_or(0),
        };
        word & (1 << (index % 64)) != 0
    }

    /// The members among nodes 0 to 63.
    pub(crate) fn first_word(&self) -> u64 {
        match self {
            Members::Word(word) => *word,
            Members::Words(words) => words.first().copied().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_and_removes_bits_across_words() {
        let set = NodeSet::new(70);
        assert!(set.insert(3) && !set.insert(3));
        assert!(set.insert(69));
        assert!(set.contains(3) && set.contains(69) && !set.contains(4));
        let members = set.load();
        assert_eq!(members.first_word(), 1 << 3);
        assert!(members.contains(69) && !members.contains(68));
        assert!(set.remove(69) && !set.remove(69));
        assert!(!set.contains(69));
        assert!(members.contains(69), "a loaded copy does not change");
    }

    #[test]
    fn small_sets_load_into_one_word() {
        let set = NodeSet::new(3);
        set.insert(2);
        let members = set.load();
        assert!(matches!(members, Members::Word(0b100)));
        assert!(members.contains(2) && !members.contains(1) && !members.contains(64));
    }
}
