//! Each lease's member of its buyer's virtual network.
//!
//! When a lease starts, the daemon makes a fresh vnet key and UDP socket for
//! it and registers both with the broker (`SellerMsg::VnetJoin`); the broker
//! answers with the lease's address and peers (`BrokerMsg::Vnet`), and again
//! whenever the buyer's network changes. The node runs in this daemon (the
//! shell's threads), never in the lease's sandbox.
//!
//! A VM lease's guest NIC reaches the node through [`VnetLeases::bridge_frames`]
//! (one Ethernet frame per `SOCK_SEQPACKET` message). A wasm lease has no NIC:
//! its node stays detached. For tests, `CPUSHARE_SELLER_VNET_TUN=1` attaches
//! each lease's node to a TUN interface in the daemon's network namespace,
//! standing in for a guest (a VM lease's own NIC is then left unconnected,
//! so a client in that namespace can play the guest's side).

use cpushare_proto::msg::{SandboxKind, SellerMsg, VnetView};
use cpushare_vnet::node::PeerConfig;
use cpushare_vnet::router::{EgressPolicy, Subnet};
use cpushare_vnet::shell::frames::FrameLink;
use cpushare_vnet::shell::tun::Tun;
use cpushare_vnet::shell::{self, Local, Running};
use cpushare_vnet::{Node, NodeConfig, PublicKey, SecretKey};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Environment variable that attaches lease nodes to TUN stand-ins (tests).
pub(crate) const TUN_STANDIN_ENV: &str = "CPUSHARE_SELLER_VNET_TUN";

/// One lease's node: before the broker's first view, only a key and socket.
struct LeaseNet {
    key: SecretKey,
    sock: Option<UdpSocket>,
    running: Option<Running>,
    subnet: Option<Subnet>,
    /// The lease's own address and prefix length, from the broker's view.
    address: Option<(std::net::Ipv4Addr, u8)>,
    /// A guest link handed over before the node started.
    frames: Option<OwnedFd>,
}

/// The vnet nodes of this session's leases.
#[derive(Clone)]
pub(crate) struct VnetLeases {
    nets: Arc<Mutex<HashMap<String, LeaseNet>>>,
    status_dir: PathBuf,
    tun_standin: bool,
}

fn peers_of(view: &VnetView) -> Vec<PeerConfig> {
    view.peers
        .iter()
        .map(|m| PeerConfig {
            public_key: PublicKey(m.key),
            address: m.address,
            endpoints: m.endpoints.clone(),
        })
        .collect()
}

/// A TUN name from a lease id: `cs` and its last 12 id characters.
fn tun_name(lease: &str) -> String {
    let tail: String = lease
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("cs{tail}")
}

impl VnetLeases {
    /// Nodes write their status (JSON, every 250 ms) into `status_dir/LEASE.json`.
    pub(crate) fn new(status_dir: PathBuf) -> Self {
        let _ = std::fs::create_dir_all(&status_dir);
        Self {
            nets: Arc::default(),
            status_dir,
            tun_standin: std::env::var_os(TUN_STANDIN_ENV).is_some_and(|v| v == "1"),
        }
    }

