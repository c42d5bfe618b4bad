//! Boots the freestanding test guest on real KVM (hardware or PVM) and
//! checks console output, virtio-blk reads, exit statuses, several vCPUs,
//! stopping from outside, and clear errors for bad inputs.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use cpushare_vmm::{from_iso, Payload, Vm, VmConfig, VmExit, VmmError};
use support::{fnv1a, guest_elf, require_kvm, Sink};

fn config(cmdline: &str) -> VmConfig {
    VmConfig {
        vcpus: 1,
        mem_bytes: 64 << 20,
        kernel: Payload::Path(guest_elf()),
        initrd: None,
        cmdline: cmdline.into(),
        disk_ro: None,
        scratch: None,
        net: None,
    }
}

fn boot(cfg: VmConfig) -> (Result<VmExit, VmmError>, String) {
    require_kvm();
    let sink = Sink::default();
    let r = Vm::boot(cfg, Box::new(sink.clone()), None);
    (r, sink.text())
}

#[test]
fn serial_output_reaches_the_sink_and_power_off_status_returns() {
    let (r, out) = boot(config("hello exit 7"));
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 7 });
    assert!(
        out.contains("hello from cpushare test guest"),
        "console: {out:?}"
    );
}

#[test]
fn empty_cmdline_says_hello_and_powers_off_with_zero() {
    let (r, out) = boot(config(""));
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 0 });
    assert!(out.contains("hello"), "console: {out:?}");
}

#[test]
fn virtio_blk_sector_checksum_matches_the_disk_file() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all(&data).unwrap();
    let mut cfg = config("blk");
    cfg.disk_ro = Some(f.path().to_owned());
    let (r, out) = boot(cfg);
    assert_eq!(
        r.unwrap(),
        VmExit::PowerOff { status: 0 },
        "console: {out:?}"
    );
    let want = format!(
        "blk: capacity={} fnv1a={:08x}",
        data.len() / 512,
        fnv1a(&data[..4096])
    );
    assert!(out.contains(&want), "want {want:?} in {out:?}");
}

/// The guest boots by all three entry paths, reads its command line and
/// sees the initrd where the protocol says: PVH (`guest.elf`), Linux 64-bit
/// with an ELF (`guest-nopvh.elf`) and with a bzImage (`guest.bzImage`).
#[test]
fn pvh_elf_and_bzimage_entries_pass_cmdline_and_initrd() {
    let rd: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(7919) >> 5) as u8)
        .collect();
    let want = format!("initrd: size={} fnv1a={:08x}", rd.len(), fnv1a(&rd));
    for image in ["guest.elf", "guest-nopvh.elf", "guest.bzImage"] {
        let mut cfg = config("hello initrd exit 6");
        cfg.kernel = Payload::Path(support::guest_dir().join(image));
        cfg.initrd = Some(Payload::Bytes(rd.clone()));
        let (r, out) = boot(cfg);
        assert_eq!(r.unwrap(), VmExit::PowerOff { status: 6 }, "{image}: {out}");
        assert!(out.contains(&want), "{image}: want {want:?} in {out:?}");
    }
}

#[test]
fn writable_scratch_disk_is_served_too() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
    f.write_all(&data).unwrap();
    let mut cfg = config("blk");
    cfg.scratch = Some(f.path().to_owned());
    let (r, out) = boot(cfg);
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 0 }, "{out}");
    let want = format!("blk: capacity=128 fnv1a={:08x}", fnv1a(&data[..4096]));
    assert!(out.contains(&want), "want {want:?} in {out:?}");
}

#[test]
fn blk_without_a_disk_reports_it_and_fails() {
    let (r, out) = boot(config("blk"));
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 2 });
    assert!(out.contains("no virtio-blk device"), "console: {out:?}");
}

#[test]
fn four_vcpus_come_up_through_init_sipi_and_run_ring3_work() {
    // The guest wakes the APs through the LAPIC; each runs a ring-3 loop and
    // checks in. They are still spinning at power off and must be kicked.
    let mut cfg = config("smp 4");
    cfg.vcpus = 4;
    let (r, out) = boot(cfg);
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 0 }, "{out}");
    assert!(out.contains("smp: 4 vCPUs up"), "{out}");
}

