//! `--share` for VM jobs: the buyer's own NFSv3 server ([`crate::share`])
//! listening only on the buyer's vnet host address (from the running
//! `cpushare net up`), open only to the vnet addresses of the buyer's own
//! leases, and the kernel command line items that tell a guest what to
//! mount (`cpushare.nfs=HOST_IP:EXPORT:GUEST_PATH[:rw]`, plus
//! `cpushare.nfsport=PORT`; the export is the guest path).
//!
//! `cpushare run` does not start the vnet itself: `net up` needs
//! CAP_NET_ADMIN and outlives single runs, so a run with VM shares asks
//! the running one and says to start it when there is none.

use crate::net::{self, NetStatus};
use crate::share::spec::normalize_guest_path;
use crate::share::{AllowList, Share, ShareError, ShareServer};
use crate::wasm_share::ShareArg;
use anyhow::{bail, Context};
use cpushare_proto::client::Home;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The port guests mount from when it is free (NFS's own).
pub const NFS_PORT: u16 = 2049;

/// How often the allow list follows the buyer's leases.
const REFRESH: Duration = Duration::from_secs(1);

/// The running share server of one `cpushare run`; stops when dropped.
pub struct VmShares {
    server: Arc<ShareServer>,
    refresh: tokio::task::JoinHandle<()>,
}

impl VmShares {
    /// Where the server listens (the vnet host address and port).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

impl Drop for VmShares {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

/// The vnet addresses of the buyer's leases in `st` (members without a
/// lease, such as the host itself, are not guests).
pub fn lease_addresses(st: &NetStatus) -> AllowList {
    AllowList::from_addrs(
        st.peers
            .iter()
            .filter(|p| p.lease.is_some())
            .filter_map(|p| p.address.parse::<IpAddr>().ok()),
    )
}

/// The kernel command line items naming `shares` on `server`.
pub fn cmdline_items(server: SocketAddr, shares: &[Share]) -> Vec<String> {
    let mut items = vec![format!("cpushare.nfsport={}", server.port())];
    for s in shares {
        items.push(format!(
            "cpushare.nfs={}:{}:{}{}",
            server.ip(),
            s.guest_path,
            s.guest_path,
            if s.writable { ":rw" } else { "" }
        ));
    }
    items
}

fn to_share(a: &ShareArg) -> anyhow::Result<Share> {
    let guest =
        normalize_guest_path(&a.guest).map_err(|e| anyhow::anyhow!("--share {}: {e}", a.guest))?;
    if guest.contains(|c: char| c.is_whitespace() || c == ':') {
        bail!("--share guest path {guest:?} has a space or `:`, which the guest's kernel command line cannot carry");
    }
    if a.writable {
        std::fs::create_dir_all(&a.host)
            .with_context(|| format!("cannot create {}", a.host.display()))?;
    }
    Ok(Share {
        host_dir: a.host.clone(),
        guest_path: guest,
        writable: a.writable,
    })
}

/// Starts serving `args` on the vnet of the running `net up`; returns the
/// server and the kernel command line items for the VM job.
pub async fn start(home: &Home, args: &[ShareArg]) -> anyhow::Result<(VmShares, Vec<String>)> {
    let st = net::running(home).await.context(
        "--share for a VM job is served to the guest over your virtual network; \
         start `cpushare net up` (as root) in another terminal first",
    )?;
    let shares = args
        .iter()
        .map(to_share)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let allow = lease_addresses(&st);
    let at = SocketAddr::from((st.address, NFS_PORT));
    let server = match ShareServer::start(at, shares.clone(), allow.clone()).await {
        Err(ShareError::Bind { .. }) => {
            // Another run of this buyer serves on 2049; take any port.
            ShareServer::start(SocketAddr::from((st.address, 0)), shares.clone(), allow).await
        }
        other => other,
    }
    .context("cannot start the NFS server for --share")?;
    let server = Arc::new(server);
    let items = cmdline_items(server.local_addr(), &shares);
    let (home, srv) = (home.clone(), server.clone());
    let refresh = tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH).await;
            match net::running(&home).await {
                Ok(st) => srv.set_allowed(lease_addresses(&st)),
                Err(e) => tracing::warn!("cannot refresh the NFS allow list: {e:#}"),
            }
        }
    });
    Ok((VmShares { server, refresh }, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_name_host_export_guest_and_mode() {
        let shares = vec![
            Share::parse("/tmp/a:/src").unwrap(),
            Share::parse("/tmp/b:/out:rw").unwrap(),
        ];
        let items = cmdline_items("10.1.2.1:2049".parse().unwrap(), &shares);
        assert_eq!(
            items,
            [
                "cpushare.nfsport=2049",
                "cpushare.nfs=10.1.2.1:/src:/src",
                "cpushare.nfs=10.1.2.1:/out:/out:rw"
            ]
        );
    }
}
