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
    let mut bytes = Vec::with_capacity(len as usize);
    download(conn, id, len, |d| {
        bytes.extend_from_slice(d);
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?;
    let got = ContentId::of(&bytes);
    if got != id {
        return Err(format!("image from the broker hashes to {got}, not {id}"));
    }
    if let Err(e) = cache.put(&id, &bytes) {
        tracing::warn!("could not cache image {id}: {e}");
    }
    Ok(bytes)
}

/// Makes sure image `id` (`len` bytes) is in the cache, verified, without
/// holding it in memory: a VM's ISO may be gigabytes. A cached file is
/// hashed once per daemon run (and again if it changes); a missing one is
/// downloaded straight into the cache's directory and hashed there.
pub async fn image_file(
    conn: &quinn::Connection,
    cache: &ImageCache,
    id: ContentId,
    len: u64,
) -> Result<(), String> {
    match cache.verify(&id) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => tracing::warn!("image cache: {e}"),
    }
    if len > MAX_IMAGE {
        return Err(format!("image is {len} bytes, over the {MAX_IMAGE} limit"));
    }
    let tmp = cache.download_path(&id);
    let written = async {
        let mut file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        download(conn, id, len, |d| std::io::Write::write_all(&mut file, d))
            .await
            .map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    cache.put_file(&id, &tmp).map_err(|e| match e {
        crate::cache::CacheError::HashMismatch { got, .. } => {
            format!("image from the broker hashes to {got}, not {id}")
        }
        other => other.to_string(),
    })
}

/// Streams image `id` from the broker into `sink`, checking it is exactly
/// `len` bytes.
async fn download(
    conn: &quinn::Connection,
    id: ContentId,
    len: u64,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), ClientError> {
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
    let mut got = 0u64;
    while let Some(msg) = frame::read::<Response, _>(&mut recv).await? {
        match msg {
            Response::Data(d) if got + d.len() as u64 <= len => {
                sink(&d).map_err(|e| ClientError::Lost(format!("storing {id}: {e}")))?;
                got += d.len() as u64;
            }
            Response::Data(_) => {
                return Err(ClientError::Unexpected(
                    "broker sent more than announced".into(),
                ))
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
    if got != len {
        return Err(ClientError::Lost(format!(
            "download of {id} stopped at {got} of {len} bytes"
        )));
    }
    Ok(())
}
