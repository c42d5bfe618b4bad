//! The shell around [`ShareService`]: a tokio task accepts TCP connections
//! from allowed addresses; each connection then runs on its own OS thread
//! with blocking I/O (read a bounded record, run it, write the reply), the
//! model of knfsd and ganesha, with no task or thread hand-off per call.
//! Calls that wait on the disk (COMMIT, stable WRITE) go to a second
//! thread of the connection so they do not hold up the calls behind them.
//! NFS, MOUNT and GETPORT share one port.

use std::io::{BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::allow::AllowList;
use super::fs::ExportError;
use super::rpc::{self, finish_record, read_record, MAX_RECORD};
use super::service::{ShareService, NFS_PROGRAM};
use super::spec::Share;
use super::xdr::{XdrReader, XdrWriter};

/// Most client connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// Most disk-waiting requests of one connection queued at once. With
/// [`MAX_RECORD`] this bounds a connection's buffers to about 8 MiB.
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
    allow: Arc<Mutex<AllowList>>,
    registry: Registry,
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
        let allow = Arc::new(Mutex::new(allowed_clients));
        let registry = Registry::default();
        let task = tokio::spawn(accept_loop(
            listener,
            service,
            allow.clone(),
            registry.clone(),
            rx,
        ));
        Ok(Self {
            local_addr,
            allow,
            registry,
            shutdown,
            task,
        })
    }

    /// The address actually listened on (the port for `port=` and
    /// `mountport=`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the allow list (the buyer's leases come and go): new
    /// connections are checked against it, and open connections from a
    /// client no longer on it are closed at once, so a lease that ended
    /// keeps no handle on the buyer's files.
    pub fn set_allowed(&self, allowed_clients: AllowList) {
        // Lock order: the allow list, then the registry (as on accept), so
        // no connection is registered under the old list after the sweep.
        let mut allow = self.allow.lock().unwrap_or_else(|p| p.into_inner());
        *allow = allowed_clients;
        for (_, peer, s) in &lock(&self.registry).open {
            if !allow.allows(*peer) {
                debug!(%peer, "closing NFS connection: client no longer allowed");
                let _ = s.shutdown(Shutdown::Both);
            }
        }
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

/// Live connections (id, client address, a handle on the socket), so
/// that stopping the server or shrinking its allow list can close them.
#[derive(Debug, Default)]
struct Connections {
    next: u64,
    open: Vec<(u64, IpAddr, TcpStream)>,
}

type Registry = Arc<Mutex<Connections>>;

fn lock(reg: &Registry) -> std::sync::MutexGuard<'_, Connections> {
    reg.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    service: Arc<ShareService>,
    allow: Arc<Mutex<AllowList>>,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("share server accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = start_connection(stream, peer, &service, &allow, &registry) {
                    warn!(%peer, "refused NFS connection: {e}");
                }
            }
        }
    }
    for (_, _, s) in lock(&registry).open.drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Serves `stream` on its own thread if `peer` is on the allow list, and
/// registers it. The allow list stays locked until the connection is
/// registered, so a concurrent [`ShareServer::set_allowed`] either sees
/// it and closes it, or comes first and refuses it here.
fn start_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: &Arc<ShareService>,
    allow: &Mutex<AllowList>,
    registry: &Registry,
) -> std::io::Result<()> {
    let allow = allow.lock().unwrap_or_else(|p| p.into_inner());
    if !allow.allows(peer.ip()) {
        return Err(std::io::Error::other(
            "the address is not on the allow list",
        ));
    }
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    let _ = stream.set_nodelay(true);
    let id = {
        let mut reg = lock(registry);
        if reg.open.len() >= MAX_CONNECTIONS {
            return Err(std::io::Error::other(format!(
                "{MAX_CONNECTIONS} connections already open"
            )));
        }
        reg.next += 1;
        let id = reg.next;
        reg.open.push((id, peer.ip(), stream.try_clone()?));
        id
    };
    drop(allow);
    let (svc, reg) = (service.clone(), registry.clone());
    let spawned = std::thread::Builder::new()
        .name("nfs-conn".into())
        .spawn(move || {
            serve_connection(stream, peer, &svc);
            lock(&reg).open.retain(|(i, _, _)| *i != id);
        });
    if let Err(e) = spawned {
        lock(registry).open.retain(|(i, _, _)| *i != id);
        return Err(e);
    }
    Ok(())
}

/// Buffers of up to [`MAX_RECORD`] bytes reused across the requests and
/// replies of one connection, so steady traffic allocates nothing.
#[derive(Clone, Default)]
struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

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

/// Whether a request should leave the connection's thread: COMMIT and
/// stable WRITEs wait on the disk and must not hold up the requests
/// behind them. Everything else runs inline: measured against running
/// large READs and WRITEs in parallel, inline was as fast for READ and
/// faster for sequential WRITE (parallel writers to one file contend on
/// its inode lock and cost thread wake-ups).
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

/// Runs one record and writes its reply (if any) under the writer lock.
fn answer(
    service: &ShareService,
    record: &[u8],
    pool: &BufPool,
    out: &Mutex<TcpStream>,
) -> std::io::Result<()> {
    let mut w = XdrWriter { buf: pool.take() };
    w.u32(0); // record mark, patched below
    let res = if service.dispatch(record, &mut w) {
        finish_record(&mut w.buf);
        out.lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&w.buf)
    } else {
        Ok(())
    };
    pool.give(w.buf);
    res
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, service: &Arc<ShareService>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut rd = BufReader::with_capacity(64 * 1024, read_half);
    let out = Arc::new(Mutex::new(stream));
    let pool = BufPool::default();
    let (slow_tx, slow_rx) = sync_channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let slow = {
        let (service, pool, out) = (service.clone(), pool.clone(), out.clone());
        std::thread::Builder::new()
            .name("nfs-slow".into())
            .spawn(move || slow_calls(slow_rx, &service, &pool, &out))
    };
    let Ok(slow) = slow else { return };
    loop {
        let mut record = pool.take();
        if let Err(e) = read_record(&mut rd, &mut record, MAX_RECORD) {
            debug!(%peer, "closing NFS connection: {e}");
            break;
        }
        if offload(&record) {
            if slow_tx.send(record).is_err() {
                break;
            }
            continue;
        }
        let res = answer(service, &record, &pool, &out);
        pool.give(record);
        if res.is_err() {
            break;
        }
    }
    drop(slow_tx);
    let _ = slow.join();
    let _ = out
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .shutdown(Shutdown::Both);
}

fn slow_calls(
    rx: Receiver<Vec<u8>>,
    service: &ShareService,
    pool: &BufPool,
    out: &Mutex<TcpStream>,
) {
    while let Ok(record) = rx.recv() {
        let res = answer(service, &record, pool, out);
        pool.give(record);
        if res.is_err() {
            let _ = out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .shutdown(Shutdown::Both);
            return;
        }
    }
}
