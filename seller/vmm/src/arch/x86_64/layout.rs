//! Guest physical memory layout.
//!
//! ```text
//! 0x0000_0500  GDT for the 64-bit Linux entry
//! 0x0000_6000  PVH hvm_start_info, memory map at +0x100, module list at +0x800
//! 0x0000_7000  Linux boot_params ("zero page")
//! 0x0000_8ff0  boot stack for the 64-bit Linux entry
//! 0x0000_9000  identity page tables (PML4, PDPT, 4 PDs) for the 64-bit entry
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (reserved in e820)
//! 0x0010_0000  kernel
//! ...          initrd at the top of low RAM
//! 0xc000_0000  PCI MMIO window (virtio BARs), up to the IOAPIC
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! 0x1_0000_0000 RAM above the gap when the guest has more than 3 GiB
//! ```

/// GDT used for the 64-bit Linux entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) used for the 64-bit Linux entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6800;
/// Linux `boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories of the boot identity map (4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we load, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA-like area holding the MP table.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of the usable RAM below 1 MiB.
pub const EBDA_END: u64 = 0xa0000;
/// Where kernels are loaded ("high memory").
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// PCI memory window for device BARs (inside the gap, below the IOAPIC).
pub const PCI_MMIO_START: u64 = MMIO_GAP_START;
/// Size of the PCI memory window.
pub const PCI_MMIO_SIZE: u64 = 0x1000_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// LAPIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS region (3 pages) for real-mode emulation on Intel.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

// The boot structures must not overlap; checked at compile time.
const _: () = {
    assert!(PVH_MODLIST_START + 0x100 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= MPTABLE_START);
    assert!(PCI_MMIO_START + PCI_MMIO_SIZE <= IOAPIC_START);
};

/// RAM ranges for a guest of `mem_bytes`, split around the MMIO gap.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_ranges_skip_the_mmio_gap() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (1 << 32, 1 << 30)]);
    }
}
