//! ONC RPC v2 (RFC 5531) call headers and reply envelopes, and TCP record
//! marking with a hard bound on record size.

use std::io::Read;
use thiserror::Error;

use super::xdr::{XdrError, XdrReader, XdrWriter};

/// Largest record (one RPC call) accepted: a 1 MiB WRITE plus headers.
/// Anything larger closes the connection before it is buffered.
pub const MAX_RECORD: usize = (1 << 20) + 16 * 1024;
/// Largest credential or verifier body (RFC 5531: 400 bytes).
const MAX_AUTH: u32 = 400;

/// Accept-stat of a reply (RFC 5531 `accept_stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    /// Executed; results follow.
    Success = 0,
    /// Program not served here.
    ProgUnavail = 1,
    /// Program served, but not this version (low/high follow).
    ProgMismatch = 2,
    /// Procedure number unknown.
    ProcUnavail = 3,
    /// Arguments could not be decoded.
    GarbageArgs = 4,
    /// Server-side failure.
    SystemErr = 5,
}

/// The header of one RPC call, with its arguments still undecoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHeader {
    /// Transaction id, echoed in the reply.
    pub xid: u32,
    /// Program number (NFS 100003, MOUNT 100005).
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: u32,
}

/// Why a call header was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RpcError {
    /// The bytes did not decode.
    #[error("malformed RPC call: {0}")]
    Xdr(#[from] XdrError),
    /// The message was a reply or something else, not a call.
    #[error("RPC message type {0} is not CALL")]
    NotACall(u32),
    /// Only RPC version 2 exists.
    #[error("RPC version {0} is not 2")]
    BadRpcVersion(u32),
}

/// Decodes a call header, leaving `r` at the procedure arguments.
/// Credentials are skipped: the server acts as the buyer's own user, and
/// access is decided by client address, not by AUTH_UNIX claims.
pub fn parse_call(r: &mut XdrReader<'_>) -> Result<CallHeader, (u32, RpcError)> {
    let xid = r.u32().map_err(|e| (0, e.into()))?;
    let inner = |r: &mut XdrReader<'_>| -> Result<CallHeader, RpcError> {
        let mtype = r.u32()?;
        if mtype != 0 {
            return Err(RpcError::NotACall(mtype));
        }
        let rpcvers = r.u32()?;
        let prog = r.u32()?;
        let vers = r.u32()?;
        let proc_ = r.u32()?;
        let _cred_flavor = r.u32()?;
        r.opaque(MAX_AUTH)?;
        let _verf_flavor = r.u32()?;
        r.opaque(MAX_AUTH)?;
        if rpcvers != 2 {
            return Err(RpcError::BadRpcVersion(rpcvers));
        }
        Ok(CallHeader {
            xid,
            prog,
            vers,
            proc_,
        })
    };
    inner(r).map_err(|e| (xid, e))
}

/// Starts an accepted reply with AUTH_NONE verifier and the given status.
pub fn accepted(w: &mut XdrWriter, xid: u32, stat: AcceptStat) {
    w.u32(xid);
    w.u32(1); // REPLY
    w.u32(0); // MSG_ACCEPTED
    w.u32(0); // AUTH_NONE
    w.u32(0);
    w.u32(stat as u32);
}

/// A PROG_MISMATCH reply naming the one version served.
pub fn prog_mismatch(w: &mut XdrWriter, xid: u32, vers: u32) {
    accepted(w, xid, AcceptStat::ProgMismatch);
    w.u32(vers);
    w.u32(vers);
}

/// A denied reply for an RPC version other than 2.
pub fn rpc_mismatch(w: &mut XdrWriter, xid: u32) {
    w.u32(xid);
    w.u32(1); // REPLY
    w.u32(1); // MSG_DENIED
    w.u32(0); // RPC_MISMATCH
    w.u32(2);
    w.u32(2);
}

