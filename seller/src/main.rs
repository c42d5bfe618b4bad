//! `cpushare-seller`: the daemon a seller installs.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cpushare_proto::client::Home;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{Role, SandboxKind, SellOffer};
use cpushare_seller::daemon::{self, SellerConfig};
use std::path::PathBuf;

/// Rent out this machine's idle CPUs on a cpushare market.
///
///   cpushare-seller enroll TOKEN        # once, with the token the broker operator gave you
///   cpushare-seller run --cpus 2 --mem 2G --price 0.001
///
/// Buyers' jobs run confined in sandboxes; you are paid per vCPU-minute.
#[derive(Parser)]
#[command(name = "cpushare-seller", version, verbatim_doc_comment)]
struct Cli {
    /// Directory holding this seller's identity, image cache and scratch space.
    #[arg(long, global = true, env = "CPUSHARE_SELLER_HOME", default_value_os_t = default_home())]
    home: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll with a one-time token from `cpushare-broker account add NAME --role seller`.
    Enroll {
        /// The token (starts with `cpst1-`).
        token: String,
    },
    /// Offer capacity and run leases until stopped.
    Run {
        /// vCPUs to offer.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory to offer, e.g. 512M or 2G.
        #[arg(long, default_value = "1G", value_parser = parse_size_mib)]
        mem: u64,
        /// Price per vCPU-minute in credits, e.g. 0.001.
        #[arg(long)]
        price: Micros,
        /// Sandboxes to offer (wasm, vm).
        #[arg(long, value_delimiter = ',', default_value = "wasm", value_parser = parse_kind)]
        kinds: Vec<SandboxKind>,
        /// Shortest lease accepted, minutes.
        #[arg(long, default_value_t = 1)]
        min_minutes: u32,
        /// Longest lease accepted, minutes.
        #[arg(long, default_value_t = 1440)]
        max_minutes: u32,
    },
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cpushare-seller")
}

/// Parses `512M`, `2G`, `1024` (MiB) into MiB.
fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('G' | 'g') => (&t[..t.len() - 1], 1024),
        Some('M' | 'm') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{s}` is not a size like 512M or 2G"))
}

fn parse_kind(s: &str) -> Result<SandboxKind, String> {
    SandboxKind::parse(s).ok_or_else(|| format!("`{s}` is not a sandbox kind (wasm, vm)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let home = Home::new(&cli.home);
    match cli.cmd {
        Cmd::Enroll { token } => {
            let info = home.enroll(&token, Role::Seller).await?;
            println!(
                "enrolled as seller {} at {}; identity in {}",
                info.name,
                info.broker,
                cli.home.display()
            );
            println!("next: cpushare-seller run --cpus 1 --mem 1G --price 0.001");
            Ok(())
        }
        Cmd::Run {
            cpus,
            mem,
            price,
            kinds,
            min_minutes,
            max_minutes,
        } => {
            home.info().context("cannot run before enrolling")?;
            daemon::run(SellerConfig {
                home,
                offer: SellOffer {
                    cpus,
                    mem_mib: mem,
                    kinds,
                    price,
                    min_minutes,
                    max_minutes,
                },
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("64"), Ok(64));
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("lots").is_err());
    }
}
