//! `--share` for wasm jobs, without NFS: a read-only directory is packed
//! into a bundle ([`cpushare_proto::bundle`]) and uploaded by content id
//! (sellers fetch and cache it); a writable one comes back from the
//! seller as a bundle when the job exits with 0, and is placed into the
//! buyer's directory at once (unpacked into a temporary directory beside
//! it, then renamed), at most once however many times the work is placed.

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

/// Unpacks `bytes` beside the first target, checks every share's part is
/// there, then renames each into place.
fn place(bytes: &[u8], targets: &[(usize, PathBuf)]) -> Result<(), String> {
    let Some((_, first)) = targets.first() else {
        return Ok(());
    };
    let parent = match first.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".cpushare-outputs-{}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let unpacked =
        bundle::extract(bytes, &tmp, MAX_OUTPUTS).map_err(|e| format!("the outputs: {e}"));
    let placed = unpacked.and_then(|()| {
        for (i, _) in targets {
            if !tmp.join(i.to_string()).is_dir() {
                return Err(format!("the outputs lack share {i}"));
            }
        }
        for (i, host) in targets {
            rename_into_place(&tmp.join(i.to_string()), host)?;
        }
        Ok(())
    });
    if placed.is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    placed.map_err(|e| format!("{e} (what arrived is in {})", tmp.display()))
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
}
