//! Human tables and `--json` for every listing.

use cpushare_proto::msg::{BookLevel, LeaseView, OrderView};
use serde::Serialize;

/// Prints `rows` as pretty JSON.
pub fn json<T: Serialize>(rows: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(rows)?);
    Ok(())
}

/// The order book, cheapest sells first then highest buys.
pub fn book(levels: &[BookLevel]) {
    if levels.is_empty() {
        println!("the book is empty: no seller is offering capacity and no buyer is waiting");
        return;
    }
    println!(
        "{:<5} {:<5} {:>12} {:>6} {:>7}",
        "SIDE", "KIND", "PRICE/vCPU-min", "vCPUs", "ORDERS"
    );
    for l in levels {
        println!(
            "{:<5} {:<5} {:>14} {:>6} {:>7}",
            l.side,
            l.kind,
            l.price.to_string(),
            l.cpus,
            l.orders
        );
    }
}

/// The user's orders.
pub fn orders(rows: &[OrderView]) {
    if rows.is_empty() {
        println!("no orders yet; `cpushare run FILE` places one");
        return;
    }
    println!(
        "{:<11} {:<4} {:<8} {:>5} {:>7} {:>9} {:>7} {:>10} {:<9}",
        "ID", "SIDE", "KIND", "vCPU", "MiB", "FILLED", "MIN", "PRICE", "STATE"
    );
    for o in rows {
        let filled = if o.side == "buy" {
            format!("{}/{}", o.filled, o.instances)
        } else {
            "-".into()
        };
        println!(
            "{:<11} {:<4} {:<8} {:>5} {:>7} {:>9} {:>7} {:>10} {:<9}",
            o.id,
            o.side,
            o.kind,
            o.cpus,
            o.mem_mib,
            filled,
            o.minutes,
            o.price.to_string(),
            o.state
        );
    }
}

/// The user's leases.
pub fn leases(rows: &[LeaseView]) {
    if rows.is_empty() {
        println!("no leases yet");
        return;
    }
    println!(
        "{:<11} {:<11} {:<12} {:<12} {:<4} {:>4} {:>7} {:>10} {:<8} END",
        "ID", "ORDER", "BUYER", "SELLER", "KIND", "vCPU", "MINUTES", "COST", "STATE"
    );
    for l in rows {
        println!(
            "{:<11} {:<11} {:<12} {:<12} {:<4} {:>4} {:>7} {:>10} {:<8} {}",
            l.id,
            l.order,
            l.buyer,
            l.seller,
            l.kind,
            l.cpus,
            format!("{}/{}", l.settled_minutes, l.minutes),
            l.cost.to_string(),
            l.state,
            l.end.as_deref().unwrap_or("")
        );
    }
}
