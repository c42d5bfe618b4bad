//! The exports of one server and the dispatch of an RPC record to the
//! program it is for (NFSv3, MOUNT v3, or the port mapper's GETPORT).

use super::fs::Export;
use super::handle::{Handle, HandleKey};
use super::rpc::{self, AcceptStat};
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
