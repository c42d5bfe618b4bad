//! `cpushare image inspect`: what a buyer sees of an ISO before paying,
//! on layouts built the way distributions build theirs.

use cpushare_tests::{bin, Broker, Buyer};
use std::path::Path;
use std::process::Command;

/// Writes `files` under a fresh directory and packs them with xorriso
/// (Rock Ridge and Joliet, as distribution ISOs are).
fn iso(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let src = dir.join("src");
    for (path, data) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let out = dir.join("t.iso");
    let st = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "xorriso failed");
    out
}

/// `len` bytes that begin like an x86-64 bzImage (boot.rst: boot flag,
/// "HdrS", protocol 2.15, loaded high, a 64-bit entry point): what
/// `inspect` checks of a kernel.
fn bzimage_header(len: usize) -> Vec<u8> {
    bzimage(len, 0x020f, 1)
}

/// [`bzimage_header`] of another boot protocol and `xloadflags`.
fn bzimage(len: usize, protocol: u16, xloadflags: u8) -> Vec<u8> {
    let mut b = vec![0x90u8; len];
    b[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
    b[0x211] = 1;
    b[0x236] = xloadflags;
    b
}

fn inspect(iso: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(bin("cpushare"));
    if json {
        cmd.arg("--json");
    }
    let out = cmd.args(["image", "inspect"]).arg(iso).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn an_arch_style_iso_shows_its_whole_boot_chain_and_every_initrd() {
    let dir = tempfile::tempdir().unwrap();
    let iso = iso(
        dir.path(),
        &[
            ("boot/syslinux/syslinux.cfg", b"DEFAULT select\nLABEL select\nCOM32 boot/syslinux/whichsys.c32\nAPPEND -pxe- pxe -sys- sys -iso- sys\nLABEL sys\nCONFIG archiso_sys.cfg\n"),
            ("boot/syslinux/archiso_sys.cfg", b"DEFAULT arch64\nLABEL arch64\nLINUX /arch/boot/x86_64/vmlinuz-linux\nINITRD /arch/boot/intel-ucode.img,/arch/boot/amd-ucode.img,/arch/boot/x86_64/initramfs-linux.img\nAPPEND archisobasedir=arch archisolabel=ARCH_202401\n"),
            ("arch/boot/x86_64/vmlinuz-linux", &bzimage_header(4000)),
            ("arch/boot/intel-ucode.img", &[2; 10]),
            ("arch/boot/amd-ucode.img", &[3; 20]),
            ("arch/boot/x86_64/initramfs-linux.img", &[4; 30]),
        ],
    );
    let (code, out) = inspect(&iso, true);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bootable"], true);
    assert_eq!(v["source"], "syslinux /boot/syslinux/syslinux.cfg");
    assert_eq!(v["kernel"], "/arch/boot/x86_64/vmlinuz-linux");
    assert_eq!(v["kernel_size"], 4000);
    let initrds: Vec<(String, u64)> = v["initrds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_owned(),
                i["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        initrds,
        [
            ("/arch/boot/intel-ucode.img".to_owned(), 10),
            ("/arch/boot/amd-ucode.img".to_owned(), 20),
            ("/arch/boot/x86_64/initramfs-linux.img".to_owned(), 30),
        ]
    );
    assert_eq!(
        v["cmdline"],
        "panic=-1 archisobasedir=arch archisolabel=ARCH_202401 console=ttyS0"
    );

    let (code, text) = inspect(&iso, false);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("initrd")).collect();
    assert_eq!(
        lines,
        [
            "initrd   /arch/boot/intel-ucode.img (10 bytes)",
            "initrd   /arch/boot/amd-ucode.img (20 bytes)",
            "initrd   /arch/boot/x86_64/initramfs-linux.img (30 bytes)",
        ]
    );
}

#[test]
fn an_iso_whose_menu_only_chains_to_a_disk_says_why_it_cannot_boot() {
    let dir = tempfile::tempdir().unwrap();
    let iso = iso(
        dir.path(),
        &[(
            "isolinux/isolinux.cfg",
            b"default hd\nlabel hd\n com32 chain.c32\n append hd0\n",
        )],
    );
    let (code, out) = inspect(&iso, true);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bootable"], false);
    assert_eq!(
        v["error"],
        "boot config \"/isolinux/isolinux.cfg\" names no Linux kernel"
    );
    let (code, text) = inspect(&iso, false);
    assert_eq!(code, 1);
    assert!(text.contains("bootable no: boot config"), "{text}");
}

#[test]
fn run_refuses_an_iso_no_seller_could_boot_before_it_orders_or_uploads() {
    let dir = tempfile::tempdir().unwrap();
    // iPXE's image as Debian's ipxe.iso holds it: boot protocol 2.7.
    let old = iso(
        &dir.path().join("old"),
        &[
            (
                "isolinux.cfg",
                b"DEFAULT ipxe\nLABEL ipxe\n KERNEL ipxe.krn\n",
            ),
            ("ipxe.krn", &bzimage(4096, 0x0207, 0)),
        ],
    );
    // A good kernel whose initrd does not fit the memory asked for.
    let big = iso(
        &dir.path().join("big"),
        &[
            ("cpushare.toml", b"kernel = '/k'\ninitrd = '/rd'\n"),
            ("k", &bzimage_header(4096)),
            ("rd", &vec![0; 3 << 20]),
        ],
    );
    let broker = Broker::start(None);
    let buyer = Buyer::login(&broker, "iso-buyer", "1");
    let before = broker.balance("iso-buyer");
    for (image, mem, why) in [
        (&old, "64M", "boot protocol 2.7, older than 2.12"),
        (
            &big,
            "2M",
            "more than the 2 MiB asked for; give the VM more with --mem",
        ),
    ] {
        let out = buyer.run(&["run", image.to_str().unwrap(), "--mem", mem]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(why), "want {why:?} in {err}");
    }
    assert_eq!(buyer.json("orders"), serde_json::json!([]));
    assert_eq!(broker.balance("iso-buyer"), before);
}
