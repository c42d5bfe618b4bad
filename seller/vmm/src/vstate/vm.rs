//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC), PIT.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;
use crate::devices::serial::COM1_PORT;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm ({0}); is KVM available and are you in the kvm group?")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A CPUID list handed in by the caller is empty or too long.
    #[error("a host CPUID list of {entries} entries was handed in; KVM takes 1 to {max}")]
    BadCpuid {
        /// Entries handed in.
        entries: usize,
        /// KVM's limit.
        max: usize,
    },
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

/// A new VM.
pub struct Created {
    /// The `/dev/kvm` handle.
    pub kvm: Kvm,
    /// The VM.
    pub vm: VmFd,
    /// Whether [`coalesce_serial_output`] took effect: the guest's COM1
    /// transmit writes then wait in the coalesced ring.
    pub serial_coalesced: bool,
}

/// Opens KVM and creates a VM with irqchip, PIT and `mem` mapped.
pub fn create(mem: &GuestMemoryMmap) -> Result<Created, VmError> {
    create_with(Kvm::new().map_err(VmError::OpenKvm)?, mem)
}

/// One CPUID entry as plain words: function, index, flags, eax, ebx, ecx,
/// edx (the fields of `kvm_cpuid_entry2`).
pub type CpuidWords = [u32; 7];

/// KVM's supported CPUID list for this host (`KVM_GET_SUPPORTED_CPUID`),
/// the base of every vCPU's CPUID. Reading it runs the host's CPUID
/// instruction for every leaf, each a trap where the host is itself a VM
/// (about 6 % of a small VM's start-up CPU), so a long-lived caller (the
/// seller daemon) reads it once and hands it to each VM it starts.
#[derive(Clone, Debug)]
pub struct HostCpuid(CpuId);

impl HostCpuid {
    /// Reads the list from KVM.
    pub fn read(kvm: &Kvm) -> Result<Self, VmError> {
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map(Self)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
    }

    /// Opens `/dev/kvm` and reads the list.
    pub fn read_host() -> Result<Self, VmError> {
        Self::read(&Kvm::new().map_err(VmError::OpenKvm)?)
    }

    /// The list as words, for a message to another process.
    pub fn to_words(&self) -> Vec<CpuidWords> {
        self.0
            .as_slice()
            .iter()
            .map(|e| [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx])
            .collect()
    }

    /// The list from words; empty or over KVM's limit is an error.
    pub fn from_words(words: &[CpuidWords]) -> Result<Self, VmError> {
        let bad = || VmError::BadCpuid {
            entries: words.len(),
            max: KVM_MAX_CPUID_ENTRIES,
        };
        if words.is_empty() || words.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(bad());
        }
        let entries: Vec<kvm_cpuid_entry2> = words
            .iter()
            .map(|w| kvm_cpuid_entry2 {
                function: w[0],
                index: w[1],
                flags: w[2],
                eax: w[3],
                ebx: w[4],
                ecx: w[5],
                edx: w[6],
                ..Default::default()
            })
            .collect();
        CpuId::from_entries(&entries).map(Self).map_err(|_| bad())
    }

    /// The list as KVM's type.
    pub fn cpuid(&self) -> &CpuId {
        &self.0
    }
}

/// Asks KVM to queue the guest's 1-byte writes to COM1's transmit register
/// in the coalesced ring instead of exiting (`KVM_CAP_COALESCED_PIO`);
/// false if this KVM cannot. The caller must then drain the ring (see
/// [`crate::devices::bus::SerialCoalescing`]).
pub fn coalesce_serial_output(vm: &VmFd) -> bool {
    vm.register_coalesced_mmio(IoEventAddress::Pio(u64::from(COM1_PORT)), 1)
        .is_ok()
}

/// Creates a VM with irqchip, PIT and `mem` mapped on an already open
/// `/dev/kvm` (a confined VMM cannot open it by path).
pub fn create_with(kvm: Kvm, mem: &GuestMemoryMmap) -> Result<Created, VmError> {
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
    let serial_coalesced = coalesce_serial_output(&vm);
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
    Ok(Created {
        kvm,
        vm,
        serial_coalesced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_words_round_trip() {
        let words = vec![
            [0, 0, 0, 0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            [7, 0, 1, 0, 1, 2, 3],
        ];
        let c = HostCpuid::from_words(&words).unwrap();
        assert_eq!(c.to_words(), words);
        assert_eq!(c.cpuid().as_slice().len(), 2);
    }

    #[test]
    fn empty_or_oversized_cpuid_lists_are_refused() {
        for n in [0, KVM_MAX_CPUID_ENTRIES + 1] {
            let e = HostCpuid::from_words(&vec![[0; 7]; n]).unwrap_err();
            assert!(e.to_string().contains(&format!("{n} entries")), "{e}");
        }
    }

    #[test]
    fn the_host_list_survives_words() {
        let Ok(kvm) = Kvm::new() else {
            return;
        };
        let host = HostCpuid::read(&kvm).unwrap();
        let back = HostCpuid::from_words(&host.to_words()).unwrap();
        assert_eq!(back.cpuid().as_slice(), host.cpuid().as_slice());
    }
}
