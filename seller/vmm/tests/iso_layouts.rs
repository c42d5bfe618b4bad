//! Real ISO layouts built with xorriso: isolinux (Debian live and netinst
//! style, Arch's whichsys chain), GRUB (Ubuntu, Fedora), an isolinux menu
//! with no Linux entry beside a GRUB config, cpushare.toml, Joliet-only
//! and plain ISO9660 names.

mod support;

use std::fs::File;
use std::path::Path;

use cpushare_vmm::iso::{
    inspect, read_initrds, BootSource, IsoError, IsoReader, Limits, NameScheme,
};
use support::{bzimage_header, bzimage_with, mkisofs, tree, xorriso_native};

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
            ("live/vmlinuz-6.1.0-27-amd64", &bzimage_header(5000)),
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
    assert_eq!(plan.initrds.len(), 1);
    assert_eq!(plan.initrds[0].size, 7000);
    assert_eq!(plan.cmdline, "boot=live components quiet splash");
    assert_eq!(
        r.read_path(&plan.kernel.path, 1 << 20).unwrap(),
        bzimage_header(5000)
    );
}

#[test]
fn arch_whichsys_chain_with_three_initrds() {
    let (_d, iso) = build(
        &[
            ("boot/syslinux/syslinux.cfg", b"DEFAULT select\n\nLABEL select\nCOM32 boot/syslinux/whichsys.c32\nAPPEND -pxe- pxe -sys- sys -iso- sys\n\nLABEL pxe\nCONFIG boot/syslinux/archiso_pxe.cfg\n\nLABEL sys\nCONFIG archiso_sys.cfg\n"),
            ("boot/syslinux/archiso_sys.cfg", b"INCLUDE archiso_head.cfg\nDEFAULT arch64\nTIMEOUT 150\nINCLUDE archiso_sys-linux.cfg\n"),
            ("boot/syslinux/archiso_head.cfg", b"SERIAL 0 115200\nUI vesamenu.c32\n"),
            ("boot/syslinux/archiso_sys-linux.cfg", b"LABEL arch64\nTEXT HELP\nBoot the Arch Linux install medium on BIOS.\nENDTEXT\nMENU LABEL Arch Linux install medium (x86_64, BIOS)\nLINUX /arch/boot/x86_64/vmlinuz-linux\nINITRD /arch/boot/intel-ucode.img,/arch/boot/amd-ucode.img,/arch/boot/x86_64/initramfs-linux.img\nAPPEND archisobasedir=arch archisolabel=ARCH_202401\n"),
            ("arch/boot/x86_64/vmlinuz-linux", &bzimage_header(3000)),
            ("arch/boot/intel-ucode.img", &[2u8; 101]),
            ("arch/boot/amd-ucode.img", &[3u8; 202]),
            ("arch/boot/x86_64/initramfs-linux.img", &[4u8; 303]),
        ],
        &["-R", "-J"],
    );
    let mut r = open(&iso);
    let plan = inspect(&mut r).unwrap();
    assert_eq!(
        plan.source,
        BootSource::Syslinux("/boot/syslinux/syslinux.cfg".into())
    );
    assert_eq!(plan.kernel.path, "/arch/boot/x86_64/vmlinuz-linux");
    let sizes: Vec<u64> = plan.initrds.iter().map(|i| i.size).collect();
    assert_eq!(sizes, [101, 202, 303]);
    assert_eq!(plan.cmdline, "archisobasedir=arch archisolabel=ARCH_202401");
    // Loaded as one image, each archive 4-byte aligned.
    let image = read_initrds(&mut r, &plan.initrds, 1 << 20)
        .unwrap()
        .unwrap();
    let mut want = vec![2u8; 101];
    want.extend([0; 3]);
    want.extend([3u8; 202]);
    want.extend([0; 2]);
    want.extend([4u8; 303]);
    assert_eq!(image, want);
    // Together they must fit the limit the VM's memory sets.
    assert!(matches!(
        read_initrds(&mut r, &plan.initrds, 600),
        Err(IsoError::InitrdsTooLarge {
            size: 611,
            max: 600
        })
    ));
}

