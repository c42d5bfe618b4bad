//! Parsers for the boot configurations found on live ISOs: our own
//! `cpushare.toml`, isolinux/syslinux `*.cfg`, and GRUB `grub.cfg`.
//!
//! They are pure: each takes the text of one file (and, for isolinux, a way
//! to fetch `INCLUDE`d files) and returns the kernel, initrd and command line.

use serde::Deserialize;

use super::IsoError;

/// Largest config file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;
/// Most `INCLUDE` files followed (Debian live ISOs nest three deep).
pub const MAX_INCLUDES: usize = 16;
/// Longest kernel command line accepted (Linux x86 `COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE: usize = 2048;

/// What a boot config names: paths are absolute within the ISO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// Kernel path.
    pub kernel: String,
    /// Initrd path, if any.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
}

/// `cpushare.toml` at the ISO root: the buyer states the boot explicitly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CpushareToml {
    kernel: String,
    initrd: Option<String>,
    #[serde(default)]
    cmdline: String,
}

/// Parses `cpushare.toml`.
pub fn parse_cpushare_toml(text: &str) -> Result<BootEntry, IsoError> {
    let t: CpushareToml = toml::from_str(text).map_err(|e| IsoError::BadCpushareToml {
        reason: e.message().to_owned(),
    })?;
    check_cmdline(&t.cmdline)?;
    Ok(BootEntry {
        kernel: absolute("/", &t.kernel),
        initrd: t.initrd.map(|i| absolute("/", &i)),
        cmdline: t.cmdline,
    })
}

fn check_cmdline(c: &str) -> Result<(), IsoError> {
    if c.len() > MAX_CMDLINE {
        return Err(IsoError::CmdlineTooLong {
            len: c.len(),
            max: MAX_CMDLINE,
        });
    }
    Ok(())
}

/// Joins a path from a config to the config's directory (syslinux resolves
/// relative paths against its working directory, the config's folder).
fn absolute(dir: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("{}/{}", dir.trim_end_matches('/'), p)
    }
}

#[derive(Default, Debug)]
struct Label {
    name: String,
    kernel: Option<String>,
    initrd: Option<String>,
    append: String,
    menu_default: bool,
}

/// Accumulates directives across an isolinux config and its includes.
#[derive(Default)]
struct SyslinuxState {
    labels: Vec<Label>,
    defaults: Vec<String>,
    includes: usize,
}

/// Parses an isolinux/syslinux config at `path` (absolute in the ISO).
/// `fetch` reads another config file for `INCLUDE`; missing includes are
/// skipped, as syslinux does.
pub fn parse_syslinux(
    path: &str,
    text: &str,
    fetch: &mut dyn FnMut(&str) -> Result<String, IsoError>,
) -> Result<BootEntry, IsoError> {
    let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
    let dir = if dir.is_empty() { "/" } else { dir };
    let mut st = SyslinuxState::default();
    syslinux_lines(dir, text, fetch, &mut st)?;

    let is_module = |k: &str| k.to_ascii_lowercase().ends_with(".c32");
    let usable = |l: &&Label| l.kernel.as_deref().is_some_and(|k| !is_module(k));
    let chosen = st
        .defaults
        .iter()
        .rev()
        .find_map(|d| st.labels.iter().filter(usable).find(|l| l.name == *d))
        .or_else(|| st.labels.iter().filter(usable).find(|l| l.menu_default))
        .or_else(|| st.labels.iter().find(usable));
    let label = chosen.ok_or(IsoError::NoBootEntry {
        config: path.to_owned(),
    })?;
    let kernel = label.kernel.as_deref().unwrap_or_default();
    let mut initrd = label.initrd.clone();
    let mut args = Vec::new();
    for a in label.append.split_whitespace() {
        match a.strip_prefix("initrd=") {
            // Several initrds may be comma-separated; we load the first.
            Some(i) => {
                if initrd.is_none() {
                    initrd = i.split(',').next().map(str::to_owned);
                }
            }
            None => args.push(a),
        }
    }
    let cmdline = args.join(" ");
    check_cmdline(&cmdline)?;
    Ok(BootEntry {
        kernel: absolute(dir, kernel),
        initrd: initrd
            .filter(|i| !i.is_empty())
            .map(|i| absolute(dir, i.split(',').next().unwrap_or_default())),
        cmdline,
    })
}

