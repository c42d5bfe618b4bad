//! Boots Debian's stock kernel (`linux-image-amd64`) with its initramfs on
//! hardware KVM and checks that it finds the virtio-pci disk. On software
//! KVM (PVM) a stock kernel takes minutes to boot, so the test prints why
//! it does not run and returns.

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use cpushare_vmm::{kvm_kind, KvmKind, Payload, Vm, VmConfig, VmExit};
use support::Sink;

/// Newest `/boot/vmlinuz-*` with its `initrd.img-*`.
fn debian_kernel() -> Option<(PathBuf, PathBuf)> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let k = kernels.pop()?;
    let version = k
        .file_name()?
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    let initrd = PathBuf::from(format!("/boot/initrd.img-{version}"));
    initrd.exists().then_some((k, initrd))
}

/// Console input that types commands once the initramfs shell is up.
struct SlowTyping(Vec<u8>, bool);

impl Read for SlowTyping {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.1 {
            std::thread::sleep(Duration::from_secs(20));
            self.1 = true;
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
        Ok(n)
    }
}

#[test]
fn debian_kernel_finds_the_virtio_disk_on_hardware_kvm() {
    let kind = kvm_kind();
    if !matches!(kind, KvmKind::Hardware(_)) {
        // Straight to stderr (libtest captures print! of passing tests), in
        // the form scripts/test.sh counts and reports.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED stock-Linux boot (needs hardware KVM): {}",
            kind.reason()
        );
        return;
    }
    let (kernel, initrd) = debian_kernel()
        .expect("no /boot/vmlinuz-* with initrd.img-*: apt-get install linux-image-amd64");
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(8 << 20).unwrap();
    let sink = Sink::default();
    let typing = SlowTyping(
        b"modprobe virtio_pci; modprobe virtio_blk; sleep 1; ls /sys/block; reboot -f\n".to_vec(),
        false,
    );
    let cfg = VmConfig {
        vcpus: 2,
        mem_bytes: 512 << 20,
        kernel: Payload::Path(kernel),
        initrd: Some(Payload::Path(initrd)),
        cmdline: "console=ttyS0 reboot=k panic=-1 break=top".into(),
        disk_ro: Some(disk.path().to_owned()),
        scratch: None,
        net: None,
    };
    let vm = Vm::new(cfg, Box::new(sink.clone()), Some(Box::new(typing))).unwrap();
    let h = vm.handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        h.stop();
    });
    let exit = vm.run().unwrap();
    let out = sink.text();
    assert_eq!(exit, VmExit::Reset, "console:\n{out}");
    assert!(
        out.contains("vda"),
        "virtio disk not visible; console:\n{out}"
    );
}
