//! isolinux/syslinux configs, read the way isolinux reads them: `INCLUDE`d
//! files inline, `DEFAULT` or `MENU DEFAULT` picks a label, a global
//! `APPEND` serves labels without their own, and the label is followed
//! through `CONFIG` and the `whichsys.c32` and `ifcpu64.c32` modules to
//! what isolinux on a 64-bit machine would boot. Arch Linux's ISOs need
//! that: their default label runs `whichsys.c32`, whose `-iso-` branch
//! names a label that loads another config.

use super::{absolute, BootEntry, Fetch, Includes};
use crate::iso::IsoError;

/// How syslinux runs a label's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A Linux kernel (`LINUX`, or `KERNEL` with no other known extension).
    Linux,
    /// A COM32 module (`COM32`, or `KERNEL x.c32`): menus, `whichsys.c32`...
    Module,
    /// A boot sector, floppy image, COMBOOT or PXE program.
    Other,
}

/// The loader syslinux picks for `KERNEL file`, by the file's extension.
fn kind_of(file: &str) -> Kind {
    let name = file.rsplit('/').next().unwrap_or(file);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("c32") => Kind::Module,
        Some("cbt" | "com" | "bs" | "bss" | "bin" | "0" | "img") => Kind::Other,
        _ => Kind::Linux,
    }
}

#[derive(Clone, Debug, Default)]
struct Label {
    name: String,
    kernel: Option<(Kind, String)>,
    initrd: Option<String>,
    append: Option<String>,
    menu_default: bool,
    config: Option<String>,
}

/// What isolinux does when a label is chosen.
#[derive(Debug, PartialEq, Eq)]
enum Action<'a> {
    /// Boots a Linux kernel.
    Linux,
    /// Runs another label.
    Goto(&'a str),
    /// Loads another config file; a directory, if given, becomes the
    /// working directory.
    Config(&'a str, Option<&'a str>),
    /// Anything else (a menu, a chain loader, a memory test).
    Nothing,
}

impl Label {
    fn action(&self) -> Action<'_> {
        if let Some(c) = &self.config {
            let mut w = c.split_whitespace();
            return match w.next() {
                Some(file) => Action::Config(file, w.next()),
                None => Action::Nothing,
            };
        }
        let args: Vec<&str> = self
            .append
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        match &self.kernel {
            Some((Kind::Linux, _)) => Action::Linux,
            Some((Kind::Module, m)) => {
                let module = m.rsplit('/').next().unwrap_or(m).to_ascii_lowercase();
                match module.as_str() {
                    "whichsys.c32" => whichsys_iso(&args),
                    // `ifcpu64.c32 long_mode_label -- 32bit_label`.
                    "ifcpu64.c32" => match args.first() {
                        Some(l) if *l != "--" => Action::Goto(l),
                        _ => Action::Nothing,
                    },
                    _ => Action::Nothing,
                }
            }
            _ => Action::Nothing,
        }
    }
}

/// The `-iso-` branch of `whichsys.c32`'s arguments (`-iso- label`, or
/// `-iso- config FILE [DIR]`), up to the next `-pxe-`/`-sys-` flag.
fn whichsys_iso<'a>(args: &[&'a str]) -> Action<'a> {
    let is_flag = |a: &str| a.len() > 2 && a.starts_with('-') && a.ends_with('-');
    let Some(at) = args.iter().position(|a| *a == "-iso-") else {
        return Action::Nothing;
    };
    let cmd: Vec<&'a str> = args[at + 1..]
        .iter()
        .copied()
        .take_while(|a| !is_flag(a))
        .collect();
    match cmd.as_slice() {
        [c, file, rest @ ..] if c.eq_ignore_ascii_case("config") => {
            Action::Config(file, rest.first().copied())
        }
        [label] => Action::Goto(label),
        _ => Action::Nothing,
    }
}

/// Where a chosen label leads.
enum Pick {
    /// This label boots Linux.
    Boot(Label),
    /// Isolinux loads this config next (path, new working directory).
    Config(String, Option<String>),
}

