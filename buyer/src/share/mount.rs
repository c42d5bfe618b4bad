//! MOUNT v3 (RFC 1813 appendix I): the guest asks for an export by its
//! guest path (`/src`) and receives the root handle of that export.

use super::service::{Outcome, ShareService};
use super::spec::MAX_GUEST_PATH;
use super::xdr::{XdrReader, XdrWriter};

const MNT3ERR_NOENT: u32 = 2;
const AUTH_NONE: u32 = 0;
const AUTH_UNIX: u32 = 1;

/// Runs MOUNT procedure `proc_`; the accepted-reply header is in `w`.
pub fn call(s: &ShareService, proc_: u32, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Outcome {
    match proc_ {
        // NULL, UMNT, UMNTALL: nothing is recorded, so nothing to undo.
        0 | 4 => Outcome::Done,
        3 => match r.opaque(MAX_GUEST_PATH as u32) {
            Ok(_) => Outcome::Done,
            Err(_) => Outcome::Garbage,
        },
        1 => {
            let Ok(path) = r.opaque(MAX_GUEST_PATH as u32) else {
                return Outcome::Garbage;
            };
            let wanted = trim_path(path);
            match s.exports.iter().find(|e| e.guest_path.as_bytes() == wanted) {
                Some(e) => {
                    w.u32(0);
                    w.opaque(&s.handle_bytes(e, e.root_ino()));
                    w.u32(2);
                    w.u32(AUTH_UNIX);
                    w.u32(AUTH_NONE);
                }
                None => w.u32(MNT3ERR_NOENT),
            }
            Outcome::Done
        }
        // DUMP: no mount list is kept.
        2 => {
            w.bool(false);
            Outcome::Done
        }
        5 => {
            for e in &s.exports {
                w.bool(true);
                w.opaque(e.guest_path.as_bytes());
                w.bool(false); // no groups: access is by address allow list
            }
            w.bool(false);
            Outcome::Done
        }
        _ => Outcome::ProcUnavail,
    }
}

/// `/src/` and `/src` name the same export; `/` stays `/`.
fn trim_path(path: &[u8]) -> &[u8] {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_slashes_are_ignored() {
        assert_eq!(trim_path(b"/src//"), b"/src");
        assert_eq!(trim_path(b"/"), b"/");
    }
}
