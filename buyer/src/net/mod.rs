//! `cpushare net up` / `cpushare net status`: the buyer's host as a member
//! of its own virtual network.
//!
//! `up` makes a fresh vnet key and UDP socket, registers them with the
//! broker over the buyer's authenticated connection (`Request::VnetJoin`),
//! creates a TUN interface with the address the broker assigns (its
//! netmask gives the route to the subnet), and applies every peer list the
//! broker pushes until Ctrl-C, which tears the interface down. The host
//! node relays for leases that cannot reach each other directly.
//!
//! `status` asks the running `up` over a unix socket in the buyer's home.

mod status;

pub use status::{NetPeer, NetStatus};

use anyhow::{bail, Context};
use cpushare_proto::client::Home;
use cpushare_proto::frame;
use cpushare_proto::msg::{Request, Response, VnetView};
use cpushare_vnet::node::PeerConfig;
use cpushare_vnet::router::Subnet;
use cpushare_vnet::shell::{self, tun::Tun, Local, Running};
use cpushare_vnet::{Node, NodeConfig, PublicKey, SecretKey};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How `cpushare net up` runs.
#[derive(Debug, Clone)]
pub struct UpArgs {
    /// TUN interface name.
    pub tun: String,
    /// UDP port for the vnet (0: any free port).
    pub port: u16,
    /// Print JSON instead of text.
    pub json: bool,
}

/// Linux capability number of CAP_NET_ADMIN.
const CAP_NET_ADMIN: u32 = 12;

/// Whether this process may create network interfaces.
fn has_net_admin() -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Where `up` answers `status`.
pub fn socket_path(home: &Home) -> PathBuf {
    home.dir().join("net.sock")
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

/// What the view says about each peer address: its lease and key.
fn leases_of(view: &VnetView) -> BTreeMap<String, (Option<String>, String)> {
    view.peers
        .iter()
        .map(|m| {
            let key = String::from(PublicKey(m.key));
            (m.address.to_string(), (m.lease.clone(), key))
        })
        .collect()
}

/// Runs `cpushare net up` until Ctrl-C or the broker goes away.
pub async fn up(home: &Home, args: UpArgs) -> anyhow::Result<i32> {
    if !has_net_admin() {
        bail!(
            "`cpushare net up` creates a TUN interface, which needs root or CAP_NET_ADMIN: \
             run it with sudo, or grant the capability once with \
             `sudo setcap cap_net_admin+ep $(command -v cpushare)`"
        );
    }
    let client = home.connect().await?;
    let sock = shell::bind(SocketAddr::from(([0, 0, 0, 0], args.port)))
        .context("while binding the vnet UDP socket")?;
    let port = sock.local_addr()?.port();
    let key = SecretKey::generate();
    let (mut send, mut recv) = client.open().await?;
    frame::write(
        &mut send,
        &Request::VnetJoin {
            key: key.public_key().0,
            endpoints: shell::endpoints::local_candidates(port),
        },
    )
    .await?;
    let view = match frame::read::<Response, _>(&mut recv).await? {
        Some(Response::Vnet(v)) => v,
        Some(Response::Error(e)) => {
            bail!("the broker refused to add this host to your network: {e}")
        }
        other => bail!("unexpected reply to the vnet join: {other:?}"),
    };
    let subnet = Subnet::new(view.subnet, view.prefix)?;
    let mut cfg = NodeConfig::new(key, subnet, view.address, shell::unix_now());
    cfg.relay_for_others = true;
    let node = Node::new(cfg, Instant::now())?;
    let tun = Tun::create(&args.tun, view.address, subnet.netmask(), node.mtu(), true)?;
    let running = Arc::new(shell::run(node, sock, Local::Tun(tun), true, None)?);
    running.apply(&peers_of(&view), None)?;
    let leases = Arc::new(Mutex::new(leases_of(&view)));
    let sock_path = socket_path(home);
    let _ = std::fs::remove_file(&sock_path);
    let listener = tokio::net::UnixListener::bind(&sock_path)
        .with_context(|| format!("while creating {}", sock_path.display()))?;
    let server = tokio::spawn(status::serve(
        listener,
        running.clone(),
        leases.clone(),
        args.tun.clone(),
    ));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"tun": args.tun, "address": view.address.to_string(),
                "subnet": subnet.to_string(), "port": port, "peers": view.peers.len()})
        );
    } else {
        println!(
            "vnet up: {} is {} in {subnet} ({} peers); `cpushare net status` shows them; Ctrl-C to stop",
            args.tun,
            view.address,
            view.peers.len()
        );
    }
    let result = follow(&running, &leases, &mut recv).await;
    server.abort();
    let _ = std::fs::remove_file(&sock_path);
    let _ = send.finish();
    client.conn.close(0u32.into(), b"net down");
    drop(running);
    match result {
        Ok(()) => {
            if !args.json {
                println!("vnet down: {} removed", args.tun);
            }
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Applies the broker's views until Ctrl-C (Ok) or the broker goes away (Err).
async fn follow(
    running: &Running,
    leases: &Mutex<status::Leases>,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            msg = frame::read::<Response, _>(recv) => match msg {
                Ok(Some(Response::Vnet(view))) => {
                    running.apply(&peers_of(&view), None)?;
                    *leases.lock().unwrap_or_else(|p| p.into_inner()) = leases_of(&view);
                }
                Ok(Some(other)) => bail!("unexpected message from the broker: {other:?}"),
                Ok(None) => bail!("the broker ended the vnet session; run `cpushare net up` again"),
                Err(e) => bail!("lost the broker ({e}); run `cpushare net up` again"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The status of this home's running `net up` (its address, and its
/// peers with their leases); an error saying to start one if none runs.
pub async fn running(home: &Home) -> anyhow::Result<NetStatus> {
    status::query(&socket_path(home)).await
}

/// `cpushare net status`: asks the running `net up`.
pub async fn status(home: &Home, json: bool) -> anyhow::Result<i32> {
    let st = status::query(&socket_path(home)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        status::print(&st);
    }
    Ok(0)
}