    /// Whether a lease of `kind` joins its buyer's vnet: a VM has a NIC to
    /// bridge; a wasm guest has no sockets (WASI preview 1), so it joins
    /// only where tests attach a TUN stand-in. A node per tiny wasm job
    /// would cost a key, a socket, threads and a broker round of peer
    /// updates for nothing.
    pub(crate) fn wanted_for(&self, kind: SandboxKind) -> bool {
        kind == SandboxKind::Vm || self.tun_standin
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LeaseNet>> {
        self.nets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lease started: make its key and socket and register them.
    pub(crate) fn lease_started(&self, lease: &str, out: &UnboundedSender<SellerMsg>) {
        let sock = match shell::bind(SocketAddr::from(([0, 0, 0, 0], 0))) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(%lease, "no vnet for this lease: {e}"),
        };
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let key = SecretKey::generate();
        let _ = out.send(SellerMsg::VnetJoin {
            lease: lease.to_string(),
            key: key.public_key().0,
            endpoints: shell::endpoints::local_candidates(port),
        });
        self.lock().insert(
            lease.to_string(),
            LeaseNet {
                key,
                sock: Some(sock),
                running: None,
                subnet: None,
                address: None,
                frames: None,
            },
        );
    }

    /// The broker's view of the lease's network: start the node on the
    /// first one, update its peers on every one.
    pub(crate) fn apply(&self, lease: &str, view: VnetView) {
        let mut nets = self.lock();
        let Some(net) = nets.get_mut(lease) else {
            return;
        };
        if let Err(e) = self.apply_to(lease, net, &view) {
            tracing::warn!(%lease, "vnet update failed: {e:#}");
        }
    }

    fn apply_to(&self, lease: &str, net: &mut LeaseNet, view: &VnetView) -> anyhow::Result<()> {
        let relay = view.relay.map(PublicKey);
        if net.running.is_none() {
            let subnet = Subnet::new(view.subnet, view.prefix)?;
            let mut cfg = NodeConfig::new(net.key.clone(), subnet, view.address, shell::unix_now());
            cfg.relay = relay;
            // The broker names a lease node without NAT as the relay when the
            // buyer's host is away; it forwards only between authenticated
            // members of this one buyer's network.
            cfg.relay_for_others = true;
            // The guest reaches its buyer's subnet only: never this host,
            // its LAN, the internet or another buyer's network.
            cfg.egress = EgressPolicy::SubnetOnly;
            let node = Node::new(cfg, Instant::now())?;
            let local = match net.frames.take() {
                Some(fd) => Local::Frames(FrameLink::with_guest_mac(
                    fd,
                    subnet,
                    crate::jail::frame_link::GUEST_MAC,
                )),
                None if self.tun_standin => Local::Tun(Tun::create(
                    &tun_name(lease),
                    view.address,
                    subnet.netmask(),
                    node.mtu(),
                    true,
                )?),
                None => Local::Detached,
            };
            let sock = net
                .sock
                .take()
                .ok_or_else(|| anyhow::anyhow!("the lease's socket is gone"))?;
            let status = self.status_dir.join(format!("{lease}.json"));
            net.running = Some(shell::run(node, sock, local, true, Some(status))?);
            net.subnet = Some(subnet);
            net.address = Some((view.address, view.prefix));
            tracing::info!(%lease, address = %view.address, "lease joined its buyer's vnet");
        }
        let running = net.running.as_ref().expect("started above");
        running.apply(&peers_of(view), relay)?;
        Ok(())
    }

    /// The lease's vnet address and prefix length, once the broker's first
    /// view arrived; waits for it at most `timeout`.
    pub(crate) async fn address(
        &self,
        lease: &str,
        timeout: std::time::Duration,
    ) -> Option<(std::net::Ipv4Addr, u8)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let known = self.lock().get(lease).map(|n| n.address);
            match known {
                Some(Some(a)) => return Some(a),
                // Not a member (no node was made): nothing to wait for.
                None => return None,
                Some(None) if tokio::time::Instant::now() >= deadline => return None,
                Some(None) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    /// Connects a guest's virtio-net link (one end of a `SOCK_SEQPACKET`
    /// socketpair, one Ethernet frame per message) to the lease's node.
    /// Works before or after the node started; sessions survive.
    /// With TUN stand-ins (tests) the stand-in stays the lease's NIC and
    /// the guest's link is left unconnected.
    pub(crate) fn bridge_frames(&self, lease: &str, fd: OwnedFd) -> anyhow::Result<()> {
        if self.tun_standin {
            drop(fd);
            return Ok(());
        }
        let mut nets = self.lock();
        let net = nets
            .get_mut(lease)
            .ok_or_else(|| anyhow::anyhow!("lease {lease} has no vnet node"))?;
        let (Some(running), Some(subnet)) = (net.running.take(), net.subnet) else {
            net.frames = Some(fd);
            return Ok(());
        };
        let (node, sock) = running.into_parts();
        let status = self.status_dir.join(format!("{lease}.json"));
        net.running = Some(shell::run(
            node,
            sock,
            Local::Frames(FrameLink::with_guest_mac(
                fd,
                subnet,
                crate::jail::frame_link::GUEST_MAC,
            )),
            true,
            Some(status),
        )?);
        Ok(())
    }

    /// The lease is over: its node stops (the broker drops it from the
    /// network when the lease ends).
    pub(crate) fn lease_ended(&self, lease: &str) {
        self.lock().remove(lease);
        let _ = std::fs::remove_file(self.status_dir.join(format!("{lease}.json")));
    }

    /// The session is over: every node stops.
    pub(crate) fn clear(&self) {
        let leases: Vec<String> = self.lock().keys().cloned().collect();
        for l in leases {
            self.lease_ended(&l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tun_names_fit_ifnamsiz_and_come_from_the_lease() {
        assert_eq!(tun_name("K-1a2b3c4d"), "csK1a2b3c4d");
        let long = tun_name("K-0123456789abcdef");
        assert_eq!(long, "cs456789abcdef");
        assert!(long.len() <= 15);
    }
}
