//! GRUB `grub.cfg`: the first `menuentry` (also inside a `submenu`) with a
//! `linux` line, reading the files that `source` and `configfile` name in
//! place. Words that use GRUB variables (`$x`, `${x}`) are dropped, since
//! only GRUB could expand them; an entry whose kernel or initrd path uses
//! one is skipped.

use super::{absolute, BootEntry, Fetch, Includes};
use crate::iso::IsoError;

/// The `menuentry` being read.
#[derive(Default)]
struct Entry {
    /// Brace depth the entry opened at.
    depth: usize,
    kernel: Option<String>,
    initrds: Vec<String>,
    cmdline: String,
    /// An initrd path we cannot expand.
    unusable: bool,
}

/// Scan state carried across a config and the files it sources.
#[derive(Default)]
struct Scan {
    depth: usize,
    entry: Option<Entry>,
}

/// A path as GRUB names it, without a device such as `($root)` or
/// `(cd0)` in front, absolute in the ISO; `None` if it uses a variable.
fn iso_path(word: &str) -> Option<String> {
    let word = word.trim_matches(|c| c == '"' || c == '\'');
    let path = match word.strip_prefix('(').and_then(|w| w.split_once(')')) {
        Some((_, rest)) => rest,
        None => word,
    };
    (!path.contains('$')).then(|| absolute("/", path))
}

