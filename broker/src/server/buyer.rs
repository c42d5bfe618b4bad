//! A buy order, and following it: the stream stays open and carries the
//! order's events (leases started, output, leases ended) until it closes.

use super::{now, refuse, Shared};
use cpushare_proto::frame;
use cpushare_proto::identity::Peer;
use cpushare_proto::msg::{BuyRequest, ErrorCode, Request, Response, CHUNK};
use tokio::sync::mpsc;

pub(super) async fn buy(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: &Peer,
    req: BuyRequest,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let Some(image_len) = shared.blobs.complete_len(&req.image) else {
        let r = refuse(
            ErrorCode::NotFound,
            format!(
                "the broker holds no image {}; upload it first (`cpushare run` does)",
                req.image
            ),
        );
        frame::write(&mut send, &r).await?;
        send.finish()?;
        return Ok(());
    };
    let missing = req.job.shares.iter().find_map(|s| {
        s.input
            .filter(|(id, len)| shared.blobs.complete_len(id) != Some(*len))
            .map(|(id, _)| (s.guest.clone(), id))
    });
    if let Some((guest, id)) = missing {
        let r = refuse(
            ErrorCode::NotFound,
            format!("the broker holds no bundle {id} for the share at {guest}; upload it first (`cpushare run` does)"),
        );
        frame::write(&mut send, &r).await?;
        send.finish()?;
        return Ok(());
    }
    let follow = req.follow;
    let (tx, rx) = mpsc::unbounded_channel();
    let placed = shared
        .market
        .lock()
        .await
        .place_buy(&peer.name, req, image_len, follow.then_some(tx), now())
        .await;
    let (key, held) = match placed {
        Ok((_, key, held)) => (key, held),
        Err(e) => {
            frame::write(&mut send, &Response::Error(e.reply())).await?;
            send.finish()?;
            return Ok(());
        }
    };
    frame::write(
        &mut send,
        &Response::OrderPlaced {
            order: key.clone(),
            held,
        },
    )
    .await?;
    if !follow {
        send.finish()?;
        return Ok(());
    }
    stream_events(shared, conn, peer, &key, rx, send, recv).await
}

/// Follows an order placed earlier (`Request::Follow`): the buyer lost its
/// connection, or the broker restarted, while the order was open.
pub(super) async fn follow(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: &Peer,
    key: String,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let held = shared.market.lock().await.follow(&peer.name, &key, tx);
    let Some(held) = held else {
        let r = refuse(
            ErrorCode::NotFound,
            format!("order {key} is not open; see `cpushare orders` and `cpushare leases`"),
        );
        frame::write(&mut send, &r).await?;
        send.finish()?;
        return Ok(());
    };
    frame::write(
        &mut send,
        &Response::OrderPlaced {
            order: key.clone(),
            held,
        },
    )
    .await?;
    stream_events(shared, conn, peer, &key, rx, send, recv).await
}

/// Streams a followed order's events until it closes; a follower that
/// goes away cancels the order.
async fn stream_events(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: &Peer,
    key: &str,
    mut rx: mpsc::UnboundedReceiver<Response>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    // The buyer may keep its half open to type into its leases' consoles.
    let mut input_open = true;
    loop {
        tokio::select! {
            input = frame::read::<Request, _>(&mut recv), if input_open => {
                match input {
                    Ok(Some(Request::Data(data))) if data.len() <= CHUNK => {
                        shared.market.lock().await.lease_input(&peer.name, key, &data);
                    }
                    // End of input (or junk): stop listening, keep following.
                    _ => input_open = false,
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let last = matches!(msg, Response::OrderClosed { .. });
                if frame::write(&mut send, &msg).await.is_err() {
                    break;
                }
                if last {
                    send.finish()?;
                    return Ok(());
                }
            }
            _ = conn.closed() => break,
        }
    }
    // The buyer went away while following: stop what it started.
    let mut m = shared.market.lock().await;
    if let Err(e) = m.follower_gone(&peer.name, key, now()).await {
        tracing::error!(order = %key, "cancelling an abandoned order failed: {e}");
    }
    Ok(())
}