#[test]
fn idle_aps_waiting_for_sipi_are_torn_down_with_the_guest() {
    let mut cfg = config("hello exit 3");
    cfg.vcpus = 3;
    let (r, out) = boot(cfg);
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 3 });
    assert!(out.contains("hello"));
}

#[test]
fn stop_handle_ends_a_spinning_guest() {
    require_kvm();
    let vm = Vm::new(
        config("spin 1000000000000"),
        Box::new(Sink::default()),
        None,
    )
    .unwrap();
    let h = vm.handle();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        h.stop();
    });
    assert_eq!(vm.run().unwrap(), VmExit::Stopped);
    t.join().unwrap();
}

/// KVM queues the console's transmit writes instead of exiting: what a
/// guest prints just before a long computation without exits must still
/// show while it computes, not only when the VM ends.
#[test]
fn output_before_a_long_exitless_computation_shows_while_it_runs() {
    require_kvm();
    let sink = Sink::default();
    let vm = Vm::new(
        config("hello spin 1000000000000"),
        Box::new(sink.clone()),
        None,
    )
    .unwrap();
    let h = vm.handle();
    let watcher = sink.clone();
    let t = std::thread::spawn(move || {
        // A generous bound: the VMM replays queued output within ~10 ms.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !watcher.text().ends_with("guest\r\n") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = watcher.text();
        h.stop();
        seen
    });
    assert_eq!(vm.run().unwrap(), VmExit::Stopped);
    let seen = t.join().unwrap();
    assert_eq!(
        seen, "hello from cpushare test guest\r\n",
        "console while the guest spins"
    );
}

#[test]
fn a_guest_fault_without_idt_is_a_triple_fault() {
    let (r, _) = boot(config("hello fault"));
    assert_eq!(r.unwrap(), VmExit::TripleFault);
}

#[test]
fn console_input_reaches_the_guest_through_com1() {
    require_kvm();
    let sink = Sink::default();
    let input: Box<dyn std::io::Read + Send> =
        Box::new(std::io::Cursor::new(b"typed by the buyer\n".to_vec()));
    let r = Vm::boot(config("read"), Box::new(sink.clone()), Some(input));
    let out = sink.text();
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 0 }, "{out}");
    assert!(out.contains("input: typed by the buyer"), "{out}");
}

#[test]
fn garbage_kernel_is_a_clear_error() {
    let mut cfg = config("");
    cfg.kernel = Payload::Bytes((0..100_000u32).map(|i| (i * 31) as u8).collect());
    let e = boot(cfg).0.unwrap_err();
    assert!(matches!(e, VmmError::Boot(_)), "{e}");
    assert!(
        e.to_string().contains("neither an ELF nor a bzImage"),
        "{e}"
    );
    // A bzImage with no 64-bit entry point (a 32-bit kernel) is refused
    // before the guest could jump into it.
    let mut image = std::fs::read(support::guest_dir().join("guest.bzImage")).unwrap();
    image[0x236] &= !1;
    let mut cfg = config("");
    cfg.kernel = Payload::Bytes(image);
    let e = boot(cfg).0.unwrap_err();
    assert!(
        e.to_string().contains("without a 64-bit entry point"),
        "{e}"
    );
}

#[test]
fn files_larger_than_memory_are_rejected_before_loading() {
    let big = tempfile::NamedTempFile::new().unwrap();
    big.as_file().set_len(64 << 20).unwrap();
    let mut cfg = config("");
    cfg.mem_bytes = 32 << 20;
    cfg.initrd = Some(Payload::Path(big.path().to_owned()));
    let e = boot(cfg).0.unwrap_err();
    assert!(matches!(e, VmmError::FileLargerThanMemory { .. }), "{e}");
    // An initrd that fits in RAM but not above the kernel.
    let mut cfg = config("");
    cfg.mem_bytes = 32 << 20;
    cfg.initrd = Some(Payload::Bytes(vec![0; 31 << 20]));
    let e = boot(cfg).0.unwrap_err();
    assert!(e.to_string().contains("initrd"), "{e}");
}

