//! What a kernel image is, told from its first bytes before anything is
//! loaded, so that a kernel this VMM cannot start is refused with the
//! reason instead of faulting in the guest.
//!
//! The VMM enters a guest in 64-bit mode (Linux's 64-bit boot protocol) or
//! through PVH, so it boots ELF64 x86-64 images and bzImages that have a
//! 64-bit entry point: boot protocol 2.12 or later with `XLF_KERNEL_64`
//! in `xloadflags` (Documentation/arch/x86/boot.rst). Every x86-64 Linux
//! since 3.8 is such a bzImage; a 32-bit kernel, or a real-mode-only image
//! such as iPXE's `.lkrn`, is not.

/// Bytes of an image that [`identify`] reads (the bzImage setup header
/// ends before this offset).
pub const HEAD_BYTES: usize = 0x280;

/// `setup_header.boot_flag`.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `setup_header.header` ("HdrS", little-endian).
pub const HDR_MAGIC: u32 = 0x5372_6448;
/// `e_machine` of x86-64 ELF files.
const EM_X86_64: u16 = 0x3e;
/// `ELFCLASS64`.
const ELFCLASS64: u8 = 2;
/// Offset of `setup_header.boot_flag` (0xAA55).
const BOOT_FLAG_AT: usize = 0x1fe;
/// Offset of `setup_header.header` ("HdrS").
const HEADER_AT: usize = 0x202;
/// Offset of `setup_header.version`.
const VERSION_AT: usize = 0x206;
/// Offset of `setup_header.loadflags`.
const LOADFLAGS_AT: usize = 0x211;
/// Offset of `setup_header.xloadflags` (protocol 2.12+).
const XLOADFLAGS_AT: usize = 0x236;
/// `loadflags`: the protected-mode code loads at 1 MiB (a bzImage).
const LOADED_HIGH: u8 = 1;
/// `xloadflags`: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// First boot protocol with `xloadflags`.
const PROTOCOL_64BIT_ENTRY: u16 = 0x020c;

/// A kernel image this VMM can boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelImage {
    /// An ELF64 x86-64 file (with or without a PVH note).
    Elf64,
    /// A bzImage with a 64-bit entry point.
    BzImage {
        /// Boot protocol version (`0x020f` is 2.15).
        protocol: u16,
    },
}

