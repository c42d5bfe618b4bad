//! `vnet-node`: runs one vnet member from a JSON config file (used by the
//! integration tests and the benchmark; the seller/buyer daemons embed the
//! same shell).
//!
//! Usage: `vnet-node genkey` | `vnet-node pubkey <private-hex>` | `vnet-node run <config.json>`

use anyhow::{bail, Context};
use cpushare_vnet::shell::{self, config::Config};
use cpushare_vnet::SecretKey;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("genkey") => {
            println!("{}", SecretKey::generate().to_hex());
        }
        Some("pubkey") => {
            let k = args
                .get(2)
                .context("usage: vnet-node pubkey <private-hex>")?;
            let k = SecretKey::from_hex(k)?;
            println!("{}", String::from(k.public_key()));
        }
        Some("run") => {
            let path = args.get(2).context("usage: vnet-node run <config.json>")?;
            let cfg = Config::load(path.as_ref())?;
            let running = shell::start(&cfg)
                .with_context(|| format!("while starting vnet node from {path}"))?;
            eprintln!(
                "vnet-node: {} on {} as {} ({} peers)",
                running.tun_name(),
                running.local_addr()?,
                cfg.address,
                cfg.peers.len()
            );
            running.join();
        }
        _ => bail!("usage: vnet-node genkey | pubkey <private-hex> | run <config.json>"),
    }
    Ok(())
}
