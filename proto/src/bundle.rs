//! A bundle: a directory tree packed into one byte string, so a buyer's
//! input directory travels to sellers by content id, and a wasm job's
//! output directories travel back to the buyer.
//!
//! Layout (integers big-endian): the magic `CPSBNDL1`, then records, then
//! a zero byte.
//!
//! ```text
//! record = kind:u8 (1 dir, 2 file)  path_len:u16  path  [len:u64  bytes]   (bytes only for files)
//! ```
//!
//! Paths are relative, `/`-separated UTF-8, with no empty, `.` or `..`
//! component; every parent directory is listed before what it holds and
//! no path appears twice. There are no links and no special files, so a
//! bundle extracted into an empty directory writes only beneath it.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first eight bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"CPSBNDL1";
/// Most entries (files and directories) one bundle may hold.
pub const MAX_ENTRIES: usize = 65_536;
/// Longest path inside a bundle, bytes.
pub const MAX_PATH: usize = 1024;
/// Deepest nesting inside a bundle.
pub const MAX_DEPTH: usize = 64;
/// Largest bundle anyone makes or reads (inputs and outputs alike).
pub const MAX_BUNDLE: u64 = 1 << 30;

const KIND_END: u8 = 0;
const KIND_DIR: u8 = 1;
const KIND_FILE: u8 = 2;

/// Why a bundle could not be made, read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// not a bundle (it does not start with `CPSBNDL1`)
    #[error("not a bundle (it does not start with `CPSBNDL1`)")]
    BadMagic,
    /// bundle is {len} bytes, more than the limit of {max}
    #[error("bundle is {len} bytes, more than the limit of {max}")]
    TooBig {
        /// Size seen (or reached).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// bundle ends in the middle of a record at byte {at}
    #[error("bundle ends in the middle of a record at byte {at}")]
    Truncated {
        /// Offset of the record.
        at: usize,
    },
    /// unknown record kind {kind} at byte {at}
    #[error("unknown record kind {kind} at byte {at}")]
    BadKind {
        /// The kind byte.
        kind: u8,
        /// Its offset.
        at: usize,
    },
    /// {extra} bytes after the end of the bundle
    #[error("{extra} bytes after the end of the bundle")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// more than {max} entries
    #[error("more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// bad path `{path}` in bundle: {why}
    #[error("bad path `{path}` in bundle: {why}")]
    BadPath {
        /// The path (lossy UTF-8).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// {path} is a symbolic link; bundles carry only files and directories
    #[error("{} is a symbolic link; bundles carry only files and directories", .path.display())]
    Symlink {
        /// Where.
        path: PathBuf,
    },
    /// {path} is neither a file nor a directory
    #[error("{} is neither a file nor a directory", .path.display())]
    Special {
        /// Where.
        path: PathBuf,
    },
    /// {path}: {source}
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of a parsed bundle, borrowing from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A directory.
    Dir {
        /// Relative path.
        path: &'a str,
    },
    /// A regular file.
    File {
        /// Relative path.
        path: &'a str,
        /// Its contents.
        data: &'a [u8],
    },
}

impl Entry<'_> {
    /// The entry's relative path.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path } | Entry::File { path, .. } => path,
        }
    }
}

/// Checks one relative path: non-empty, bounded, no `.`/`..`/empty
/// component, no NUL, not absolute.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty");
    }
    if path.len() > MAX_PATH {
        return Err("too long");
    }
    if path.starts_with('/') {
        return Err("absolute");
    }
    if path.contains('\0') {
        return Err("contains NUL");
    }
    let mut depth = 0;
    for c in path.split('/') {
        match c {
            "" => return Err("empty component"),
            "." | ".." => return Err("`.` or `..` component"),
            _ => depth += 1,
        }
    }
    if depth > MAX_DEPTH {
        return Err("nested too deep");
    }
    Ok(())
}

/// Builds a bundle entry by entry, refusing to grow past its limit.
pub struct Packer {
    out: Vec<u8>,
    max_len: u64,
    entries: usize,
}

impl Packer {
    /// An empty bundle that may grow to `max_len` bytes (capped at [`MAX_BUNDLE`]).
    pub fn new(max_len: u64) -> Packer {
        Packer {
            out: MAGIC.to_vec(),
            max_len: max_len.min(MAX_BUNDLE),
            entries: 0,
        }
    }

