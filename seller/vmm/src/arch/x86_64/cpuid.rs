//! CPUID for each vCPU: what KVM supports, with the per-vCPU APIC id and
//! topology filled in and the hypervisor bit set.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, HTT: the APIC-id/count field of EBX is valid.
const EDX_HTT: u32 = 1 << 28;

/// Adjusts KVM's supported CPUID entries for vCPU `id` of `count`.
pub fn filter_entries(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC id, [23:16] logical processors,
                // [15:8] CLFLUSH line size in 8-byte units.
                e.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            0xb => {
                // Extended topology: x2APIC id in EDX; one thread per core.
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 0x100;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = u32::from(count);
                        e.ecx = 0x201;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Bits needed to number `count` cores (the shift in CPUID.B).
fn bits_for(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf1_carries_apic_id_and_hypervisor_bit() {
        let mut e = [kvm_cpuid_entry2 {
            function: 1,
            ..Default::default()
        }];
        filter_entries(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
    }

    #[test]
    fn leaf_b_reports_core_shift() {
        let mut e = [kvm_cpuid_entry2 {
            function: 0xb,
            index: 1,
            ..Default::default()
        }];
        filter_entries(&mut e, 2, 3);
        assert_eq!(e[0].eax, 2);
        assert_eq!(e[0].edx, 2);
        assert_eq!(bits_for(1), 0);
    }
}
