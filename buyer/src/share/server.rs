//! The tokio shell: accepts TCP connections from allowed addresses, reads
//! bounded RPC records, runs each on the blocking pool, writes replies.
//! NFS, MOUNT and GETPORT share one port.

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::allow::AllowList;
use super::fs::ExportError;
use super::rpc::{self, finish_record, read_record, MAX_RECORD};
use super::service::{ShareService, NFS_PROGRAM};
use super::spec::Share;
use super::xdr::{XdrReader, XdrWriter};

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
    /// More shares than export ids.
    #[error("{0} shares is more than the server can export")]
    TooManyShares(usize),
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
        let service = Arc::new(ShareService::new(&shares, local_addr.port())?);
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
    /// (Dropping the server also stops it, without waiting.)
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for ShareServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
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

/// Buffers of up to [`MAX_RECORD`] bytes reused across the requests and
/// replies of one connection, so steady traffic allocates nothing.
#[derive(Clone, Default)]
struct BufPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 2 * MAX_IN_FLIGHT + 2 {
            pool.push(buf);
        }
    }
}

/// Whether a request should leave the connection's task: COMMIT and
/// stable WRITEs wait on the disk and must not hold up the requests
/// behind them. Everything else runs inline: measured against running
/// large READs and WRITEs on the blocking pool in parallel, inline was
/// as fast for READ and about 1.5x faster for sequential WRITE (parallel
/// writers to one file contend on its inode lock and cost thread wake-ups).
fn offload(record: &[u8]) -> bool {
    let mut r = XdrReader::new(record);
    let Ok(call) = rpc::parse_call(&mut r) else {
        return false;
    };
    if call.prog != NFS_PROGRAM || call.vers != 3 {
        return false;
    }
    match call.proc_ {
        21 => true,
        7 => (|| {
            Some((
                r.opaque(64).ok()?,
                r.u64().ok()?,
                r.u32().ok()?,
                r.u32().ok()?,
            ))
        })()
        .is_some_and(|(_, _, _, stable)| stable != 0),
        _ => false,
    }
}

fn process(service: &ShareService, record: &[u8], pool: &BufPool) -> Option<Vec<u8>> {
    let mut w = XdrWriter { buf: pool.take() };
    w.u32(0); // record mark, patched below
    if service.dispatch(record, &mut w) {
        finish_record(&mut w.buf);
        Some(w.buf)
    } else {
        pool.give(w.buf);
        None
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, service: Arc<ShareService>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let pool = BufPool::default();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let writer_pool = pool.clone();
    let writer = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            let res = wr.write_all(&buf).await;
            writer_pool.give(buf);
            if res.is_err() {
                break;
            }
        }
    });
    // Most requests are short: run them right here (block_in_place keeps
    // the runtime's other tasks moving) and skip two thread hand-offs per
    // call. A current-thread runtime cannot do that, so there everything
    // goes to the blocking pool.
    let multi_thread =
        tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread;
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut record = pool.take();
        if let Err(e) = read_record(&mut rd, &mut record, MAX_RECORD).await {
            debug!(%peer, "closing NFS connection: {e}");
            break;
        }
        if multi_thread && !offload(&record) {
            let reply = tokio::task::block_in_place(|| process(&service, &record, &pool));
            pool.give(record);
            drop(permit);
            if let Some(reply) = reply {
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
            continue;
        }
        let service = service.clone();
        let tx = tx.clone();
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(reply) = process(&service, &record, &pool) {
                let _ = tx.blocking_send(reply);
            }
            pool.give(record);
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}
