//! The seller session: after `Request::Sell` the stream carries
//! heartbeats, lease progress and output from the seller, and lease
//! starts and stops from the broker, until either side goes away.

use super::{now, Shared};
use cpushare_proto::frame;
use cpushare_proto::identity::Peer;
use cpushare_proto::msg::{BrokerMsg, SellOffer, SellerMsg};
use std::time::Duration;
use tokio::sync::mpsc;

pub(super) async fn session(
    shared: &Shared,
    peer: &Peer,
    offer: SellOffer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<BrokerMsg>();
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
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
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
            SellerMsg::Ended { lease, end } => m.seller_ended(&peer.name, &lease, end, t).await,
        };
        if let Err(e) = result {
            tracing::error!(seller = %peer.name, "market error in seller session: {e}");
        }
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
