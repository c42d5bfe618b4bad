//! The Noise IKpsk2 handshake (X25519, ChaCha20-Poly1305, BLAKE2s) that
//! WireGuard uses, run by `snow`; this module only frames its two messages
//! and adds WireGuard's replay-proof timestamp to the initiation.
//!
//! snow is used instead of a hand-rolled handshake because it is the
//! maintained Noise implementation in Rust; we take its raw split keys and
//! drive the transport ourselves (explicit 64-bit counters and a replay
//! window, which snow's stateful transport does not provide for UDP).

use super::session::SessionKeys;
use super::{INIT_LEN, NOISE_INIT_LEN, NOISE_RESPONSE_LEN, RESPONSE_LEN, TYPE_INIT, TYPE_RESPONSE};
use crate::keys::{PublicKey, SecretKey};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Prologue binding the handshake to this protocol version.
pub const PROLOGUE: &[u8] = b"cpushare-vnet v1";

/// Errors of the handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// snow rejected the message (bad MAC, wrong key, malformed).
    #[error("noise handshake failed: {0}")]
    Noise(#[from] snow::Error),
    /// The message has the wrong length for its type.
    #[error("handshake message of {len} bytes, expected {expected}")]
    Length {
        /// Received length.
        len: usize,
        /// Expected length.
        expected: usize,
    },
    /// The initiator did not present a static key (cannot happen with IK).
    #[error("initiator presented no static key")]
    NoRemoteStatic,
}

fn builder<'a>(
    local: &'a SecretKey,
    psk: &'a [u8; 32],
) -> Result<snow::Builder<'a>, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(HandshakeError::Noise)?;
    Ok(snow::Builder::new(params)
        .local_private_key(local.as_bytes())?
        .psk(2, psk)?
        .prologue(PROLOGUE)?)
}

fn split(state: &mut snow::HandshakeState) -> SessionKeys {
    let (i2r, r2i) = state.dangerously_get_raw_split();
    if state.is_initiator() {
        SessionKeys {
            send: i2r,
            recv: r2i,
        }
    } else {
        SessionKeys {
            send: r2i,
            recv: i2r,
        }
    }
}

/// An initiation we sent and whose response we await.
pub struct Initiation {
    state: snow::HandshakeState,
}

/// Writes a handshake initiation into `out` (cleared first).
pub fn initiate(
    local: &SecretKey,
    psk: &[u8; 32],
    remote: &PublicKey,
    local_index: u32,
    timestamp: u64,
    out: &mut Vec<u8>,
) -> Result<Initiation, HandshakeError> {
    let mut state = builder(local, psk)?
        .remote_public_key(&remote.0)?
        .build_initiator()?;
    out.clear();
    out.resize(INIT_LEN, 0);
    out[0] = TYPE_INIT;
    out[4..8].copy_from_slice(&local_index.to_le_bytes());
    let n = state.write_message(&timestamp.to_le_bytes(), &mut out[8..])?;
    if n != NOISE_INIT_LEN {
        return Err(HandshakeError::Length {
            len: n,
            expected: NOISE_INIT_LEN,
        });
    }
    Ok(Initiation { state })
}

impl Initiation {
    /// Consumes the responder's Noise message 2 and yields session keys.
    pub fn finish(mut self, noise: &[u8]) -> Result<SessionKeys, HandshakeError> {
        if noise.len() != NOISE_RESPONSE_LEN {
            return Err(HandshakeError::Length {
                len: noise.len(),
                expected: NOISE_RESPONSE_LEN,
            });
        }
        let mut payload = [0u8; 64];
        self.state.read_message(noise, &mut payload)?;
        Ok(split(&mut self.state))
    }
}

/// A verified initiation: who sent it and when, before we commit to answering.
pub struct ReceivedInit {
    state: snow::HandshakeState,
    /// The initiator's static key.
    pub remote: PublicKey,
    /// The initiator's timestamp; must grow for every initiation from one peer.
    pub timestamp: u64,
}

/// Reads Noise message 1 of an initiation.
pub fn read_init(
    local: &SecretKey,
    psk: &[u8; 32],
    noise: &[u8],
) -> Result<ReceivedInit, HandshakeError> {
    if noise.len() != NOISE_INIT_LEN {
        return Err(HandshakeError::Length {
            len: noise.len(),
            expected: NOISE_INIT_LEN,
        });
    }
    let mut state = builder(local, psk)?.build_responder()?;
    let mut payload = [0u8; 64];
    let n = state.read_message(noise, &mut payload)?;
    if n != 8 {
        return Err(HandshakeError::Length {
            len: n,
            expected: 8,
        });
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[..8]);
    let rs = state
        .get_remote_static()
        .ok_or(HandshakeError::NoRemoteStatic)?;
    let mut remote = [0u8; 32];
    remote.copy_from_slice(rs);
    Ok(ReceivedInit {
        state,
        remote: PublicKey(remote),
        timestamp: u64::from_le_bytes(ts),
    })
}

impl ReceivedInit {
    /// Writes the response into `out` (cleared first) and yields session keys.
    pub fn respond(
        mut self,
        local_index: u32,
        remote_index: u32,
        out: &mut Vec<u8>,
    ) -> Result<SessionKeys, HandshakeError> {
        out.clear();
        out.resize(RESPONSE_LEN, 0);
        out[0] = TYPE_RESPONSE;
        out[4..8].copy_from_slice(&local_index.to_le_bytes());
        out[8..12].copy_from_slice(&remote_index.to_le_bytes());
        let n = self.state.write_message(&[], &mut out[12..])?;
        if n != NOISE_RESPONSE_LEN {
            return Err(HandshakeError::Length {
                len: n,
                expected: NOISE_RESPONSE_LEN,
            });
        }
        Ok(split(&mut self.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, Message};

    #[test]
    fn handshake_yields_matching_keys_and_identities() {
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let psk = [7u8; 32];
        let mut m1 = Vec::new();
        let init = initiate(&a, &psk, &b.public_key(), 11, 42, &mut m1).unwrap();
        let Ok(Message::Init { sender, noise }) = decode(&m1) else {
            panic!()
        };
        assert_eq!(sender, 11);
        let got = read_init(&b, &psk, noise).unwrap();
        assert_eq!(got.remote, a.public_key());
        assert_eq!(got.timestamp, 42);
        let mut m2 = Vec::new();
        let kb = got.respond(22, 11, &mut m2).unwrap();
        let Ok(Message::Response {
            sender,
            receiver,
            noise,
        }) = decode(&m2)
        else {
            panic!()
        };
        assert_eq!((sender, receiver), (22, 11));
        let ka = init.finish(noise).unwrap();
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_ne!(ka.send, ka.recv);
    }

    #[test]
    fn wrong_psk_or_wrong_responder_fails() {
        let (a, b, c) = (
            SecretKey::generate(),
            SecretKey::generate(),
            SecretKey::generate(),
        );
        let mut m1 = Vec::new();
        let init = initiate(&a, &[1; 32], &b.public_key(), 1, 1, &mut m1).unwrap();
        assert!(read_init(&c, &[1; 32], &m1[8..]).is_err());
        assert!(read_init(&b, &[1; 32], &m1[9..]).is_err());
        // psk2 mixes the PSK into message 2: a wrong PSK fails at the initiator.
        let mut m2 = Vec::new();
        read_init(&b, &[2; 32], &m1[8..])
            .unwrap()
            .respond(2, 1, &mut m2)
            .unwrap();
        assert!(init.finish(&m2[12..]).is_err());
    }
}
