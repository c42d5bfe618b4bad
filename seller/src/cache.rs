//! Content-addressed on-disk cache of buyers' images and modules.
//!
//! Every file is named by the SHA-256 of its bytes and is checked against
//! that name again on every read: a disk that flips a bit, or anyone who
//! edits the directory, costs a re-download, never a wrong image. Large
//! images (a VM's ISO) are never read whole: [`ImageCache::verify`] hashes
//! the file by streaming, once per run while it stays unchanged.

use cpushare_proto::id::ContentId;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Why the cache refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// the bytes hash to {got:?}, not to the id {want:?} they were stored under
    #[error("the bytes hash to {got:?}, not to the id {want:?} they were stored under")]
    HashMismatch {
        /// The id the caller claimed.
        want: ContentId,
        /// The id of the bytes actually given.
        got: ContentId,
    },
    /// cache file {path} could not be read or written
    #[error("cache file {path} could not be read or written: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}

/// A directory of files named by the hex SHA-256 of their contents.
#[derive(Debug)]
pub struct ImageCache {
    dir: PathBuf,
    temp_seq: AtomicU64,
    /// Files [`ImageCache::verify`] hashed, with their size and mtime then.
    verified: Mutex<HashMap<ContentId, (u64, SystemTime)>>,
}

impl ImageCache {
    /// Opens (creating if needed) the cache rooted at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(ImageCache {
            dir,
            temp_seq: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Where the bytes of `id` live (whether or not they are cached yet).
    pub fn path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(id.hex())
    }

    /// The cached bytes of `id`, re-verified; `None` if absent or corrupt
    /// (a corrupt file is deleted so the next fetch replaces it).
    pub fn get(&self, id: &ContentId) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let got = ContentId::of(&bytes);
        if got != *id {
            tracing::warn!(
                want = %id.hex(),
                got = %got.hex(),
                path = %path.display(),
                "cached file is corrupt; deleting it and treating it as a miss"
            );
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Io { path, source }),
            }
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Stores `bytes` under `id` atomically, refusing bytes that are not `id`.
    pub fn put(&self, id: &ContentId, bytes: &[u8]) -> Result<(), CacheError> {
        let got = ContentId::of(bytes);
        if got != *id {
            return Err(CacheError::HashMismatch { want: *id, got });
        }
        let tmp = self.temp_path(id);
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .map_err(|source| CacheError::Io {
                path: tmp.clone(),
                source,
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.publish(&tmp, id)
    }

    /// Moves the finished download at `tmp_path` into the cache under `id`,
    /// hashing it by streaming first. `tmp_path` must be on the cache's
    /// filesystem; on a hash mismatch it is deleted.
    pub fn put_file(&self, id: &ContentId, tmp_path: &Path) -> Result<(), CacheError> {
        let got = hash_file(tmp_path).map_err(|source| CacheError::Io {
            path: tmp_path.to_path_buf(),
            source,
        })?;
        if got != *id {
            let _ = fs::remove_file(tmp_path);
            return Err(CacheError::HashMismatch { want: *id, got });
        }
        self.publish(tmp_path, id)
    }

    /// Whether `id` is cached and its file hashes to `id`. The file is
    /// hashed by streaming, once per run of this cache while its size and
    /// modification time stay the same; a corrupt file is deleted.
    pub fn verify(&self, id: &ContentId) -> Result<bool, CacheError> {
        let path = self.path(id);
        let io_error = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let stamp = match fs::metadata(&path) {
            Ok(m) => (m.len(), m.modified().map_err(io_error)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error(e)),
        };
        if self.verified.lock().expect("verified lock").get(id) == Some(&stamp) {
            return Ok(true);
        }
        if hash_file(&path).map_err(io_error)? != *id {
            tracing::warn!(path = %path.display(), "cached file is corrupt; deleting it");
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(e)),
            }
            return Ok(false);
        }
        self.verified
            .lock()
            .expect("verified lock")
            .insert(*id, stamp);
        Ok(true)
    }

    /// Where a download of `id` is written before [`ImageCache::put_file`]
    /// checks and publishes it (inside the cache, so the rename is atomic).
    pub fn download_path(&self, id: &ContentId) -> PathBuf {
        self.temp_path(id)
    }

    /// A fresh temporary file name inside the cache directory, so that the
    /// final rename stays on one filesystem and is atomic.
    fn temp_path(&self, id: &ContentId) -> PathBuf {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{}.{}.{seq}.tmp", id.hex(), std::process::id()))
    }

    fn publish(&self, tmp: &Path, id: &ContentId) -> Result<(), CacheError> {
        let path = self.path(id);
        fs::rename(tmp, &path).map_err(|source| {
            let _ = fs::remove_file(tmp);
            CacheError::Io { path, source }
        })
    }
}

