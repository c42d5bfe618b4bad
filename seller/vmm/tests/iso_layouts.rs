//! Real ISO layouts built with xorriso: isolinux (Debian live and netinst
//! style), GRUB, cpushare.toml, Joliet-only and plain ISO9660 names.

mod support;

use std::fs::File;
use std::path::Path;

use cpushare_vmm::iso::{inspect, BootSource, IsoError, IsoReader, Limits, NameScheme};
use support::{mkisofs, tree, xorriso_native};

fn open(iso: &Path) -> IsoReader<File> {
    IsoReader::new(File::open(iso).unwrap()).unwrap()
}

fn build(files: &[(&str, &[u8])], args: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let src = tree(files);
    let out = tempfile::tempdir().unwrap();
    let iso = out.path().join("t.iso");
    mkisofs(src.path(), &iso, args);
    drop(src);
    (out, iso)
}

fn build_native(
    files: &[(&str, &[u8])],
    rock_ridge: bool,
    joliet: bool,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let src = tree(files);
    let out = tempfile::tempdir().unwrap();
    let iso = out.path().join("t.iso");
    xorriso_native(src.path(), &iso, rock_ridge, joliet);
    (out, iso)
}

#[test]
fn debian_live_isolinux_layout_with_rock_ridge() {
    let (_d, iso) = build(
        &[
            ("isolinux/isolinux.cfg", b"include menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n"),
            ("isolinux/menu.cfg", b"menu hshift 0\nmenu width 82\ninclude stdmenu.cfg\ninclude live.cfg\n"),
            ("isolinux/stdmenu.cfg", b"menu background splash.png\n"),
            ("isolinux/live.cfg", b"label live-amd64\n\tmenu label ^Live system (amd64)\n\tmenu default\n\tlinux /live/vmlinuz-6.1.0-27-amd64\n\tinitrd /live/initrd.img-6.1.0-27-amd64\n\tappend boot=live components quiet splash\n"),
            ("live/vmlinuz-6.1.0-27-amd64", &[1u8; 5000]),
            ("live/initrd.img-6.1.0-27-amd64", &[2u8; 7000]),
        ],
        &["-R", "-J"],
    );
    let mut r = open(&iso);
    assert_eq!(r.scheme(), NameScheme::RockRidge);
    let plan = inspect(&mut r).unwrap();
    assert_eq!(
        plan.source,
        BootSource::Syslinux("/isolinux/isolinux.cfg".into())
    );
    assert_eq!(plan.kernel.path, "/live/vmlinuz-6.1.0-27-amd64");
    assert_eq!(plan.kernel.size, 5000);
    assert_eq!(plan.initrd.as_ref().unwrap().size, 7000);
    assert_eq!(plan.cmdline, "boot=live components quiet splash");
    assert_eq!(
        r.read_path(&plan.kernel.path, 1 << 20).unwrap(),
        vec![1u8; 5000]
    );
}

#[test]
fn grub_only_layout() {
    let (_d, iso) = build(
        &[
            ("boot/grub/grub.cfg", b"set default=0\nmenuentry 'Debian live' {\n  linux /live/vmlinuz boot=live findiso=${iso_path} quiet\n  initrd /live/initrd.img\n}\n"),
            ("live/vmlinuz", b"kernel"),
            ("live/initrd.img", b"initrd"),
        ],
        &["-R"],
    );
    let plan = inspect(&mut open(&iso)).unwrap();
    assert_eq!(plan.source, BootSource::Grub("/boot/grub/grub.cfg".into()));
    assert_eq!(plan.kernel.path, "/live/vmlinuz");
    assert_eq!(plan.cmdline, "boot=live quiet");
}

#[test]
fn cpushare_toml_wins_over_other_configs() {
    let (_d, iso) = build(
        &[
            (
                "cpushare.toml",
                b"kernel = \"/boot/Guest.elf\"\ninitrd = \"boot/initrd\"\ncmdline = \"spin 10\"\n",
            ),
            ("boot/Guest.elf", b"elf"),
            ("boot/initrd", b"rd"),
            ("isolinux/isolinux.cfg", b"label x\nkernel /nope\n"),
        ],
        &["-R", "-J"],
    );
    let plan = inspect(&mut open(&iso)).unwrap();
    assert_eq!(plan.source, BootSource::CpushareToml);
    assert_eq!(plan.kernel.path, "/boot/Guest.elf");
    assert_eq!(plan.initrd.unwrap().path, "/boot/initrd");
    assert_eq!(plan.cmdline, "spin 10");
}

