//! The data-plane wire format: a WireGuard-style Noise transport.
//!
//! Every message starts with a 4-byte header word (type, 3 reserved zero
//! bytes); integers are little-endian as in WireGuard.
//!
//! | type | message | layout after the type word |
//! |------|---------|----------------------------|
//! | 1 | handshake initiation | sender index u32, Noise IKpsk2 message 1 (108 bytes) |
//! | 2 | handshake response | sender index u32, receiver index u32, Noise message 2 (48 bytes) |
//! | 4 | data | receiver index u32, counter u64, AEAD ciphertext + 16-byte tag |
//! | 5 | relay-to | receiver index u32, counter u64, destination [`PeerId`](crate::PeerId), tag, inner message |
//! | 6 | relay-from | receiver index u32, counter u64, origin [`PeerId`](crate::PeerId), tag, inner message |
//!
//! A data message with an empty plaintext is a keepalive. Relay messages ride
//! the hop's own session: their tag (ChaCha20-Poly1305 with an empty plaintext)
//! authenticates header, peer id and the inner header, so a relay forwards
//! only for members and rejects replays. The inner message (handshake or data)
//! is end-to-end between origin and destination and is not encrypted again:
//! the relay never sees plaintext, and relaying costs one MAC per hop, not a
//! second encryption.

pub mod handshake;
pub mod replay;
pub mod session;

/// Size of the type word every message starts with.
pub const TYPE_LEN: usize = 4;
/// Handshake initiation type.
pub const TYPE_INIT: u8 = 1;
/// Handshake response type.
pub const TYPE_RESPONSE: u8 = 2;
/// Transport data type.
pub const TYPE_DATA: u8 = 4;
/// Relay-to type: origin -> relay.
pub const TYPE_RELAY_TO: u8 = 5;
/// Relay-from type: relay -> destination.
pub const TYPE_RELAY_FROM: u8 = 6;

/// Noise message 1 of IKpsk2 with an 8-byte timestamp payload:
/// e (32) + encrypted s (32+16) + encrypted timestamp (8+16).
pub const NOISE_INIT_LEN: usize = 32 + 48 + 8 + 16;
/// Noise message 2 of IKpsk2 with an empty payload: e (32) + tag (16).
pub const NOISE_RESPONSE_LEN: usize = 32 + 16;
/// Total size of a handshake initiation.
pub const INIT_LEN: usize = TYPE_LEN + 4 + NOISE_INIT_LEN;
/// Total size of a handshake response.
pub const RESPONSE_LEN: usize = TYPE_LEN + 4 + 4 + NOISE_RESPONSE_LEN;
/// Header of data and relay messages: type word, receiver index, counter.
pub const DATA_HEADER_LEN: usize = TYPE_LEN + 4 + 8;
/// Poly1305 tag size.
pub const TAG_LEN: usize = 16;
/// Overhead of one encryption layer (header + tag).
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// Extra bytes a relay hop adds: its own data framing plus a peer id.
pub const RELAY_OVERHEAD: usize = DATA_OVERHEAD + 32;
/// Default inner (virtual interface) MTU.
///
/// Worst case outer path: IPv6 (40) + UDP (8) over a PPPoE link MTU of 1492,
/// relayed (inner data 32 + relay hop 64): 1492 - 48 - 96 = 1348; rounded down
/// to 1340 so every path, direct or relayed, IPv4 or IPv6, fits without
/// fragmentation. Direct IPv4 paths waste 96 bytes per packet (~7%), which is
/// cheaper than any PMTU discovery failure.
pub const DEFAULT_INNER_MTU: usize = 1340;
/// Largest inner packet any configuration may use.
pub const MAX_INNER_MTU: usize = 9000;
/// Hard maximum size of any vnet UDP payload; larger datagrams are dropped
/// before any parsing or crypto.
pub const MAX_PACKET_LEN: usize = MAX_INNER_MTU + DATA_OVERHEAD + RELAY_OVERHEAD;

/// Errors decoding a message header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The datagram is larger than any valid message.
    #[error("packet of {len} bytes exceeds the {max}-byte maximum")]
    TooLarge {
        /// Received length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The datagram is shorter than its message type requires.
    #[error("message type {kind} needs {need} bytes, got {len}")]
    Truncated {
        /// Message type byte.
        kind: u8,
        /// Bytes required.
        need: usize,
        /// Bytes received.
        len: usize,
    },
    /// The type word is not one we know (or has non-zero reserved bytes).
    #[error("unknown message type word {0:#010x}")]
    UnknownType(u32),
}

