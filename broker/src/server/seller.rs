//! The seller session: after `Request::Sell` the stream carries
//! heartbeats, lease progress and output from the seller, and lease
//! starts and stops from the broker, until either side goes away.

use super::vnet::Sink;
use super::{now, Shared};
use crate::vnet::MemberId;
use cpushare_proto::frame;
use cpushare_proto::identity::Peer;
use cpushare_proto::msg::{BrokerMsg, SellOffer, SellerMsg, CHUNK};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

pub(super) async fn session(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: &Peer,
    offer: SellOffer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<BrokerMsg>();
    let vnet_sink = Sink::Lease(tx.clone());
    // Leases the broker started on this session, by id, with their buyer:
    // the only ones whose vnet this seller may join.
    let assigned = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let opened = shared
        .market
        .lock()
        .await
        .open_session(&peer.name, offer, tx, now())
        .await;
    let session = match opened {
        Ok(s) => s,
        Err(e) => {
            frame::write(&mut send, &BrokerMsg::Error(e.reply())).await?;
            send.finish()?;
            return Ok(());
        }
    };
    tracing::info!(seller = %peer.name, order = %session.key, "seller session open");
    let writer_assigned = assigned.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let BrokerMsg::Start(spec) = &msg {
                lock(&writer_assigned).insert(spec.lease.clone(), spec.buyer.clone());
            }
            if frame::write(&mut send, &msg).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    let cfg = shared.market.lock().await.config().clone();
    let silence = Duration::from_secs(u64::from(cfg.heartbeat_secs * cfg.missed_heartbeats));
    loop {
        let msg = match tokio::time::timeout(silence, frame::read::<SellerMsg, _>(&mut recv)).await
        {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::warn!(seller = %peer.name, "bad frame from seller: {e}");
                break;
            }
            Err(_) => {
                tracing::warn!(seller = %peer.name, "seller silent for {silence:?}");
                break;
            }
        };
        let mut m = shared.market.lock().await;
        let t = now();
        m.heartbeat(&session, t);
        let result = match msg {
            SellerMsg::Heartbeat { .. } => Ok(()),
            SellerMsg::Started { lease } => m.lease_started(&peer.name, &lease, t).await,
            SellerMsg::Output {
                lease,
                stream,
                data,
            } => {
                m.lease_output(&peer.name, &lease, stream, data);
                Ok(())
            }
            SellerMsg::Outputs { lease, data } if data.len() <= CHUNK => {
                m.lease_outputs(&peer.name, &lease, data);
                Ok(())
            }
            SellerMsg::Outputs { lease, .. } => {
                tracing::warn!(seller = %peer.name, %lease, "oversized output chunk dropped");
                Ok(())
            }
            SellerMsg::Ended { lease, end } => {
                if let Some(buyer) = lock(&assigned).remove(&lease) {
                    shared
                        .vnet_hub()
                        .leave(&buyer, MemberId::Lease(lease.clone()), &vnet_sink);
                }
                m.seller_ended(&peer.name, &lease, end, t).await
            }
            SellerMsg::VnetJoin {
                lease,
                key,
                endpoints,
            } => {
                // Only a lease this session runs, and the market still holds.
                let buyer = lock(&assigned)
                    .get(&lease)
                    .filter(|_| m.lease_order(&lease).is_some())
                    .cloned();
                match buyer {
                    Some(buyer) => {
                        let joined = shared.vnet_hub().join(
                            &buyer,
                            MemberId::Lease(lease.clone()),
                            key,
                            &endpoints,
                            conn.remote_address(),
                            vnet_sink.clone(),
                        );
                        if let Err(e) = joined {
                            tracing::warn!(seller = %peer.name, %lease, "vnet join refused: {e}");
                        }
                    }
                    None => {
                        tracing::warn!(seller = %peer.name, %lease, "vnet join for a lease not running here")
                    }
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(seller = %peer.name, "market error in seller session: {e}");
        }
        // A lease the market ended without this seller saying so (an
        // overrun, a stop, a lost session it replaced) leaves its buyer's
        // network now, at the latest on the next heartbeat: its node must
        // not keep the buyer's keys, nor a place on the share allow list.
        let ended: Vec<(String, String)> = {
            let mut assigned = lock(&assigned);
            let ended: Vec<(String, String)> = assigned
                .iter()
                .filter(|(lease, _)| m.lease_order(lease).is_none())
                .map(|(l, b)| (l.clone(), b.clone()))
                .collect();
            for (lease, _) in &ended {
                assigned.remove(lease);
            }
            ended
        };
        for (lease, buyer) in ended {
            shared
                .vnet_hub()
                .leave(&buyer, MemberId::Lease(lease), &vnet_sink);
        }
    }
    let left: Vec<(String, String)> = lock(&assigned).drain().collect();
    for (lease, buyer) in left {
        shared
            .vnet_hub()
            .leave(&buyer, MemberId::Lease(lease), &vnet_sink);
    }
    shared
        .market
        .lock()
        .await
        .close_session(&session, now())
        .await?;
    writer.abort();
    tracing::info!(seller = %peer.name, "seller session closed");
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
