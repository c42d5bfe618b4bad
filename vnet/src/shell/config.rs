//! The `vnet-node` configuration file (JSON): what the seller/buyer daemons
//! will build from the broker's signed peer list.

use crate::keys::{PublicKey, SecretKey};
use crate::node::{NodeConfig, PeerConfig};
use crate::router::Subnet;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Errors reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading vnet config {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The JSON did not match the schema.
    #[error("parsing vnet config {path}: {source}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Parser error with line and column.
        source: serde_json::Error,
    },
}

fn default_mtu() -> usize {
    crate::wire::DEFAULT_INNER_MTU
}

fn default_tun() -> String {
    "vnet0".into()
}

/// A node's configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our static secret key (hex).
    pub private_key: SecretKey,
    /// Vnet-wide pre-shared key (hex), optional.
    #[serde(default)]
    pub psk: Option<PublicKey>,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// TUN interface name.
    #[serde(default = "default_tun")]
    pub tun: String,
    /// The buyer's subnet.
    pub subnet: Subnet,
    /// Our address in it.
    pub address: Ipv4Addr,
    /// Inner MTU.
    #[serde(default = "default_mtu")]
    pub mtu: usize,
    /// Public key of the relay member.
    #[serde(default)]
    pub relay: Option<PublicKey>,
    /// Whether we relay for others.
    #[serde(default)]
    pub relay_for_others: bool,
    /// Other members.
    pub peers: Vec<PeerConfig>,
    /// Where to write status JSON (every 250 ms).
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// Use UDP GSO/GRO batching when the kernel supports it.
    #[serde(default = "default_true")]
    pub gso: bool,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads and parses a JSON config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// The core's configuration.
    pub fn node_config(&self, unix_time: Duration) -> NodeConfig {
        let mut c = NodeConfig::new(
            self.private_key.clone(),
            self.subnet,
            self.address,
            unix_time,
        );
        c.psk = self.psk.map(|k| k.0).unwrap_or_default();
        c.mtu = self.mtu;
        c.relay = self.relay;
        c.relay_for_others = self.relay_for_others;
        c
    }
}
