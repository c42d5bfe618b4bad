//! KVM's coalesced I/O ring: guest writes to a registered port that KVM
//! queues in a page shared with the VMM instead of leaving the guest; the
//! VMM replays them on the device, in order, before it handles the next
//! exit (`KVM_REGISTER_COALESCED_MMIO` in the KVM API documentation).
//!
//! On a console the guest polls (it reads the line status, then writes a
//! byte), this halves the exits per printed byte.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};

/// Bytes before the first entry: the `first` and `last` indices.
const HEADER: usize = std::mem::size_of::<kvm_coalesced_mmio_ring>();
/// Bytes per entry.
const ENTRY: usize = std::mem::size_of::<kvm_coalesced_mmio>();
/// Offsets inside an entry (`struct kvm_coalesced_mmio`).
const ENTRY_ADDR: usize = 0;
const ENTRY_LEN: usize = 8;
const ENTRY_PIO: usize = 12;
const ENTRY_DATA: usize = 16;

/// One write the guest made without leaving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedWrite {
    /// The port (`pio`) or guest-physical address.
    pub addr: u64,
    /// Whether `addr` is an I/O port.
    pub pio: bool,
    /// The bytes, `len` of them valid.
    pub data: [u8; 8],
    /// How many bytes were written (1 to 8).
    pub len: u8,
}

impl QueuedWrite {
    /// The bytes written.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

/// The ring page, mapped from a vCPU fd (the ring is the VM's; every vCPU
/// fd maps the same page). Its one consumer must hold it exclusively
/// (`&mut`); KVM adds entries concurrently from any vCPU.
pub struct CoalescedRing {
    page: NonNull<u8>,
    page_size: usize,
    /// Entries in the ring (`KVM_COALESCED_MMIO_MAX`).
    slots: u32,
    /// Whether `page` is our mmap (unmapped on drop).
    mapped: bool,
}

// SAFETY: the ring is a plain shared-memory page; the pointer stays valid
// until drop, and all access goes through `&mut self`.
unsafe impl Send for CoalescedRing {}

impl CoalescedRing {
    /// Maps the ring page of the VM through `vcpu` (any of its vCPU fds).
    pub fn map(vcpu: &impl AsRawFd) -> std::io::Result<Self> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n >= 4096 => n as usize,
            _ => return Err(std::io::Error::other("cannot read the page size")),
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a new shared mapping of one page of the vCPU fd, at an
        // address the kernel picks; nothing else refers to it yet.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("null map"))?;
        Ok(Self {
            page,
            page_size,
            slots: ((page_size - HEADER) / ENTRY) as u32,
            mapped: true,
        })
    }

    /// Index words: 0 = `first` (ours to advance), 1 = `last` (KVM's).
    fn index(&self, i: usize) -> *mut u32 {
        // SAFETY: both indices are inside the mapped page's header.
        unsafe { self.page.as_ptr().cast::<u32>().add(i) }
    }

    /// Whether writes are waiting.
    pub fn pending(&self) -> bool {
        // SAFETY: aligned words of the live page; volatile because KVM
        // writes `last` concurrently.
        unsafe { self.index(0).read_volatile() != self.index(1).read_volatile() }
    }

    /// Hands every queued write to `f`, oldest first, and frees its slot.
    pub fn drain(&mut self, mut f: impl FnMut(QueuedWrite)) {
        // SAFETY: aligned word of the live page (see `pending`).
        let last = unsafe { self.index(1).read_volatile() };
        // Entries up to `last` were written before `last` was published.
        fence(Ordering::Acquire);
        // SAFETY: as above; only this consumer writes `first`.
        let mut first = unsafe { self.index(0).read_volatile() };
        if last >= self.slots || first >= self.slots {
            // Not a state KVM produces; drop everything rather than read
            // outside the page.
            // SAFETY: as above.
            unsafe { self.index(0).write_volatile(last) };
            return;
        }
        while first != last {
            let at = HEADER + first as usize * ENTRY;
            // SAFETY: `first < slots`, so the entry lies inside the page;
            // unaligned reads because the layout is KVM's, not Rust's.
            let w = unsafe {
                let e = self.page.as_ptr().add(at);
                let len = e.add(ENTRY_LEN).cast::<u32>().read_volatile();
                QueuedWrite {
                    addr: e.add(ENTRY_ADDR).cast::<u64>().read_volatile(),
                    pio: e.add(ENTRY_PIO).cast::<u32>().read_volatile() != 0,
                    data: e.add(ENTRY_DATA).cast::<[u8; 8]>().read_volatile(),
                    len: len.min(8) as u8,
                }
            };
            first = (first + 1) % self.slots;
            // The entry is read before KVM may reuse its slot.
            fence(Ordering::Release);
            // SAFETY: as above.
            unsafe { self.index(0).write_volatile(first) };
            f(w);
        }
    }

    /// A ring over a page that is not KVM's, for tests of the consumer.
    #[cfg(test)]
    pub(crate) fn over(page: &mut [u64; 512]) -> Self {
        Self {
            page: NonNull::new(page.as_mut_ptr().cast()).unwrap(),
            page_size: 4096,
            slots: ((4096 - HEADER) / ENTRY) as u32,
            mapped: false,
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: our own mapping of `page_size` bytes, unused after this.
            unsafe {
                libc::munmap(self.page.as_ptr().cast(), self.page_size);
            }
        }
    }
}

/// Appends an entry the way KVM does (`coalesced_mmio_write`).
#[cfg(test)]
pub(crate) fn produce(page: &mut [u64; 512], port: u64, byte: u8) {
    // SAFETY: the same 4096 bytes, viewed as bytes.
    let bytes: &mut [u8; 4096] = unsafe { &mut *(page as *mut [u64; 512]).cast() };
    let slots = ((4096 - HEADER) / ENTRY) as u32;
    let last = u32::from_ne_bytes(bytes[4..8].try_into().unwrap());
    let at = HEADER + last as usize * ENTRY;
    bytes[at..at + 8].copy_from_slice(&port.to_ne_bytes());
    bytes[at + 8..at + 12].copy_from_slice(&1u32.to_ne_bytes());
    bytes[at + 12..at + 16].copy_from_slice(&1u32.to_ne_bytes());
    bytes[at + 16] = byte;
    bytes[4..8].copy_from_slice(&((last + 1) % slots).to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_in_order_across_the_wrap() {
        let mut page = [0u64; 512];
        let slots = ((4096 - HEADER) / ENTRY) as u32;
        assert_eq!(slots, 170);
        let mut got = Vec::new();
        // Three rounds push the indices past the end of the ring.
        for round in 0..3u8 {
            for i in 0..100u8 {
                produce(&mut page, 0x3f8, round.wrapping_mul(100).wrapping_add(i));
            }
            let mut ring = CoalescedRing::over(&mut page);
            assert!(ring.pending());
            ring.drain(|w| {
                assert!(w.pio);
                assert_eq!(w.addr, 0x3f8);
                got.push(w.bytes()[0]);
            });
            assert!(!ring.pending());
        }
        let want: Vec<u8> = (0..3u8)
            .flat_map(|r| (0..100u8).map(move |i| r.wrapping_mul(100).wrapping_add(i)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn out_of_range_indices_are_dropped_not_read() {
        let mut page = [0u64; 512];
        page[0] = u64::from(500u32) << 32; // last = 500, past the ring
        let mut ring = CoalescedRing::over(&mut page);
        let mut n = 0;
        ring.drain(|_| n += 1);
        assert_eq!(n, 0);
        assert!(!ring.pending());
    }
}
