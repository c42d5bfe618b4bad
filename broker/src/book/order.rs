//! The orders the book holds, the fills it produces, and why it refuses an order.

use cpushare_proto::money::Micros;
use serde::{Deserialize, Serialize};

/// A broker-assigned order sequence number; lower ids arrived earlier, so the
/// id is also the time priority. Unique across both sides of the book.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct OrderId(pub u64);

/// The sandbox kinds are the wire type: orders carry what the protocol says.
pub use cpushare_proto::msg::SandboxKind;

/// A seller's standing offer of capacity; each fill takes one instance's
/// cpus and memory from it until `release` gives them back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellOrder {
    /// Broker-assigned id and time priority.
    pub id: OrderId,
    /// Seller account name (without the `user:` prefix).
    pub seller: String,
    /// vCPUs offered in total.
    pub cpus: u32,
    /// Memory offered in total, MiB.
    pub mem_mib: u64,
    /// Sandbox kinds this seller runs.
    pub kinds: Vec<SandboxKind>,
    /// Asking price per vCPU-minute; every fill trades at this price.
    pub price: Micros,
    /// Shortest lease accepted, minutes.
    pub min_minutes: u32,
    /// Longest lease accepted, minutes.
    pub max_minutes: u32,
    /// The order stops matching at this time (ms); `None` = good till cancelled.
    pub expires_at_ms: Option<u64>,
}

/// A buyer's request for `instances` identical leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyOrder {
    /// Broker-assigned id and time priority.
    pub id: OrderId,
    /// Buyer account name (without the `user:` prefix).
    pub buyer: String,
    /// Number of leases wanted; each is filled separately.
    pub instances: u32,
    /// vCPUs per instance.
    pub cpus: u32,
    /// Memory per instance, MiB.
    pub mem_mib: u64,
    /// Lease length, minutes.
    pub minutes: u32,
    /// Highest price per vCPU-minute the buyer accepts (a cap, not the trade price).
    pub max_price: Micros,
    /// Sandbox kind wanted.
    pub kind: SandboxKind,
    /// The order stops matching at this time (ms); `None` = good till cancelled.
    pub expires_at_ms: Option<u64>,
}

/// One matched instance: becomes exactly one lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// The buy order filled.
    pub buy: OrderId,
    /// The sell order that provides the capacity.
    pub sell: OrderId,
    /// Buyer account name.
    pub buyer: String,
    /// Seller account name.
    pub seller: String,
    /// vCPUs of this lease (taken from the sell's capacity).
    pub cpus: u32,
    /// Memory of this lease, MiB (taken from the sell's capacity).
    pub mem_mib: u64,
    /// Lease length, minutes.
    pub minutes: u32,
    /// Trade price per vCPU-minute: always the seller's price.
    pub price: Micros,
    /// Sandbox kind of the lease.
    pub kind: SandboxKind,
}

/// What `Book::cancel` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cancelled {
    /// A sell order, with the capacity it still had free (leases already
    /// filled from it keep running).
    Sell {
        /// The order as placed.
        order: SellOrder,
        /// vCPUs not taken by fills at cancel time.
        remaining_cpus: u32,
        /// Memory not taken by fills at cancel time, MiB.
        remaining_mem_mib: u64,
    },
    /// A buy order, with the instances it had not yet filled.
    Buy {
        /// The order as placed.
        order: BuyOrder,
        /// Instances not filled at cancel time.
        remaining_instances: u32,
    },
}

/// A sell order resting in the book, with its free capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingSell {
    /// The order as placed.
    pub order: SellOrder,
    /// vCPUs not taken by outstanding fills.
    pub remaining_cpus: u32,
    /// Memory not taken by outstanding fills, MiB.
    pub remaining_mem_mib: u64,
}

/// A buy order resting in the book, with its unfilled instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingBuy {
    /// The order as placed.
    pub order: BuyOrder,
    /// Instances still to fill.
    pub remaining_instances: u32,
}

/// Why the book refused an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// order id {0:?} is already in the book; ids must be unique across both sides
    #[error("order id {0:?} is already in the book; ids must be unique across both sides")]
    DuplicateId(OrderId),
    /// order {0:?} asks for or offers zero vCPUs
    #[error("order {0:?} asks for or offers zero vCPUs; give at least 1 cpu")]
    ZeroCpus(OrderId),
    /// buy order {0:?} asks for zero instances
    #[error("buy order {0:?} asks for zero instances; give at least 1")]
    ZeroInstances(OrderId),
    /// buy order {0:?} asks for a lease of zero minutes
    #[error("buy order {0:?} asks for a lease of zero minutes; give at least 1")]
    ZeroMinutes(OrderId),
    /// sell order offers no sandbox kind
    #[error("sell order {0:?} offers no sandbox kind; offer `wasm`, `vm` or both")]
    NoKinds(OrderId),
    /// sell order's minute range is empty
    #[error("sell order {id:?} accepts {min}..={max} minutes, an empty range; use min <= max")]
    EmptyMinuteRange {
        /// The offending order.
        id: OrderId,
        /// Its `min_minutes`.
        min: u32,
        /// Its `max_minutes`.
        max: u32,
    },
}

