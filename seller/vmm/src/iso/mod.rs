//! Reading buyers' live ISOs: a bounded ISO9660 reader and boot config
//! discovery, giving a [`BootPlan`] (kernel, initrd, command line).
//!
//! Discovery order: `/cpushare.toml`, then isolinux/syslinux configs, then
//! GRUB's `boot/grub/grub.cfg`.

pub mod boot_config;
pub mod reader;

use std::io::{Read, Seek};

pub use boot_config::BootEntry;
pub use reader::{DirEntry, IsoReader, Limits, NameScheme};

/// Errors reading an ISO or finding how to boot it.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// Reading the image failed.
    #[error("reading the ISO failed: {0}")]
    Io(#[source] std::io::Error),
    /// A read went past the end of the image.
    #[error("the ISO is truncated: read at offset {offset} past its end ({len} bytes)")]
    Truncated {
        /// Offset of the read.
        offset: u64,
        /// Length of the image.
        len: u64,
    },
    /// The volume descriptor magic `CD001` is missing.
    #[error("not an ISO9660 image: no CD001 volume descriptor at sector {sector}")]
    NotIso9660 {
        /// Sector where the descriptor was expected.
        sector: u64,
    },
    /// The descriptor set has no terminator within the limit.
    #[error("more than {max} volume descriptors")]
    TooManyDescriptors {
        /// Limit.
        max: u64,
    },
    /// There is no primary volume descriptor.
    #[error("the ISO has no primary volume descriptor")]
    NoPrimaryVolume,
    /// Logical block size other than 2048.
    #[error("unsupported logical block size {size} (only 2048 is supported)")]
    UnsupportedBlockSize {
        /// Block size found.
        size: u16,
    },
    /// A directory record is malformed.
    #[error("malformed directory record of length {len}")]
    BadDirRecord {
        /// Record length byte.
        len: usize,
    },
    /// A Rock Ridge continuation area is out of bounds.
    #[error("bad Rock Ridge continuation area at block {lba}, length {len}")]
    BadContinuation {
        /// Block of the continuation.
        lba: u32,
        /// Its length.
        len: u32,
    },
    /// A directory is larger than allowed.
    #[error("directory of {size} bytes exceeds the limit of {max}")]
    DirectoryTooLarge {
        /// Directory size.
        size: u32,
        /// Limit.
        max: u32,
    },
    /// A directory has more entries than allowed.
    #[error("directory has more than {max} entries")]
    TooManyEntries {
        /// Limit.
        max: usize,
    },
    /// A path has more components than allowed.
    #[error("path {path:?} is deeper than {max} components")]
    PathTooDeep {
        /// The path.
        path: String,
        /// Limit.
        max: usize,
    },
    /// A file spans several extents (only used for files over 4 GiB).
    #[error("file {name:?} spans several extents, which is not supported")]
    MultiExtentFile {
        /// Raw name of the record.
        name: String,
    },
    /// No file or directory at this path.
    #[error("{path:?} not found in the ISO")]
    NotFound {
        /// The path.
        path: String,
    },
    /// A directory was used where a file was expected.
    #[error("{name:?} is a directory")]
    IsADirectory {
        /// The name.
        name: String,
    },
    /// A file was used where a directory was expected.
    #[error("{name:?} is not a directory")]
    NotADirectory {
        /// The name.
        name: String,
    },
    /// A file is larger than the caller allows.
    #[error("{name:?} is {size} bytes, over the limit of {max}")]
    FileTooLarge {
        /// The name.
        name: String,
        /// File size.
        size: u64,
        /// Limit.
        max: u64,
    },
    /// `cpushare.toml` does not parse.
    #[error("cpushare.toml is invalid: {reason} (expected keys: kernel, initrd, cmdline)")]
    BadCpushareToml {
        /// Parser message.
        reason: String,
    },
    /// A config file is not UTF-8.
    #[error("boot config {path:?} is not UTF-8 text")]
    ConfigNotText {
        /// The path.
        path: String,
    },
    /// Too many nested `INCLUDE`s.
    #[error("more than {max} INCLUDE directives in the isolinux config")]
    TooManyIncludes {
        /// Limit.
        max: usize,
    },
    /// A config names no bootable Linux kernel.
    #[error("boot config {config:?} names no Linux kernel")]
    NoBootEntry {
        /// The config path.
        config: String,
    },
    /// The command line is too long.
    #[error("kernel command line of {len} bytes exceeds {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// No known boot config was found.
    #[error("no boot config found: add /cpushare.toml (kernel = \"/path\", cmdline = \"...\") or an isolinux/GRUB config")]
    NoBootConfig,
}

/// Which config a [`BootPlan`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootSource {
    /// `/cpushare.toml`.
    CpushareToml,
    /// An isolinux/syslinux config at this path.
    Syslinux(String),
    /// A GRUB config at this path.
    Grub(String),
}

