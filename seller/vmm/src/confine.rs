//! What a confining host (the seller's sandbox) needs from the VMM, without
//! this crate depending on a seccomp library: a hook each VMM thread calls
//! on itself when it starts, naming its role, so the host can install that
//! role's filter; and the KVM ioctl request numbers each role issues, so
//! the host's filters can allow exactly those.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_coalesced_mmio_zone, kvm_cpuid2, kvm_fpu, kvm_irqfd, kvm_lapic_state, kvm_msrs,
    kvm_pit_config, kvm_regs, kvm_sregs, kvm_userspace_memory_region, KVMIO,
};

/// What a VMM thread does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmmThread {
    /// Runs one vCPU: `KVM_RUN`, then the exit's device access on the bus.
    Vcpu,
    /// Feeds console input into the serial device and raises its interrupt.
    Device,
    /// The thread that called [`crate::Vm::run`], once every vCPU started:
    /// waits for the first vCPU to end, kicks the rest and joins them.
    Control,
}

static HOOK: OnceLock<fn(VmmThread)> = OnceLock::new();

/// Sets the function every VMM thread calls on itself first thing (and the
/// [`crate::Vm::run`] caller once its vCPUs are started). Set once per
/// process; later calls are ignored. The hook must not return if it could
/// not confine the thread (it should end the process).
pub fn set_thread_hook(hook: fn(VmmThread)) {
    let _ = HOOK.set(hook);
}

/// Calls the hook, if any, for the calling thread.
pub(crate) fn enter(role: VmmThread) {
    if let Some(hook) = HOOK.get() {
        hook(role);
    }
}

/// `_IOC(dir, KVMIO, nr, size)` as the kernel computes it.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((KVMIO as u64) << 8) | nr
}
const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

/// `KVM_RUN`, what a vCPU thread does.
pub const KVM_RUN: u64 = ioc(NONE, 0x80, 0);

/// `KVM_UNREGISTER_COALESCED_MMIO`, on the VM fd.
const KVM_UNREGISTER_COALESCED_MMIO: u64 =
    ioc(WRITE, 0x68, std::mem::size_of::<kvm_coalesced_mmio_zone>());

/// KVM ioctls a vCPU thread issues, by name: `KVM_RUN`, and once, on the
/// exit where the guest first enables a UART interrupt, the removal of
/// the coalesced console zone (see [`crate::devices::bus::SerialCoalescing`]).
pub fn vcpu_ioctls() -> Vec<(&'static str, u64)> {
    vec![
        ("KVM_RUN", KVM_RUN),
        (
            "KVM_UNREGISTER_COALESCED_MMIO",
            KVM_UNREGISTER_COALESCED_MMIO,
        ),
    ]
}

/// KVM ioctls issued while building a VM (on the `/dev/kvm`, VM and vCPU
/// fds), by name; before the vCPU threads start.
pub fn setup_ioctls() -> Vec<(&'static str, u64)> {
    use std::mem::size_of;
    vec![
        ("KVM_CREATE_VM", ioc(NONE, 0x01, 0)),
        ("KVM_GET_VCPU_MMAP_SIZE", ioc(NONE, 0x04, 0)),
        (
            "KVM_GET_SUPPORTED_CPUID",
            ioc(READ | WRITE, 0x05, size_of::<kvm_cpuid2>()),
        ),
        ("KVM_CREATE_VCPU", ioc(NONE, 0x41, 0)),
        (
            "KVM_SET_USER_MEMORY_REGION",
            ioc(WRITE, 0x46, size_of::<kvm_userspace_memory_region>()),
        ),
        ("KVM_SET_TSS_ADDR", ioc(NONE, 0x47, 0)),
        ("KVM_CREATE_IRQCHIP", ioc(NONE, 0x60, 0)),
        (
            "KVM_REGISTER_COALESCED_MMIO",
            ioc(WRITE, 0x67, size_of::<kvm_coalesced_mmio_zone>()),
        ),
        ("KVM_IRQFD", ioc(WRITE, 0x76, size_of::<kvm_irqfd>())),
        (
            "KVM_CREATE_PIT2",
            ioc(WRITE, 0x77, size_of::<kvm_pit_config>()),
        ),
        ("KVM_SET_REGS", ioc(WRITE, 0x82, size_of::<kvm_regs>())),
        ("KVM_GET_SREGS", ioc(READ, 0x83, size_of::<kvm_sregs>())),
        ("KVM_SET_SREGS", ioc(WRITE, 0x84, size_of::<kvm_sregs>())),
        ("KVM_SET_MSRS", ioc(WRITE, 0x89, size_of::<kvm_msrs>())),
        ("KVM_SET_FPU", ioc(WRITE, 0x8d, size_of::<kvm_fpu>())),
        (
            "KVM_GET_LAPIC",
            ioc(READ, 0x8e, size_of::<kvm_lapic_state>()),
        ),
        (
            "KVM_SET_LAPIC",
            ioc(WRITE, 0x8f, size_of::<kvm_lapic_state>()),
        ),
        ("KVM_SET_CPUID2", ioc(WRITE, 0x90, size_of::<kvm_cpuid2>())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_headers() {
        // Values from <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        let find = |n: &str| {
            setup_ioctls()
                .into_iter()
                .find(|(name, _)| *name == n)
                .unwrap()
                .1
        };
        assert_eq!(find("KVM_CREATE_VM"), 0xae01);
        assert_eq!(find("KVM_SET_USER_MEMORY_REGION"), 0x4020_ae46);
        assert_eq!(find("KVM_GET_SUPPORTED_CPUID"), 0xc008_ae05);
        assert_eq!(find("KVM_IRQFD"), 0x4020_ae76);
        assert_eq!(find("KVM_GET_LAPIC"), 0x8400_ae8e);
        assert_eq!(find("KVM_SET_MSRS"), 0x4008_ae89);
        assert_eq!(find("KVM_REGISTER_COALESCED_MMIO"), 0x4010_ae67);
        assert_eq!(vcpu_ioctls()[1].1, 0x4010_ae68);
    }
}
