//! The exports of one server and the dispatch of an RPC record to the
//! program it is for (NFSv3, MOUNT v3, or the port mapper's GETPORT).

use rand::RngCore;

use super::fs::Export;
use super::handle::{Handle, HandleKey};
use super::rpc::{self, AcceptStat};
use super::server::ShareError;
use super::spec::Share;
use super::status::NfsStat;
use super::xdr::{XdrError, XdrReader, XdrWriter};
use super::{mount, nfs3};

/// ONC RPC program number of NFS.
pub const NFS_PROGRAM: u32 = 100_003;
/// ONC RPC program number of MOUNT.
pub const MOUNT_PROGRAM: u32 = 100_005;
/// ONC RPC program number of the port mapper.
pub const PORTMAP_PROGRAM: u32 = 100_000;

/// Why a procedure did not produce a normal result.
#[derive(Debug)]
pub enum ProcError {
    /// Arguments did not decode: GARBAGE_ARGS.
    Garbage(XdrError),
    /// The operation failed with this NFS status.
    Nfs(NfsStat),
}

impl From<XdrError> for ProcError {
    fn from(e: XdrError) -> Self {
        ProcError::Garbage(e)
    }
}

impl From<NfsStat> for ProcError {
    fn from(e: NfsStat) -> Self {
        ProcError::Nfs(e)
    }
}

/// Everything a request handler needs: the exports, the handle key, and
/// the write verifier of this server instance.
#[derive(Debug)]
pub struct ShareService {
    /// Exports by id (index).
    pub exports: Vec<Export>,
    /// Key that authenticates file handles.
    pub key: HandleKey,
    /// WRITE/COMMIT verifier; changes when the server restarts.
    pub write_verf: [u8; 8],
    /// TCP port the server listens on, for GETPORT answers.
    pub port: u16,
}

impl ShareService {
    /// Opens every share as an export (ids in order) with a fresh random
    /// handle key and write verifier. `port` is what GETPORT answers.
    pub fn new(shares: &[Share], port: u16) -> Result<Self, ShareError> {
        if shares.is_empty() {
            return Err(ShareError::NoShares);
        }
        let mut exports = Vec::with_capacity(shares.len());
        for (i, share) in shares.iter().enumerate() {
            if shares[..i].iter().any(|s| s.guest_path == share.guest_path) {
                return Err(ShareError::DuplicateGuestPath(share.guest_path.clone()));
            }
            let id = u32::try_from(i).map_err(|_| ShareError::TooManyShares(shares.len()))?;
            exports.push(Export::open(id, share)?);
        }
        let mut write_verf = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut write_verf);
        Ok(Self {
            exports,
            key: HandleKey::random(),
            write_verf,
            port,
        })
    }

    /// Decodes and checks a file handle from the arguments.
    pub fn handle<'a>(&'a self, r: &mut XdrReader<'_>) -> Result<(&'a Export, u64), ProcError> {
        let bytes = r.opaque(64)?;
        let Handle { export, ino } = self.key.decode(bytes).ok_or(NfsStat::BadHandle)?;
        let e = self
            .exports
            .get(export as usize)
            .ok_or(NfsStat::BadHandle)?;
        Ok((e, ino))
    }

    /// The wire handle for `ino` in export `e`.
    pub fn handle_bytes(&self, e: &Export, ino: u64) -> [u8; super::handle::HANDLE_LEN] {
        self.key.encode(Handle { export: e.id, ino })
    }

    /// Handles one RPC record, appending the reply (without record mark)
    /// to `w`. Returns false when the record is not worth a reply (not a
    /// call at all); the connection is then closed.
    pub fn dispatch(&self, record: &[u8], w: &mut XdrWriter) -> bool {
        let mut r = XdrReader::new(record);
        let call = match rpc::parse_call(&mut r) {
            Ok(c) => c,
            Err((xid, rpc::RpcError::BadRpcVersion(_))) => {
                rpc::rpc_mismatch(w, xid);
                return true;
            }
            Err((xid, rpc::RpcError::Xdr(_))) if xid != 0 || record.len() >= 4 => {
                rpc::accepted(w, xid, AcceptStat::GarbageArgs);
                return true;
            }
            Err(_) => return false,
        };
        let start = w.len();
        let outcome = match (call.prog, call.vers) {
            (NFS_PROGRAM, 3) => {
                rpc::accepted(w, call.xid, AcceptStat::Success);
                nfs3::call(self, call.proc_, &mut r, w)
            }
            (MOUNT_PROGRAM, 3) => {
                rpc::accepted(w, call.xid, AcceptStat::Success);
                mount::call(self, call.proc_, &mut r, w)
            }
            (PORTMAP_PROGRAM, 2) => {
                rpc::accepted(w, call.xid, AcceptStat::Success);
                self.portmap(call.proc_, &mut r, w)
            }
            (NFS_PROGRAM | MOUNT_PROGRAM, _) => {
                rpc::prog_mismatch(w, call.xid, 3);
                Outcome::Done
            }
            (PORTMAP_PROGRAM, _) => {
                rpc::prog_mismatch(w, call.xid, 2);
                Outcome::Done
            }
            _ => {
                rpc::accepted(w, call.xid, AcceptStat::ProgUnavail);
                Outcome::Done
            }
        };
        let stat = match outcome {
            Outcome::Done => return true,
            Outcome::Garbage => AcceptStat::GarbageArgs,
            Outcome::ProcUnavail => AcceptStat::ProcUnavail,
        };
        w.buf.truncate(start);
        rpc::accepted(w, call.xid, stat);
        true
    }

    /// PMAPPROC_NULL and PMAPPROC_GETPORT for NFS and MOUNT over TCP, so a
    /// client pointed at this port for rpcbind finds the same port.
    fn portmap(&self, proc_: u32, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Outcome {
        match proc_ {
            0 => Outcome::Done,
            3 => {
                let args = (|| Ok::<_, XdrError>((r.u32()?, r.u32()?, r.u32()?)))();
                let port = match args {
                    Ok((NFS_PROGRAM, 3, 6)) | Ok((MOUNT_PROGRAM, 3, 6)) => u32::from(self.port),
                    _ => 0,
                };
                w.u32(port);
                Outcome::Done
            }
            _ => Outcome::ProcUnavail,
        }
    }
}

