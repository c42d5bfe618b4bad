//! What kind of KVM this host has: hardware-assisted (VT-x/AMD-V), software
//! (PVM, where guest ring 0 is interpreted and a stock kernel is far too
//! slow to offer), or none.

use std::path::Path;

/// The KVM available on this host, with why we think so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualization: guests run at native speed.
    Hardware(String),
    /// Software virtualization such as PVM: ring-3 code is native, ring 0
    /// is emulated, so only ring-3 workloads run well.
    Software(String),
    /// No usable `/dev/kvm`.
    Absent(String),
}

impl KvmKind {
    /// The reason string.
    pub fn reason(&self) -> &str {
        match self {
            KvmKind::Hardware(r) | KvmKind::Software(r) | KvmKind::Absent(r) => r,
        }
    }
}

/// Detects the host's KVM from `/dev/kvm`, loaded modules and CPU flags.
pub fn kvm_kind() -> KvmKind {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| e.to_string());
    let modules: Vec<&str> = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    classify(dev, &modules, flags)
}

/// The pure decision behind [`kvm_kind`].
pub fn classify(dev_kvm: Result<(), String>, modules: &[&str], cpu_flags: &str) -> KvmKind {
    if let Err(e) = dev_kvm {
        return KvmKind::Absent(format!("/dev/kvm cannot be opened: {e}"));
    }
    if modules.contains(&"kvm_pvm") {
        return KvmKind::Software(
            "the kvm_pvm module provides /dev/kvm: PVM software virtualization, guest ring 0 is emulated".into(),
        );
    }
    let has = |f: &str| cpu_flags.split_whitespace().any(|x| x == f);
    match (has("vmx") || has("svm"), modules) {
        (true, m) if m.contains(&"kvm_intel") || m.contains(&"kvm_amd") => {
            KvmKind::Hardware(format!(
                "CPU has {} and {} is loaded",
                if has("vmx") { "vmx" } else { "svm" },
                m.join(", ")
            ))
        }
        (true, _) => KvmKind::Hardware("CPU has vmx/svm and /dev/kvm opens".into()),
        (false, _) => KvmKind::Software(
            "/dev/kvm opens but the CPU shows no vmx/svm flag: not hardware virtualization".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_covers_each_kind() {
        assert!(matches!(
            classify(Err("ENOENT".into()), &[], ""),
            KvmKind::Absent(_)
        ));
        assert!(matches!(
            classify(Ok(()), &["kvm_pvm"], "flags : fpu hypervisor"),
            KvmKind::Software(_)
        ));
        assert!(matches!(
            classify(Ok(()), &["kvm_intel"], "flags : fpu vmx"),
            KvmKind::Hardware(_)
        ));
        assert!(matches!(
            classify(Ok(()), &[], "flags : fpu"),
            KvmKind::Software(_)
        ));
        assert!(!classify(Ok(()), &[], "flags : svm").reason().is_empty());
    }
}