#[test]
fn fedora_grub2_layout() {
    let (_d, iso) = build(
        &[
            ("boot/grub2/grub.cfg", b"set default=\"1\"\nfunction load_video {\n  insmod all_video\n}\nsearch --no-floppy --set=root -l 'Fedora-WS-Live-41'\nmenuentry 'Start Fedora-Workstation-Live 41' --class fedora {\n\tlinux /images/pxeboot/vmlinuz root=live:CDLABEL=Fedora-WS-Live-41 rd.live.image quiet rhgb\n\tinitrd /images/pxeboot/initrd.img\n}\n"),
            ("images/pxeboot/vmlinuz", &bzimage_header(1000)),
            ("images/pxeboot/initrd.img", &[2u8; 100]),
        ],
        &["-R", "-J"],
    );
    let plan = inspect(&mut open(&iso)).unwrap();
    assert_eq!(plan.source, BootSource::Grub("/boot/grub2/grub.cfg".into()));
    assert_eq!(plan.kernel.path, "/images/pxeboot/vmlinuz");
    assert_eq!(
        plan.cmdline,
        "root=live:CDLABEL=Fedora-WS-Live-41 rd.live.image quiet rhgb"
    );
}

#[test]
fn isolinux_menu_without_linux_falls_back_to_grub() {
    let (_d, iso) = build(
        &[
            ("isolinux/isolinux.cfg", b"default hd\nlabel hd\n com32 chain.c32\n append hd0\n"),
            ("boot/grub/grub.cfg", b"menuentry 'Try or Install Ubuntu' {\n\tset gfxpayload=keep\n\tlinux\t/casper/vmlinuz  --- quiet splash\n\tinitrd\t/casper/initrd\n}\n"),
            ("casper/vmlinuz", &bzimage_header(1000)),
            ("casper/initrd", &[2u8; 100]),
        ],
        &["-R", "-J"],
    );
    let plan = inspect(&mut open(&iso)).unwrap();
    assert_eq!(plan.source, BootSource::Grub("/boot/grub/grub.cfg".into()));
    assert_eq!(plan.kernel.path, "/casper/vmlinuz");
    assert_eq!(plan.cmdline, "--- quiet splash");
    // Without the GRUB config, the isolinux config is what is wrong.
    let (_d, iso) = build(
        &[(
            "isolinux/isolinux.cfg",
            b"default hd\nlabel hd\n com32 chain.c32\n",
        )],
        &["-R"],
    );
    let e = inspect(&mut open(&iso)).unwrap_err();
    assert!(
        matches!(&e, IsoError::NoBootEntry { config } if config == "/isolinux/isolinux.cfg"),
        "{e}"
    );
}

#[test]
fn rock_ridge_symlinks_are_followed_within_the_iso() {
    let src = tree(&[
        ("live/vmlinuz-6.1.0-27-amd64", &bzimage_header(3000)),
        ("live/initrd.img-6.1.0-27-amd64", b"rd"),
        ("boot/.keep", b""),
        (
            "cpushare.toml",
            b"kernel = \"/vmlinuz\"\ninitrd = \"/boot/initrd.img\"\n",
        ),
    ]);
    let link = |target: &str, at: &str| {
        std::os::unix::fs::symlink(target, src.path().join(at)).unwrap();
    };
    // As a Debian root file system links its kernel: relative links, a
    // chain, `..`, an absolute link, a loop and a dangling link.
    link("vmlinuz-6.1.0-27-amd64", "live/vmlinuz");
    link("live/vmlinuz", "vmlinuz");
    link("../live/initrd.img-6.1.0-27-amd64", "boot/initrd.img");
    link("/live/vmlinuz", "abs");
    link("b", "boot/a");
    link("a", "boot/b");
    link("gone", "boot/dangling");
    let out = tempfile::tempdir().unwrap();
    let iso = out.path().join("links.iso");
    mkisofs(src.path(), &iso, &["-R"]);

    let mut r = open(&iso);
    let plan = inspect(&mut r).unwrap();
    assert_eq!(plan.kernel.size, 3000);
    assert_eq!(plan.initrds[0].size, 2);
    assert_eq!(r.read_path("/abs", 4096).unwrap(), bzimage_header(3000));
    assert_eq!(r.read_path("/boot/../boot/initrd.img", 10).unwrap(), b"rd");
    assert!(matches!(
        r.lookup("/boot/a"),
        Err(IsoError::TooManySymlinks { .. })
    ));
    assert!(matches!(
        r.lookup("/boot/dangling"),
        Err(IsoError::NotFound { .. })
    ));
}