/// A file in the ISO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsoFile {
    /// Absolute path as the config named it.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// How to boot an ISO: what to load and with which command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// The kernel image.
    pub kernel: IsoFile,
    /// The initrd, if any.
    pub initrd: Option<IsoFile>,
    /// Kernel command line from the config (the seller appends its console).
    pub cmdline: String,
    /// Which config it came from.
    pub source: BootSource,
}

/// Isolinux/syslinux config locations, in the order syslinux searches them.
const SYSLINUX_CONFIGS: &[&str] = &[
    "/isolinux/isolinux.cfg",
    "/boot/isolinux/isolinux.cfg",
    "/isolinux.cfg",
    "/syslinux/syslinux.cfg",
    "/boot/syslinux/syslinux.cfg",
    "/syslinux.cfg",
];
/// GRUB config locations.
const GRUB_CONFIGS: &[&str] = &["/boot/grub/grub.cfg", "/EFI/BOOT/grub.cfg"];

/// Reads a text config, bounded by [`boot_config::MAX_CONFIG_BYTES`].
fn read_text<R: Read + Seek>(iso: &mut IsoReader<R>, path: &str) -> Result<String, IsoError> {
    let bytes = iso.read_path(path, boot_config::MAX_CONFIG_BYTES)?;
    String::from_utf8(bytes).map_err(|_| IsoError::ConfigNotText {
        path: path.to_owned(),
    })
}

/// The command line a guest boots with: the ISO's own, after `panic=-1`
/// and before `console=ttyS0`. The console is the lease's; `panic=-1`
/// reboots a panicked guest at once, and this VMM ends the lease on a
/// reboot, so a guest that cannot go on stops its bill instead of
/// spinning. That includes `poweroff` on a systemd distribution: this VMM
/// has no ACPI, so the kernel cannot power off and kills the task that
/// asked (`reboot(2)` ends in its exit); that task is PID 1, so the kernel
/// panics. Placed first, `panic=` can be overridden by the ISO's own.
pub fn guest_cmdline(iso_cmdline: &str) -> String {
    let iso_cmdline = iso_cmdline.trim();
    if iso_cmdline.is_empty() {
        "panic=-1 console=ttyS0".to_owned()
    } else {
        format!("panic=-1 {iso_cmdline} console=ttyS0")
    }
}

/// Finds how to boot an ISO; checks that the kernel and initrd exist.
pub fn inspect<R: Read + Seek>(iso: &mut IsoReader<R>) -> Result<BootPlan, IsoError> {
    let (entry, source) = find_entry(iso)?;
    let k = iso.lookup(&entry.kernel)?;
    if k.is_dir {
        return Err(IsoError::IsADirectory { name: entry.kernel });
    }
    let initrd = match entry.initrd {
        Some(p) => {
            let e = iso.lookup(&p)?;
            if e.is_dir {
                return Err(IsoError::IsADirectory { name: p });
            }
            Some(IsoFile {
                path: p,
                size: u64::from(e.size),
            })
        }
        None => None,
    };
    Ok(BootPlan {
        kernel: IsoFile {
            path: entry.kernel,
            size: u64::from(k.size),
        },
        initrd,
        cmdline: entry.cmdline,
        source,
    })
}

fn find_entry<R: Read + Seek>(iso: &mut IsoReader<R>) -> Result<(BootEntry, BootSource), IsoError> {
    match read_text(iso, "/cpushare.toml") {
        Ok(t) => {
            return Ok((
                boot_config::parse_cpushare_toml(&t)?,
                BootSource::CpushareToml,
            ))
        }
        Err(IsoError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    for path in SYSLINUX_CONFIGS {
        let text = match read_text(iso, path) {
            Ok(t) => t,
            Err(IsoError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let mut fetch = |p: &str| read_text(iso, p);
        let e = boot_config::parse_syslinux(path, &text, &mut fetch)?;
        return Ok((e, BootSource::Syslinux((*path).to_owned())));
    }
    for path in GRUB_CONFIGS {
        match read_text(iso, path) {
            Ok(t) => {
                return Ok((
                    boot_config::parse_grub(path, &t)?,
                    BootSource::Grub((*path).to_owned()),
                ))
            }
            Err(IsoError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(IsoError::NoBootConfig)
}

#[cfg(test)]
mod tests {
    use super::guest_cmdline;

    #[test]
    fn the_guest_cmdline_frames_the_isos_so_it_can_override_panic() {
        assert_eq!(guest_cmdline(""), "panic=-1 console=ttyS0");
        assert_eq!(
            guest_cmdline(" boot=live quiet panic=0 "),
            "panic=-1 boot=live quiet panic=0 console=ttyS0"
        );
    }
}
