//! `nfsstat3` (RFC 1813 section 2.6) and how host errors map onto it.

use rustix::io::Errno;

/// An NFSv3 status code other than NFS3_OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // names are the RFC's
pub enum NfsStat {
    Perm = 1,
    NoEnt = 2,
    Io = 5,
    NxIo = 6,
    Acces = 13,
    Exist = 17,
    XDev = 18,
    NoDev = 19,
    NotDir = 20,
    IsDir = 21,
    Inval = 22,
    FBig = 27,
    NoSpc = 28,
    RoFs = 30,
    MLink = 31,
    NameTooLong = 63,
    NotEmpty = 66,
    DQuot = 69,
    Stale = 70,
    BadHandle = 10001,
    NotSync = 10002,
    BadCookie = 10003,
    NotSupp = 10004,
    TooSmall = 10005,
    ServerFault = 10006,
    Jukebox = 10008,
}

impl From<Errno> for NfsStat {
    fn from(e: Errno) -> Self {
        match e {
            Errno::PERM => NfsStat::Perm,
            Errno::NOENT => NfsStat::NoEnt,
            Errno::NXIO => NfsStat::NxIo,
            Errno::ACCESS => NfsStat::Acces,
            Errno::EXIST => NfsStat::Exist,
            // openat2 reports an attempt to leave the export (or cross a
            // mount) as EXDEV; the client only learns it may not go there.
            Errno::XDEV => NfsStat::Acces,
            Errno::NODEV => NfsStat::NoDev,
            Errno::NOTDIR => NfsStat::NotDir,
            Errno::ISDIR => NfsStat::IsDir,
            Errno::INVAL => NfsStat::Inval,
            // A symlink where a file or directory was expected: it is never
            // followed by the server.
            Errno::LOOP => NfsStat::Inval,
            Errno::FBIG => NfsStat::FBig,
            Errno::NOSPC => NfsStat::NoSpc,
            Errno::ROFS => NfsStat::RoFs,
            Errno::MLINK => NfsStat::MLink,
            Errno::NAMETOOLONG => NfsStat::NameTooLong,
            Errno::NOTEMPTY => NfsStat::NotEmpty,
            Errno::DQUOT => NfsStat::DQuot,
            Errno::AGAIN | Errno::MFILE | Errno::NFILE => NfsStat::Jukebox,
            _ => NfsStat::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_map_to_access_denied() {
        assert_eq!(NfsStat::from(Errno::XDEV), NfsStat::Acces);
        assert_eq!(NfsStat::from(Errno::NOENT) as u32, 2);
        assert_eq!(NfsStat::from(Errno::BADF), NfsStat::Io);
    }
}