/// Why a record could not be read from the stream.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The record's fragments add up to more than the bound.
    #[error("RPC record of at least {len} bytes exceeds the bound of {max}")]
    TooLarge {
        /// Bytes declared so far.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The peer closed the connection or the socket failed.
    #[error("connection closed: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a record-marking header into (last fragment?, fragment length).
pub fn fragment_header(word: u32) -> (bool, usize) {
    (word & 0x8000_0000 != 0, (word & 0x7fff_ffff) as usize)
}

/// Reads one whole record (all its fragments) into `buf`, refusing
/// records over `max` bytes before allocating for them.
pub fn read_record<R: Read>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> Result<(), RecordError> {
    buf.clear();
    loop {
        let mut word = [0u8; 4];
        r.read_exact(&mut word)?;
        let (last, len) = fragment_header(u32::from_be_bytes(word));
        let total = buf.len() + len;
        if total > max {
            return Err(RecordError::TooLarge { len: total, max });
        }
        // Read into spare capacity: no zero-filling of up to 1 MiB per
        // record, and the caller's buffer is reused between records.
        let got = r.by_ref().take(len as u64).read_to_end(buf)?;
        if got != len {
            return Err(RecordError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if last {
            return Ok(());
        }
    }
}

/// Frames `body` as one last fragment (header patched into its first four
/// bytes, which the caller reserved).
pub fn finish_record(body: &mut [u8]) {
    let len = u32::try_from(body.len() - 4).expect("replies are bounded by MAX_RECORD-sized reads");
    body[..4].copy_from_slice(&(len | 0x8000_0000).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call_bytes(rpcvers: u32) -> Vec<u8> {
        let mut w = XdrWriter::default();
        for v in [7, 0, rpcvers, 100003, 3, 1, 1] {
            w.u32(v);
        }
        w.opaque(&[0; 20]);
        w.u32(0);
        w.u32(0);
        w.buf
    }

    #[test]
    fn parses_a_call_and_stops_at_arguments() {
        let bytes = call_bytes(2);
        let mut r = XdrReader::new(&bytes);
        let h = parse_call(&mut r).unwrap();
        assert_eq!(
            h,
            CallHeader {
                xid: 7,
                prog: 100003,
                vers: 3,
                proc_: 1
            }
        );
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn wrong_rpc_version_keeps_the_xid() {
        let bytes = call_bytes(3);
        let err = parse_call(&mut XdrReader::new(&bytes)).unwrap_err();
        assert_eq!(err, (7, RpcError::BadRpcVersion(3)));
    }

    #[test]
    fn oversized_fragment_is_refused_before_buffering() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut buf = Vec::new();
        let err = read_record(&mut input, &mut buf, MAX_RECORD).unwrap_err();
        assert!(matches!(err, RecordError::TooLarge { .. }));
        assert!(buf.capacity() < MAX_RECORD);
    }

    #[test]
    fn many_small_fragments_still_hit_the_bound() {
        let mut input = Vec::new();
        for _ in 0..10 {
            input.extend_from_slice(&100u32.to_be_bytes());
            input.extend_from_slice(&[0; 100]);
        }
        let mut buf = Vec::new();
        let err = read_record(&mut input.as_slice(), &mut buf, 500).unwrap_err();
        assert!(matches!(err, RecordError::TooLarge { len: 600, max: 500 }));
    }

    #[test]
    fn reassembles_fragments() {
        let mut input = Vec::new();
        input.extend_from_slice(&2u32.to_be_bytes());
        input.extend_from_slice(b"ab");
        input.extend_from_slice(&(0x8000_0001u32).to_be_bytes());
        input.extend_from_slice(b"c");
        let mut buf = Vec::new();
        read_record(&mut input.as_slice(), &mut buf, 10).unwrap();
        assert_eq!(buf, b"abc");
    }

    proptest! {
        #[test]
        fn random_calls_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_call(&mut XdrReader::new(&bytes));
        }
    }
}
