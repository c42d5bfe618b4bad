//! Ids derived from hashes.
//!
//! A content id names bytes (a module, an ISO) by their SHA-256; a key id
//! names a party by the SHA-256 of its public key. Both print short as
//! `K-` plus the first 8 hex digits, the way a person reads and types them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A full SHA-256 digest that names something.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 32]);

/// Why an id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// `{0}` is not a 64-digit hex SHA-256 (optionally prefixed `K-`)
    #[error("`{0}` is not a 64-digit hex SHA-256 (optionally prefixed `K-`)")]
    Malformed(String),
}

impl ContentId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> ContentId {
        ContentId(Sha256::digest(bytes).into())
    }

    /// The id that a finished [`Sha256`] hasher computed.
    pub fn from_hasher(h: Sha256) -> ContentId {
        ContentId(h.finalize().into())
    }

    /// The id and length of everything `r` yields, read in 1 MiB chunks
    /// (images can be far larger than memory should hold at once).
    pub fn of_reader(mut r: impl std::io::Read) -> std::io::Result<(ContentId, u64)> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            len += n as u64;
        }
        Ok((ContentId(h.finalize().into()), len))
    }

    /// All 64 hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The short form a person reads: `K-1a2b3c4d`.
    pub fn short(&self) -> String {
        format!("K-{}", &self.hex()[..8])
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

impl FromStr for ContentId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let h = s.strip_prefix("K-").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(h, &mut out).map_err(|_| IdError::Malformed(s.to_string()))?;
        Ok(ContentId(out))
    }
}

/// A short, human id for a row the broker creates (order, lease): `K-` plus
/// 8 hex digits of the hash of its sequence number and a namespace, so
/// ids of different kinds never look alike by accident.
pub fn short_id(namespace: &str, seq: u64) -> String {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update(seq.to_le_bytes());
    format!("K-{}", &hex::encode(h.finalize())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_round_trips_through_hex() {
        let id = ContentId::of(b"hello");
        assert_eq!(id.hex().parse::<ContentId>().unwrap(), id);
        assert_eq!(format!("K-{}", id.hex()).parse::<ContentId>().unwrap(), id);
        assert!(id.short().starts_with("K-2cf24dba"));
    }

    #[test]
    fn reader_and_bytes_agree() {
        let data = vec![7u8; (1 << 20) + 5];
        let (id, len) = ContentId::of_reader(&data[..]).unwrap();
        assert_eq!(id, ContentId::of(&data));
        assert_eq!(len, data.len() as u64);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        assert!("K-1234".parse::<ContentId>().is_err());
        assert!("zz".repeat(32).parse::<ContentId>().is_err());
    }

    #[test]
    fn short_ids_differ_by_namespace() {
        assert_ne!(short_id("order", 1), short_id("lease", 1));
        assert_eq!(short_id("order", 1).len(), 10);
    }
}