    fn record(&mut self, kind: u8, path: &str, data: Option<&[u8]>) -> Result<(), BundleError> {
        check_path(path).map_err(|why| BundleError::BadPath {
            path: path.to_string(),
            why,
        })?;
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries { max: MAX_ENTRIES });
        }
        let grown =
            self.out.len() as u64 + 11 + path.len() as u64 + data.map_or(0, |d| d.len() as u64) + 1;
        if grown > self.max_len {
            return Err(BundleError::TooBig {
                len: grown,
                max: self.max_len,
            });
        }
        self.out.push(kind);
        self.out
            .extend_from_slice(&(path.len() as u16).to_be_bytes());
        self.out.extend_from_slice(path.as_bytes());
        if let Some(d) = data {
            self.out.extend_from_slice(&(d.len() as u64).to_be_bytes());
            self.out.extend_from_slice(d);
        }
        Ok(())
    }

    /// Adds a directory entry.
    pub fn dir(&mut self, path: &str) -> Result<(), BundleError> {
        self.record(KIND_DIR, path, None)
    }

    /// Adds a file entry.
    pub fn file(&mut self, path: &str, data: &[u8]) -> Result<(), BundleError> {
        self.record(KIND_FILE, path, Some(data))
    }

    /// Adds everything beneath the host directory `dir` under `prefix`
    /// (`""` for the top). Symbolic links and special files are refused,
    /// never followed.
    pub fn tree(&mut self, prefix: &str, dir: &Path) -> Result<(), BundleError> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        names.sort();
        for name in names {
            let host = dir.join(&name);
            let name = name.to_str().ok_or_else(|| BundleError::BadPath {
                path: host.display().to_string(),
                why: "not UTF-8",
            })?;
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(&host).map_err(io(&host))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                return Err(BundleError::Symlink { path: host });
            } else if kind.is_dir() {
                self.dir(&path)?;
                self.tree(&path, &host)?;
            } else if kind.is_file() {
                let room = self.max_len.saturating_sub(self.out.len() as u64);
                if meta.len() > room {
                    return Err(BundleError::TooBig {
                        len: self.out.len() as u64 + meta.len(),
                        max: self.max_len,
                    });
                }
                let data = std::fs::read(&host).map_err(io(&host))?;
                self.file(&path, &data)?;
            } else {
                return Err(BundleError::Special { path: host });
            }
        }
        Ok(())
    }

    /// The finished bundle.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(KIND_END);
        self.out
    }
}

/// Packs the host directory `dir` into a bundle of at most `max_len` bytes.
pub fn pack(dir: &Path, max_len: u64) -> Result<Vec<u8>, BundleError> {
    let mut p = Packer::new(max_len);
    p.tree("", dir)?;
    Ok(p.finish())
}

/// Reads `n` bytes at `*at`, advancing it.
fn take<'a>(
    bytes: &'a [u8],
    at: &mut usize,
    n: usize,
    record: usize,
) -> Result<&'a [u8], BundleError> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or(BundleError::Truncated { at: record })?;
    let s = &bytes[*at..end];
    *at = end;
    Ok(s)
}

/// Parses a bundle of at most `max_len` bytes, checking every rule in
/// the module documentation.
pub fn parse(bytes: &[u8], max_len: u64) -> Result<Vec<Entry<'_>>, BundleError> {
    let max = max_len.min(MAX_BUNDLE);
    if bytes.len() as u64 > max {
        return Err(BundleError::TooBig {
            len: bytes.len() as u64,
            max,
        });
    }
    if !bytes.starts_with(MAGIC) {
        return Err(BundleError::BadMagic);
    }
    let mut at = MAGIC.len();
    let mut entries = Vec::new();
    let mut dirs: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    loop {
        let record = at;
        let kind = take(bytes, &mut at, 1, record)?[0];
        if kind == KIND_END {
            break;
        }
        if kind != KIND_DIR && kind != KIND_FILE {
            return Err(BundleError::BadKind { kind, at: record });
        }
        if entries.len() == MAX_ENTRIES {
            return Err(BundleError::TooManyEntries { max: MAX_ENTRIES });
        }
        let len = u16::from_be_bytes(
            take(bytes, &mut at, 2, record)?
                .try_into()
                .expect("2 bytes"),
        );
        let raw = take(bytes, &mut at, usize::from(len), record)?;
        let path = std::str::from_utf8(raw).map_err(|_| BundleError::BadPath {
            path: String::from_utf8_lossy(raw).into_owned(),
            why: "not UTF-8",
        })?;
        let bad = |why| BundleError::BadPath {
            path: path.to_string(),
            why,
        };
        check_path(path).map_err(bad)?;
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !dirs.contains(parent) {
                return Err(bad("its parent directory is not listed before it"));
            }
        }
        if !seen.insert(path) {
            return Err(bad("listed twice"));
        }
        if kind == KIND_DIR {
            dirs.insert(path);
            entries.push(Entry::Dir { path });
        } else {
            let n = u64::from_be_bytes(
                take(bytes, &mut at, 8, record)?
                    .try_into()
                    .expect("8 bytes"),
            );
            let n = usize::try_from(n).map_err(|_| BundleError::Truncated { at: record })?;
            let data = take(bytes, &mut at, n, record)?;
            entries.push(Entry::File { path, data });
        }
    }
    if at != bytes.len() {
        return Err(BundleError::TrailingBytes {
            extra: bytes.len() - at,
        });
    }
    Ok(entries)
}