fn syslinux_lines(
    dir: &str,
    text: &str,
    fetch: &mut dyn FnMut(&str) -> Result<String, IsoError>,
    st: &mut SyslinuxState,
) -> Result<(), IsoError> {
    for line in text.lines() {
        let line = line.trim();
        let (kw, rest) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((k, r)) => (k, r.trim()),
            None => (line, ""),
        };
        match kw.to_ascii_lowercase().as_str() {
            "include" => {
                st.includes += 1;
                if st.includes > MAX_INCLUDES {
                    return Err(IsoError::TooManyIncludes { max: MAX_INCLUDES });
                }
                let file = rest.split_whitespace().next().unwrap_or_default();
                let p = absolute(dir, file);
                match fetch(&p) {
                    Ok(t) => syslinux_lines(dir, &t, fetch, st)?,
                    Err(IsoError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            "default" => st.defaults.push(rest.to_owned()),
            "label" => st.labels.push(Label {
                name: rest.to_owned(),
                ..Label::default()
            }),
            "kernel" | "linux" => {
                if let Some(l) = st.labels.last_mut() {
                    l.kernel = rest.split_whitespace().next().map(str::to_owned);
                }
            }
            "initrd" => {
                if let Some(l) = st.labels.last_mut() {
                    l.initrd = rest.split_whitespace().next().map(str::to_owned);
                }
            }
            "append" => {
                if let Some(l) = st.labels.last_mut() {
                    l.append = rest.to_owned();
                }
            }
            "menu" if rest.eq_ignore_ascii_case("default") => {
                if let Some(l) = st.labels.last_mut() {
                    l.menu_default = true;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses a GRUB config: the first `menuentry` (also inside a `submenu`)
/// that has a `linux` line. Arguments that use GRUB variables (`${...}`)
/// are dropped, since only GRUB could expand them.
pub fn parse_grub(path: &str, text: &str) -> Result<BootEntry, IsoError> {
    let mut in_entry = false;
    let mut depth = 0usize;
    let mut entry_depth = 0usize;
    let mut kernel: Option<String> = None;
    let mut initrd: Option<String> = None;
    let mut cmdline = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let kw = words.next().unwrap_or_default();
        if kw == "menuentry" && !in_entry {
            in_entry = true;
            entry_depth = depth;
            kernel = None;
            initrd = None;
            cmdline.clear();
        } else if in_entry && matches!(kw, "linux" | "linuxefi" | "linux16") {
            kernel = words.next().map(str::to_owned);
            cmdline = words
                .filter(|w| !w.contains('$'))
                .collect::<Vec<_>>()
                .join(" ");
        } else if in_entry && matches!(kw, "initrd" | "initrdefi" | "initrd16") {
            initrd = words.next().map(str::to_owned);
        }
        depth += line.matches('{').count();
        let closes = line.matches('}').count();
        depth = depth.saturating_sub(closes);
        if in_entry && depth <= entry_depth && (closes > 0 || line.ends_with('}')) {
            if kernel.is_some() {
                break;
            }
            in_entry = false;
        }
    }
    let kernel = kernel.ok_or(IsoError::NoBootEntry {
        config: path.to_owned(),
    })?;
    check_cmdline(&cmdline)?;
    Ok(BootEntry {
        kernel: absolute("/", &kernel),
        initrd: initrd.map(|i| absolute("/", &i)),
        cmdline,
    })
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

    #[test]
    fn debian_live_isolinux_menu_default_wins_over_c32_default() {
        // Layout of Debian 12 live ISOs (isolinux.cfg -> menu.cfg -> live.cfg).
        let files = HashMap::from([
            ("/isolinux/menu.cfg", "menu hshift 0\ninclude stdmenu.cfg\ninclude live.cfg\ninclude install.cfg\n"),
            ("/isolinux/live.cfg", "label live-amd64\n\tmenu label ^Live system (amd64)\n\tmenu default\n\tlinux /live/vmlinuz\n\tinitrd /live/initrd.img\n\tappend boot=live components quiet splash\n"),
            ("/isolinux/install.cfg", "label installstart\n\tkernel /install/vmlinuz\n\tappend vga=788 initrd=/install/initrd.gz --- quiet\n"),
        ]);
        let top = "include menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n";
        let e = parse_syslinux("/isolinux/isolinux.cfg", top, &mut fetcher(files)).unwrap();
        assert_eq!(e.kernel, "/live/vmlinuz");
        assert_eq!(e.initrd.as_deref(), Some("/live/initrd.img"));
        assert_eq!(e.cmdline, "boot=live components quiet splash");
    }

    #[test]
    fn debian_netinst_default_label_and_initrd_in_append() {
        let files = HashMap::from([
            ("/isolinux/menu.cfg", "include txt.cfg\n"),
            ("/isolinux/txt.cfg", "default install\nlabel install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\tappend vga=788 initrd=/install.amd/initrd.gz --- quiet \n"),
        ]);
        let top = "path \ninclude menu.cfg\ndefault vesamenu.c32\n";
        let e = parse_syslinux("/isolinux/isolinux.cfg", top, &mut fetcher(files)).unwrap();
        assert_eq!(e.kernel, "/install.amd/vmlinuz");
        assert_eq!(e.initrd.as_deref(), Some("/install.amd/initrd.gz"));
        assert_eq!(e.cmdline, "vga=788 --- quiet");
    }

    #[test]
    fn syslinux_relative_paths_resolve_against_config_dir() {
        let e = parse_syslinux(
            "/boot/isolinux/isolinux.cfg",
            "LABEL x\nKERNEL vmlinuz\nAPPEND initrd=initrd.img,extra.img ro\n",
            &mut fetcher(HashMap::new()),
        )
        .unwrap();
        assert_eq!(e.kernel, "/boot/isolinux/vmlinuz");
        assert_eq!(e.initrd.as_deref(), Some("/boot/isolinux/initrd.img"));
        assert_eq!(e.cmdline, "ro");
    }

    #[test]
    fn syslinux_without_labels_is_an_error() {
        let e = parse_syslinux(
            "/syslinux.cfg",
            "default vesamenu.c32\n",
            &mut fetcher(HashMap::new()),
        );
        assert!(matches!(e, Err(IsoError::NoBootEntry { .. })));
    }

    #[test]
    fn syslinux_include_loop_is_bounded() {
        let files = HashMap::from([("/a.cfg", "include a.cfg\n")]);
        let e = parse_syslinux("/a.cfg", "include a.cfg\n", &mut fetcher(files));
        assert!(matches!(e, Err(IsoError::TooManyIncludes { .. })), "{e:?}");
    }

    #[test]
    fn grub_debian_live_first_menuentry() {
        let cfg = "source /boot/grub/config.cfg\n\n# Live boot\nmenuentry \"Live system (amd64)\" --hotkey=l {\n\tlinux\t/live/vmlinuz-6.1.0-9-amd64 boot=live components quiet splash findiso=${iso_path}\n\tinitrd\t/live/initrd.img-6.1.0-9-amd64\n}\nmenuentry \"other\" {\n linux /other\n}\n";
        let e = parse_grub("/boot/grub/grub.cfg", cfg).unwrap();
        assert_eq!(e.kernel, "/live/vmlinuz-6.1.0-9-amd64");
        assert_eq!(e.initrd.as_deref(), Some("/live/initrd.img-6.1.0-9-amd64"));
        assert_eq!(e.cmdline, "boot=live components quiet splash");
    }

    #[test]
    fn grub_skips_entries_without_linux() {
        let cfg = "menuentry 'memtest' {\n  chainloader /x\n}\nsubmenu 'adv' {\n menuentry 'y' {\n  linux /vmlinuz ro\n }\n}\n";
        let e = parse_grub("/boot/grub/grub.cfg", cfg).unwrap();
        assert_eq!(e.kernel, "/vmlinuz");
        assert_eq!(e.initrd, None);
        assert_eq!(e.cmdline, "ro");
    }

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
    }

    proptest::proptest! {
        #[test]
        fn config_parsers_never_panic(s in "\\PC{0,400}") {
            let _ = parse_grub("/g.cfg", &s);
            let _ = parse_cpushare_toml(&s);
            let _ = parse_syslinux("/s.cfg", &s, &mut |_| Ok(String::from("label a\nkernel k\n")));
        }

        #[test]
        fn config_parsers_never_panic_on_keyword_soup(
            lines in proptest::collection::vec(
                proptest::sample::select(vec!["label a", "LABEL b", "kernel x.c32", "linux /v", "initrd i", "append initrd=,", "default a", "menu default", "include x", "menuentry {", "}", "linux", "initrd", "{{", "}}"]), 0..30)
        ) {
            let s = lines.join("\n");
            let _ = parse_grub("/g.cfg", &s);
            let _ = parse_syslinux("/s.cfg", &s, &mut |_| Ok(String::from("label a\nkernel k\n")));
        }
    }
}
