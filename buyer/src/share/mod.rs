//! The buyer's storage served into its guests: an NFSv3 server (with MOUNT
//! v3 on the same TCP port) exporting host directories given as
//! `--share HOST_DIR:GUEST_PATH[:rw]`.
//!
//! A guest mounts a share by its guest path. With the server at
//! `ADDR:PORT` (see [`ShareServer::local_addr`]), a Linux guest uses
//!
//! ```text
//! mount -t nfs -o nfsvers=3,proto=tcp,mountproto=tcp,nolock,port=PORT,mountport=PORT ADDR:/src /src
//! ```
//!
//! (`nolock`: there is no NLM lock manager; locks stay local to the
//! guest.) libnfs clients use `nfs://ADDR/src?version=3&nfsport=PORT&mountport=PORT`.
//!
//! Why not the `nfsserve` crate: its record-marking reader allocates
//! whatever length a fragment header declares (up to 2 GiB) and appends
//! fragments without limit, its XDR decoder resizes vectors to any
//! client-given `u32` length before reading, it spawns a task per request
//! and queues replies without bound, its file handles are the startup time
//! plus the inode number (guessable), it serves one export per listener, and
//! its file-id API leaves path confinement to each implementation. Here
//! every length is bounded before allocation ([`rpc::MAX_RECORD`],
//! [`nfs3::MAX_IO`], names, paths), handles are MACed ([`handle`]), and all
//! file access goes through [`fs::Export`], which cannot leave the export.
//!
//! Layout: [`spec`] parses `--share`, [`allow`] is the client allow list,
//! [`server`] is the tokio shell, [`rpc`] and [`xdr`] the wire framing,
//! [`service`] dispatches to [`mount`] and [`nfs3`], which act through
//! [`fs`]; [`status`] maps host errors to NFS status codes.

pub mod allow;
pub mod fs;
pub mod handle;
pub mod mount;
pub mod nfs3;
pub mod rpc;
pub mod server;
pub mod service;
pub mod spec;
pub mod status;
pub mod xdr;

pub use allow::AllowList;
pub use server::{ShareError, ShareServer};
pub use spec::{Share, ShareSpecError};
