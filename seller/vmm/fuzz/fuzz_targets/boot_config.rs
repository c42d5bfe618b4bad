//! Random text as cpushare.toml, isolinux and GRUB configs.
#![no_main]

use cpushare_vmm::iso::boot_config::{parse_cpushare_toml, parse_grub, parse_syslinux};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_cpushare_toml(text);
    // Every file a config pulls in is the same text, so includes, CONFIG
    // and source chains run to their bound.
    let mut fetch = |_: &str| Ok(text.to_owned());
    let _ = parse_grub("/boot/grub/grub.cfg", text, &mut fetch);
    let _ = parse_syslinux("/isolinux/isolinux.cfg", text, &mut fetch);
});