#[test]
fn grub_only_layout() {
    let (_d, iso) = build(
        &[
            ("boot/grub/grub.cfg", b"set default=0\nmenuentry 'Debian live' {\n  linux /live/vmlinuz boot=live findiso=${iso_path} quiet\n  initrd /live/initrd.img\n}\n"),
            ("live/vmlinuz", &bzimage_header(1000)),
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
            ("boot/Guest.elf", &bzimage_header(1000)),
            ("boot/initrd", b"rd"),
            ("isolinux/isolinux.cfg", b"label x\nkernel /nope\n"),
        ],
        &["-R", "-J"],
    );
    let plan = inspect(&mut open(&iso)).unwrap();
    assert_eq!(plan.source, BootSource::CpushareToml);
    assert_eq!(plan.kernel.path, "/boot/Guest.elf");
    assert_eq!(plan.initrds[0].path, "/boot/initrd");
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
            ("Boot/A-Rather-Long-Kernel-Name.elf", &bzimage_header(1000)),
        ],
        false,
        true,
    );
    let mut r = open(&iso);
    assert_eq!(r.scheme(), NameScheme::Joliet);
    let plan = inspect(&mut r).unwrap();
    assert_eq!(plan.kernel.size, 1000);
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
            ("boot/vmlinuz", &bzimage_header(1000)),
            ("boot/initrd.gz", b"initrd"),
        ],
        false,
        false,
    );
    let mut r = open(&iso);
    assert_eq!(r.scheme(), NameScheme::Iso9660);
    let plan = inspect(&mut r).unwrap();
    assert_eq!(plan.kernel.path, "/boot/vmlinuz");
    assert_eq!(plan.initrds[0].path, "/boot/initrd.gz");
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
    let e = inspect(&mut open(&iso2)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/cpushare.toml names kernel \"/missing\", which is not in the ISO"
    );
    // As in Debian's grub-rescue-cdrom.iso, whose sample entry boots from
    // a hard disk.
    let (_d3, iso3) = build(
        &[
            ("boot/grub/grub.cfg", b"menuentry 'GNU/Linux' {\n set root=(hd0,msdos1)\n linux /vmlinuz root=/dev/sda1\n initrd /initrd.img\n}\n"),
            ("vmlinuz", &bzimage_header(1000)),
        ],
        &["-R"],
    );
    let e = inspect(&mut open(&iso3)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/boot/grub/grub.cfg names initrd \"/initrd.img\", which is not in the ISO"
    );
}

#[test]
fn a_kernel_that_cannot_boot_here_is_named_with_the_reason() {
    // Laid out as Debian's ipxe.iso: isolinux booting a real-mode-only
    // image (boot protocol 2.7) that isolinux can start and we cannot.
    let (_d, iso) = build(
        &[
            (
                "isolinux.cfg",
                b"TIMEOUT 0\nDEFAULT ipxe.lkrn\nLABEL ipxe.lkrn\n KERNEL ipxe.krn\n",
            ),
            ("ipxe.krn", &bzimage_with(4096, 0x0207, 0)),
        ],
        &["-R", "-J"],
    );
    let e = inspect(&mut open(&iso)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"/ipxe.krn\" cannot boot here: it is a bzImage of boot protocol 2.7, older than 2.12, so it has no 64-bit entry point"
    );
    // A 32-bit kernel, and a file that is no kernel at all.
    for (kernel, why) in [
        (
            bzimage_with(4096, 0x020f, 0),
            "without a 64-bit entry point",
        ),
        (vec![0u8; 4096], "neither an ELF nor a bzImage"),
    ] {
        let (_d, iso) = build(
            &[("cpushare.toml", b"kernel = '/k'\n"), ("k", &kernel)],
            &["-R"],
        );
        let e = inspect(&mut open(&iso)).unwrap_err();
        assert!(
            matches!(e, IsoError::Unbootable { .. }) && e.to_string().contains(why),
            "{e}"
        );
    }
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
            ("k", &bzimage_header(10_000)),
        ],
        &["-R"],
    );
    let bytes = std::fs::read(&iso).unwrap();
    let lba = open(&iso).lookup("/k").unwrap().lba() as usize;
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
