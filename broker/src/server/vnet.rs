//! Server glue for the vnet rendezvous: who gets each view
//! ([`crate::vnet::Registry`] computes them), and the buyer's host stream.
//!
//! A buyer joins with `Request::VnetJoin` on a stream that stays open; a
//! lease node joins with `SellerMsg::VnetJoin` in its seller's session,
//! and only for a lease the broker started on that very session.

use super::{refuse, Shared};
use crate::vnet::{MemberId, Registry, Update};
use cpushare_proto::frame;
use cpushare_proto::identity::Peer;
use cpushare_proto::msg::{BrokerMsg, ErrorCode, Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::sync::mpsc::{self, UnboundedSender};

/// Where a member's views go.
#[derive(Clone)]
pub(super) enum Sink {
    /// The buyer's `net up` stream.
    Host(UnboundedSender<Response>),
    /// The seller session running the lease.
    Lease(UnboundedSender<BrokerMsg>),
}

impl Sink {
    fn same(&self, other: &Sink) -> bool {
        match (self, other) {
            (Sink::Host(a), Sink::Host(b)) => a.same_channel(b),
            (Sink::Lease(a), Sink::Lease(b)) => a.same_channel(b),
            _ => false,
        }
    }
}

/// The registry plus the sinks of its members.
#[derive(Default)]
pub(super) struct Hub {
    registry: Registry,
    sinks: HashMap<(String, MemberId), Sink>,
}

impl Hub {
    /// Registers a member and pushes the new views to its whole network.
    pub(super) fn join(
        &mut self,
        buyer: &str,
        id: MemberId,
        key: [u8; 32],
        endpoints: &[SocketAddr],
        observed: SocketAddr,
        sink: Sink,
    ) -> Result<(), crate::vnet::VnetError> {
        let updates = self
            .registry
            .join(buyer, id.clone(), key, endpoints, observed.ip())?;
        self.sinks.insert((buyer.to_string(), id), sink);
        self.push(buyer, updates);
        Ok(())
    }

    /// Removes a member if `sink` is still the one registered for it (a
    /// newer registration of the same member is left alone).
    pub(super) fn leave(&mut self, buyer: &str, id: MemberId, sink: &Sink) {
        let k = (buyer.to_string(), id);
        if self.sinks.get(&k).is_some_and(|s| s.same(sink)) {
            self.sinks.remove(&k);
            let updates = self.registry.leave(buyer, &k.1);
            self.push(buyer, updates);
        }
    }

    fn push(&self, buyer: &str, updates: Vec<Update>) {
        for (id, view) in updates {
            match (self.sinks.get(&(buyer.to_string(), id.clone())), id) {
                (Some(Sink::Host(tx)), _) => {
                    let _ = tx.send(Response::Vnet(view));
                }
                (Some(Sink::Lease(tx)), MemberId::Lease(lease)) => {
                    let _ = tx.send(BrokerMsg::Vnet { lease, view });
                }
                _ => {}
            }
        }
    }
}

/// `cpushare net up`: the buyer's host joins its network and follows it
/// until the stream or the connection closes.
pub(super) async fn host(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: &Peer,
    key: [u8; 32],
    endpoints: Vec<SocketAddr>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = Sink::Host(tx);
    let joined = shared.vnet_hub().join(
        &peer.name,
        MemberId::Host,
        key,
        &endpoints,
        conn.remote_address(),
        sink.clone(),
    );
    if let Err(e) = joined {
        frame::write(&mut send, &refuse(ErrorCode::BadRequest, e.to_string())).await?;
        send.finish()?;
        return Ok(());
    }
    tracing::info!(buyer = %peer.name, "vnet host joined");
    loop {
        tokio::select! {
            view = rx.recv() => {
                let Some(view) = view else { break };
                if frame::write(&mut send, &view).await.is_err() {
                    break;
                }
            }
            // The buyer sends nothing more; its end of input means it left.
            _ = frame::read::<Request, _>(&mut recv) => break,
            _ = conn.closed() => break,
        }
    }
    shared.vnet_hub().leave(&peer.name, MemberId::Host, &sink);
    tracing::info!(buyer = %peer.name, "vnet host left");
    Ok(())
}