#[test]
fn joliet_only_names_keep_case_and_length() {
    let (_d, iso) = build_native(
        &[
            (
                "cpushare.toml",
                b"kernel = \"/Boot/A-Rather-Long-Kernel-Name.elf\"\n",
            ),
            ("Boot/A-Rather-Long-Kernel-Name.elf", b"k"),
        ],
        false,
        true,
    );
    let mut r = open(&iso);
    assert_eq!(r.scheme(), NameScheme::Joliet);
    let plan = inspect(&mut r).unwrap();
    assert_eq!(plan.kernel.size, 1);
    let names: Vec<String> = {
        let root = r.root().clone();
        r.read_dir(&root)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    assert!(names.contains(&"Boot".to_string()), "{names:?}");
}

#[test]
fn plain_iso9660_names_are_found_case_insensitively() {
    let (_d, iso) = build_native(
        &[
            ("isolinux/isolinux.cfg", b"DEFAULT linux\nLABEL linux\n  KERNEL /boot/vmlinuz\n  APPEND initrd=/boot/initrd.gz root=/dev/ram0\n"),
            ("boot/vmlinuz", b"kernel"),
            ("boot/initrd.gz", b"initrd"),
        ],
        false,
        false,
    );
    let mut r = open(&iso);
    assert_eq!(r.scheme(), NameScheme::Iso9660);
    let plan = inspect(&mut r).unwrap();
    assert_eq!(plan.kernel.path, "/boot/vmlinuz");
    assert_eq!(plan.initrd.unwrap().path, "/boot/initrd.gz");
    assert_eq!(plan.cmdline, "root=/dev/ram0");
}

#[test]
fn no_config_and_missing_kernel_give_named_errors() {
    let (_d, iso) = build(&[("README", b"hi")], &["-R"]);
    assert!(matches!(
        inspect(&mut open(&iso)),
        Err(IsoError::NoBootConfig)
    ));
    let (_d2, iso2) = build(&[("cpushare.toml", b"kernel = \"/missing\"\n")], &["-R"]);
    assert!(matches!(
        inspect(&mut open(&iso2)),
        Err(IsoError::NotFound { .. })
    ));
}

#[test]
fn limits_bound_directories_and_files() {
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("many/file{i:04}"), vec![0u8; 1]))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let (_d, iso) = build(&refs, &["-R"]);
    let limits = Limits {
        max_dir_entries: 100,
        ..Limits::default()
    };
    let mut r = IsoReader::with_limits(File::open(&iso).unwrap(), limits).unwrap();
    assert!(matches!(
        r.lookup("/many/file0001"),
        Err(IsoError::TooManyEntries { max: 100 })
    ));
    let limits = Limits {
        max_dir_bytes: 2048,
        ..Limits::default()
    };
    let mut r = IsoReader::with_limits(File::open(&iso).unwrap(), limits).unwrap();
    assert!(matches!(
        r.lookup("/many/file0001"),
        Err(IsoError::DirectoryTooLarge { .. })
    ));
    let mut r = open(&iso);
    let e = r.lookup("/many/file0001").unwrap();
    assert!(matches!(
        r.read_file(&e, 0),
        Err(IsoError::FileTooLarge { .. })
    ));
    assert!(matches!(
        r.lookup(&"/a".repeat(40)),
        Err(IsoError::PathTooDeep { .. })
    ));
}

#[test]
fn truncated_iso_is_reported_as_truncated() {
    let (_d, iso) = build(
        &[
            ("cpushare.toml", b"kernel = \"/k\"\n"),
            ("k", &[7u8; 10_000]),
        ],
        &["-R"],
    );
    let bytes = std::fs::read(&iso).unwrap();
    let lba = open(&iso).lookup("/k").unwrap().lba as usize;
    let cut = bytes[..lba * 2048 + 100].to_vec();
    let mut r = IsoReader::new(std::io::Cursor::new(cut)).unwrap();
    let res = inspect(&mut r).and_then(|p| r.read_path(&p.kernel.path, 1 << 20));
    assert!(
        matches!(res, Err(IsoError::Truncated { .. })),
        "{:?}",
        res.map(|v| v.len())
    );
    let head = bytes[..16 * 2048 + 10].to_vec();
    assert!(matches!(
        IsoReader::new(std::io::Cursor::new(head)),
        Err(IsoError::Truncated { .. })
    ));
}