#[test]
fn bad_resources_are_rejected() {
    let mut cfg = config("");
    cfg.vcpus = 0;
    assert!(matches!(
        boot(cfg).0.unwrap_err(),
        VmmError::BadVcpuCount { .. }
    ));
    let mut cfg = config("");
    cfg.mem_bytes = 1 << 20;
    assert!(matches!(boot(cfg).0.unwrap_err(), VmmError::Memory(_)));
    let mut cfg = config("");
    cfg.disk_ro = Some("/nonexistent/disk.iso".into());
    assert!(matches!(
        boot(cfg).0.unwrap_err(),
        VmmError::OpenDisk { .. }
    ));
}

#[test]
fn iso_with_cpushare_toml_boots_and_serves_itself_as_disk() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("guest.iso");
    let st = std::process::Command::new("sh")
        .arg(support::repo_root().join("guest-images/test-guest/mkiso.sh"))
        .arg(guest_elf())
        .arg(&iso)
        .arg("hello blk")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let b = from_iso(&iso, 1, 64 << 20).unwrap();
    assert_eq!(b.plan.kernel.path, "/boot/guest.elf");
    assert_eq!(b.config.cmdline, "panic=-1 hello blk console=ttyS0");
    let (r, out) = boot(b.config);
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 0 }, "{out}");
    let bytes = std::fs::read(&iso).unwrap();
    let want = format!(
        "blk: capacity={} fnv1a={:08x}",
        bytes.len() / 512,
        fnv1a(&bytes[..4096])
    );
    assert!(out.contains(&want), "want {want:?} in {out:?}");
}

/// An isolinux ISO laid out as Arch Linux's (whichsys.c32 chain, three
/// initrds): the guest sees the initrds as one image, each 4-byte aligned,
/// as GRUB and syslinux hand them to Linux.
#[test]
fn arch_style_iso_boots_with_its_initrds_concatenated() {
    let parts: [Vec<u8>; 3] = [
        (0..1001u32).map(|i| (i * 7) as u8).collect(),
        (0..2050u32).map(|i| (i * 13) as u8).collect(),
        (0..300_001u32)
            .map(|i| (i.wrapping_mul(7919) >> 5) as u8)
            .collect(),
    ];
    let kernel = std::fs::read(guest_elf()).unwrap();
    let src = support::tree(&[
        ("boot/syslinux/syslinux.cfg", b"DEFAULT select\nLABEL select\nCOM32 boot/syslinux/whichsys.c32\nAPPEND -pxe- pxe -sys- sys -iso- sys\nLABEL sys\nCONFIG archiso_sys.cfg\n"),
        ("boot/syslinux/archiso_sys.cfg", b"DEFAULT arch64\nLABEL arch64\nLINUX /arch/boot/x86_64/vmlinuz-linux\nINITRD /arch/boot/intel-ucode.img,/arch/boot/amd-ucode.img,/arch/boot/x86_64/initramfs-linux.img\nAPPEND hello initrd exit 6\n"),
        ("arch/boot/x86_64/vmlinuz-linux", &kernel),
        ("arch/boot/intel-ucode.img", &parts[0]),
        ("arch/boot/amd-ucode.img", &parts[1]),
        ("arch/boot/x86_64/initramfs-linux.img", &parts[2]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("arch.iso");
    support::mkisofs(src.path(), &iso, &["-R", "-J"]);
    let b = from_iso(&iso, 1, 64 << 20).unwrap();
    assert_eq!(b.plan.initrds.len(), 3);
    let (r, out) = boot(b.config);
    assert_eq!(r.unwrap(), VmExit::PowerOff { status: 6 }, "{out}");
    let mut image = Vec::new();
    for p in &parts {
        image.resize(image.len().next_multiple_of(4), 0);
        image.extend_from_slice(p);
    }
    let want = format!("initrd: size={} fnv1a={:08x}", image.len(), fnv1a(&image));
    assert!(out.contains(&want), "want {want:?} in {out:?}");
}

#[test]
fn a_non_iso_gives_a_clear_error() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(100_000).unwrap();
    let e = from_iso(f.path(), 1, 64 << 20).unwrap_err();
    assert!(e.to_string().contains("not an ISO9660 image"), "{e}");
}
