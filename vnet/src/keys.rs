//! Static X25519 identities of vnet members and the [`PeerId`] derived from them.

use blake2::{Blake2s256, Digest};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Errors parsing keys from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// key text is not 64 hex digits: {0:?}
    #[error("key is not 64 hex digits: {0:?}")]
    NotHex(String),
}

fn parse_hex32(s: &str) -> Result<[u8; 32], KeyError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| KeyError::NotHex(s.to_owned()))?;
    Ok(out)
}

/// A member's static X25519 public key; the broker signs it into the peer list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The member's identity inside the vnet: a hash of this key.
    pub fn peer_id(&self) -> PeerId {
        let mut h = Blake2s256::new();
        h.update(b"cpushare-vnet peer id v1");
        h.update(self.0);
        PeerId(h.finalize().into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        parse_hex32(s).map(Self)
    }
}

impl TryFrom<String> for PublicKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Self::from_hex(&s)
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        hex::encode(k.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

/// A member's static X25519 secret key. Debug output never shows it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
        Self(k)
    }

    /// Wraps raw key bytes (clamping happens inside X25519).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes, for the Noise handshake.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let s = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&s).to_bytes())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        parse_hex32(s).map(Self)
    }

    /// 64 hex digits, for config files.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl TryFrom<String> for SecretKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Self::from_hex(&s)
    }
}

impl From<SecretKey> for String {
    fn from(k: SecretKey) -> String {
        k.to_hex()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A member's identity in the vnet: BLAKE2s-256 of its static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerId(pub [u8; 32]);

impl TryFrom<String> for PeerId {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        parse_hex32(&s).map(Self)
    }
}

impl From<PeerId> for String {
    fn from(k: PeerId) -> String {
        hex::encode(k.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", hex::encode(&self.0[..6]))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_x25519_and_round_trips_hex() {
        let s = SecretKey::generate();
        let p = s.public_key();
        assert_eq!(PublicKey::from_hex(&String::from(p)).unwrap(), p);
        assert_eq!(SecretKey::from_hex(&s.to_hex()).unwrap().public_key(), p);
        assert_ne!(p.peer_id(), SecretKey::generate().public_key().peer_id());
    }

    #[test]
    fn bad_hex_is_rejected_with_the_text() {
        assert_eq!(
            PublicKey::from_hex("zz"),
            Err(KeyError::NotHex("zz".into()))
        );
    }
}
