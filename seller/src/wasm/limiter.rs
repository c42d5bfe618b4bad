//! Memory and table limits of one store, remembering whether the guest was
//! ever refused memory so that its failure can be named `MemoryExceeded`.

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Most table elements a guest may have; C programs built with wasi-libc use
/// a few hundred (one per address-taken function).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// [`StoreLimits`] plus a record of denied memory growth.
pub(crate) struct JobLimiter {
    inner: StoreLimits,
    limit: u64,
    memory_denied: bool,
}

impl JobLimiter {
    /// Limits for one guest instance with at most `memory_bytes` of memory.
    pub(crate) fn new(memory_bytes: u64) -> JobLimiter {
        let inner = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
            .table_elements(MAX_TABLE_ELEMENTS)
            .instances(1)
            .memories(1)
            .tables(1)
            .build();
        JobLimiter {
            inner,
            limit: memory_bytes,
            memory_denied: false,
        }
    }

    /// The memory limit in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the guest has asked for memory past its limit.
    pub(crate) fn memory_denied(&self) -> bool {
        self.memory_denied
    }
}

impl ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        // Growth past the memory's own maximum (the module's declared one, or
        // the pool slot's, which is never below the job limit) fails right
        // after this returns; from the guest's side it is the same wall.
        let past_maximum = maximum.is_some_and(|max| desired > max);
        if !allowed || past_maximum {
            self.memory_denied = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 65536;

    #[test]
    fn growth_within_the_limit_is_allowed_and_not_recorded() {
        let mut l = JobLimiter::new(4 * PAGE as u64);
        assert!(l.memory_growing(PAGE, 4 * PAGE, None).unwrap());
        assert!(!l.memory_denied());
    }

    #[test]
    fn growth_past_the_limit_is_refused_and_recorded() {
        let mut l = JobLimiter::new(4 * PAGE as u64);
        assert!(!l.memory_growing(4 * PAGE, 5 * PAGE, None).unwrap());
        assert!(l.memory_denied());
        assert_eq!(l.limit(), 4 * PAGE as u64);
    }
}
