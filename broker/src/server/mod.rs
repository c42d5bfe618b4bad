//! The broker's network shell: two QUIC endpoints (control, with mutual
//! TLS; enrollment, without client certificates) and one task per stream.

mod blobs;
mod buyer;
mod enroll;
mod seller;
mod vnet;

use crate::datadir::{DataDir, Endpoints};
use crate::market::{Market, MarketConfig};
use crate::store::Store;
use anyhow::Context;
use blobs::Blobs;
use cpushare_proto::frame;
use cpushare_proto::identity::{self, Ca, Peer};
use cpushare_proto::msg::{ErrorCode, ErrorReply, Request, Response, Role};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How `cpushare-broker serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Control endpoint.
    pub listen: SocketAddr,
    /// Enrollment endpoint.
    pub enroll_listen: SocketAddr,
    /// Database URL (SQLite or PostgreSQL).
    pub db_url: String,
    /// Market tunables.
    pub market: MarketConfig,
}

/// State every connection task shares.
struct Shared {
    market: Mutex<Market>,
    store: Store,
    blobs: Blobs,
    ca: Ca,
    vnet: std::sync::Mutex<vnet::Hub>,
}

impl Shared {
    /// The vnet rendezvous (never held across an await).
    fn vnet_hub(&self) -> std::sync::MutexGuard<'_, vnet::Hub> {
        self.vnet.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running broker.
pub struct Broker {
    /// Where the control endpoint listens.
    pub endpoints: Endpoints,
    control: quinn::Endpoint,
    enroll: quinn::Endpoint,
    shared: Arc<Shared>,
}

/// Longest wait for a stream's first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

fn now() -> u64 {
    cpushare_proto::now_ms()
}

impl Broker {
    /// Opens the store and the market, binds both endpoints and publishes
    /// them in the data directory.
    pub async fn start(data: &DataDir, cfg: ServeConfig) -> anyhow::Result<Broker> {
        let store = Store::open(&cfg.db_url)
            .await
            .with_context(|| format!("while opening the database {}", redact(&cfg.db_url)))?;
        let market = Market::open(store.clone(), cfg.market.clone(), now())
            .await
            .context("while recovering the market from the database")?;
        let ca = data.ca().context("while loading the CA")?;
        let mut ips = vec![cfg.listen.ip(), "127.0.0.1".parse().expect("literal")];
        ips.dedup();
        let (cert, key) = ca.issue_server(&ips)?;
        let chain = vec![cert, ca.cert_der().clone()];
        let control = quinn::Endpoint::server(
            identity::server_config(ca.cert_der(), chain.clone(), key.clone_key())?,
            cfg.listen,
        )
        .with_context(|| format!("while binding the control endpoint {}", cfg.listen))?;
        let enroll = quinn::Endpoint::server(
            identity::enroll_server_config(chain, key)?,
            cfg.enroll_listen,
        )
        .with_context(|| {
            format!(
                "while binding the enrollment endpoint {}",
                cfg.enroll_listen
            )
        })?;
        let endpoints = Endpoints {
            broker: control.local_addr()?.to_string(),
            enroll: enroll.local_addr()?.to_string(),
        };
        data.publish(&endpoints)?;
        Ok(Broker {
            endpoints,
            control,
            enroll,
            shared: Arc::new(Shared {
                market: Mutex::new(market),
                store,
                blobs: Blobs::new(data.blobs()),
                ca,
                vnet: Default::default(),
            }),
        })
    }

    /// Serves until the process ends.
    pub async fn run(self) -> anyhow::Result<()> {
        let ticker = {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    if let Err(e) = shared.market.lock().await.tick(now()).await {
                        tracing::error!("market tick failed: {e}");
                    }
                }
            })
        };
        let enroll = {
            let shared = self.shared.clone();
            let ep = self.enroll.clone();
            tokio::spawn(async move {
                while let Some(incoming) = ep.accept().await {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = enroll::serve(shared, incoming).await {
                            tracing::info!("enrollment connection: {e:#}");
                        }
                    });
                }
            })
        };
        while let Some(incoming) = self.control.accept().await {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(shared, incoming).await {
                    tracing::debug!("connection: {e:#}");
                }
            });
        }
        ticker.abort();
        enroll.abort();
        Ok(())
    }
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_user, host)) if url.starts_with("postgres") => {
            let scheme = scheme_user.split("://").next().unwrap_or("postgres");
            format!("{scheme}://***@{host}")
        }
        _ => url.to_string(),
    }
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) -> anyhow::Result<()> {
    // The TLS handshake refuses any client without a certificate our CA
    // issued; what is left to check is that the account still exists and
    // the key is the one it enrolled.
    let conn = incoming.await.context("handshake")?;
    let peer = Peer::of_connection(&conn)?;
    let user = shared.store.user(&peer.name).await?;
    let valid = user.is_some_and(|u| {
        crate::market::wire_role(u.role) == Some(peer.role)
            && u.key_id.as_deref() == Some(&peer.key_id)
    });
    if !valid {
        conn.close(
            1u32.into(),
            b"unknown account or replaced key; enroll again",
        );
        anyhow::bail!(
            "refused {} ({}): not the enrolled key",
            peer.name,
            peer.key_id
        );
    }
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
        let shared = shared.clone();
        let peer = peer.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(shared, conn, peer, send, recv).await {
                tracing::debug!("stream: {e:#}");
            }
        });
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        code,
        message: message.into(),
    })
}

fn need(peer: &Peer, role: Role) -> Option<Response> {
    (peer.role != role).then(|| {
        refuse(
            ErrorCode::Forbidden,
            format!(
                "only a {role} may do that; you are enrolled as a {}",
                peer.role
            ),
        )
    })
}

async fn serve_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: Peer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let first =
        tokio::time::timeout(FIRST_FRAME_TIMEOUT, frame::read::<Request, _>(&mut recv)).await;
    let req = match first {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            frame::write(&mut send, &refuse(ErrorCode::BadRequest, e.to_string())).await?;
            send.finish()?;
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    let reply = match req {
        Request::Buy(req) => {
            if let Some(r) = need(&peer, Role::Buyer) {
                r
            } else {
                return buyer::buy(&shared, &conn, &peer, req, send, recv).await;
            }
        }
        Request::Sell(offer) => {
            if let Some(r) = need(&peer, Role::Seller) {
                r
            } else {
                return seller::session(&shared, &conn, &peer, offer, send, recv).await;
            }
        }
        Request::VnetJoin { key, endpoints } => {
            if let Some(r) = need(&peer, Role::Buyer) {
                r
            } else {
                return vnet::host(&shared, &conn, &peer, key, endpoints, send, recv).await;
            }
        }
        Request::Follow { order } => {
            if let Some(r) = need(&peer, Role::Buyer) {
                r
            } else {
                return buyer::follow(&shared, &conn, &peer, order, send, recv).await;
            }
        }
        Request::Fetch { id, offset } => {
            let allowed = peer.role == Role::Seller
                && shared
                    .market
                    .lock()
                    .await
                    .seller_needs_image(&peer.name, &id);
            if !allowed {
                refuse(
                    ErrorCode::Forbidden,
                    format!("no lease of yours needs image {id}"),
                )
            } else {
                if let Err(e) = shared.blobs.send(&id, offset, &mut send).await {
                    let _ = frame::write(&mut send, &Response::Error(e)).await;
                }
                send.finish()?;
                return Ok(());
            }
        }
        Request::Upload { id, len, offset } => match need(&peer, Role::Buyer) {
            Some(r) => r,
            None => shared
                .blobs
                .receive(id, len, offset, &mut recv)
                .await
                .unwrap_or_else(Response::Error),
        },
        Request::UploadStatus { id, .. } => Response::UploadState {
            have: shared.blobs.have(&id),
        },
        Request::Whoami => Response::Whoami {
            name: peer.name.clone(),
            role: peer.role,
            key_id: peer.key_id.clone(),
        },
        Request::Balance => {
            let m = shared.market.lock().await;
            m.balance(&peer.name)
                .await
                .unwrap_or_else(|e| Response::Error(e.reply()))
        }
        Request::Book => Response::Book(shared.market.lock().await.book_levels()),
        Request::Orders => {
            let m = shared.market.lock().await;
            m.orders_of(&peer.name)
                .await
                .map(Response::Orders)
                .unwrap_or_else(|e| Response::Error(e.reply()))
        }
        Request::Leases => {
            let m = shared.market.lock().await;
            m.leases_of(&peer.name)
                .await
                .map(Response::Leases)
                .unwrap_or_else(|e| Response::Error(e.reply()))
        }
        Request::Cancel { order } => {
            let mut m = shared.market.lock().await;
            m.cancel(&peer.name, &order, now())
                .await
                .map(|refunded| Response::Cancelled { order, refunded })
                .unwrap_or_else(|e| Response::Error(e.reply()))
        }
        Request::Enroll { .. } => refuse(
            ErrorCode::BadRequest,
            "you are already enrolled; enrollment happens on the enrollment endpoint",
        ),
        Request::Data(_) => refuse(ErrorCode::BadRequest, "data without an upload"),
    };
    frame::write(&mut send, &reply).await?;
    send.finish()?;
    Ok(())
}
