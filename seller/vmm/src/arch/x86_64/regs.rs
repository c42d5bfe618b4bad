//! Initial vCPU register state for the two entry protocols: PVH (32-bit
//! protected mode, paging off) and the Linux 64-bit boot protocol (long
//! mode, identity-mapped, `boot_params` in `%rsi`).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Linux boot protocol segment selectors (`__BOOT_CS`, `__BOOT_DS`).
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The GDT, IDT or page tables did not fit in guest memory.
    #[error("writing boot {what} at {addr:#x} failed: guest memory too small")]
    BootStructure {
        /// Which structure.
        what: &'static str,
        /// Where.
        addr: u64,
    },
}

/// How a vCPU enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode at `entry`, `%ebx` = `hvm_start_info`.
    Pvh {
        /// Entry point.
        entry: u64,
    },
    /// Linux 64-bit protocol: long mode at `entry`, `%rsi` = `boot_params`.
    Linux64 {
        /// Entry point.
        entry: u64,
    },
}

/// Packs a GDT entry from base, limit and the flags/access bits
/// (`flags` = G, D/B, L, AVL in the high nibble, access byte in the low byte).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
        | ((limit as u64 & 0xf_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// Unpacks a GDT entry into the segment KVM wants.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// General registers at entry.
pub fn regs(mode: EntryMode) -> kvm_regs {
    match mode {
        EntryMode::Pvh { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: layout::PVH_INFO_START,
            ..Default::default()
        },
        EntryMode::Linux64 { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: layout::BOOT_STACK_POINTER,
            rbp: layout::BOOT_STACK_POINTER,
            rsi: layout::ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// FPU state at entry: default control word and MXCSR, as after `FNINIT`.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Special registers at entry; for the 64-bit entry this also writes the
/// GDT and identity page tables into guest memory.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    match mode {
        EntryMode::Pvh { .. } => {
            // PVH spec: flat 4 GiB code (0x8) and data segments, CR0.PE, no paging.
            let code = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 0x8);
            let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 0x10);
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 { .. } => {
            let gdt = [
                0,
                0,
                gdt_entry(0xa09b, 0, 0xfffff),
                gdt_entry(0xc093, 0, 0xfffff),
                gdt_entry(0x808b, 0, 0xfffff),
            ];
            for (i, e) in gdt.iter().enumerate() {
                let addr = layout::BOOT_GDT_START + 8 * i as u64;
                mem.write_obj(*e, GuestAddress(addr))
                    .map_err(|_| RegsError::BootStructure { what: "GDT", addr })?;
            }
            mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
                .map_err(|_| RegsError::BootStructure {
                    what: "IDT",
                    addr: layout::BOOT_IDT_START,
                })?;
            sregs.gdt.base = layout::BOOT_GDT_START;
            sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
            sregs.idt.base = layout::BOOT_IDT_START;
            sregs.idt.limit = 7;
            let code = segment_from_gdt(gdt[2], BOOT_CS);
            let data = segment_from_gdt(gdt[3], BOOT_DS);
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = segment_from_gdt(gdt[4], BOOT_TSS);
            write_identity_map(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// Identity-maps the first 4 GiB with 2 MiB pages (one PML4 entry, four
/// PDPT entries, four page directories).
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |addr| RegsError::BootStructure {
        what: "page tables",
        addr,
    };
    mem.write_obj(layout::PDPTE_START | 0x3, GuestAddress(layout::PML4_START))
        .map_err(|_| err(layout::PML4_START))?;
    for i in 0..4u64 {
        let pd = layout::PDE_START + i * 0x1000;
        let a = layout::PDPTE_START + i * 8;
        mem.write_obj(pd | 0x3, GuestAddress(a))
            .map_err(|_| err(a))?;
        let mut table = [0u64; 512];
        for (j, e) in table.iter_mut().enumerate() {
            *e = ((i * 512 + j as u64) << 21) | 0x83;
        }
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(pd))
            .map_err(|_| err(pd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entry_round_trips_through_segment() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = segment_from_gdt(e, 0x10);
        assert_eq!(
            (s.type_, s.l, s.db, s.g, s.present, s.s),
            (0xb, 1, 0, 1, 1, 1)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        let d = segment_from_gdt(gdt_entry(0xc093, 0x1234_5678, 0xfffff), 0x18);
        assert_eq!(d.base, 0x1234_5678);
        assert_eq!(d.db, 1);
    }

    #[test]
    fn linux64_entry_writes_identity_map() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, EntryMode::Linux64 { entry: 0x200000 }, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let pde1: u64 = mem.read_obj(GuestAddress(layout::PDE_START + 8)).unwrap();
        assert_eq!(pde1, (1 << 21) | 0x83);
        let last: u64 = mem
            .read_obj(GuestAddress(layout::PDE_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last, (2047u64 << 21) | 0x83);
        assert_eq!(sregs.cs.selector, BOOT_CS);
        let r = regs(EntryMode::Linux64 { entry: 0x200000 });
        assert_eq!(r.rsi, layout::ZERO_PAGE_START);
    }

    #[test]
    fn pvh_entry_is_flat_protected_mode() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, EntryMode::Pvh { entry: 0x100000 }, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.cs.l, 0);
        assert_eq!(
            regs(EntryMode::Pvh { entry: 0x100000 }).rbx,
            layout::PVH_INFO_START
        );
    }
}
