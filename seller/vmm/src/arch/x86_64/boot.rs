//! Loading a kernel, initrd and command line, and writing what the entry
//! protocol expects: PVH `hvm_start_info` (ELF with a PVH note) or Linux
//! `boot_params` with an e820 map (bzImage, or ELF without the note).

use std::io::Cursor;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kernel_image::{self, KernelImage, Unbootable, BOOT_FLAG_MAGIC, HDR_MAGIC};
use super::layout;
use super::regs::EntryMode;

/// `hvm_start_info.magic` ("xEn3" with the top bit of each byte cleared).
const PVH_MAGIC: u32 = 0x336e_c578;
/// e820 / PVH memory map type: usable RAM.
const E820_RAM: u32 = 1;
/// e820 / PVH memory map type: reserved.
const E820_RESERVED: u32 = 2;
/// `type_of_loader` "undefined" (we have no assigned id).
const LOADER_OTHER: u8 = 0xff;
/// Default `initrd_addr_max` for kernels that do not state one.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors loading the boot payload.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel is not an image this VMM can start.
    #[error("the kernel cannot boot here: it is {0}")]
    Unbootable(#[from] Unbootable),
    /// The loader refused a kernel that looked bootable.
    #[error("the kernel could not be loaded: {reason}")]
    BadKernel {
        /// What the loader said.
        reason: String,
    },
    /// The kernel is larger than guest memory.
    #[error("the kernel is {size} bytes but the guest has {mem} bytes of memory")]
    KernelTooLarge {
        /// Kernel size.
        size: u64,
        /// Guest memory.
        mem: u64,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("the initrd is {size} bytes but only {room} bytes are free above the kernel; give the VM more memory")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Room available.
        room: u64,
    },
    /// The command line is too long.
    #[error("kernel command line of {len} bytes exceeds {max}")]
    CmdlineTooLong {
        /// Length including the NUL.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineHasNul,
    /// Writing a boot structure failed.
    #[error("writing {what} into guest memory failed")]
    GuestWrite {
        /// What.
        what: &'static str,
    },
}

/// What the vCPUs need after loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// How the boot vCPU enters.
    pub entry: EntryMode,
    /// Where the initrd went (address, size).
    pub initrd: Option<(u64, u64)>,
}

/// The guest memory map as (start, size, type), e820 semantics.
pub fn memory_map(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::MPTABLE_START, E820_RAM),
        (
            layout::MPTABLE_START,
            layout::EBDA_END - layout::MPTABLE_START,
            E820_RESERVED,
        ),
    ];
    for (start, size) in layout::ram_ranges(mem_bytes) {
        let (s, sz) = if start == 0 {
            (
                layout::HIMEM_START,
                size.saturating_sub(layout::HIMEM_START),
            )
        } else {
            (start, size)
        };
        if sz > 0 {
            map.push((s, sz, E820_RAM));
        }
    }
    map
}

/// Loads kernel, initrd and command line into `mem` (of `mem_bytes`).
pub fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<Loaded, BootError> {
    if kernel.len() as u64 > mem_bytes {
        return Err(BootError::KernelTooLarge {
            size: kernel.len() as u64,
            mem: mem_bytes,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineHasNul);
    }
    if cmdline.len() + 1 > layout::CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len() + 1,
            max: layout::CMDLINE_MAX_SIZE,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|_| BootError::GuestWrite {
            what: "command line",
        })?;

    let himem = Some(GuestAddress(layout::HIMEM_START));
    let is_elf = kernel_image::identify(kernel)? == KernelImage::Elf64;
    let result = if is_elf {
        Elf::load(mem, None, &mut Cursor::new(kernel), himem)
    } else {
        BzImage::load(mem, None, &mut Cursor::new(kernel), himem)
    }
    .map_err(|e| BootError::BadKernel {
        reason: e.to_string(),
    })?;

    let low_end = mem_bytes.min(layout::MMIO_GAP_START);
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
        _ => None,
    };
    let initrd_max = match (&result.setup_header, pvh_entry) {
        (Some(h), None) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max) + 1,
        (_, None) => DEFAULT_INITRD_ADDR_MAX + 1,
        (_, Some(_)) => low_end,
    };
    let initrd_at = match initrd {
        Some(data) => Some(load_initrd(
            mem,
            data,
            result.kernel_end,
            low_end.min(initrd_max),
        )?),
        None => None,
    };

    let entry = match pvh_entry {
        Some(entry) => {
            write_pvh_info(mem, mem_bytes, initrd_at)?;
            EntryMode::Pvh { entry }
        }
        None => {
            let mut params = boot_params::default();
            if let Some(h) = result.setup_header {
                params.hdr = h;
            } else {
                params.hdr.boot_flag = BOOT_FLAG_MAGIC;
                params.hdr.header = HDR_MAGIC;
                params.hdr.kernel_alignment = 0x0100_0000;
            }
            fill_boot_params(&mut params, mem_bytes, cmdline.len() as u32, initrd_at);
            mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
                .map_err(|_| BootError::GuestWrite {
                    what: "boot_params",
                })?;
            // bzImage: the 64-bit entry `startup_64` sits 0x200 into the
            // protected-mode code (Documentation/arch/x86/boot.rst).
            let entry = if is_elf {
                result.kernel_load.0
            } else {
                result.kernel_load.0 + 0x200
            };
            EntryMode::Linux64 { entry }
        }
    };
    Ok(Loaded {
        entry,
        initrd: initrd_at,
    })
}

