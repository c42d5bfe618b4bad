//! Random bytes as a kernel (and initrd) loaded into a small guest memory.
#![no_main]

use cpushare_vmm::arch::x86_64::boot;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fuzz_target!(|data: &[u8]| {
    let size = 8u64 << 20;
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]) else {
        return;
    };
    let (kernel, initrd) = data.split_at(data.len() / 2);
    let _ = boot::load(&mem, size, data, Some(initrd), "console=ttyS0");
    let _ = boot::load(&mem, size, kernel, None, "");
});