/// Unpacks a bundle into `dest`, which must exist and be empty. Files are
/// created new (never through an existing name or link) with mode 0644,
/// directories with 0755.
pub fn extract(bytes: &[u8], dest: &Path, max_len: u64) -> Result<(), BundleError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    // Every name is created new (`create_new` refuses an existing name,
    // link or not) beneath directories this function made, in order.
    let entries = parse(bytes, max_len)?;
    if std::fs::read_dir(dest).map_err(io(dest))?.next().is_some() {
        return Err(BundleError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a bundle is only unpacked into an empty directory",
            ),
        });
    }
    for e in entries {
        let host = dest.join(e.path());
        match e {
            Entry::Dir { .. } => std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&host)
                .map_err(io(&host))?,
            Entry::File { data, .. } => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&host)
                    .map_err(io(&host))?;
                f.write_all(data).map_err(io(&host))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_round_trips() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/x"), b"hello").unwrap();
        std::fs::write(src.path().join("top"), b"").unwrap();
        let b = pack(src.path(), MAX_BUNDLE).unwrap();
        let entries = parse(&b, MAX_BUNDLE).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry::Dir { path: "d" },
                Entry::File {
                    path: "d/x",
                    data: b"hello"
                },
                Entry::File {
                    path: "top",
                    data: b""
                },
            ]
        );
        let dst = tempfile::tempdir().unwrap();
        extract(&b, dst.path(), MAX_BUNDLE).unwrap();
        assert_eq!(std::fs::read(dst.path().join("d/x")).unwrap(), b"hello");
    }

    #[test]
    fn symlinks_are_refused_when_packing() {
        let src = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("l")).unwrap();
        assert!(matches!(
            pack(src.path(), MAX_BUNDLE),
            Err(BundleError::Symlink { .. })
        ));
    }

    fn raw(kind: u8, path: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(kind);
        b.extend_from_slice(&(path.len() as u16).to_be_bytes());
        b.extend_from_slice(path.as_bytes());
        if kind == KIND_FILE {
            b.extend_from_slice(&0u64.to_be_bytes());
        }
        b.push(KIND_END);
        b
    }

    #[test]
    fn escaping_paths_are_refused_by_name() {
        for (path, why) in [
            ("../x", "`.` or `..` component"),
            ("a/../../x", "`.` or `..` component"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty component"),
            ("a/b", "its parent directory is not listed before it"),
        ] {
            match parse(&raw(KIND_FILE, path), MAX_BUNDLE) {
                Err(BundleError::BadPath { why: w, .. }) => assert_eq!(w, why, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn damaged_bundles_are_refused_by_name() {
        assert!(matches!(parse(b"junk", 100), Err(BundleError::BadMagic)));
        let mut b = raw(KIND_FILE, "x");
        b.truncate(b.len() - 3);
        assert!(matches!(parse(&b, 100), Err(BundleError::Truncated { .. })));
        let b = raw(7, "x");
        assert!(matches!(
            parse(&b, 100),
            Err(BundleError::BadKind { kind: 7, .. })
        ));
        let mut b = raw(KIND_DIR, "x");
        b.push(0);
        assert!(matches!(
            parse(&b, 100),
            Err(BundleError::TrailingBytes { extra: 1 })
        ));
        assert!(matches!(
            parse(&raw(KIND_DIR, "x"), 5),
            Err(BundleError::TooBig { .. })
        ));
        // A file claiming more bytes than there are.
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[KIND_FILE, 0, 1, b'x']);
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse(&b, 100), Err(BundleError::Truncated { .. })));
        let mut p = Packer::new(MAX_BUNDLE);
        p.dir("d").unwrap();
        p.dir("d").unwrap();
        let b = p.finish();
        assert!(matches!(
            parse(&b, MAX_BUNDLE),
            Err(BundleError::BadPath {
                why: "listed twice",
                ..
            })
        ));
    }

    proptest::proptest! {
        /// What the fuzz target checks, on every build: any bytes give an
        /// error or entries that re-pack to the same bytes; flipping a
        /// byte of a valid bundle never panics the parser.
        #[test]
        fn the_parser_never_panics_and_round_trips(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            flip in 0usize..200,
            bit in 0u8..8,
        ) {
            let mut p = Packer::new(MAX_BUNDLE);
            p.dir("d").unwrap();
            p.file("d/f", &raw).unwrap();
            p.file("g", b"x").unwrap();
            let mut valid = p.finish();
            let back = parse(&valid, MAX_BUNDLE).unwrap();
            proptest::prop_assert_eq!(back.len(), 3);
            let at = flip % valid.len();
            valid[at] ^= 1 << bit;
            for bytes in [&raw[..], &valid[..]] {
                if let Ok(entries) = parse(bytes, MAX_BUNDLE) {
                    let mut p = Packer::new(MAX_BUNDLE);
                    for e in &entries {
                        match e {
                            Entry::Dir { path } => p.dir(path).unwrap(),
                            Entry::File { path, data } => p.file(path, data).unwrap(),
                        }
                    }
                    proptest::prop_assert_eq!(p.finish(), bytes.to_vec());
                }
            }
        }
    }

    #[test]
    fn packing_stops_at_the_limit() {
        let mut p = Packer::new(64);
        assert!(matches!(
            p.file("big", &[0; 100]),
            Err(BundleError::TooBig { .. })
        ));
    }
}
