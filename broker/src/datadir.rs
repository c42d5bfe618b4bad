//! The broker's data directory: CA, database, images, published endpoints.
//!
//! ```text
//! DATA/ca.pem, ca.key   the certificate authority (created on first use)
//! DATA/broker.db        SQLite database (unless --db names PostgreSQL)
//! DATA/blobs/           images by content id; blobs/partial/ holds uploads in progress
//! DATA/endpoints.json   where the running broker listens, for tokens
//! ```

use cpushare_proto::identity::Ca;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default control port.
pub const DEFAULT_PORT: u16 = 7400;

/// The addresses a broker publishes in enrollment tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// Control endpoint `host:port`.
    pub broker: String,
    /// Enrollment endpoint `host:port`.
    pub enroll: String,
}

/// A broker data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed) the data directory at `root`.
    pub fn open(root: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(root.join("blobs").join("partial")).map_err(|e| {
            anyhow::anyhow!("cannot create the data directory {}: {e}", root.display())
        })?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CA, created on first use.
    pub fn ca(&self) -> anyhow::Result<Ca> {
        Ok(Ca::load_or_create(&self.root)?)
    }

    /// The default database URL: SQLite in the data directory.
    pub fn sqlite_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.root.join("broker.db").display()
        )
    }

    /// Where images live.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Records where the running broker listens.
    pub fn publish(&self, e: &Endpoints) -> anyhow::Result<()> {
        let path = self.root.join("endpoints.json");
        std::fs::write(&path, serde_json::to_string_pretty(e)?)?;
        Ok(())
    }

    /// Where the broker listens, as last published, or the defaults.
    pub fn endpoints(&self) -> Endpoints {
        std::fs::read_to_string(self.root.join("endpoints.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| Endpoints {
                broker: format!("127.0.0.1:{DEFAULT_PORT}"),
                enroll: format!("127.0.0.1:{}", DEFAULT_PORT + 1),
            })
    }
}
