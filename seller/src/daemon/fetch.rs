//! Images for leases: from the seller's content-addressed cache, or from
//! the broker by content id (verified before it is used or cached).

use crate::cache::ImageCache;
use cpushare_proto::client::ClientError;
use cpushare_proto::frame;
use cpushare_proto::id::ContentId;
use cpushare_proto::msg::{Request, Response, MAX_IMAGE};

/// Returns the bytes of image `id` (`len` bytes), fetching and caching it
/// if needed.
pub async fn image(
    conn: &quinn::Connection,
    cache: &ImageCache,
    id: ContentId,
    len: u64,
) -> Result<Vec<u8>, String> {
    match cache.get(&id) {
        Ok(Some(bytes)) => return Ok(bytes),
        Ok(None) => {}
        Err(e) => tracing::warn!("image cache: {e}"),
    }
    if len > MAX_IMAGE {
        return Err(format!("image is {len} bytes, over the {MAX_IMAGE} limit"));
    }
    let bytes = download(conn, id, len).await.map_err(|e| e.to_string())?;
    let got = ContentId::of(&bytes);
    if got != id {
        return Err(format!("image from the broker hashes to {got}, not {id}"));
    }
    if let Err(e) = cache.put(&id, &bytes) {
        tracing::warn!("could not cache image {id}: {e}");
    }
    Ok(bytes)
}

async fn download(
    conn: &quinn::Connection,
    id: ContentId,
    len: u64,
) -> Result<Vec<u8>, ClientError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Lost(e.to_string()))?;
    frame::write(&mut send, &Request::Fetch { id, offset: 0 }).await?;
    send.finish()
        .map_err(|e| ClientError::Lost(e.to_string()))?;
    let total = match frame::read::<Response, _>(&mut recv).await? {
        Some(Response::Blob { len }) => len,
        Some(Response::Error(e)) => return Err(ClientError::Refused(e)),
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    if total != len {
        return Err(ClientError::Unexpected(format!(
            "broker offers {total} bytes of {id}, the lease says {len}"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    while let Some(msg) = frame::read::<Response, _>(&mut recv).await? {
        match msg {
            Response::Data(d) if bytes.len() as u64 + d.len() as u64 <= len => {
                bytes.extend_from_slice(&d)
            }
            Response::Data(_) => {
                return Err(ClientError::Unexpected(
                    "broker sent more than announced".into(),
                ))
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
    if bytes.len() as u64 != len {
        return Err(ClientError::Lost(format!(
            "download of {id} stopped at {} of {len} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}
