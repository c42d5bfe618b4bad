//! Reading buyers' live ISOs: a bounded ISO9660 reader and boot config
//! discovery, giving a [`BootPlan`] (kernel, initrds, command line).
//!
//! Discovery order: `/cpushare.toml`, then isolinux/syslinux configs, then
//! GRUB's (also when an isolinux config names no Linux kernel, as on ISOs
//! whose isolinux menu only chains to a hard disk).

pub mod boot_config;
pub mod reader;

use std::io::{Read, Seek};

use crate::arch::x86_64::kernel_image::{self, Unbootable};

pub use boot_config::BootEntry;
pub use reader::{DirEntry, Extent, IsoReader, Limits, NameScheme};

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
        size: u64,
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
    /// A file's chain of extents is broken (a directory marked as
    /// continued, or a continuation missing or under another name).
    #[error("file {name:?} has a broken chain of extents")]
    BadMultiExtent {
        /// Raw name of the record.
        name: String,
    },
    /// No file or directory at this path.
    #[error("{path:?} not found in the ISO")]
    NotFound {
        /// The path.
        path: String,
    },
    /// A path goes through too many symbolic links (or a loop of them).
    #[error("looking up {path:?} follows more than {max} symbolic links")]
    TooManySymlinks {
        /// The path.
        path: String,
        /// Limit.
        max: usize,
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
    /// A config pulls in too many other files (or loops).
    #[error("the boot config pulls in more than {max} other files (INCLUDE, CONFIG, source)")]
    TooManyIncludes {
        /// Limit.
        max: usize,
    },
    /// A boot entry names too many initrds.
    #[error("the boot entry names {count} initrds, more than the {max} allowed")]
    TooManyInitrds {
        /// How many it names.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// The initrds together do not fit the limit.
    #[error(
        "the initrds are {size} bytes together, over the limit of {max}; give the VM more memory"
    )]
    InitrdsTooLarge {
        /// Their size, with alignment padding.
        size: u64,
        /// Limit.
        max: u64,
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
    /// A file a config names is not in the ISO.
    #[error("{config} names {role} {path:?}, which is not in the ISO")]
    MissingBootFile {
        /// The config that names it.
        config: String,
        /// `kernel` or `initrd`.
        role: &'static str,
        /// The path it gives.
        path: String,
    },
    /// The kernel a config names is not an image this VMM can start.
    #[error("{path:?} cannot boot here: it is {reason}")]
    Unbootable {
        /// The kernel's path.
        path: String,
        /// What it is instead.
        reason: Unbootable,
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

impl BootSource {
    /// Path of the config in the ISO.
    pub fn config_path(&self) -> &str {
        match self {
            BootSource::CpushareToml => "/cpushare.toml",
            BootSource::Syslinux(p) | BootSource::Grub(p) => p,
        }
    }
}

/// A file in the ISO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsoFile {
    /// Absolute path as the config named it.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

impl IsoFile {
    fn new(path: String, entry: &DirEntry) -> Self {
        IsoFile {
            path,
            size: entry.size(),
        }
    }
}

/// How to boot an ISO: what to load and with which command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// The kernel image.
    pub kernel: IsoFile,
    /// The initrds, in load order (often one, none for some kernels).
    pub initrds: Vec<IsoFile>,
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
    // openSUSE.
    "/boot/x86_64/loader/isolinux.cfg",
];
/// GRUB config locations: most distributions, Fedora's and openSUSE's
/// `grub2`, then the EFI boot directory some ISOs keep theirs in.
const GRUB_CONFIGS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/EFI/BOOT/grub.cfg",
    "/EFI/boot/grub.cfg",
];

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

/// Finds how to boot an ISO; checks that the initrds exist, and that the
/// kernel does and is an image this VMM can start.
pub fn inspect<R: Read + Seek>(iso: &mut IsoReader<R>) -> Result<BootPlan, IsoError> {
    let (entry, source) = find_entry(iso)?;
    let mut file = |path: String, role| {
        let e = match iso.lookup(&path) {
            Err(IsoError::NotFound { .. }) => {
                return Err(IsoError::MissingBootFile {
                    config: source.config_path().to_owned(),
                    role,
                    path,
                })
            }
            found => found?,
        };
        if e.is_dir {
            return Err(IsoError::IsADirectory { name: path });
        }
        Ok((e, path))
    };
    let (k, kernel) = file(entry.kernel, "kernel")?;
    let initrds = entry
        .initrds
        .into_iter()
        .map(|p| file(p, "initrd").map(|(e, path)| IsoFile::new(path, &e)))
        .collect::<Result<_, _>>()?;
    let head = iso.read_head(&k, kernel_image::HEAD_BYTES)?;
    if let Err(reason) = kernel_image::identify(&head) {
        return Err(IsoError::Unbootable {
            path: kernel,
            reason,
        });
    }
    Ok(BootPlan {
        kernel: IsoFile::new(kernel, &k),
        initrds,
        cmdline: entry.cmdline,
        source,
    })
}

/// Alignment of each initrd after the first when several are loaded, as
/// GRUB lays them out; Linux skips the zero padding between archives.
const INITRD_ALIGN: u64 = 4;

/// Reads a plan's initrds as the one image a boot loader hands to Linux:
/// their concatenation, each starting [`INITRD_ALIGN`]-aligned. `None` if
/// there are none; an error if they exceed `max` bytes together.
pub fn read_initrds<R: Read + Seek>(
    iso: &mut IsoReader<R>,
    initrds: &[IsoFile],
    max: u64,
) -> Result<Option<Vec<u8>>, IsoError> {
    let size = initrds.iter().fold(0u64, |at, f| {
        at.next_multiple_of(INITRD_ALIGN).saturating_add(f.size)
    });
    if size > max {
        return Err(IsoError::InitrdsTooLarge { size, max });
    }
    let mut image = Vec::new();
    for f in initrds {
        let padded = (image.len() as u64).next_multiple_of(INITRD_ALIGN);
        image.resize(padded as usize, 0);
        image.extend(iso.read_path(&f.path, max - padded)?);
    }
    Ok((!initrds.is_empty()).then_some(image))
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
    // An isolinux config with no Linux entry is kept as the error to give
    // if no GRUB config has one either.
    let mut no_entry = None;
    for path in SYSLINUX_CONFIGS {
        let text = match read_text(iso, path) {
            Ok(t) => t,
            Err(IsoError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        match boot_config::parse_syslinux(path, &text, &mut |p: &str| read_text(iso, p)) {
            Ok(e) => return Ok((e, BootSource::Syslinux((*path).to_owned()))),
            Err(e @ IsoError::NoBootEntry { .. }) => {
                no_entry = Some(e);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    for path in GRUB_CONFIGS {
        let text = match read_text(iso, path) {
            Ok(t) => t,
            Err(IsoError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let e = boot_config::parse_grub(path, &text, &mut |p: &str| read_text(iso, p))?;
        return Ok((e, BootSource::Grub((*path).to_owned())));
    }
    Err(no_entry.unwrap_or(IsoError::NoBootConfig))
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
