//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC), PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm ({0}); is KVM available and are you in the kvm group?")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens KVM and creates a VM with irqchip, PIT and `mem` mapped.
pub fn create(mem: &GuestMemoryMmap) -> Result<(Kvm, VmFd), VmError> {
    create_with(Kvm::new().map_err(VmError::OpenKvm)?, mem)
}

/// Creates a VM with irqchip, PIT and `mem` mapped on an already open
/// `/dev/kvm` (a confined VMM cannot open it by path).
pub fn create_with(kvm: Kvm, mem: &GuestMemoryMmap) -> Result<(Kvm, VmFd), VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the caller
        // keeps alive for as long as the VM runs (it is moved into `Vm`).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok((kvm, vm))
}
