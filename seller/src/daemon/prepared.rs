//! Wasm modules ready to hand to a sandbox, kept for the next lease of
//! the same module: the bytes (verified against their content id when
//! they were fetched) and the machine code this daemon's engine made of
//! them, serialized. A repeated job then skips the image cache's read and
//! hash, the engine's lookup and the serialization.

use crate::wasm::module_lru::ModuleLru;
use cpushare_proto::id::ContentId;
use std::sync::{Arc, Mutex};

/// Bytes kept, all modules together (bytes and code).
const MAX_BYTES: u64 = 128 << 20;

/// A module larger than this (bytes and code together) is not kept: its
/// sandbox is slow to fill anyway, and it would push out many small ones.
const MAX_ENTRY_BYTES: usize = 16 << 20;

/// One module, ready for a sandbox.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The module's bytes.
    pub(crate) wasm: Vec<u8>,
    /// Its machine code, as [`crate::wasm::WasmRuntime::compiled_bytes`] made it.
    pub(crate) compiled: Vec<u8>,
}

/// The kept modules, by content id; cheap to share.
#[derive(Clone)]
pub(crate) struct PreparedModules {
    lru: Arc<Mutex<ModuleLru<Arc<Prepared>>>>,
}

impl PreparedModules {
    /// An empty set.
    pub(crate) fn new() -> PreparedModules {
        PreparedModules {
            lru: Arc::new(Mutex::new(ModuleLru::new(MAX_BYTES))),
        }
    }

    /// The module with content id `id`, if kept.
    pub(crate) fn get(&self, id: &ContentId) -> Option<Arc<Prepared>> {
        self.lru.lock().expect("prepared lock").get(&id.hex())
    }

    /// Keeps `p` as module `id` (unless it is too large to keep).
    pub(crate) fn insert(&self, id: &ContentId, p: Arc<Prepared>) {
        let bytes = p.wasm.len() + p.compiled.len();
        if bytes <= MAX_ENTRY_BYTES {
            let mut lru = self.lru.lock().expect("prepared lock");
            lru.insert(id.hex(), p, bytes as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_by_id_and_large_modules_are_not_kept() {
        let set = PreparedModules::new();
        let small = ContentId::of(b"small");
        let large = ContentId::of(b"large");
        set.insert(
            &small,
            Arc::new(Prepared {
                wasm: vec![1; 10],
                compiled: vec![2; 20],
            }),
        );
        set.insert(
            &large,
            Arc::new(Prepared {
                wasm: vec![0; MAX_ENTRY_BYTES],
                compiled: vec![0; 1],
            }),
        );
        assert_eq!(set.get(&small).expect("kept").compiled.len(), 20);
        assert!(set.get(&large).is_none());
    }
}
