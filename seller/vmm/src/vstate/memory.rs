//! Guest RAM: anonymous mmap regions from `vm-memory`, split around the
//! 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;

/// Smallest guest we build (room for boot structures and a small kernel).
pub const MIN_MEM_BYTES: u64 = 16 << 20;
/// Largest guest we build.
pub const MAX_MEM_BYTES: u64 = 1 << 40;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Size out of range or not page-aligned.
    #[error("guest memory of {bytes} bytes is invalid: give a multiple of 4 KiB between {min} and {max}")]
    BadSize {
        /// Requested.
        bytes: u64,
        /// Minimum.
        min: u64,
        /// Maximum.
        max: u64,
    },
    /// mmap failed.
    #[error("allocating {bytes} bytes of guest memory failed: {reason}")]
    Allocation {
        /// Requested.
        bytes: u64,
        /// mmap's error.
        reason: String,
    },
}

/// Allocates guest RAM of `bytes`.
pub fn create(bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&bytes) || bytes % 4096 != 0 {
        return Err(MemoryError::BadSize {
            bytes,
            min: MIN_MEM_BYTES,
            max: MAX_MEM_BYTES,
        });
    }
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(bytes)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocation {
        bytes,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(create(1 << 20), Err(MemoryError::BadSize { .. })));
        assert!(matches!(
            create((64 << 20) + 1),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(create(64 << 20).is_ok());
    }
}
