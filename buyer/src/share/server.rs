//! The tokio shell: accepts TCP connections from allowed addresses, reads
//! bounded RPC records, runs each on the blocking pool, writes replies.
//! NFS, MOUNT and GETPORT share one port.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::RngCore;
use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::allow::AllowList;
use super::fs::{Export, ExportError};
use super::handle::HandleKey;
use super::rpc::{finish_record, read_record, MAX_RECORD};
use super::service::ShareService;
use super::spec::Share;
use super::xdr::XdrWriter;

/// Most client connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// Most requests of one connection being executed at once. With
/// [`MAX_RECORD`] this bounds a connection's buffers to about 5 MiB.
pub const MAX_IN_FLIGHT: usize = 4;

/// Why the share server could not start.
#[derive(Debug, Error)]
pub enum ShareError {
    /// A share's host directory could not be opened.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Two shares use the same guest path.
    #[error("two shares are mounted at guest path {0}; give each --share its own guest path")]
    DuplicateGuestPath(String),
    /// No shares were given.
    #[error("no shares to serve")]
    NoShares,
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The error from the host.
        source: std::io::Error,
    },
}

/// A running NFSv3 server exporting the buyer's shares to allowed clients.
#[derive(Debug)]
pub struct ShareServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ShareServer {
    /// Opens every share, binds `listen` (port 0 picks one) and starts
    /// serving NFS and MOUNT on that one port to `allowed_clients` only.
    pub async fn start(
        listen: SocketAddr,
        shares: Vec<Share>,
        allowed_clients: AllowList,
    ) -> Result<Self, ShareError> {
        if shares.is_empty() {
            return Err(ShareError::NoShares);
        }
        let mut exports = Vec::with_capacity(shares.len());
        for (i, share) in shares.iter().enumerate() {
            if shares[..i].iter().any(|s| s.guest_path == share.guest_path) {
                return Err(ShareError::DuplicateGuestPath(share.guest_path.clone()));
            }
            let id = u32::try_from(i)
                .map_err(|_| ShareError::DuplicateGuestPath(share.guest_path.clone()))?;
            exports.push(Export::open(id, share)?);
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ShareError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ShareError::Bind {
            addr: listen,
            source,
        })?;
        let mut write_verf = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut write_verf);
        let service = Arc::new(ShareService {
            exports,
            key: HandleKey::random(),
            write_verf,
            port: local_addr.port(),
        });
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, service, allowed_clients, rx));
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// The address actually listened on (the port for `port=` and
    /// `mountport=`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection and waits for the server
    /// task to end. Handles issued by this server become invalid.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: Arc<ShareService>,
    allow: AllowList,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("share server accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !allow.allows(peer.ip()) {
                    warn!(%peer, "refused NFS connection from an address not on the allow list");
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS {
                    warn!(%peer, "refused NFS connection: {MAX_CONNECTIONS} already open");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_connection(stream, peer, service.clone()));
            }
        }
    }
    conns.shutdown().await;
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, service: Arc<ShareService>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut record = Vec::new();
        if let Err(e) = read_record(&mut rd, &mut record, MAX_RECORD).await {
            debug!(%peer, "closing NFS connection: {e}");
            break;
        }
        let service = service.clone();
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = XdrWriter::with_capacity(512);
            w.u32(0); // record mark, patched below
            if service.dispatch(&record, &mut w) {
                finish_record(&mut w.buf);
                let _ = tx.blocking_send(w.buf);
            }
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}