/// Why a kernel image cannot boot here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unbootable {
    /// A 32-bit ELF.
    #[error("a 32-bit ELF; this VMM boots 64-bit x86 kernels")]
    Elf32,
    /// An ELF for another machine.
    #[error("an ELF for machine {machine:#x}, not x86-64")]
    ElfMachine {
        /// `e_machine`.
        machine: u16,
    },
    /// A file too short for the header its magic promises.
    #[error("a truncated {what} header ({len} bytes)")]
    Truncated {
        /// Which header.
        what: &'static str,
        /// Bytes there were.
        len: usize,
    },
    /// A bzImage from before the 64-bit entry point existed.
    #[error(
        "a bzImage of boot protocol {}.{}, older than 2.12, so it has no 64-bit entry point",
        protocol >> 8,
        protocol & 0xff
    )]
    OldProtocol {
        /// Boot protocol version.
        protocol: u16,
    },
    /// A bzImage without a 64-bit entry point: a 32-bit kernel.
    #[error("a bzImage without a 64-bit entry point (a 32-bit kernel); this VMM boots 64-bit x86 kernels")]
    No64BitEntry,
    /// A zImage, loaded below 1 MiB.
    #[error("a zImage, which loads below 1 MiB; only bzImages are supported")]
    ZImage,
    /// Nothing recognisable.
    #[error("neither an ELF nor a bzImage (no ELF magic, and no \"HdrS\" setup header at 0x202)")]
    Unknown,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Tells what `head`, the first bytes of an image (at least
/// [`HEAD_BYTES`] of them when the image is that long), is.
pub fn identify(head: &[u8]) -> Result<KernelImage, Unbootable> {
    if head.starts_with(b"\x7fELF") {
        if head.len() < 20 {
            return Err(Unbootable::Truncated {
                what: "ELF",
                len: head.len(),
            });
        }
        if head[4] != ELFCLASS64 {
            return Err(Unbootable::Elf32);
        }
        let machine = u16_at(head, 18);
        if machine != EM_X86_64 {
            return Err(Unbootable::ElfMachine { machine });
        }
        return Ok(KernelImage::Elf64);
    }
    let has_setup_header = head.len() >= HEADER_AT + 4
        && u16_at(head, BOOT_FLAG_AT) == BOOT_FLAG_MAGIC
        && head[HEADER_AT..HEADER_AT + 4] == HDR_MAGIC.to_le_bytes();
    if !has_setup_header {
        return Err(Unbootable::Unknown);
    }
    if head.len() < XLOADFLAGS_AT + 2 {
        return Err(Unbootable::Truncated {
            what: "bzImage setup",
            len: head.len(),
        });
    }
    let protocol = u16_at(head, VERSION_AT);
    if protocol < PROTOCOL_64BIT_ENTRY {
        return Err(Unbootable::OldProtocol { protocol });
    }
    if head[LOADFLAGS_AT] & LOADED_HIGH == 0 {
        return Err(Unbootable::ZImage);
    }
    if u16_at(head, XLOADFLAGS_AT) & XLF_KERNEL_64 == 0 {
        return Err(Unbootable::No64BitEntry);
    }
    Ok(KernelImage::BzImage { protocol })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A setup header as boot.rst lays it out.
    fn bzimage(protocol: u16, loadflags: u8, xloadflags: u16) -> Vec<u8> {
        let mut b = vec![0u8; HEAD_BYTES];
        b[BOOT_FLAG_AT..BOOT_FLAG_AT + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        b[HEADER_AT..HEADER_AT + 4].copy_from_slice(b"HdrS");
        b[VERSION_AT..VERSION_AT + 2].copy_from_slice(&protocol.to_le_bytes());
        b[LOADFLAGS_AT] = loadflags;
        b[XLOADFLAGS_AT..XLOADFLAGS_AT + 2].copy_from_slice(&xloadflags.to_le_bytes());
        b
    }

    fn elf(class: u8, machine: u16) -> Vec<u8> {
        let mut b = b"\x7fELF".to_vec();
        b.extend([class, 1, 1, 0]);
        b.resize(18, 0);
        b.extend(machine.to_le_bytes());
        b.resize(64, 0);
        b
    }

    #[test]
    fn x86_64_kernels_of_both_formats_are_accepted() {
        assert_eq!(identify(&elf(2, 0x3e)), Ok(KernelImage::Elf64));
        // Debian 12's kernel: protocol 2.15, xloadflags 0x7f.
        assert_eq!(
            identify(&bzimage(0x020f, 0x81, 0x7f)),
            Ok(KernelImage::BzImage { protocol: 0x020f })
        );
    }

    #[test]
    fn each_kind_of_unbootable_image_is_named() {
        assert_eq!(identify(&elf(1, 3)), Err(Unbootable::Elf32));
        assert_eq!(
            identify(&elf(2, 0xb7)),
            Err(Unbootable::ElfMachine { machine: 0xb7 })
        );
        assert!(matches!(
            identify(b"\x7fELF\x02"),
            Err(Unbootable::Truncated { len: 5, .. })
        ));
        // iPXE's ipxe.lkrn, as Debian ships it: protocol 2.7.
        let e = identify(&bzimage(0x0207, 0x01, 0)).unwrap_err();
        assert_eq!(e, Unbootable::OldProtocol { protocol: 0x0207 });
        assert!(e.to_string().contains("boot protocol 2.7,"), "{e}");
        assert_eq!(
            identify(&bzimage(0x020f, 0x01, 0x00)),
            Err(Unbootable::No64BitEntry)
        );
        assert_eq!(
            identify(&bzimage(0x020f, 0x00, 0x01)),
            Err(Unbootable::ZImage)
        );
        assert_eq!(
            identify(&bzimage(0x020f, 1, 1)[..0x210]),
            Err(Unbootable::Truncated {
                what: "bzImage setup",
                len: 0x210
            })
        );
        assert_eq!(identify(&[0x4d, 0x5a, 0, 0]), Err(Unbootable::Unknown));
        assert_eq!(identify(&[]), Err(Unbootable::Unknown));
    }
}
