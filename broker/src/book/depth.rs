//! Aggregated price levels of the book, for the `cpushare book` listing.

use super::{Book, SandboxKind};
use cpushare_proto::money::Micros;
use serde::{Deserialize, Serialize};

/// One price level of one side and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthLevel {
    /// Sandbox kind (a sell offering both kinds appears under each).
    pub kind: SandboxKind,
    /// Price per vCPU-minute: the ask for sells, the cap for buys.
    pub price: Micros,
    /// Sells: free vCPUs; buys: vCPUs of the unfilled instances.
    pub cpus: u64,
    /// Sells: free memory; buys: memory of the unfilled instances (MiB).
    pub mem_mib: u64,
    /// Buys: unfilled instances; sells: 0 (they offer capacity, not instances).
    pub instances: u64,
    /// Number of orders at this level.
    pub orders: u32,
}

/// Both sides of the book, level by level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookDepth {
    /// Sells with free capacity: per kind (wasm, then vm), cheapest first.
    pub sells: Vec<DepthLevel>,
    /// Resting buys: per kind (wasm, then vm), highest cap first.
    pub buys: Vec<DepthLevel>,
}

impl BookDepth {
    pub(super) fn of(book: &Book) -> BookDepth {
        let mut depth = BookDepth::default();
        for kind in SandboxKind::ALL {
            for &(price, id) in &book.sell_index[kind.index()] {
                if let Some(s) = book.sells.get(&id) {
                    let level = DepthLevel {
                        kind,
                        price,
                        cpus: u64::from(s.remaining_cpus),
                        mem_mib: s.remaining_mem_mib,
                        instances: 0,
                        orders: 1,
                    };
                    push_level(&mut depth.sells, level);
                }
            }
            for &(cap, id) in &book.buy_index[kind.index()] {
                if let Some(b) = book.buys.get(&id) {
                    let n = u64::from(b.remaining_instances);
                    let level = DepthLevel {
                        kind,
                        price: cap.0,
                        cpus: n * u64::from(b.order.cpus),
                        mem_mib: n.saturating_mul(b.order.mem_mib),
                        instances: n,
                        orders: 1,
                    };
                    push_level(&mut depth.buys, level);
                }
            }
        }
        depth
    }
}

/// Appends `level`, merging it into the last level when kind and price agree
/// (the indexes yield levels in order, so equal prices are adjacent).
fn push_level(levels: &mut Vec<DepthLevel>, level: DepthLevel) {
    match levels.last_mut() {
        Some(last) if last.kind == level.kind && last.price == level.price => {
            last.cpus += level.cpus;
            last.mem_mib = last.mem_mib.saturating_add(level.mem_mib);
            last.instances += level.instances;
            last.orders += 1;
        }
        _ => levels.push(level),
    }
}
