//! Shared fixtures for the integration tests: the test guest, built once
//! per test binary with `guest-images/test-guest/build.sh`, and helpers.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// Builds the test guest (once) and returns the directory with
/// `guest.elf` and `spin-host`.
pub fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("test-guest-{}", std::process::id()));
        let script = repo_root().join("guest-images/test-guest/build.sh");
        let st = Command::new("sh")
            .arg(&script)
            .arg(&out)
            .output()
            .expect("run guest-images/test-guest/build.sh (needs gcc, binutils)");
        assert!(
            st.status.success(),
            "building the test guest failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        out
    })
}

/// The test guest ELF.
pub fn guest_elf() -> PathBuf {
    guest_dir().join("guest.elf")
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Fails loudly when /dev/kvm is missing: these tests must not be skipped.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests boot real KVM guests and need a usable /dev/kvm ({e}); run them on a host with KVM (hardware or PVM)");
    }
}

/// A console sink the test can read afterwards.
#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Vec<u8>>>);

impl Sink {
    /// Everything written so far, lossily as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// FNV-1a 32, as the guest computes it.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(16_777_619)
    })
}

/// Runs `xorriso -as mkisofs ARGS -o iso DIR`.
pub fn mkisofs(dir: &Path, iso: &Path, args: &[&str]) {
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet"])
        .args(args)
        .arg("-o")
        .arg(iso)
        .arg(dir)
        .output()
        .expect("run xorriso (apt-get install xorriso)");
    assert!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds an ISO with xorriso's native commands, choosing Rock Ridge and
/// Joliet (its mkisofs emulation always adds Rock Ridge).
pub fn xorriso_native(dir: &Path, iso: &Path, rock_ridge: bool, joliet: bool) {
    let onoff = |b: bool| if b { "on" } else { "off" };
    let out = Command::new("xorriso")
        .args([
            "-report_about",
            "SORRY",
            "-rockridge",
            onoff(rock_ridge),
            "-joliet",
            onoff(joliet),
        ])
        .arg("-outdev")
        .arg(iso)
        .arg("-map")
        .arg(dir)
        .arg("/")
        .output()
        .expect("run xorriso (apt-get install xorriso)");
    assert!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `files` (path, contents) under a fresh temporary directory.
pub fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    d
}

/// `len` bytes (at least 0x280) that begin like an x86-64 bzImage: the
/// boot.rst setup header of protocol 2.15 with a 64-bit entry point.
/// Enough for `inspect`, which checks a kernel's header; not for booting.
pub fn bzimage_header(len: usize) -> Vec<u8> {
    assert!(len >= 0x280);
    bzimage_with(len, 0x020f, 1)
}

/// [`bzimage_header`] with another protocol version and `xloadflags`.
pub fn bzimage_with(len: usize, protocol: u16, xloadflags: u16) -> Vec<u8> {
    let mut b = vec![0x90u8; len];
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
    b[0x211] = 1; // LOADED_HIGH
    b[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    b
}
