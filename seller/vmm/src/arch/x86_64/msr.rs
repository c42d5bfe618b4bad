//! Model-specific registers set before the first entry.

use kvm_bindings::kvm_msr_entry;

/// `IA32_MISC_ENABLE`.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MISC_ENABLE.FAST_STRING`: Linux expects firmware to have set it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The MSRs every vCPU starts with: syscall state cleared, fast strings on.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let zeroed = [
        MSR_IA32_SYSENTER_CS,
        MSR_IA32_SYSENTER_ESP,
        MSR_IA32_SYSENTER_EIP,
        MSR_STAR,
        MSR_CSTAR,
        MSR_KERNEL_GS_BASE,
        MSR_SYSCALL_MASK,
        MSR_LSTAR,
    ];
    let mut v: Vec<kvm_msr_entry> = zeroed
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            data: 0,
            ..Default::default()
        })
        .collect();
    v.push(kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_fast_strings() {
        let m = boot_msrs();
        assert!(m
            .iter()
            .any(|e| e.index == MSR_IA32_MISC_ENABLE && e.data == MISC_ENABLE_FAST_STRING));
        assert_eq!(m.len(), 9);
    }
}
