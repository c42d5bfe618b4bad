//! The cpushare virtual network: one encrypted virtual IPv4 subnet per buyer,
//! carried peer to peer over UDP and relayed through a reachable member only
//! when no direct path exists.
//!
//! The crate follows the quinn-proto shape: [`node::Node`] is a sans-IO state
//! machine (bytes and the current time in, [`node::Output`]s out) built from
//! [`wire`] (Noise IKpsk2 handshake and transport framing), [`router`]
//! (subnet isolation, ARP, MTU) and [`path`] (direct/relayed path choice).
//! [`shell`] drives a `Node` with a real UDP socket and a TUN device.

#![warn(missing_docs)]

pub mod keys;
pub mod node;
pub mod path;
pub mod router;
pub mod shell;
pub mod wire;

pub use keys::{PeerId, PublicKey, SecretKey};
pub use node::{Node, NodeConfig, Output, Outputs, PeerConfig};
