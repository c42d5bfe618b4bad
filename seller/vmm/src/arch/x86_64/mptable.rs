//! Intel MultiProcessor Specification 1.4 table: lets a guest kernel without
//! ACPI find every vCPU, the IOAPIC and how PCI INTx lines are routed.

use super::layout;

/// Most vCPUs whose entries fit in the 1 KiB reserved for the table.
pub const MAX_VCPUS: u8 = 32;
/// IOAPIC version KVM's in-kernel IOAPIC reports.
const IOAPIC_VERSION: u8 = 0x11;
/// LAPIC version KVM reports.
const LAPIC_VERSION: u8 = 0x14;
/// Interrupt flags: polarity active high (01), trigger edge (01).
const IRQ_FLAGS_EDGE_HIGH: u16 = 0x5;
const BUS_PCI: u8 = 0;
const BUS_ISA: u8 = 1;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table has room for.
    #[error("{vcpus} vCPUs requested; the MP table holds at most {max}")]
    TooManyVcpus {
        /// Requested.
        vcpus: u8,
        /// Limit.
        max: u8,
    },
}

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)))
}

/// Builds the floating pointer and configuration table to be placed at
/// [`layout::MPTABLE_START`]. `pci_irqs` maps PCI device numbers (INTA#) to
/// IOAPIC pins. The IOAPIC gets id `vcpus` (ids 0..vcpus are the LAPICs).
pub fn build(vcpus: u8, pci_irqs: &[(u8, u8)]) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::TooManyVcpus {
            vcpus,
            max: MAX_VCPUS,
        });
    }
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus {
        let flags = 1 | if id == 0 { 2 } else { 0 };
        entries.extend_from_slice(&[0, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    for (id, name) in [(BUS_PCI, b"PCI   "), (BUS_ISA, b"ISA   ")] {
        entries.extend_from_slice(&[1, id]);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 1;
    // ISA IRQs 0-15 to IOAPIC pins 0-15, "conforms to bus" flags; pin 0 is
    // ExtINT (the 8259), as on PC hardware.
    for irq in 0..16u8 {
        let kind = if irq == 0 { 3 } else { 0 };
        entries.extend_from_slice(&[3, kind, 0, 0, BUS_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    for &(dev, pin) in pci_irqs {
        let [f0, f1] = IRQ_FLAGS_EDGE_HIGH.to_le_bytes();
        entries.extend_from_slice(&[3, 0, f0, f1, BUS_PCI, dev << 2, ioapic_id, pin]);
        count += 1;
    }
    // LINT0 = ExtINT, LINT1 = NMI on every LAPIC.
    entries.extend_from_slice(&[4, 3, 0, 0, BUS_ISA, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, BUS_ISA, 0, 0xff, 1]);
    count += 2;

    let table_addr = layout::MPTABLE_START as u32 + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"CPUSHARE");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts_match_the_spec() {
        let t = build(4, &[(1, 10), (2, 11)]).unwrap();
        assert!(t.len() as u64 <= layout::EBDA_END - layout::MPTABLE_START);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[0..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let cfg = &t[16..];
        assert_eq!(&cfg[0..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        // 4 CPUs, 2 buses, 1 IOAPIC, 16 ISA, 2 PCI, 2 local.
        assert_eq!(count, 4 + 2 + 1 + 16 + 2 + 2);
        // First processor entry is the enabled BSP.
        assert_eq!(&cfg[44..48], &[0, 0, LAPIC_VERSION, 3]);
    }

    #[test]
    fn the_largest_table_fits_the_reserved_area() {
        let t = build(MAX_VCPUS, &[(1, 10), (2, 11), (3, 12)]).unwrap();
        assert!(t.len() as u64 <= layout::EBDA_END - layout::MPTABLE_START);
        assert!(build(MAX_VCPUS + 1, &[]).is_err());
        assert!(build(0, &[]).is_err());
    }
}
