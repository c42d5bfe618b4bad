//! A small least-recently-used map from content id to compiled module, so
//! repeated jobs with the same module skip the disk and the compiler.
//! It is bounded by the bytes of code it holds, not by a count: a module's
//! code ranges from kilobytes to hundreds of megabytes.

use std::collections::HashMap;

/// At most `max_bytes` of values (by the size each was inserted with);
/// inserting evicts the entries used longest ago until the new one fits,
/// and always keeps the new one. Linear eviction is fine at the sizes used
/// (tens of entries).
pub(crate) struct ModuleLru<V> {
    max_bytes: u64,
    bytes: u64,
    clock: u64,
    entries: HashMap<String, Entry<V>>,
}

struct Entry<V> {
    value: V,
    bytes: u64,
    used: u64,
}

impl<V: Clone> ModuleLru<V> {
    /// An empty map holding at most `max_bytes`.
    pub(crate) fn new(max_bytes: u64) -> Self {
        ModuleLru {
            max_bytes,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The value for `key`, marking it most recently used.
    pub(crate) fn get(&mut self, key: &str) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|e| {
            e.used = clock;
            e.value.clone()
        })
    }

    /// Inserts or replaces `key`, whose value holds `bytes`.
    pub(crate) fn insert(&mut self, key: String, value: V, bytes: u64) {
        self.clock += 1;
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.bytes;
        }
        while self.bytes.saturating_add(bytes) > self.max_bytes {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
        self.bytes += bytes;
        let used = self.clock;
        self.entries.insert(key, Entry { value, bytes, used });
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
    fn evicts_the_least_recently_used_entries_until_the_new_one_fits() {
        let mut lru = ModuleLru::new(10);
        lru.insert("a".into(), 1, 4);
        lru.insert("b".into(), 2, 4);
        assert_eq!(lru.get("a"), Some(1));
        lru.insert("c".into(), 3, 4);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get("b"), None, "b was used longest ago");
        assert_eq!(lru.get("a"), Some(1));
        // A big one pushes out both others.
        lru.insert("d".into(), 4, 9);
        assert_eq!((lru.len(), lru.get("d")), (1, Some(4)));
        // One larger than the bound is still kept: it is about to run.
        lru.insert("e".into(), 5, 50);
        assert_eq!((lru.len(), lru.get("e")), (1, Some(5)));
    }

    #[test]
    fn replacing_a_key_counts_its_new_size_only() {
        let mut lru = ModuleLru::new(10);
        lru.insert("a".into(), 1, 5);
        lru.insert("b".into(), 2, 5);
        lru.insert("a".into(), 10, 5);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get("a"), Some(10));
        assert_eq!(lru.get("b"), Some(2));
    }
}
