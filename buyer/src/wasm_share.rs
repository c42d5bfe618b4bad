//! `--share` for wasm jobs, without NFS: a read-only directory is packed
//! into a bundle ([`cpushare_proto::bundle`]) and uploaded by content id
//! (sellers fetch and cache it); a writable one comes back from the
//! seller as a bundle when the job exits with 0, and is placed into the
//! buyer's directory at once (unpacked into a temporary directory beside
//! it, on its filesystem, then renamed), at most once however many times
//! the work is placed.

use anyhow::{bail, Context};
use cpushare_proto::bundle::{self, MAX_BUNDLE};
use cpushare_proto::client::{Client, Home};
use cpushare_proto::id::ContentId;
use cpushare_proto::msg::{ShareSpec, MAX_SHARES};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest output bundle accepted from a seller (the seller's own limit).
pub const MAX_OUTPUTS: u64 = 256 << 20;

/// One `--share HOST:GUEST[:ro|:rw]` as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareArg {
    /// Directory on this machine.
    pub host: PathBuf,
    /// Absolute path in the guest.
    pub guest: String,
    /// `:rw`: the guest writes it and its contents come back.
    pub writable: bool,
}

/// Parses `HOST:GUEST[:ro|:rw]`.
pub fn parse_share(s: &str) -> Result<ShareArg, String> {
    let (rest, writable) = match s.rsplit_once(':') {
        Some((r, "rw")) => (r, true),
        Some((r, "ro")) => (r, false),
        _ => (s, false),
    };
    let Some((host, guest)) = rest.rsplit_once(':') else {
        return Err(format!(
            "`{s}` is not HOST:GUEST[:rw], e.g. ./in:/in or ./out:/out:rw"
        ));
    };
    if host.is_empty() {
        return Err(format!("`{s}` names no directory on this machine"));
    }
    ShareSpec::check_guest_path(guest)?;
    Ok(ShareArg {
        host: PathBuf::from(host),
        guest: guest.to_string(),
        writable,
    })
}

/// Checks the shares before anything is paid for: inputs are directories,
/// outputs are absent or empty directories, guest paths are distinct.
pub fn check(shares: &[ShareArg], instances: u32) -> anyhow::Result<()> {
    if shares.len() > MAX_SHARES {
        bail!("at most {MAX_SHARES} --share options");
    }
    let mut guests = std::collections::HashSet::new();
    for s in shares {
        if !guests.insert(&s.guest) {
            bail!("two --share options use the guest path {}", s.guest);
        }
        if s.writable {
            if instances > 1 {
                bail!(
                    "a writable --share takes one instance (several would write {} at once)",
                    s.host.display()
                );
            }
            let empty = match std::fs::read_dir(&s.host) {
                Ok(mut d) => d.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => bail!(
                    "cannot use {} as an output directory: {e}",
                    s.host.display()
                ),
            };
            if !empty {
                bail!(
                    "{} is not empty; a writable share's outputs are placed only into an empty or new directory",
                    s.host.display()
                );
            }
        } else if !s.host.is_dir() {
            bail!("{} is not a directory", s.host.display());
        }
    }
    Ok(())
}

/// Packs and uploads the read-only shares; returns every share as the
/// seller sees it.
pub async fn prepare(
    home: &Home,
    client: &Client,
    shares: &[ShareArg],
    quiet: bool,
) -> anyhow::Result<Vec<ShareSpec>> {
    let mut specs = Vec::new();
    for s in shares {
        let input = if s.writable {
            None
        } else {
            let bytes = bundle::pack(&s.host, MAX_BUNDLE)
                .with_context(|| format!("packing {} for {}", s.host.display(), s.guest))?;
            let id = ContentId::of(&bytes);
            let len = bytes.len() as u64;
            let dir = home.dir().join("bundles");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{}.bundle", id.hex()));
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            let sent = crate::upload::ensure(client, &path, id, len, quiet).await;
            let _ = std::fs::remove_file(&path);
            sent.with_context(|| format!("uploading {} for {}", s.host.display(), s.guest))?;
            Some((id, len))
        };
        specs.push(ShareSpec {
            guest: s.guest.clone(),
            input,
            writable: s.writable,
        });
    }
    Ok(specs)
}

/// Output bundles as they arrive, and placing the one of the lease that
/// ended well.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Host directory of each writable share, by share index.
    targets: Vec<(usize, PathBuf)>,
    received: HashMap<String, Vec<u8>>,
    placed: bool,
}

