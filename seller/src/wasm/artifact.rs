//! The seller's own compiled modules on disk, so a module is compiled once
//! per engine configuration, not once per job or per daemon restart.
//!
//! Files are named `<content id>-<engine fingerprint>.cwasm` and are only
//! ever produced by this engine's `Module::serialize` and published by an
//! atomic rename into a directory only the seller's user can write. Buyers
//! never supply these bytes; they supply wasm, which is compiled here.
//!
//! The directory is bounded ([`MAX_BYTES`]): storing an artifact deletes
//! the least recently used others until the rest fit. A big module's code
//! is large (YoWASP's 69 MB Yosys compiles to 240 MB), and buyers choose
//! which modules a seller compiles.

use super::WasmError;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use wasmtime::{Engine, Module};

/// Hex digits of the engine fingerprint kept in file names.
const FINGERPRINT_HEX: usize = 16;
/// Most bytes of artifacts kept on disk.
pub const MAX_BYTES: u64 = 8 << 30;
/// Extension of artifact files.
const EXTENSION: &str = "cwasm";

/// A private directory of compiled artifacts for one engine configuration.
pub(crate) struct ArtifactDir {
    dir: PathBuf,
    fingerprint: String,
    temp_seq: AtomicU64,
    max_bytes: u64,
}

impl ArtifactDir {
    /// Opens `dir` (creating it mode 0700), refusing one that others can
    /// write or that another user owns.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<ArtifactDir, WasmError> {
        Self::open_bounded(dir, engine, MAX_BYTES)
    }

    /// [`ArtifactDir::open`] keeping at most `max_bytes` of artifacts.
    pub(crate) fn open_bounded(
        dir: &Path,
        engine: &Engine,
        max_bytes: u64,
    ) -> Result<ArtifactDir, WasmError> {
        let io_err = |source| WasmError::CacheDir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let meta = fs::metadata(dir).map_err(io_err)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(WasmError::CacheDirNotPrivate {
                path: dir.to_path_buf(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
            });
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        }
        Ok(ArtifactDir {
            dir: dir.to_path_buf(),
            fingerprint: engine_fingerprint(engine),
            temp_seq: AtomicU64::new(0),
            max_bytes,
        })
    }

    /// Where the artifact of module `id_hex` lives for this engine.
    pub(crate) fn path(&self, id_hex: &str) -> PathBuf {
        self.dir
            .join(format!("{id_hex}-{}.{EXTENSION}", self.fingerprint))
    }

    /// The compiled module for `id_hex` if this seller stored one earlier.
    /// An unreadable or incompatible artifact is deleted and reported as
    /// absent, so the caller recompiles.
    pub(crate) fn load(&self, engine: &Engine, id_hex: &str) -> Option<Module> {
        let path = self.path(id_hex);
        if !path.exists() {
            return None;
        }
        // SAFETY: `deserialize_file` trusts the file to be wasmtime's own
        // output for a compatible engine. Only this seller writes into this
        // directory: `open` made it mode 0700 and owned by our uid, the name
        // is derived from a hex content id and the engine fingerprint (no
        // buyer-chosen path), and `store` publishes only bytes returned by
        // `Module::serialize` on this engine, by rename of a complete temp
        // file (so no reader sees a partial file, and a mapped file is never
        // truncated in place). wasmtime also checks the header against the
        // engine's configuration and rejects a mismatch with an error.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => {
                // Used now: the last to be trimmed.
                let _ = File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                Some(module)
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "compiled artifact unusable; deleting it and recompiling"
                );
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Publishes `module`'s compiled form for `id_hex`.
    pub(crate) fn store(&self, id_hex: &str, module: &Module) -> io::Result<()> {
        let bytes = module.serialize().map_err(io::Error::other)?;
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{id_hex}.{}.{seq}.tmp", std::process::id()));
        let result = File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, self.path(id_hex)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        self.trim(&self.path(id_hex))
    }

    /// Deletes the least recently used artifacts (any engine's) but `keep`
    /// until the directory holds at most `max_bytes`. A process that mapped
    /// a deleted file keeps its mapping.
    fn trim(&self, keep: &Path) -> io::Result<()> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != EXTENSION) {
                continue;
            }
            let meta = entry.metadata()?;
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.push((used, meta.len(), path));
        }
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
        Ok(())
    }
}

/// Short hex digest of everything that makes compiled code compatible with
/// `engine` (wasmtime version, target, compiler settings).
fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    hex::encode(digest)[..FINGERPRINT_HEX].to_string()
}

/// Feeds `Hash` output into SHA-256, which, unlike `DefaultHasher`, is the
/// same in every Rust release.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Config;

    const ID: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn engine(epochs: bool) -> Engine {
        let mut config = Config::new();
        config.epoch_interruption(epochs);
        Engine::new(&config).expect("engine")
    }

    #[test]
    fn stored_artifact_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(true);
        let artifacts = ArtifactDir::open(dir.path(), &engine).unwrap();
        assert!(artifacts.load(&engine, ID).is_none());
        let module = Module::new(&engine, "(module (func (export \"f\")))").unwrap();
        artifacts.store(ID, &module).unwrap();
        let loaded = artifacts.load(&engine, ID).expect("artifact loads");
        assert!(loaded.get_export("f").is_some());
    }

    #[test]
    fn different_engine_settings_use_different_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = ArtifactDir::open(dir.path(), &engine(true)).unwrap();
        let b = ArtifactDir::open(dir.path(), &engine(false)).unwrap();
        assert_ne!(a.path(ID), b.path(ID));
        assert_eq!(a.path(ID), a.path(ID));
    }

    #[test]
    fn corrupt_artifact_is_deleted_and_reported_absent() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(true);
        let artifacts = ArtifactDir::open(dir.path(), &engine).unwrap();
        fs::write(artifacts.path(ID), b"not an artifact").unwrap();
        assert!(artifacts.load(&engine, ID).is_none());
        assert!(!artifacts.path(ID).exists());
    }

    #[test]
    fn the_directory_keeps_the_recently_used_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(true);
        let module = Module::new(&engine, "(module (func (export \"f\")))").unwrap();
        let one = module.serialize().unwrap().len() as u64;
        let artifacts = ArtifactDir::open_bounded(dir.path(), &engine, 2 * one).unwrap();
        let id = |n: u8| hex::encode([n; 32]);
        let age = |n: u8, secs: u64| {
            let t = SystemTime::now() - std::time::Duration::from_secs(secs);
            File::open(artifacts.path(&id(n)))
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        artifacts.store(&id(1), &module).unwrap();
        age(1, 30);
        artifacts.store(&id(2), &module).unwrap();
        age(2, 20);
        // Loading 1 makes it the most recently used; storing 3 evicts 2.
        assert!(artifacts.load(&engine, &id(1)).is_some());
        artifacts.store(&id(3), &module).unwrap();
        let kept: Vec<bool> = [1, 2, 3].map(|n| artifacts.path(&id(n)).exists()).to_vec();
        assert_eq!(kept, [true, false, true]);
        // One artifact larger than the bound is still kept: it is in use.
        let tiny = ArtifactDir::open_bounded(dir.path(), &engine, 1).unwrap();
        tiny.store(&id(4), &module).unwrap();
        let kept: Vec<bool> = [1, 3, 4].map(|n| tiny.path(&id(n)).exists()).to_vec();
        assert_eq!(kept, [false, false, true]);
    }

    #[test]
    fn open_makes_the_directory_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compiled");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        ArtifactDir::open(&path, &engine(true)).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