/// How a program's procedure ended, for the RPC layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Results (or an NFS error) were written.
    Done,
    /// The arguments did not decode; reply GARBAGE_ARGS.
    Garbage,
    /// No such procedure; reply PROC_UNAVAIL.
    ProcUnavail,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn service(dir: &std::path::Path) -> (ShareService, Vec<u8>) {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("file"), b"data").unwrap();
        let share = Share {
            host_dir: dir.into(),
            guest_path: "/src".into(),
            writable: false,
        };
        let svc = ShareService::new(&[share], 2049).unwrap();
        let root = svc
            .handle_bytes(&svc.exports[0], svc.exports[0].root_ino())
            .to_vec();
        (svc, root)
    }

    fn call(proc_: u32, root: &[u8], args: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::default();
        for v in [9, 0, 2, NFS_PROGRAM, 3, proc_, 0, 0, 0, 0] {
            w.u32(v);
        }
        w.opaque(root);
        w.buf.extend_from_slice(args);
        w.buf
    }

    #[test]
    fn getattr_of_the_root_succeeds_and_truncated_args_are_garbage() {
        let t = tempfile::tempdir().unwrap();
        let (svc, root) = service(t.path());
        let mut w = XdrWriter::default();
        assert!(svc.dispatch(&call(1, &root, &[]), &mut w));
        assert_eq!(
            &w.buf[20..28],
            &[0, 0, 0, 0, 0, 0, 0, 0],
            "SUCCESS, NFS3_OK"
        );
        let mut w = XdrWriter::default();
        svc.dispatch(&call(6, &root, &[0, 0]), &mut w);
        assert_eq!(&w.buf[20..24], &[0, 0, 0, AcceptStat::GarbageArgs as u8]);
    }

    #[test]
    fn writes_on_a_read_only_export_are_rofs() {
        let t = tempfile::tempdir().unwrap();
        let (svc, root) = service(t.path());
        let mut args = XdrWriter::default();
        args.opaque(b"new");
        args.u32(0); // UNCHECKED
        for _ in 0..6 {
            args.u32(0); // no attributes set
        }
        let mut w = XdrWriter::default();
        svc.dispatch(&call(8, &root, &args.buf), &mut w);
        assert_eq!(&w.buf[24..28], &30u32.to_be_bytes(), "NFS3ERR_ROFS");
        assert!(!t.path().join("new").exists());
    }

    proptest! {
        #[test]
        fn random_records_and_arguments_never_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..512),
            proc_ in 0u32..23,
        ) {
            let t = tempfile::tempdir().unwrap();
            let (svc, root) = service(t.path());
            let mut w = XdrWriter::default();
            svc.dispatch(&raw, &mut w);
            let mut w = XdrWriter::default();
            prop_assert!(svc.dispatch(&call(proc_, &root, &raw), &mut w));
            prop_assert!(w.len() < 64 * 1024);
        }
    }
}