impl SellOrder {
    /// Whether this order offers sandboxes of `kind`.
    pub fn offers(&self, kind: SandboxKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Checks the order is well formed.
    pub(crate) fn validate(&self) -> Result<(), BookError> {
        if self.cpus == 0 {
            return Err(BookError::ZeroCpus(self.id));
        }
        if self.kinds.is_empty() {
            return Err(BookError::NoKinds(self.id));
        }
        if self.min_minutes > self.max_minutes {
            return Err(BookError::EmptyMinuteRange {
                id: self.id,
                min: self.min_minutes,
                max: self.max_minutes,
            });
        }
        Ok(())
    }
}

impl BuyOrder {
    /// Checks the order is well formed.
    pub(crate) fn validate(&self) -> Result<(), BookError> {
        if self.cpus == 0 {
            return Err(BookError::ZeroCpus(self.id));
        }
        if self.instances == 0 {
            return Err(BookError::ZeroInstances(self.id));
        }
        if self.minutes == 0 {
            return Err(BookError::ZeroMinutes(self.id));
        }
        Ok(())
    }
}

/// Whether an order with this expiry is live at `now_ms` (live strictly before it).
pub(crate) fn live(expires_at_ms: Option<u64>, now_ms: u64) -> bool {
    expires_at_ms.is_none_or(|t| now_ms < t)
}

/// How many instances of `buy` the free capacity of `sell` can take now:
/// zero unless every requirement other than quantity holds.
pub(crate) fn instances_fitting(
    sell: &SellOrder,
    remaining_cpus: u32,
    remaining_mem_mib: u64,
    buy: &BuyOrder,
    now_ms: u64,
) -> u32 {
    let compatible = sell.price <= buy.max_price
        && buy.minutes >= sell.min_minutes
        && buy.minutes <= sell.max_minutes
        && sell.offers(buy.kind)
        && live(sell.expires_at_ms, now_ms)
        && live(buy.expires_at_ms, now_ms)
        && sell.seller != buy.buyer;
    if !compatible || buy.cpus == 0 {
        return 0;
    }
    let by_cpu = remaining_cpus / buy.cpus;
    let by_mem = remaining_mem_mib
        .checked_div(buy.mem_mib)
        .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX));
    by_cpu.min(by_mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sell() -> SellOrder {
        SellOrder {
            id: OrderId(1),
            seller: "s".into(),
            cpus: 8,
            mem_mib: 4096,
            kinds: vec![SandboxKind::Wasm],
            price: Micros(10),
            min_minutes: 1,
            max_minutes: 60,
            expires_at_ms: Some(1000),
        }
    }

    fn buy() -> BuyOrder {
        BuyOrder {
            id: OrderId(2),
            buyer: "b".into(),
            instances: 10,
            cpus: 2,
            mem_mib: 1024,
            minutes: 30,
            max_price: Micros(10),
            kind: SandboxKind::Wasm,
            expires_at_ms: None,
        }
    }

    #[test]
    fn fit_is_limited_by_cpus_and_memory() {
        assert_eq!(instances_fitting(&sell(), 8, 4096, &buy(), 0), 4);
        assert_eq!(instances_fitting(&sell(), 8, 2048, &buy(), 0), 2);
        assert_eq!(instances_fitting(&sell(), 1, 4096, &buy(), 0), 0);
        let mut b = buy();
        b.mem_mib = 0;
        assert_eq!(instances_fitting(&sell(), 8, 0, &b, 0), 4);
    }

    #[test]
    fn each_requirement_can_veto_a_fit() {
        let s = sell();
        let ok = |b: &BuyOrder, now| instances_fitting(&s, 8, 4096, b, now) > 0;
        assert!(ok(&buy(), 999));
        assert!(!ok(&buy(), 1000), "sell expired");
        let mut b = buy();
        b.max_price = Micros(9);
        assert!(!ok(&b, 0), "price above cap");
        let mut b = buy();
        b.minutes = 61;
        assert!(!ok(&b, 0), "too long");
        let mut b = buy();
        b.kind = SandboxKind::Vm;
        assert!(!ok(&b, 0), "kind not offered");
        let mut b = buy();
        b.buyer = "s".into();
        assert!(!ok(&b, 0), "self trade");
        let mut b = buy();
        b.expires_at_ms = Some(5);
        assert!(!ok(&b, 5), "buy expired");
    }

    #[test]
    fn malformed_orders_are_refused_by_name() {
        let mut s = sell();
        s.min_minutes = 61;
        assert!(matches!(
            s.validate(),
            Err(BookError::EmptyMinuteRange {
                min: 61,
                max: 60,
                ..
            })
        ));
        let mut s = sell();
        s.kinds.clear();
        assert_eq!(s.validate(), Err(BookError::NoKinds(OrderId(1))));
        let mut b = buy();
        b.instances = 0;
        assert_eq!(b.validate(), Err(BookError::ZeroInstances(OrderId(2))));
        let mut b = buy();
        b.cpus = 0;
        assert_eq!(b.validate(), Err(BookError::ZeroCpus(OrderId(2))));
    }
}
