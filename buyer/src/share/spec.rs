//! `--share HOST_DIR:GUEST_PATH[:rw|:ro]`: which host directory a guest
//! sees under which export path, and whether it may write there.

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// Longest export path accepted; MOUNT's `dirpath` is bounded by 1024 bytes
/// (RFC 1813, MNTPATHLEN).
pub const MAX_GUEST_PATH: usize = 1024;

/// One host directory exported to the buyer's guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Directory on the buyer's machine whose contents are exported.
    pub host_dir: PathBuf,
    /// Export path the guest mounts, e.g. `/src` (`mount ADDR:/src`).
    pub guest_path: String,
    /// Whether guests may modify the share; read-only unless `:rw`.
    pub writable: bool,
}

/// Why a `--share` argument could not be understood.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShareSpecError {
    /// No `:GUEST_PATH` part was given.
    #[error("`{0}` has no guest path; write HOST_DIR:GUEST_PATH[:rw], e.g. ./src:/src")]
    MissingGuestPath(String),
    /// The host directory part is empty.
    #[error("`{0}` has an empty host directory; write HOST_DIR:GUEST_PATH[:rw], e.g. ./src:/src")]
    EmptyHostDir(String),
    /// The guest path does not start with `/`.
    #[error("guest path `{0}` must be absolute, e.g. /src")]
    GuestPathNotAbsolute(String),
    /// The guest path has an empty, `.` or `..` component.
    #[error("guest path `{0}` must not contain empty, `.` or `..` components")]
    GuestPathNotNormal(String),
    /// The guest path is longer than MOUNT allows.
    #[error("guest path of {len} bytes is longer than {max}")]
    GuestPathTooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
}

impl Share {
    /// Parses `HOST_DIR:GUEST_PATH`, `HOST_DIR:GUEST_PATH:rw` or
    /// `HOST_DIR:GUEST_PATH:ro`. The host directory may itself contain `:`;
    /// the guest path may not.
    pub fn parse(spec: &str) -> Result<Self, ShareSpecError> {
        let (rest, writable) = if let Some(r) = spec.strip_suffix(":rw") {
            (r, true)
        } else if let Some(r) = spec.strip_suffix(":ro") {
            (r, false)
        } else {
            (spec, false)
        };
        let (host, guest) = rest
            .rsplit_once(':')
            .ok_or_else(|| ShareSpecError::MissingGuestPath(spec.to_owned()))?;
        if host.is_empty() {
            return Err(ShareSpecError::EmptyHostDir(spec.to_owned()));
        }
        let guest_path = normalize_guest_path(guest)?;
        Ok(Share {
            host_dir: PathBuf::from(host),
            guest_path,
            writable,
        })
    }
}

impl FromStr for Share {
    type Err = ShareSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Share::parse(s)
    }
}

/// Checks an export path and drops a trailing `/` (but keeps `/` itself).
pub fn normalize_guest_path(guest: &str) -> Result<String, ShareSpecError> {
    if guest.len() > MAX_GUEST_PATH {
        return Err(ShareSpecError::GuestPathTooLong {
            len: guest.len(),
            max: MAX_GUEST_PATH,
        });
    }
    if !guest.starts_with('/') {
        return Err(ShareSpecError::GuestPathNotAbsolute(guest.to_owned()));
    }
    let trimmed = guest.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_owned());
    }
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(ShareSpecError::GuestPathNotNormal(guest.to_owned()));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_unless_rw() {
        let s = Share::parse("./src:/src").unwrap();
        assert_eq!(
            s,
            Share {
                host_dir: "./src".into(),
                guest_path: "/src".into(),
                writable: false
            }
        );
        assert!(Share::parse("./out:/out:rw").unwrap().writable);
        assert!(!Share::parse("./out:/out:ro").unwrap().writable);
    }

    #[test]
    fn host_dir_may_contain_colons() {
        let s = Share::parse("/a:b/c:/data/x/:rw").unwrap();
        assert_eq!(s.host_dir, PathBuf::from("/a:b/c"));
        assert_eq!(s.guest_path, "/data/x");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(matches!(
            Share::parse("./src"),
            Err(ShareSpecError::MissingGuestPath(_))
        ));
        assert!(matches!(
            Share::parse(":/src"),
            Err(ShareSpecError::EmptyHostDir(_))
        ));
        assert!(matches!(
            Share::parse("./src:src"),
            Err(ShareSpecError::GuestPathNotAbsolute(_))
        ));
        assert!(matches!(
            Share::parse("./src:/a/../b"),
            Err(ShareSpecError::GuestPathNotNormal(_))
        ));
        assert!(matches!(
            Share::parse("./src:/a//b"),
            Err(ShareSpecError::GuestPathNotNormal(_))
        ));
        let long = format!("./x:/{}", "a".repeat(2000));
        assert!(matches!(
            Share::parse(&long),
            Err(ShareSpecError::GuestPathTooLong { .. })
        ));
    }
}