impl Outputs {
    /// Outputs expected for `shares` (none if no share is writable).
    pub fn new(shares: &[ShareArg]) -> Outputs {
        Outputs {
            targets: shares
                .iter()
                .enumerate()
                .filter(|(_, s)| s.writable)
                .map(|(i, s)| (i, s.host.clone()))
                .collect(),
            ..Outputs::default()
        }
    }

    /// Whether any share comes back.
    pub fn expected(&self) -> bool {
        !self.targets.is_empty()
    }

    /// A chunk of lease `lease`'s bundle.
    pub fn chunk(&mut self, lease: &str, data: &[u8]) -> Result<(), String> {
        let buf = self.received.entry(lease.to_string()).or_default();
        if buf.len() as u64 + data.len() as u64 > MAX_OUTPUTS {
            return Err(format!(
                "lease {lease} sent more than {MAX_OUTPUTS} bytes of outputs"
            ));
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    /// Lease `lease` ended: if it ended well, its outputs are placed (once);
    /// otherwise they are dropped.
    pub fn lease_ended(&mut self, lease: &str, well: bool) -> Result<(), String> {
        let bytes = self.received.remove(lease);
        if !well || !self.expected() {
            return Ok(());
        }
        if self.placed {
            return Err(format!(
                "outputs were already placed; lease {lease}'s are dropped"
            ));
        }
        let bytes = bytes.ok_or_else(|| format!("lease {lease} ended well but sent no outputs"))?;
        self.placed = true;
        place(&bytes, &self.targets)
    }
}

/// Unpacks each share's part of `bytes` into a staging directory beside
/// that share's own target (so on its filesystem: the final rename never
/// crosses devices and is atomic), then renames each into place. Nothing
/// is placed unless every part is there and staged.
fn place(bytes: &[u8], targets: &[(usize, PathBuf)]) -> Result<(), String> {
    let entries = bundle::parse(bytes, MAX_OUTPUTS).map_err(|e| format!("the outputs: {e}"))?;
    for (i, _) in targets {
        let top = i.to_string();
        if !entries
            .iter()
            .any(|e| matches!(e, bundle::Entry::Dir { path } if *path == top))
        {
            return Err(format!("the outputs lack share {i}"));
        }
    }
    let mut staged: Vec<(PathBuf, PathBuf, &Path)> = Vec::new();
    let mut result = Ok(());
    for (i, host) in targets {
        match stage(bytes, &entries, *i, host) {
            Ok(dir) => staged.push((dir.join(i.to_string()), dir, host)),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = staged
            .iter()
            .try_for_each(|(part, _, host)| rename_into_place(part, host));
    }
    match result {
        Ok(()) => {
            for (_, dir, _) in &staged {
                let _ = std::fs::remove_dir_all(dir);
            }
            Ok(())
        }
        Err(e) if staged.is_empty() => Err(e),
        Err(e) => {
            let dirs: Vec<String> = staged
                .iter()
                .map(|(_, d, _)| d.display().to_string())
                .collect();
            Err(format!("{e} (what arrived is in {})", dirs.join(", ")))
        }
    }
}

/// Unpacks share `i`'s entries (`i/...`) of the outputs (`bytes`, parsed
/// as `entries`) into a new directory beside `host`; returns that
/// directory, which then holds `i`.
fn stage(
    bytes: &[u8],
    entries: &[bundle::Entry<'_>],
    i: usize,
    host: &Path,
) -> Result<PathBuf, String> {
    let top = i.to_string();
    let mine = |p: &str| {
        p == top
            || p.strip_prefix(top.as_str())
                .is_some_and(|r| r.starts_with('/'))
    };
    // The usual case, one writable share: the outputs are all its own and
    // are unpacked as they came, without a second copy in memory.
    let part = if entries.iter().all(|e| mine(e.path())) {
        None
    } else {
        let mut part = bundle::Packer::new(MAX_OUTPUTS);
        for e in entries.iter().filter(|e| mine(e.path())) {
            match e {
                bundle::Entry::Dir { path } => part.dir(path),
                bundle::Entry::File { path, data } => part.file(path, data),
            }
            .map_err(|e| format!("the outputs of share {i}: {e}"))?;
        }
        Some(part.finish())
    };
    let parent = match host.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent.join(format!(".cpushare-outputs-{}-{i}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    bundle::extract(part.as_deref().unwrap_or(bytes), &dir, MAX_OUTPUTS).map_err(|e| {
        format!(
            "the outputs of share {i}: {e} (what arrived is in {})",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// Renames `from` onto `to`, which must be absent or an empty directory
/// (rename replaces an empty directory in one step).
fn rename_into_place(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to).map_err(|e| {
        format!(
            "cannot place the outputs into {}: {e}; it must be absent or an empty directory",
            to.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_arguments_parse_or_say_why_not() {
        assert_eq!(
            parse_share("./out:/out:rw").unwrap(),
            ShareArg {
                host: "./out".into(),
                guest: "/out".into(),
                writable: true
            }
        );
        assert!(!parse_share("in:/data/in").unwrap().writable);
        assert!(!parse_share("in:/data:ro").unwrap().writable);
        assert!(parse_share("in").unwrap_err().contains("HOST:GUEST"));
        assert!(parse_share("in:data").unwrap_err().contains("absolute"));
        assert!(parse_share("in:/a/../b").unwrap_err().contains(".."));
        assert!(parse_share("in:/scratch/x")
            .unwrap_err()
            .contains("/scratch"));
    }

    #[test]
    fn outputs_are_placed_once_and_only_when_the_lease_ended_well() {
        let base = tempfile::tempdir().unwrap();
        let out = base.path().join("out");
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("0")).unwrap();
        std::fs::write(src.path().join("0/y"), b"result").unwrap();
        let b = bundle::pack(src.path(), MAX_OUTPUTS).unwrap();
        let shares = [ShareArg {
            host: out.clone(),
            guest: "/out".into(),
            writable: true,
        }];
        let mut o = Outputs::new(&shares);
        o.chunk("K-1", &b).unwrap();
        o.lease_ended("K-1", false).unwrap();
        assert!(!out.exists(), "a lease that failed places nothing");
        o.chunk("K-2", &b[..10]).unwrap();
        o.chunk("K-2", &b[10..]).unwrap();
        o.lease_ended("K-2", true).unwrap();
        assert_eq!(std::fs::read(out.join("y")).unwrap(), b"result");
        o.chunk("K-3", &b).unwrap();
        assert!(o
            .lease_ended("K-3", true)
            .unwrap_err()
            .contains("already placed"));
        let leftovers: Vec<_> = std::fs::read_dir(base.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary directory is left behind");
    }

    /// A tmpfs mounted on a fresh directory (another filesystem than the
    /// test's other directories), unmounted on drop even when the test fails.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount() -> Tmpfs {
            let dir = tempfile::tempdir().unwrap();
            let st = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
                .arg(dir.path())
                .status()
                .expect("run mount");
            assert!(st.success(), "mounting a tmpfs needs root (CI has it)");
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn outputs_for_directories_on_two_filesystems_are_each_staged_beside_their_own() {
        use std::os::unix::fs::MetadataExt;
        let disk = tempfile::tempdir().unwrap();
        let other = Tmpfs::mount();
        assert_ne!(
            std::fs::metadata(disk.path()).unwrap().dev(),
            std::fs::metadata(other.0.path()).unwrap().dev(),
            "the two targets must be on different filesystems"
        );
        let src = tempfile::tempdir().unwrap();
        for (i, text) in [(0, "on disk"), (1, "on tmpfs")] {
            std::fs::create_dir_all(src.path().join(format!("{i}/sub"))).unwrap();
            std::fs::write(src.path().join(format!("{i}/sub/r")), text).unwrap();
        }
        let b = bundle::pack(src.path(), MAX_OUTPUTS).unwrap();
        let (a, z) = (disk.path().join("a"), other.0.path().join("z"));
        let shares = [
            ShareArg {
                host: a.clone(),
                guest: "/a".into(),
                writable: true,
            },
            ShareArg {
                host: z.clone(),
                guest: "/z".into(),
                writable: true,
            },
        ];
        let mut o = Outputs::new(&shares);
        o.chunk("K-1", &b).unwrap();
        o.lease_ended("K-1", true).unwrap();
        assert_eq!(std::fs::read(a.join("sub/r")).unwrap(), b"on disk");
        assert_eq!(std::fs::read(z.join("sub/r")).unwrap(), b"on tmpfs");
        for (dir, want) in [(disk.path(), "a"), (other.0.path(), "z")] {
            let names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, [want], "no staging directory is left behind");
        }
    }
}
