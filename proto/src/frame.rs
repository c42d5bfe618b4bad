//! Length-prefixed, versioned frames.
//!
//! On the wire a frame is `[version: u8][len: u32 big-endian][payload]`
//! where the payload is one postcard-encoded message. The length is
//! checked against [`MAX_FRAME`] before a single payload byte is read, so
//! a hostile peer cannot make us allocate more than that.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks. Messages are postcard, which
/// is not self-describing: any change to a message's shape (a new variant
/// or field) bumps this, so an older peer is refused with a clear error
/// instead of misreading the bytes. 2: renewals, vnet, follow, refusals.
pub const VERSION: u8 = 2;

/// Largest payload accepted in one frame (4 MiB): a module chunk is 1 MiB,
/// and every other message is far smaller.
pub const MAX_FRAME: usize = 4 << 20;

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 5;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// the peer speaks protocol version {got}, this build speaks {want}; upgrade the older side
    #[error(
        "the peer speaks protocol version {got}, this build speaks {want}; upgrade the older side"
    )]
    UnknownVersion {
        /// Version byte received.
        got: u8,
        /// Version this build speaks.
        want: u8,
    },
    /// frame of {len} bytes exceeds the limit of {max} bytes
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// frame truncated: header announced {want} bytes, only {got} arrived
    #[error("frame truncated: header announced {want} bytes, only {got} arrived")]
    Truncated {
        /// Bytes announced (header included).
        want: usize,
        /// Bytes present.
        got: usize,
    },
    /// frame payload is not a valid message: {0}
    #[error("frame payload is not a valid message: {0}")]
    Malformed(#[from] postcard::Error),
    /// connection error while moving a frame: {0}
    #[error("connection error while moving a frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(msg, vec![VERSION, 0, 0, 0, 0])?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    out[1..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Checks a frame header and returns the payload length it announces.
pub fn check_header(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    if header[0] != VERSION {
        return Err(FrameError::UnknownVersion {
            got: header[0],
            want: VERSION,
        });
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(len)
}

/// Decodes one frame from the front of `buf`; returns the message and the
/// bytes consumed. This is the entry point the fuzz target drives.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<(T, usize), FrameError> {
    let header: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated {
            want: HEADER_LEN,
            got: buf.len(),
        })?;
    let len = check_header(header)?;
    let end = HEADER_LEN + len;
    let payload = buf.get(HEADER_LEN..end).ok_or(FrameError::Truncated {
        want: end,
        got: buf.len(),
    })?;
    Ok((postcard::from_bytes(payload)?, end))
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a header.
pub async fn read<T, R>(r: &mut R) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                want: HEADER_LEN,
                got,
            });
        }
        got += n;
    }
    let len = check_header(&header)?;
    let mut payload = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = r.read(&mut payload[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                want: HEADER_LEN + len,
                got: HEADER_LEN + got,
            });
        }
        got += n;
    }
    Ok(Some(postcard::from_bytes(&payload)?))
}

/// Writes one frame.
pub async fn write<T, W>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Writes one frame to a blocking writer (the seller's pipes to its
/// sandbox children).
pub fn write_blocking<T: Serialize, W: std::io::Write>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Reads one frame from a blocking reader; `Ok(None)` on a clean end of
/// stream before a header.
pub fn read_blocking<T: DeserializeOwned, R: std::io::Read>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    let got = read_full(r, &mut buf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            want: HEADER_LEN,
            got,
        });
    }
    let header: [u8; HEADER_LEN] = buf[..].try_into().expect("HEADER_LEN bytes");
    let len = check_header(&header)?;
    buf.resize(HEADER_LEN + len, 0);
    let got = HEADER_LEN + read_full(r, &mut buf[HEADER_LEN..])?;
    if got < buf.len() {
        return Err(FrameError::Truncated {
            want: buf.len(),
            got,
        });
    }
    Ok(Some(decode(&buf)?.0))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Msg {
        Ping(u64),
        Blob(Vec<u8>),
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&Msg::Ping(7)).unwrap();
        let (m, used): (Msg, _) = decode(&bytes).unwrap();
        assert_eq!(m, Msg::Ping(7));
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn truncated_frame_is_named() {
        let bytes = encode(&Msg::Blob(vec![1; 100])).unwrap();
        let err = decode::<Msg>(&bytes[..50]).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { want: 107, got: 50 }),
            "{err}"
        );
        let err = decode::<Msg>(&bytes[..3]).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { want: 5, got: 3 }),
            "{err}"
        );
    }

    #[test]
    fn oversized_frame_is_refused_before_reading_it() {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        let err = decode::<Msg>(&bytes).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        let err = encode(&Msg::Blob(vec![0; MAX_FRAME + 1])).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(&Msg::Ping(1)).unwrap();
        bytes[0] = 9;
        let err = decode::<Msg>(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::UnknownVersion {
                    got: 9,
                    want: VERSION
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade"));
    }

    #[tokio::test]
    async fn async_read_matches_decode_and_reports_truncation() {
        let mut bytes = encode(&Msg::Ping(3)).unwrap();
        bytes.extend(encode(&Msg::Blob(vec![9; 10])).unwrap());
        let mut r = &bytes[..];
        assert_eq!(read::<Msg, _>(&mut r).await.unwrap(), Some(Msg::Ping(3)));
        assert_eq!(
            read::<Msg, _>(&mut r).await.unwrap(),
            Some(Msg::Blob(vec![9; 10]))
        );
        assert!(read::<Msg, _>(&mut r).await.unwrap().is_none());
        let cut = encode(&Msg::Blob(vec![9; 10])).unwrap();
        let mut r = &cut[..8];
        assert!(matches!(
            read::<Msg, _>(&mut r).await,
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn blocking_read_matches_the_async_one() {
        let mut bytes = Vec::new();
        write_blocking(&mut bytes, &Msg::Ping(5)).unwrap();
        write_blocking(&mut bytes, &Msg::Blob(vec![1, 2, 3])).unwrap();
        let mut r = &bytes[..];
        assert_eq!(read_blocking::<Msg, _>(&mut r).unwrap(), Some(Msg::Ping(5)));
        assert_eq!(
            read_blocking::<Msg, _>(&mut r).unwrap(),
            Some(Msg::Blob(vec![1, 2, 3]))
        );
        assert_eq!(read_blocking::<Msg, _>(&mut r).unwrap(), None);
        // Ping(5) is 7 bytes; the Blob frame after it is 10, cut after 5.
        let mut cut = &bytes[..12];
        assert_eq!(
            read_blocking::<Msg, _>(&mut cut).unwrap(),
            Some(Msg::Ping(5))
        );
        assert!(matches!(
            read_blocking::<Msg, _>(&mut cut),
            Err(FrameError::Truncated { want: 10, got: 5 })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes);
            let _ = decode::<crate::msg::Request>(&bytes);
            let _ = decode::<crate::msg::Response>(&bytes);
            let _ = decode::<crate::msg::SellerMsg>(&bytes);
            let _ = decode::<crate::msg::BrokerMsg>(&bytes);
        }

        #[test]
        fn decode_never_panics_on_valid_headers(
            kind in 0u8..5,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            // A well-formed header over random payload reaches the message
            // decoder itself, which random headers rarely do.
            let mut bytes = vec![VERSION];
            bytes.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
            bytes.push(kind);
            bytes.extend_from_slice(&body);
            let _ = decode::<crate::msg::Request>(&bytes);
            let _ = decode::<crate::msg::Response>(&bytes);
            let _ = decode::<crate::msg::SellerMsg>(&bytes);
            let _ = decode::<crate::msg::BrokerMsg>(&bytes);
        }
    }
}
