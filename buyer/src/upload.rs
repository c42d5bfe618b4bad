//! Uploading an image to the broker by content id: skipped when the broker
//! already has it, resumed from where a broken upload stopped, with a
//! progress bar on anything big enough to take a while.

use anyhow::{bail, Context};
use cpushare_proto::client::Client;
use cpushare_proto::frame;
use cpushare_proto::id::ContentId;
use cpushare_proto::msg::{Request, Response, CHUNK, MAX_IMAGE};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Content id and size of the file at `path`, hashed in a streaming pass.
pub fn identify(path: &Path) -> anyhow::Result<(ContentId, u64)> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    ContentId::of_reader(f).with_context(|| format!("cannot read {}", path.display()))
}

/// Makes sure the broker holds `path` (content id `id`, `len` bytes).
pub async fn ensure(
    client: &Client,
    path: &Path,
    id: ContentId,
    len: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    if len > MAX_IMAGE {
        bail!(
            "{} is {len} bytes; images may be at most {MAX_IMAGE}",
            path.display()
        );
    }
    let have = match client.call(&Request::UploadStatus { id, len }).await? {
        Response::UploadState { have } => have,
        other => bail!("unexpected reply to an upload status: {other:?}"),
    };
    if have == len {
        return Ok(());
    }
    let bar = (!quiet && len > 4 << 20).then(|| {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(id.to_string());
        bar.set_position(have);
        bar
    });
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(have))?;
    let (mut send, mut recv) = client.open().await?;
    frame::write(
        &mut send,
        &Request::Upload {
            id,
            len,
            offset: have,
        },
    )
    .await?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = have;
    while sent < len {
        let n = file.read(&mut buf)?;
        if n == 0 {
            bail!("{} shrank while uploading it", path.display());
        }
        frame::write(&mut send, &Request::Data(buf[..n].to_vec())).await?;
        sent += n as u64;
        if let Some(b) = &bar {
            b.set_position(sent);
        }
    }
    send.finish()?;
    let reply = frame::read::<Response, _>(&mut recv).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match reply {
        Some(Response::Stored { .. }) => Ok(()),
        Some(Response::Error(e)) => bail!("upload refused: {e}"),
        other => bail!("upload did not complete ({other:?}); run the command again to resume"),
    }
}
