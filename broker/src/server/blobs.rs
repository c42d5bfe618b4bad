//! Images by content id: resumable uploads from buyers, downloads by sellers.
//!
//! An upload appends to `blobs/partial/HEX` and is only moved to
//! `blobs/HEX` once its SHA-256 matches the id, so a stored image is always
//! whole and correct. Uploads of one id take turns: two buyers sending the
//! same image at once would otherwise append to the same partial file.

use cpushare_proto::frame;
use cpushare_proto::id::ContentId;
use cpushare_proto::msg::{ErrorCode, ErrorReply, Request, Response, CHUNK, MAX_IMAGE};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long an upload may go without sending its next chunk.
const CHUNK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Per-id turn-taking for uploads.
type UploadTurns = Arc<Mutex<HashMap<ContentId, Arc<tokio::sync::Mutex<()>>>>>;

/// The image store.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    uploading: UploadTurns,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

impl Blobs {
    /// The store under `dir` (which holds `partial/`).
    pub fn new(dir: PathBuf) -> Blobs {
        Blobs {
            dir,
            uploading: UploadTurns::default(),
        }
    }

    fn path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(id.hex())
    }

    fn partial(&self, id: &ContentId) -> PathBuf {
        self.dir.join("partial").join(id.hex())
    }

    /// Size of the complete image, if stored.
    pub fn complete_len(&self, id: &ContentId) -> Option<u64> {
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// Bytes held of `id`: all of it, or what a broken upload left.
    pub fn have(&self, id: &ContentId) -> u64 {
        self.complete_len(id)
            .or_else(|| std::fs::metadata(self.partial(id)).ok().map(|m| m.len()))
            .unwrap_or(0)
    }

    /// Receives an upload of `id` (`len` bytes in all) from `offset`, as
    /// `Request::Data` frames on `recv`.
    pub async fn receive(
        &self,
        id: ContentId,
        len: u64,
        offset: u64,
        recv: &mut quinn::RecvStream,
    ) -> Result<Response, ErrorReply> {
        if len > MAX_IMAGE {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("image is {len} bytes; the broker stores at most {MAX_IMAGE}"),
            ));
        }
        // Wait for an upload of the same id already under way; it may
        // have stored the image meanwhile.
        let turn = {
            let mut turns = self.uploading.lock().unwrap_or_else(|p| p.into_inner());
            turns.entry(id).or_default().clone()
        };
        let held = turn.lock_owned().await;
        let result = self.receive_turn(id, len, offset, recv).await;
        drop(held);
        self.uploading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, t| Arc::strong_count(t) > 1);
        result
    }

    async fn receive_turn(
        &self,
        id: ContentId,
        len: u64,
        offset: u64,
        recv: &mut quinn::RecvStream,
    ) -> Result<Response, ErrorReply> {
        if self.complete_len(&id).is_some() {
            return Ok(Response::Stored { id });
        }
        let partial = self.partial(&id);
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if offset != have || offset > len {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("upload must resume at byte {have}, not {offset}"),
            ));
        }
        let io = |e: std::io::Error| refuse(ErrorCode::Internal, format!("broker disk: {e}"));
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .await
            .map_err(io)?;
        let mut got = offset;
        while got < len {
            // An uploader holds the id's turn: one that stalls must not
            // keep every other buyer of the same image waiting.
            let next = tokio::time::timeout(CHUNK_WAIT, frame::read::<Request, _>(recv)).await;
            let chunk = match next {
                Ok(Ok(Some(Request::Data(d)))) => d,
                Ok(Ok(Some(_))) => {
                    return Err(refuse(ErrorCode::BadRequest, "expected image data"))
                }
                Ok(Ok(None)) => break,
                Err(_) => {
                    file.flush().await.map_err(io)?;
                    return Err(refuse(
                        ErrorCode::BadRequest,
                        format!("upload stalled for {CHUNK_WAIT:?}; resume it"),
                    ));
                }
                Ok(Err(e)) => {
                    // Keep what arrived: the buyer resumes from here.
                    file.flush().await.map_err(io)?;
                    return Err(refuse(
                        ErrorCode::BadRequest,
                        format!("upload interrupted: {e}"),
                    ));
                }
            };
            if chunk.len() > CHUNK || got + chunk.len() as u64 > len {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(refuse(
                    ErrorCode::BadRequest,
                    "upload sent more bytes than it announced",
                ));
            }
            file.write_all(&chunk).await.map_err(io)?;
            got += chunk.len() as u64;
        }
        file.flush().await.map_err(io)?;
        drop(file);
        if got < len {
            return Ok(Response::UploadState { have: got });
        }
        let actual = hash_file(&partial).await.map_err(io)?;
        if actual != id {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(refuse(
                ErrorCode::HashMismatch,
                format!("uploaded bytes hash to {actual}, not {id}; upload again"),
            ));
        }
        tokio::fs::rename(&partial, self.path(&id))
            .await
            .map_err(io)?;
        Ok(Response::Stored { id })
    }

    /// Sends image `id` from `offset` as a `Blob` header and `Data` frames.
    pub async fn send(
        &self,
        id: &ContentId,
        offset: u64,
        send: &mut quinn::SendStream,
    ) -> Result<(), ErrorReply> {
        let len = self.complete_len(id).ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                format!("the broker holds no image {id}"),
            )
        })?;
        let io = |e: std::io::Error| refuse(ErrorCode::Internal, format!("broker disk: {e}"));
        let wire = |e: frame::FrameError| refuse(ErrorCode::Internal, e.to_string());
        frame::write(send, &Response::Blob { len })
            .await
            .map_err(wire)?;
        let mut file = tokio::fs::File::open(self.path(id)).await.map_err(io)?;
        if offset > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(offset.min(len)))
                .await
                .map_err(io)?;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            frame::write(send, &Response::Data(buf[..n].to_vec()))
                .await
                .map_err(wire)?;
        }
        Ok(())
    }
}

async fn hash_file(path: &std::path::Path) -> std::io::Result<ContentId> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || ContentId::of_reader(std::fs::File::open(path)?))
        .await
        .map_err(std::io::Error::other)?
        .map(|(id, _)| id)
}