/// The content id of the file at `path`, read in bounded chunks.
fn hash_file(path: &Path) -> io::Result<ContentId> {
    ContentId::of_reader(File::open(path)?).map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, ImageCache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::open(dir.path().join("images")).expect("open cache");
        (dir, cache)
    }

    #[test]
    fn put_then_get_returns_the_same_bytes() {
        let (_dir, cache) = cache();
        let bytes = b"an image".to_vec();
        let id = ContentId::of(&bytes);
        assert_eq!(cache.get(&id).unwrap(), None);
        cache.put(&id, &bytes).unwrap();
        assert_eq!(cache.get(&id).unwrap(), Some(bytes));
        assert_eq!(
            cache.path(&id).file_name().unwrap().to_str(),
            Some(&*id.hex())
        );
    }

    #[test]
    fn put_refuses_bytes_that_are_not_the_id() {
        let (_dir, cache) = cache();
        let want = ContentId::of(b"what the buyer announced");
        match cache.put(&want, b"something else") {
            Err(CacheError::HashMismatch { want: w, got }) => {
                assert_eq!(w, want);
                assert_eq!(got, ContentId::of(b"something else"));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        assert!(!cache.path(&want).exists());
    }

    #[test]
    fn corrupt_file_is_deleted_and_reported_as_a_miss() {
        let (_dir, cache) = cache();
        let bytes = b"module bytes".to_vec();
        let id = ContentId::of(&bytes);
        cache.put(&id, &bytes).unwrap();
        fs::write(cache.path(&id), b"module bytez").unwrap();
        assert_eq!(cache.get(&id).unwrap(), None);
        assert!(!cache.path(&id).exists(), "corrupt file must be removed");
        cache.put(&id, &bytes).unwrap();
        assert_eq!(cache.get(&id).unwrap(), Some(bytes));
    }

    #[test]
    fn put_file_verifies_by_streaming_and_moves_the_file() {
        let (dir, cache) = cache();
        // Larger than one hash chunk so the streaming loop runs more than once.
        let bytes: Vec<u8> = (0..((1usize << 20) * 2 + 17)).map(|i| i as u8).collect();
        let id = ContentId::of(&bytes);
        let tmp = dir.path().join("images").join("download.part");
        fs::write(&tmp, &bytes).unwrap();
        cache.put_file(&id, &tmp).unwrap();
        assert!(!tmp.exists());
        assert_eq!(cache.get(&id).unwrap(), Some(bytes));
    }

    #[test]
    fn put_file_rejects_and_removes_a_wrong_download() {
        let (dir, cache) = cache();
        let id = ContentId::of(b"expected");
        let tmp = dir.path().join("images").join("download.part");
        fs::write(&tmp, b"unexpected").unwrap();
        assert!(matches!(
            cache.put_file(&id, &tmp),
            Err(CacheError::HashMismatch { .. })
        ));
        assert!(!tmp.exists());
        assert!(!cache.path(&id).exists());
    }

    #[test]
    fn verify_hashes_a_file_once_and_notices_a_change() {
        let (_dir, cache) = cache();
        let bytes = vec![9u8; 3 << 20];
        let id = ContentId::of(&bytes);
        assert!(!cache.verify(&id).unwrap(), "absent");
        cache.put(&id, &bytes).unwrap();
        assert!(cache.verify(&id).unwrap());
        assert!(cache.verify(&id).unwrap(), "again, from the memo");
        // Changed on disk (another size): hashed again, found corrupt, removed.
        fs::write(cache.path(&id), b"tampered").unwrap();
        assert!(!cache.verify(&id).unwrap());
        assert!(!cache.path(&id).exists());
    }

    #[test]
    fn put_leaves_no_temporary_files_behind() {
        let (dir, cache) = cache();
        for i in 0..5u8 {
            let bytes = vec![i; 100];
            cache.put(&ContentId::of(&bytes), &bytes).unwrap();
        }
        let names: Vec<_> = fs::read_dir(dir.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 5);
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }
}
