//! Parsers for the boot configurations found on live ISOs: our own
//! `cpushare.toml`, isolinux/syslinux `*.cfg` ([`parse_syslinux`]) and GRUB
//! `grub.cfg` ([`parse_grub`]).
//!
//! They are pure: each takes the text of one file, and a way to fetch the
//! files it pulls in (`INCLUDE`, `CONFIG`, `source`), and returns the
//! kernel, initrds and command line.

mod grub;
mod syslinux;

pub use grub::parse_grub;
pub use syslinux::parse_syslinux;

use serde::Deserialize;

use super::IsoError;

/// Largest config file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;
/// Most files one config pulls in, all told (`INCLUDE`, `CONFIG`, GRUB's
/// `source`): Debian's live ISOs nest three deep, Arch's four.
pub const MAX_INCLUDES: usize = 16;
/// Longest kernel command line accepted (Linux x86 `COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE: usize = 2048;
/// Most initrds one entry may load (Arch's syslinux entries name three:
/// two microcode archives and the initramfs).
pub const MAX_INITRDS: usize = 8;

/// What a boot config names: paths are absolute within the ISO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// Kernel path.
    pub kernel: String,
    /// Initrd paths, in the order they are loaded; a boot loader hands
    /// several to Linux as one concatenation.
    pub initrds: Vec<String>,
    /// Kernel command line.
    pub cmdline: String,
}

impl BootEntry {
    /// Checks the bounds every parser shares.
    fn checked(self) -> Result<Self, IsoError> {
        if self.cmdline.len() > MAX_CMDLINE {
            return Err(IsoError::CmdlineTooLong {
                len: self.cmdline.len(),
                max: MAX_CMDLINE,
            });
        }
        if self.initrds.len() > MAX_INITRDS {
            return Err(IsoError::TooManyInitrds {
                count: self.initrds.len(),
                max: MAX_INITRDS,
            });
        }
        Ok(self)
    }
}

/// `cpushare.toml` at the ISO root: the buyer states the boot explicitly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CpushareToml {
    kernel: String,
    initrd: Option<Initrds>,
    #[serde(default)]
    cmdline: String,
}

/// `initrd = "/a"` or `initrd = ["/a", "/b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Initrds {
    One(String),
    Several(Vec<String>),
}

/// Parses `cpushare.toml`.
pub fn parse_cpushare_toml(text: &str) -> Result<BootEntry, IsoError> {
    let t: CpushareToml = toml::from_str(text).map_err(|e| IsoError::BadCpushareToml {
        reason: e.message().to_owned(),
    })?;
    let initrds = match t.initrd {
        None => Vec::new(),
        Some(Initrds::One(i)) => vec![i],
        Some(Initrds::Several(v)) => v,
    };
    BootEntry {
        kernel: absolute("/", &t.kernel),
        initrds: initrds.iter().map(|i| absolute("/", i)).collect(),
        cmdline: t.cmdline,
    }
    .checked()
}

/// Joins a path from a config to a directory (syslinux resolves relative
/// paths against its working directory).
fn absolute(dir: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("{}/{}", dir.trim_end_matches('/'), p)
    }
}

/// Counts the files a config pulls in, so that a loop of includes ends.
#[derive(Default)]
struct Includes(usize);

impl Includes {
    /// Accounts for one more file, or fails past [`MAX_INCLUDES`].
    fn take(&mut self) -> Result<(), IsoError> {
        self.0 += 1;
        if self.0 > MAX_INCLUDES {
            return Err(IsoError::TooManyIncludes { max: MAX_INCLUDES });
        }
        Ok(())
    }
}

/// Reads another config file for a parser; `NotFound` if it is missing.
pub type Fetch<'a> = dyn FnMut(&str) -> Result<String, IsoError> + 'a;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpushare_toml_rejects_unknown_keys_and_long_cmdline() {
        assert!(matches!(
            parse_cpushare_toml("kernel='/k'\nkernal='x'"),
            Err(IsoError::BadCpushareToml { .. })
        ));
        let long = format!("kernel='/k'\ncmdline='{}'", "a".repeat(MAX_CMDLINE + 1));
        assert!(matches!(
            parse_cpushare_toml(&long),
            Err(IsoError::CmdlineTooLong { .. })
        ));
        let ok = parse_cpushare_toml("kernel = 'boot/guest.elf'\ncmdline = 'hello'").unwrap();
        assert_eq!(ok.kernel, "/boot/guest.elf");
        assert!(ok.initrds.is_empty());
    }

    #[test]
    fn cpushare_toml_takes_one_initrd_or_a_list() {
        let one = parse_cpushare_toml("kernel = '/k'\ninitrd = 'boot/rd'").unwrap();
        assert_eq!(one.initrds, ["/boot/rd"]);
        let two = parse_cpushare_toml("kernel = '/k'\ninitrd = ['/ucode.img', 'rd']").unwrap();
        assert_eq!(two.initrds, ["/ucode.img", "/rd"]);
        let many = format!(
            "kernel = '/k'\ninitrd = [{}]",
            ["'/i'"; MAX_INITRDS + 1].join(",")
        );
        assert!(matches!(
            parse_cpushare_toml(&many),
            Err(IsoError::TooManyInitrds { count, .. }) if count == MAX_INITRDS + 1
        ));
    }

    proptest::proptest! {
        #[test]
        fn config_parsers_never_panic(s in "\\PC{0,400}") {
            let _ = parse_grub("/g.cfg", &s, &mut |_| Ok(String::from("menuentry x {\nlinux /k\n}\n")));
            let _ = parse_cpushare_toml(&s);
            let _ = parse_syslinux("/s.cfg", &s, &mut |_| Ok(String::from("label a\nkernel k\n")));
        }

        #[test]
        fn config_parsers_never_panic_on_keyword_soup(
            lines in proptest::collection::vec(
                proptest::sample::select(vec![
                    "label a", "LABEL b", "kernel x.c32", "linux /v", "initrd i", "initrd a,b,,c",
                    "append initrd=,", "append -", "default a", "default b", "menu default",
                    "include x", "menu include x", "config x", "config x /d", "com32 whichsys.c32",
                    "append -iso- a", "append -iso- config x", "kernel ifcpu64.c32", "append b -- a",
                    "text help", "endtext", "menuentry {", "submenu {", "}", "linux", "initrd",
                    "source /x", "configfile /x", "{{", "}}", "linux ($root)/k", "initrd /a /b",
                ]),
                0..30,
            )
        ) {
            let s = lines.join("\n");
            let _ = parse_grub("/g.cfg", &s, &mut |_| Ok(s.clone()));
            let _ = parse_syslinux("/s.cfg", &s, &mut |_| Ok(s.clone()));
        }
    }
}
