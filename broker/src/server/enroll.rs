//! The enrollment endpoint: a one-time token's secret and a CSR in, a
//! certificate out. Clients here have no certificate yet, so this endpoint
//! answers nothing but [`Request::Enroll`].

use super::{now, Shared};
use crate::store::StoreError;
use cpushare_proto::frame;
use cpushare_proto::identity::Peer;
use cpushare_proto::msg::{ErrorCode, ErrorReply, Request, Response};
use cpushare_proto::token::hash_secret;
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn serve(shared: Arc<Shared>, incoming: quinn::Incoming) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let (mut send, mut recv) =
        tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await??;
    let req = tokio::time::timeout(
        Duration::from_secs(10),
        frame::read::<Request, _>(&mut recv),
    )
    .await??;
    let reply = match req {
        Some(Request::Enroll { secret, csr_der }) => enroll(&shared, &secret, &csr_der)
            .await
            .unwrap_or_else(Response::Error),
        _ => Response::Error(ErrorReply {
            code: ErrorCode::BadRequest,
            message: "this endpoint only enrolls; connect to the control endpoint".into(),
        }),
    };
    frame::write(&mut send, &reply).await?;
    send.finish()?;
    // Let the reply reach the client before the connection goes away.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    Ok(())
}

async fn enroll(shared: &Shared, secret: &str, csr_der: &[u8]) -> Result<Response, ErrorReply> {
    let refuse = |code, message: String| ErrorReply { code, message };
    let internal = |e: StoreError| {
        tracing::error!("enrollment store error: {e}");
        refuse(
            ErrorCode::Internal,
            "the broker could not record the enrollment; try again".into(),
        )
    };
    if csr_der.len() > 16 << 10 {
        return Err(refuse(
            ErrorCode::BadRequest,
            "certificate request too large".into(),
        ));
    }
    let mut tx = shared.store.begin().await.map_err(internal)?;
    let name = match tx.redeem_token(&hash_secret(secret), now()).await {
        Ok(name) => name,
        Err(e) => {
            let _ = tx.rollback().await;
            return Err(match e {
                StoreError::TokenUnknown => refuse(ErrorCode::TokenUnknown, "this token was never issued by this broker; check you copied it whole".into()),
                StoreError::TokenUsed { .. } => refuse(ErrorCode::TokenUsed, "this token was already used; ask the broker operator for a new one (`cpushare-broker account add`)".into()),
                StoreError::TokenExpired { .. } => refuse(ErrorCode::TokenExpired, "this token has expired; ask the broker operator for a new one".into()),
                e => internal(e),
            });
        }
    };
    let user = shared
        .store
        .user(&name)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                format!("account {name} no longer exists"),
            )
        })?;
    let role = crate::market::wire_role(user.role).ok_or_else(|| {
        refuse(
            ErrorCode::Forbidden,
            format!("account {name} cannot enroll over the network"),
        )
    })?;
    let cert = shared
        .ca
        .sign_csr(csr_der, &name, role)
        .map_err(|e| refuse(ErrorCode::BadRequest, e.to_string()))?;
    let peer = Peer::from_cert(&cert).map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
    tx.set_user_key(&name, &peer.key_id)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    tracing::info!(%name, key = %peer.key_id, "enrolled");
    Ok(Response::Enrolled {
        name,
        role,
        cert_der: cert.to_vec(),
        ca_der: shared.ca.cert_der().to_vec(),
    })
}