/// A decoded view of a message header; borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Handshake initiation.
    Init {
        /// Initiator's session index.
        sender: u32,
        /// Noise message 1.
        noise: &'a [u8],
    },
    /// Handshake response.
    Response {
        /// Responder's session index.
        sender: u32,
        /// Initiator's session index.
        receiver: u32,
        /// Noise message 2.
        noise: &'a [u8],
    },
    /// Data (type 4), relay-to (5) or relay-from (6).
    Transport {
        /// Message type byte.
        kind: u8,
        /// Receiver's session index.
        receiver: u32,
        /// Nonce counter.
        counter: u64,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decodes the header of a datagram without any crypto. Never panics.
pub fn decode(b: &[u8]) -> Result<Message<'_>, WireError> {
    if b.len() > MAX_PACKET_LEN {
        return Err(WireError::TooLarge {
            len: b.len(),
            max: MAX_PACKET_LEN,
        });
    }
    if b.len() < TYPE_LEN {
        return Err(WireError::Truncated {
            kind: b.first().copied().unwrap_or(0),
            need: TYPE_LEN,
            len: b.len(),
        });
    }
    let word = u32_at(b, 0);
    let kind = b[0];
    if word >> 8 != 0 {
        return Err(WireError::UnknownType(word));
    }
    let need = |need: usize| {
        if b.len() < need {
            Err(WireError::Truncated {
                kind,
                need,
                len: b.len(),
            })
        } else {
            Ok(())
        }
    };
    match kind {
        TYPE_INIT => {
            if b.len() != INIT_LEN {
                return Err(WireError::Truncated {
                    kind,
                    need: INIT_LEN,
                    len: b.len(),
                });
            }
            Ok(Message::Init {
                sender: u32_at(b, 4),
                noise: &b[8..],
            })
        }
        TYPE_RESPONSE => {
            if b.len() != RESPONSE_LEN {
                return Err(WireError::Truncated {
                    kind,
                    need: RESPONSE_LEN,
                    len: b.len(),
                });
            }
            Ok(Message::Response {
                sender: u32_at(b, 4),
                receiver: u32_at(b, 8),
                noise: &b[12..],
            })
        }
        TYPE_DATA | TYPE_RELAY_TO | TYPE_RELAY_FROM => {
            need(DATA_OVERHEAD)?;
            Ok(Message::Transport {
                kind,
                receiver: u32_at(b, 4),
                counter: u64_at(b, 8),
            })
        }
        _ => Err(WireError::UnknownType(word)),
    }
}

/// Writes a data/relay header into `out[..DATA_HEADER_LEN]`.
pub fn write_transport_header(out: &mut [u8], kind: u8, receiver: u32, counter: u64) {
    out[0..4].copy_from_slice(&u32::from(kind).to_le_bytes());
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transport_header_round_trips() {
        let mut b = vec![0u8; DATA_OVERHEAD];
        write_transport_header(&mut b, TYPE_RELAY_TO, 7, u64::MAX - 1);
        assert_eq!(
            decode(&b),
            Ok(Message::Transport {
                kind: TYPE_RELAY_TO,
                receiver: 7,
                counter: u64::MAX - 1
            })
        );
    }

    #[test]
    fn short_and_oversize_and_unknown_are_named() {
        assert!(matches!(decode(&[]), Err(WireError::Truncated { .. })));
        assert!(matches!(
            decode(&[4, 0, 0, 0, 1]),
            Err(WireError::Truncated { kind: 4, .. })
        ));
        assert!(matches!(
            decode(&[1, 0, 0, 0]),
            Err(WireError::Truncated { kind: 1, .. })
        ));
        assert!(matches!(
            decode(&[4, 1, 0, 0]),
            Err(WireError::UnknownType(_))
        ));
        assert!(matches!(
            decode(&[9, 0, 0, 0]),
            Err(WireError::UnknownType(9))
        ));
        assert!(matches!(
            decode(&vec![4u8; MAX_PACKET_LEN + 1]),
            Err(WireError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&b);
        }

        #[test]
        fn decode_accepts_only_known_sizes(kind in 0u8..8, len in 0usize..300) {
            let mut b = vec![0u8; len];
            if len > 0 { b[0] = kind; }
            if let Ok(m) = decode(&b) {
                match m {
                    Message::Init { .. } => prop_assert_eq!(len, INIT_LEN),
                    Message::Response { .. } => prop_assert_eq!(len, RESPONSE_LEN),
                    Message::Transport { .. } => prop_assert!(len >= DATA_OVERHEAD),
                }
            }
        }
    }
}
