//! Boots one VM and exits with its power-off status; used by the benchmark
//! to run the VMM as a child process.
//!
//! `vmm-boot KERNEL [CMDLINE] [--mem MIB] [--vcpus N] [--disk PATH] [--iso PATH]`
//! Exit code: the guest's power-off status, 100 reset, 101 triple fault,
//! 102 stopped, 103 VMM error.

use std::path::PathBuf;

use cpushare_vmm::{from_iso, Payload, Vm, VmConfig, VmExit};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut kernel = None;
    let mut cmdline = String::new();
    let mut mem_mib = 64u64;
    let mut vcpus = 1u8;
    let mut disk = None;
    let mut iso = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mem" => mem_mib = args.next().and_then(|v| v.parse().ok()).unwrap_or(64),
            "--vcpus" => vcpus = args.next().and_then(|v| v.parse().ok()).unwrap_or(1),
            "--disk" => disk = args.next().map(PathBuf::from),
            "--iso" => iso = args.next().map(PathBuf::from),
            _ if kernel.is_none() && iso.is_none() => kernel = Some(PathBuf::from(a)),
            _ => cmdline = a,
        }
    }
    let cfg = match (iso, kernel) {
        (Some(iso), _) => match from_iso(&iso, vcpus, mem_mib << 20) {
            Ok(b) => b.config,
            Err(e) => {
                eprintln!("vmm-boot: {e}");
                std::process::exit(103);
            }
        },
        (None, Some(k)) => VmConfig {
            vcpus,
            mem_bytes: mem_mib << 20,
            kernel: Payload::Path(k),
            initrd: None,
            cmdline,
            disk_ro: disk,
            scratch: None,
            net: None,
        },
        (None, None) => {
            eprintln!("usage: vmm-boot KERNEL [CMDLINE] [--mem MIB] [--vcpus N] [--disk PATH] | --iso PATH");
            std::process::exit(2);
        }
    };
    let code = match Vm::boot(cfg, Box::new(std::io::stdout()), None) {
        Ok(VmExit::PowerOff { status }) => status as i32,
        Ok(VmExit::Reset) => 100,
        Ok(VmExit::TripleFault) => 101,
        Ok(VmExit::Stopped) => 102,
        Err(e) => {
            eprintln!("vmm-boot: {e}");
            103
        }
    };
    std::process::exit(code);
}