/// One config file with its includes.
#[derive(Default)]
struct Config {
    labels: Vec<Label>,
    defaults: Vec<String>,
    append: Option<String>,
}

impl Config {
    /// Reads `text`'s directives, and those of the files it includes.
    fn read(
        &mut self,
        dir: &str,
        text: &str,
        fetch: &mut Fetch<'_>,
        includes: &mut Includes,
    ) -> Result<(), IsoError> {
        let mut in_help = false;
        for line in text.lines() {
            let (kw, rest) = keyword(line);
            let kw = kw.to_ascii_lowercase();
            // `TEXT HELP` prose may begin with words such as "Boot".
            if in_help {
                in_help = kw != "endtext";
                continue;
            }
            let file = || rest.split_whitespace().next().map(str::to_owned);
            let label = self.labels.last_mut();
            match (kw.as_str(), label) {
                ("text", _) if rest.eq_ignore_ascii_case("help") => in_help = true,
                ("include", _) => self.include(dir, rest, fetch, includes)?,
                ("menu", l) => {
                    let (sub, sub_rest) = keyword(rest);
                    if sub.eq_ignore_ascii_case("include") {
                        self.include(dir, sub_rest, fetch, includes)?;
                    } else if let (true, Some(l)) = (sub.eq_ignore_ascii_case("default"), l) {
                        l.menu_default = true;
                    }
                }
                ("default", _) => self.defaults.push(rest.to_owned()),
                ("label", _) => self.labels.push(Label {
                    name: rest.to_owned(),
                    ..Label::default()
                }),
                ("append", None) => self.append = Some(rest.to_owned()),
                ("append", Some(l)) => l.append = Some(rest.to_owned()),
                ("linux", Some(l)) => l.kernel = file().map(|f| (Kind::Linux, f)),
                ("kernel", Some(l)) => l.kernel = file().map(|f| (kind_of(&f), f)),
                ("com32", Some(l)) => l.kernel = file().map(|f| (Kind::Module, f)),
                ("boot" | "bss" | "pxe" | "fdimage" | "comboot", Some(l)) => {
                    l.kernel = file().map(|f| (Kind::Other, f));
                }
                ("initrd", Some(l)) => l.initrd = file(),
                ("config", Some(l)) => l.config = Some(rest.to_owned()),
                _ => {}
            }
        }
        Ok(())
    }