/// Puts the initrd page-aligned as high as allowed, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    data: &[u8],
    kernel_end: u64,
    top: u64,
) -> Result<(u64, u64), BootError> {
    let size = data.len() as u64;
    let floor = kernel_end.max(layout::HIMEM_START);
    let room = top.saturating_sub(floor);
    if size > room {
        return Err(BootError::InitrdTooLarge { size, room });
    }
    let addr = (top - size) & !0xfff;
    if addr < floor {
        return Err(BootError::InitrdTooLarge { size, room });
    }
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|_| BootError::GuestWrite { what: "initrd" })?;
    Ok((addr, size))
}

/// Fills the parts of `boot_params` a loader owns (boot.rst, "Details of
/// header fields"), plus the e820 map.
pub fn fill_boot_params(
    params: &mut boot_params,
    mem_bytes: u64,
    cmdline_len: u32,
    initrd: Option<(u64, u64)>,
) {
    params.hdr.type_of_loader = LOADER_OTHER;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = memory_map(mem_bytes);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map = memory_map(mem_bytes);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
            reserved: 0,
        };
        let at =
            layout::PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(e, GuestAddress(at))
            .map_err(|_| BootError::GuestWrite {
                what: "PVH memory map",
            })?;
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(layout::PVH_MODLIST_START))
            .map_err(|_| BootError::GuestWrite {
                what: "PVH module list",
            })?;
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(layout::PVH_INFO_START))
        .map_err(|_| BootError::GuestWrite {
            what: "PVH start info",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::ByteValued;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn boot_params_bytes_match_the_boot_protocol_offsets() {
        let mut p = boot_params::default();
        fill_boot_params(&mut p, 64 << 20, 5, Some((0x300_0000, 0x1234)));
        let b = p.as_slice();
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(b[0x1e8], 3, "e820_entries");
        assert_eq!(u16::from_le_bytes([b[0x1fe], b[0x1ff]]), 0xaa55);
        assert_eq!(&b[0x202..0x206], b"HdrS");
        assert_eq!(b[0x210], 0xff, "type_of_loader");
        assert_eq!(
            u32::from_le_bytes(b[0x218..0x21c].try_into().unwrap()),
            0x300_0000
        );
        assert_eq!(
            u32::from_le_bytes(b[0x21c..0x220].try_into().unwrap()),
            0x1234
        );
        assert_eq!(
            u32::from_le_bytes(b[0x228..0x22c].try_into().unwrap()),
            0x20000
        );
        assert_eq!(u32::from_le_bytes(b[0x238..0x23c].try_into().unwrap()), 5);
        // e820 table at 0x2d0, 20-byte entries: addr, size, type.
        let e = |i: usize| {
            let o = 0x2d0 + 20 * i;
            (
                u64::from_le_bytes(b[o..o + 8].try_into().unwrap()),
                u64::from_le_bytes(b[o + 8..o + 16].try_into().unwrap()),
                u32::from_le_bytes(b[o + 16..o + 20].try_into().unwrap()),
            )
        };
        assert_eq!(e(0), (0, 0x9fc00, 1));
        assert_eq!(e(1), (0x9fc00, 0x400, 2));
        assert_eq!(e(2), (0x10_0000, (64 << 20) - 0x10_0000, 1));
    }

    #[test]
    fn memory_map_above_gap_has_high_ram() {
        let m = memory_map(6 << 30);
        assert_eq!(m.last(), Some(&(1 << 32, 3 << 30, E820_RAM)));
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let m = mem(16 << 20);
        let e = load(&m, 16 << 20, &[0x55; 4096], None, "").unwrap_err();
        assert!(
            matches!(e, BootError::Unbootable(Unbootable::Unknown)),
            "{e}"
        );
        // ELF64 x86-64 by its header, but nothing a loader can use.
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(18, 0);
        elf.extend([0x3e, 0, 0xff, 0xff]);
        let e = load(&m, 16 << 20, &elf, None, "").unwrap_err();
        assert!(matches!(e, BootError::BadKernel { .. }), "{e}");
    }

    #[test]
    fn oversized_inputs_are_rejected_with_sizes() {
        let m = mem(1 << 20);
        let e = load(&m, 1 << 20, &vec![0; 2 << 20], None, "").unwrap_err();
        assert!(matches!(e, BootError::KernelTooLarge { .. }), "{e}");
        let e = load(&m, 1 << 20, b"x", None, &"a".repeat(5000)).unwrap_err();
        assert!(matches!(e, BootError::CmdlineTooLong { .. }), "{e}");
        let e = load_initrd(&m, &vec![0; 2 << 20], 0x20_0000, 1 << 20).unwrap_err();
        assert!(matches!(e, BootError::InitrdTooLarge { .. }), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn random_kernels_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let m = mem(4 << 20);
            let _ = load(&m, 4 << 20, &data, Some(&[1, 2, 3]), "console=ttyS0");
        }
    }
}