impl Scan {
    /// Reads `text`; returns the first entry with a kernel, once closed.
    fn lines(
        &mut self,
        text: &str,
        fetch: &mut Fetch<'_>,
        includes: &mut Includes,
    ) -> Result<Option<BootEntry>, IsoError> {
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let kw = words.next().unwrap_or_default();
            match (&mut self.entry, kw) {
                (None, "menuentry") => {
                    self.entry = Some(Entry {
                        depth: self.depth,
                        ..Entry::default()
                    })
                }
                (None, "source" | "configfile") => {
                    if let Some(file) = words.next().and_then(iso_path) {
                        includes.take()?;
                        match fetch(&file) {
                            Ok(t) => {
                                if let Some(found) = self.lines(&t, fetch, includes)? {
                                    return Ok(Some(found));
                                }
                            }
                            Err(IsoError::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                (Some(e), "linux" | "linuxefi" | "linux16") => {
                    e.kernel = words.next().and_then(iso_path);
                    e.cmdline = words
                        .filter(|w| !w.contains('$'))
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                (Some(e), "initrd" | "initrdefi" | "initrd16") => {
                    match words.map(iso_path).collect() {
                        Some(initrds) => e.initrds = initrds,
                        None => e.unusable = true,
                    }
                }
                _ => {}
            }
            self.depth += line.matches('{').count();
            let closes = line.matches('}').count();
            self.depth = self.depth.saturating_sub(closes);
            let closed = closes > 0 || line.ends_with('}');
            let depth = self.depth;
            if let Some(e) = self.entry.take_if(|e| depth <= e.depth && closed) {
                if let (Some(kernel), false) = (e.kernel, e.unusable) {
                    let entry = BootEntry {
                        kernel,
                        initrds: e.initrds,
                        cmdline: e.cmdline,
                    };
                    return entry.checked().map(Some);
                }
            }
        }
        Ok(None)
    }
}

/// Parses a GRUB config at `path`; `fetch` reads the files it sources
/// (missing ones are skipped, as GRUB goes on past a failed command).
pub fn parse_grub(path: &str, text: &str, fetch: &mut Fetch<'_>) -> Result<BootEntry, IsoError> {
    let mut scan = Scan::default();
    scan.lines(text, fetch, &mut Includes::default())?
        .ok_or_else(|| IsoError::NoBootEntry {
            config: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn grub(cfg: &str, files: &[(&str, &str)]) -> Result<BootEntry, IsoError> {
        let files: HashMap<String, String> = files
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect();
        let mut fetch = |p: &str| {
            files
                .get(p)
                .cloned()
                .ok_or(IsoError::NotFound { path: p.to_owned() })
        };
        parse_grub("/boot/grub/grub.cfg", cfg, &mut fetch)
    }

    #[test]
    fn debian_live_first_menuentry() {
        let cfg = "source /boot/grub/config.cfg\n\n# Live boot\nmenuentry \"Live system (amd64)\" --hotkey=l {\n\tlinux\t/live/vmlinuz-6.1.0-9-amd64 boot=live components quiet splash findiso=${iso_path}\n\tinitrd\t/live/initrd.img-6.1.0-9-amd64\n}\nmenuentry \"other\" {\n linux /other\n}\n";
        let e = grub(cfg, &[("/boot/grub/config.cfg", "set timeout=30\n")]).unwrap();
        assert_eq!(e.kernel, "/live/vmlinuz-6.1.0-9-amd64");
        assert_eq!(e.initrds, ["/live/initrd.img-6.1.0-9-amd64"]);
        assert_eq!(e.cmdline, "boot=live components quiet splash");
    }

    #[test]
    fn arch_entry_with_variables_in_its_title() {
        // archiso's grub.cfg: `if` blocks, and `${...}` in the title line.
        let cfg = "if [ \"${grub_platform}\" == 'efi' ]; then\n    archiso_platform='UEFI'\nfi\ndefault=archlinux\nmenuentry \"Arch Linux install medium (x86_64, ${archiso_platform})\" --class arch --id 'archlinux' {\n    set gfxpayload=keep\n    linux /arch/boot/x86_64/vmlinuz-linux archisobasedir=arch archisosearchuuid=2024-01-01-00-00-00-00\n    initrd /arch/boot/x86_64/initramfs-linux.img\n}\n";
        let e = grub(cfg, &[]).unwrap();
        assert_eq!(e.kernel, "/arch/boot/x86_64/vmlinuz-linux");
        assert_eq!(e.initrds, ["/arch/boot/x86_64/initramfs-linux.img"]);
        assert_eq!(
            e.cmdline,
            "archisobasedir=arch archisosearchuuid=2024-01-01-00-00-00-00"
        );
    }

    #[test]
    fn several_initrds_and_device_prefixes_but_no_variables() {
        let cfg = "menuentry 'v' {\n linux /boot/vmlinuz\n initrd /boot/initrd.img $extra\n}\nmenuentry 'x' {\n linux ($root)/boot/vmlinuz ro\n initrd (cd0)/boot/ucode.img /boot/initrd.img\n}\n";
        let e = grub(cfg, &[]).unwrap();
        assert_eq!(e.kernel, "/boot/vmlinuz");
        assert_eq!(e.initrds, ["/boot/ucode.img", "/boot/initrd.img"]);
    }

    #[test]
    fn entries_come_from_sourced_and_configfile_files() {
        let cfg = "set timeout=5\nconfigfile /boot/grub/menu.cfg\n";
        let files = [
            (
                "/boot/grub/menu.cfg",
                "source /boot/grub/missing.cfg\nsource \"/boot/grub/live.cfg\"\n",
            ),
            (
                "/boot/grub/live.cfg",
                "menuentry 'Try' {\n linux /casper/vmlinuz --- quiet\n initrd /casper/initrd\n}\n",
            ),
        ];
        let e = grub(cfg, &files).unwrap();
        assert_eq!(e.kernel, "/casper/vmlinuz");
        assert_eq!(e.cmdline, "--- quiet");
    }

    #[test]
    fn skips_entries_without_a_usable_linux_line() {
        let cfg = "menuentry 'memtest' {\n  chainloader /x\n}\nmenuentry 'var' {\n linux /boot/vmlinuz-$kver\n}\nsubmenu 'adv' {\n menuentry 'y' {\n  linux /vmlinuz ro\n }\n}\n";
        let e = grub(cfg, &[]).unwrap();
        assert_eq!(e.kernel, "/vmlinuz");
        assert!(e.initrds.is_empty());
        assert_eq!(e.cmdline, "ro");
    }

    #[test]
    fn no_entry_and_source_loops_are_named_errors() {
        assert!(matches!(
            grub("menuentry 'halt' {\n halt\n}\n", &[]),
            Err(IsoError::NoBootEntry { .. })
        ));
        let looped = grub(
            "source /boot/grub/grub.cfg\n",
            &[("/boot/grub/grub.cfg", "source /boot/grub/grub.cfg\n")],
        );
        assert!(
            matches!(looped, Err(IsoError::TooManyIncludes { .. })),
            "{looped:?}"
        );
    }
}
