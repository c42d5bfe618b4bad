//! Random bytes as an ISO image: open, inspect, and read what it names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = cpushare_vmm::iso::IsoReader::new(std::io::Cursor::new(data)) {
        if let Ok(plan) = cpushare_vmm::iso::inspect(&mut r) {
            let _ = r.read_path(&plan.kernel.path, 1 << 20);
            let _ = cpushare_vmm::iso::read_initrds(&mut r, &plan.initrds, 1 << 20);
        }
        let root = r.root().clone();
        let _ = r.read_dir(&root);
    }
});
