//! Sliding-window replay protection for 64-bit transport counters.
//!
//! A ring of bit blocks as in RFC 6479: counters older than the window are
//! rejected, counters inside it are accepted once. `check` runs before the
//! AEAD (cheap rejection), `update` only after authentication succeeded so a
//! forged packet can never move the window.

/// Bits per block.
const BLOCK_BITS: u64 = 64;
/// Blocks in the ring.
const BLOCKS: usize = 128;
/// Counters this far behind the greatest accepted one are still accepted
/// (one block is kept as slack for the ring rotation).
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;
/// Counters at or above this are never valid (WireGuard's REJECT_AFTER_MESSAGES).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Replay state of one receiving session.
#[derive(Clone)]
pub struct ReplayWindow {
    greatest: u64,
    any: bool,
    bits: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            greatest: 0,
            any: false,
            bits: [0; BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` could be fresh; does not change the window.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if !self.any || counter > self.greatest {
            return true;
        }
        if self.greatest - counter >= WINDOW {
            return false;
        }
        let block = ((counter / BLOCK_BITS) as usize) % BLOCKS;
        self.bits[block] & (1 << (counter % BLOCK_BITS)) == 0
    }

    /// Marks `counter` as seen; false if it was a replay or too old.
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let block = counter / BLOCK_BITS;
        if !self.any || counter > self.greatest {
            let current = if self.any {
                self.greatest / BLOCK_BITS
            } else {
                block.wrapping_sub(BLOCKS as u64)
            };
            let advance = block.wrapping_sub(current).min(BLOCKS as u64);
            for i in 1..=advance {
                self.bits[(current.wrapping_add(i) as usize) % BLOCKS] = 0;
            }
            self.greatest = counter;
            self.any = true;
        }
        self.bits[(block as usize) % BLOCKS] |= 1 << (counter % BLOCK_BITS);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicate_is_rejected() {
        let mut w = ReplayWindow::default();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(5));
        assert!(!w.check(5));
    }

    #[test]
    fn reordered_within_window_is_accepted_once() {
        let mut w = ReplayWindow::default();
        assert!(w.update(3000));
        for c in (3000 - 2048..3000).rev() {
            assert!(w.update(c), "counter {c}");
            assert!(!w.update(c));
        }
    }

    #[test]
    fn too_old_is_rejected() {
        let mut w = ReplayWindow::default();
        assert!(w.update(WINDOW + 100));
        assert!(!w.check(99));
        assert!(!w.update(100));
        assert!(w.update(101));
    }

    #[test]
    fn huge_jump_clears_ring() {
        let mut w = ReplayWindow::default();
        for c in 0..100 {
            assert!(w.update(c));
        }
        assert!(w.update(1_000_000));
        assert!(w.update(1_000_000 - 64 * 5));
        assert!(!w.update(50));
    }

    #[test]
    fn counters_at_reject_limit_are_rejected() {
        let mut w = ReplayWindow::default();
        assert!(!w.update(REJECT_AFTER_MESSAGES));
        assert!(!w.update(u64::MAX));
    }

    proptest! {
        /// Against a model: a counter is accepted iff it is unseen and not
        /// older than WINDOW behind the greatest accepted so far.
        #[test]
        fn matches_set_model(steps in proptest::collection::vec(0u64..20_000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut greatest: Option<u64> = None;
            for c in steps {
                let fresh = !seen.contains(&c) && greatest.is_none_or(|g| c > g || g - c < WINDOW);
                prop_assert_eq!(w.update(c), fresh, "counter {}", c);
                if fresh {
                    seen.insert(c);
                    greatest = Some(greatest.map_or(c, |g| g.max(c)));
                }
            }
        }
    }
}
