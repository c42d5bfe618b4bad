//! Where a wasm lease's shares live on the seller: inside the lease's
//! scratch directory, so the jail's root (which holds only scratch) needs
//! nothing more.
//!
//! ```text
//! SCRATCH/.shares/ro-HEX   a read-only share's staged input (owned by the daemon)
//! SCRATCH/.shares/rw-HEX   a writable share, written by the guest
//! ```
//!
//! `HEX` is the guest path in hex, so the layout itself says where each
//! directory goes in the guest; the runtime lists `.shares` (a directory
//! read, which the job's seccomp filter allows, unlike opening a file by
//! path) and preopens each one at its guest path.

use std::path::{Path, PathBuf};

/// The directory under scratch that holds a lease's shares.
pub const SHARES_DIR: &str = ".shares";

/// The host directory of the share at `guest` in `scratch`.
pub fn share_dir(scratch: &Path, guest: &str, writable: bool) -> PathBuf {
    let hex: String = guest.bytes().map(|b| format!("{b:02x}")).collect();
    let kind = if writable { "rw" } else { "ro" };
    scratch.join(SHARES_DIR).join(format!("{kind}-{hex}"))
}

/// One share found under `scratch`: host dir, guest path, writable.
pub type FoundShare = (PathBuf, String, bool);

/// The shares laid out under `scratch` (none if there is no `.shares`).
/// Names that do not decode are skipped.
pub fn find(scratch: &Path) -> std::io::Result<Vec<FoundShare>> {
    let dir = scratch.join(SHARES_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for e in entries {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some((kind, hex)) = name.split_once('-') else {
            continue;
        };
        let writable = match kind {
            "rw" => true,
            "ro" => false,
            _ => continue,
        };
        let Some(guest) = unhex(hex) else {
            continue;
        };
        found.push((e.path(), guest, writable));
    }
    found.sort();
    Ok(found)
}

fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) || hex.len() > 512 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let guest = String::from_utf8(bytes).ok()?;
    guest.starts_with('/').then_some(guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_round_trips() {
        let scratch = tempfile::tempdir().unwrap();
        for (guest, rw) in [("/in", false), ("/out/deep", true)] {
            std::fs::create_dir_all(share_dir(scratch.path(), guest, rw)).unwrap();
        }
        std::fs::create_dir_all(scratch.path().join(SHARES_DIR).join("junk-zz")).unwrap();
        let found = find(scratch.path()).unwrap();
        let names: Vec<_> = found.iter().map(|(_, g, rw)| (g.as_str(), *rw)).collect();
        assert_eq!(names, vec![("/in", false), ("/out/deep", true)]);
        assert!(find(&scratch.path().join("none")).unwrap().is_empty());
    }
}
