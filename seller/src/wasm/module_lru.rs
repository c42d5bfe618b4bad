//! A small least-recently-used map from content id to compiled module, so
//! repeated jobs with the same module skip the disk and the compiler.

use std::collections::HashMap;

/// At most `capacity` entries; inserting into a full map evicts the entry
/// used longest ago. Linear eviction is fine at the sizes used (tens).
pub(crate) struct ModuleLru<V> {
    capacity: usize,
    clock: u64,
    entries: HashMap<String, (V, u64)>,
}

impl<V: Clone> ModuleLru<V> {
    /// An empty map holding at most `capacity` (at least 1) entries.
    pub(crate) fn new(capacity: usize) -> Self {
        ModuleLru {
            capacity: capacity.max(1),
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The value for `key`, marking it most recently used.
    pub(crate) fn get(&mut self, key: &str) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(v, used)| {
            *used = clock;
            v.clone()
        })
    }

    /// Inserts or replaces `key`, evicting the least recently used entry if full.
    pub(crate) fn insert(&mut self, key: String, value: V) {
        self.clock += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, self.clock));
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_entry() {
        let mut lru = ModuleLru::new(2);
        lru.insert("a".into(), 1);
        lru.insert("b".into(), 2);
        assert_eq!(lru.get("a"), Some(1));
        lru.insert("c".into(), 3);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get("b"), None, "b was used longest ago");
        assert_eq!(lru.get("a"), Some(1));
        assert_eq!(lru.get("c"), Some(3));
    }

    #[test]
    fn replacing_a_key_does_not_evict() {
        let mut lru = ModuleLru::new(2);
        lru.insert("a".into(), 1);
        lru.insert("b".into(), 2);
        lru.insert("a".into(), 10);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get("a"), Some(10));
        assert_eq!(lru.get("b"), Some(2));
    }
}
