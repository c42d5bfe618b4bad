//! The status socket of `cpushare net up` and what `net status` prints.

use cpushare_vnet::path::PathKind;
use cpushare_vnet::shell::Running;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lease id and public key (hex) by vnet address, from the broker's view.
pub(super) type Leases = BTreeMap<String, (Option<String>, String)>;

/// Largest status document accepted from the socket.
const MAX_STATUS: u64 = 4 << 20;

/// One peer as `net status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetPeer {
    /// Its vnet address.
    pub address: String,
    /// Its lease (none for members that are not leases).
    pub lease: Option<String>,
    /// Its vnet public key (hex), as the broker bound it.
    pub key: Option<String>,
    /// Direct, relayed, unconfirmed or unreachable.
    pub path: PathKind,
    /// The direct UDP endpoint in use.
    pub endpoint: Option<SocketAddr>,
    /// Smoothed probe round-trip time, microseconds.
    pub rtt_us: Option<u64>,
    /// Payload bytes received from it.
    pub bytes_in: u64,
    /// Payload bytes sent to it.
    pub bytes_out: u64,
    /// Whether an encrypted session is up.
    pub session: bool,
}

/// What `net status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetStatus {
    /// TUN interface.
    pub tun: String,
    /// The host's vnet address.
    pub address: Ipv4Addr,
    /// The buyer's subnet.
    pub subnet: String,
    /// Every other member.
    pub peers: Vec<NetPeer>,
    /// Dropped packets by reason.
    pub drops: BTreeMap<String, u64>,
    /// Messages relayed between other members.
    pub relayed: u64,
}

fn snapshot(running: &Running, leases: &Mutex<Leases>, tun: &str) -> NetStatus {
    let st = running.status();
    let leases = leases.lock().unwrap_or_else(|p| p.into_inner());
    NetStatus {
        tun: tun.to_string(),
        address: st.address,
        subnet: st.subnet.to_string(),
        peers: st
            .peers
            .into_iter()
            .map(|p| NetPeer {
                lease: leases.get(&p.address).and_then(|l| l.0.clone()),
                key: leases.get(&p.address).map(|l| l.1.clone()),
                address: p.address,
                path: p.path,
                endpoint: p.endpoint,
                rtt_us: p.rtt_us,
                bytes_in: p.bytes_in,
                bytes_out: p.bytes_out,
                session: p.session,
            })
            .collect(),
        drops: st.drops,
        relayed: st.relayed,
    }
}

/// Answers each connection with one status document.
pub(super) async fn serve(
    listener: tokio::net::UnixListener,
    running: Arc<Running>,
    leases: Arc<Mutex<Leases>>,
    tun: String,
) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let doc = serde_json::to_vec(&snapshot(&running, &leases, &tun)).unwrap_or_default();
        let _ = conn.write_all(&doc).await;
        let _ = conn.shutdown().await;
    }
}

/// Reads the status of the `net up` listening at `path`.
pub(super) async fn query(path: &Path) -> anyhow::Result<NetStatus> {
    let conn = tokio::net::UnixStream::connect(path).await.map_err(|e| {
        anyhow::anyhow!(
            "no `cpushare net up` is running for this home ({}: {e}); start one first",
            path.display()
        )
    })?;
    let mut doc = Vec::new();
    conn.take(MAX_STATUS).read_to_end(&mut doc).await?;
    serde_json::from_slice(&doc)
        .map_err(|e| anyhow::anyhow!("`cpushare net up` sent an unreadable status: {e}"))
}

fn path_name(p: PathKind) -> &'static str {
    match p {
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
        PathKind::Unconfirmed => "unconfirmed",
        PathKind::Unreachable => "unreachable",
    }
}

/// The human table.
pub(super) fn print(st: &NetStatus) {
    println!("{} {} in {}", st.tun, st.address, st.subnet);
    println!(
        "{:<16} {:<14} {:<12} {:>9} {:>12} {:>12}",
        "ADDRESS", "LEASE", "PATH", "RTT", "BYTES IN", "BYTES OUT"
    );
    for p in &st.peers {
        let rtt = p
            .rtt_us
            .map(|us| format!("{:.2}ms", us as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<14} {:<12} {:>9} {:>12} {:>12}",
            p.address,
            p.lease.as_deref().unwrap_or("-"),
            path_name(p.path),
            rtt,
            p.bytes_in,
            p.bytes_out
        );
    }
    if !st.drops.is_empty() {
        let d: Vec<String> = st.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("dropped: {}", d.join(", "));
    }
}