    fn include(
        &mut self,
        dir: &str,
        rest: &str,
        fetch: &mut Fetch<'_>,
        includes: &mut Includes,
    ) -> Result<(), IsoError> {
        includes.take()?;
        let file = rest.split_whitespace().next().unwrap_or_default();
        // A missing include is skipped, as syslinux does.
        match fetch(&absolute(dir, file)) {
            Ok(t) => self.read(dir, &t, fetch, includes),
            Err(IsoError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn label(&self, name: &str) -> Option<&Label> {
        self.labels.iter().find(|l| l.name == name)
    }

    /// Where choosing `l` leads, following `Goto`s; `None` for a dead end.
    fn follow<'a>(&'a self, mut l: &'a Label) -> Option<Pick> {
        // Each hop visits a label, so a cycle ends within as many hops.
        for _ in 0..=self.labels.len() {
            match l.action() {
                Action::Linux => {
                    let mut boot = l.clone();
                    boot.append = boot.append.or_else(|| self.append.clone());
                    return Some(Pick::Boot(boot));
                }
                Action::Goto(name) => l = self.label(name)?,
                Action::Config(file, dir) => {
                    return Some(Pick::Config(file.to_owned(), dir.map(str::to_owned)))
                }
                Action::Nothing => return None,
            }
        }
        None
    }

    /// What isolinux boots: the `DEFAULT` label (the last that leads to a
    /// Linux boot or another config), else the `MENU DEFAULT` label, else
    /// the first Linux label, else the first label that leads anywhere
    /// (through modules or `CONFIG`). A config with no labels may name a
    /// kernel and its arguments in `DEFAULT` itself.
    fn choose(&self) -> Option<Pick> {
        let named = self
            .defaults
            .iter()
            .rev()
            .filter_map(|d| self.label(keyword(d).0))
            .chain(self.labels.iter().filter(|l| l.menu_default));
        for l in named {
            if let Some(p) = self.follow(l) {
                return Some(p);
            }
        }
        let linux = self.labels.iter().filter(|l| l.action() == Action::Linux);
        if let Some(p) = linux.chain(&self.labels).find_map(|l| self.follow(l)) {
            return Some(p);
        }
        let (kernel, args) = keyword(self.defaults.last()?);
        (self.labels.is_empty() && !kernel.is_empty() && kind_of(kernel) == Kind::Linux).then(
            || {
                Pick::Boot(Label {
                    kernel: Some((Kind::Linux, kernel.to_owned())),
                    append: Some(args.to_owned()),
                    ..Label::default()
                })
            },
        )
    }
}

/// Splits a line into its first word and the trimmed rest.
fn keyword(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((k, r)) => (k, r.trim()),
        None => (line, ""),
    }
}

/// The boot entry of a label chosen in `dir`.
fn entry(dir: &str, label: &Label) -> Result<BootEntry, IsoError> {
    let kernel = label.kernel.as_ref().map_or("", |(_, k)| k.as_str());
    // `APPEND -` stands for no arguments, overriding a global `APPEND`.
    let append = label.append.as_deref().filter(|a| a.trim() != "-");
    let mut in_append = None;
    let mut args = Vec::new();
    for a in append.unwrap_or("").split_whitespace() {
        match a.strip_prefix("initrd=") {
            Some(i) => in_append = Some(i),
            None => args.push(a),
        }
    }
    // `INITRD` and `initrd=` both take a comma-separated list.
    let initrds = label.initrd.as_deref().or(in_append).unwrap_or("");
    BootEntry {
        kernel: absolute(dir, kernel),
        initrds: initrds
            .split(',')
            .filter(|i| !i.is_empty())
            .map(|i| absolute(dir, i))
            .collect(),
        cmdline: args.join(" "),
    }
    .checked()
}

/// Parses an isolinux/syslinux config at `path` (absolute in the ISO),
/// whose directory is isolinux's working directory. `fetch` reads the
/// files it includes or loads; missing includes are skipped, as syslinux
/// does.
pub fn parse_syslinux(
    path: &str,
    text: &str,
    fetch: &mut Fetch<'_>,
) -> Result<BootEntry, IsoError> {
    let mut includes = Includes::default();
    let mut dir = match path.rsplit_once('/') {
        Some((d, _)) if !d.is_empty() => d.to_owned(),
        _ => "/".to_owned(),
    };
    let mut path = path.to_owned();
    let mut text = text.to_owned();
    loop {
        let mut config = Config::default();
        config.read(&dir, &text, fetch, &mut includes)?;
        match config.choose() {
            None => return Err(IsoError::NoBootEntry { config: path }),
            Some(Pick::Boot(label)) => return entry(&dir, &label),
            Some(Pick::Config(file, new_dir)) => {
                includes.take()?;
                let next = absolute(&dir, &file);
                if let Some(d) = new_dir {
                    dir = absolute(&dir, &d);
                }
                text = fetch(&next)?;
                path = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fetcher(
        files: HashMap<&'static str, &'static str>,
    ) -> impl FnMut(&str) -> Result<String, IsoError> {
        move |p| {
            files
                .get(p)
                .map(|s| (*s).to_owned())
                .ok_or(IsoError::NotFound { path: p.to_owned() })
        }
    }

    fn parse(path: &str, top: &str, files: &[(&'static str, &'static str)]) -> BootEntry {
        let files = files.iter().copied().collect();
        parse_syslinux(path, top, &mut fetcher(files)).unwrap()
    }

    #[test]
    fn debian_live_isolinux_menu_default_wins_over_c32_default() {
        // Layout of Debian 12 live ISOs (isolinux.cfg -> menu.cfg -> live.cfg).
        let e = parse(
            "/isolinux/isolinux.cfg",
            "include menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n",
            &[
                ("/isolinux/menu.cfg", "menu hshift 0\ninclude stdmenu.cfg\ninclude live.cfg\ninclude install.cfg\n"),
                ("/isolinux/live.cfg", "label live-amd64\n\tmenu label ^Live system (amd64)\n\tmenu default\n\tlinux /live/vmlinuz\n\tinitrd /live/initrd.img\n\tappend boot=live components quiet splash\n"),
                ("/isolinux/install.cfg", "label installstart\n\tkernel /install/vmlinuz\n\tappend vga=788 initrd=/install/initrd.gz --- quiet\n"),
            ],
        );
        assert_eq!(e.kernel, "/live/vmlinuz");
        assert_eq!(e.initrds, ["/live/initrd.img"]);
        assert_eq!(e.cmdline, "boot=live components quiet splash");
    }

    #[test]
    fn debian_netinst_default_label_and_initrd_in_append() {
        let e = parse(
            "/isolinux/isolinux.cfg",
            "path \ninclude menu.cfg\ndefault vesamenu.c32\n",
            &[
                ("/isolinux/menu.cfg", "include txt.cfg\n"),
                ("/isolinux/txt.cfg", "default install\nlabel install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\tappend vga=788 initrd=/install.amd/initrd.gz --- quiet \n"),
            ],
        );
        assert_eq!(e.kernel, "/install.amd/vmlinuz");
        assert_eq!(e.initrds, ["/install.amd/initrd.gz"]);
        assert_eq!(e.cmdline, "vga=788 --- quiet");
    }

    #[test]
    fn arch_whichsys_config_chain_and_three_initrds() {
        // The archiso layout: syslinux.cfg runs whichsys.c32, whose -iso-
        // branch is label `sys`, which loads archiso_sys.cfg; its entries
        // sit in included files, after TEXT HELP prose that starts with
        // a syslinux keyword.
        let e = parse(
            "/boot/syslinux/syslinux.cfg",
            "DEFAULT select\n\nLABEL select\nCOM32 boot/syslinux/whichsys.c32\nAPPEND -pxe- pxe -sys- sys -iso- sys\n\nLABEL pxe\nCONFIG archiso_pxe.cfg\n\nLABEL sys\nCONFIG archiso_sys.cfg\n",
            &[
                ("/boot/syslinux/archiso_sys.cfg", "INCLUDE archiso_head.cfg\n\nDEFAULT arch64\nTIMEOUT 150\n\nINCLUDE archiso_sys-linux.cfg\n\nINCLUDE archiso_tail.cfg\n"),
                ("/boot/syslinux/archiso_head.cfg", "SERIAL 0 115200\nUI vesamenu.c32\nMENU TITLE Arch Linux\n"),
                ("/boot/syslinux/archiso_sys-linux.cfg", "LABEL arch64\nTEXT HELP\nBoot the Arch Linux install medium on BIOS.\nIt allows you to install Arch Linux or perform system maintenance.\nENDTEXT\nMENU LABEL Arch Linux install medium (x86_64, BIOS)\nLINUX /arch/boot/x86_64/vmlinuz-linux\nINITRD /arch/boot/intel-ucode.img,/arch/boot/amd-ucode.img,/arch/boot/x86_64/initramfs-linux.img\nAPPEND archisobasedir=arch archisolabel=ARCH_202401\n"),
                ("/boot/syslinux/archiso_tail.cfg", "LABEL existing\nTEXT HELP\nBoot an existing operating system.\nENDTEXT\nMENU LABEL Boot existing OS\nCOM32 boot/syslinux/chain.c32\nAPPEND hd0 0\n\nLABEL memtest\nLINUX /boot/memtest86+/memtest\n"),
            ],
        );
        assert_eq!(e.kernel, "/arch/boot/x86_64/vmlinuz-linux");
        assert_eq!(
            e.initrds,
            [
                "/arch/boot/intel-ucode.img",
                "/arch/boot/amd-ucode.img",
                "/arch/boot/x86_64/initramfs-linux.img"
            ]
        );
        assert_eq!(e.cmdline, "archisobasedir=arch archisolabel=ARCH_202401");
    }

    #[test]
    fn whichsys_config_branch_and_ifcpu64_pick_the_64_bit_label() {
        let e = parse(
            "/isolinux/isolinux.cfg",
            "default start\nlabel start\n kernel whichsys.c32\n append -pxe- config pxe.cfg -iso- config iso.cfg /boot\n",
            &[(
                "/isolinux/iso.cfg",
                "default pick\nlabel pick\n kernel ifcpu64.c32\n append linux64 -- linux32\nlabel linux32\n kernel vmlinuz32\nlabel linux64\n kernel vmlinuz64\n append initrd=rd64.gz quiet\n",
            )],
        );
        // CONFIG's directory argument becomes the working directory.
        assert_eq!(e.kernel, "/boot/vmlinuz64");
        assert_eq!(e.initrds, ["/boot/rd64.gz"]);
        assert_eq!(e.cmdline, "quiet");
    }

    #[test]
    fn global_append_serves_labels_without_their_own() {
        let top =
            "append root=/dev/ram0 quiet\nlabel a\n kernel /a\nlabel b\n kernel /b\n append -\n";
        assert_eq!(
            parse("/syslinux.cfg", top, &[]).cmdline,
            "root=/dev/ram0 quiet"
        );
        let top_b = format!("default b\n{top}");
        let b = parse("/syslinux.cfg", &top_b, &[]);
        assert_eq!((b.kernel.as_str(), b.cmdline.as_str()), ("/b", ""));
    }

    #[test]
    fn a_default_without_labels_is_a_kernel_and_its_arguments() {
        let e = parse(
            "/isolinux/isolinux.cfg",
            "prompt 1\ndefault vmlinuz initrd=initrd.gz ramdisk_size=8192\n",
            &[],
        );
        assert_eq!(e.kernel, "/isolinux/vmlinuz");
        assert_eq!(e.initrds, ["/isolinux/initrd.gz"]);
        assert_eq!(e.cmdline, "ramdisk_size=8192");
    }

    #[test]
    fn syslinux_relative_paths_resolve_against_config_dir() {
        let e = parse(
            "/boot/isolinux/isolinux.cfg",
            "LABEL x\nKERNEL vmlinuz\nAPPEND initrd=initrd.img,extra.img ro\n",
            &[],
        );
        assert_eq!(e.kernel, "/boot/isolinux/vmlinuz");
        assert_eq!(
            e.initrds,
            ["/boot/isolinux/initrd.img", "/boot/isolinux/extra.img"]
        );
        assert_eq!(e.cmdline, "ro");
    }

    #[test]
    fn labels_that_do_not_boot_linux_are_errors_not_guesses() {
        for top in [
            "default vesamenu.c32\n",
            "default hd\nlabel hd\n com32 chain.c32\n append hd0\nlabel fd\n kernel memdisk.bin\n",
            "default a\nlabel a\n kernel whichsys.c32\n append -iso- a\n",
            "default a\nlabel a\n kernel ifcpu64.c32\n append b -- a\nlabel b\n kernel ifcpu64.c32\n append a -- b\n",
        ] {
            let e = parse_syslinux("/syslinux.cfg", top, &mut fetcher(HashMap::new()));
            assert!(matches!(e, Err(IsoError::NoBootEntry { .. })), "{top:?}: {e:?}");
        }
    }

    #[test]
    fn include_and_config_loops_are_bounded() {
        let loops = [
            ("/a.cfg", "include a.cfg\n"),
            ("/b.cfg", "label b\n config b.cfg\n"),
        ];
        for (path, text) in loops {
            let files = HashMap::from(loops);
            let e = parse_syslinux(path, text, &mut fetcher(files));
            assert!(matches!(e, Err(IsoError::TooManyIncludes { .. })), "{e:?}");
        }
    }

    #[test]
    fn a_missing_config_target_is_named() {
        let top = "label sys\n config gone.cfg\n";
        let e = parse_syslinux("/isolinux/isolinux.cfg", top, &mut fetcher(HashMap::new()));
        assert!(
            matches!(&e, Err(IsoError::NotFound { path }) if path == "/isolinux/gone.cfg"),
            "{e:?}"
        );
    }
}
