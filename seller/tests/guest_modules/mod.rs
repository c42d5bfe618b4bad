//! Builds the example C modules in `guest-images/wasm/` once per test
//! process (with `build.sh`) and hands out their bytes. Fails loudly when
//! the toolchain is missing: these tests must never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Directory holding `NAME.wasm` for every example, built on first use.
pub fn dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/wasm/build.sh");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-wasm");
        let status = Command::new("sh").arg(&script).arg(&out).status().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}", script.display());
        });
        assert!(
            status.success(),
            "building the example wasm modules failed ({status}); install the toolchain with \
             `apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32` (see scripts/apt-packages.txt)"
        );
        out
    })
}

/// The bytes of example module `name` (without `.wasm`).
pub fn bytes(name: &str) -> Vec<u8> {
    let path = dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{} missing after build: {e}", path.display()))
}
