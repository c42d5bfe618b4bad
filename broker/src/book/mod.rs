//! The order book: a continuous double auction for compute, one per sandbox kind.
//!
//! Sans-IO: orders and the current time go in, [`Fill`]s come out; the broker
//! shell turns each fill into a lease and the ledger postings around it.
//!
//! - A **sell** is a standing offer of capacity (cpus, memory). Each fill is
//!   one instance = one lease and takes that instance's cpus and memory from
//!   the sell; [`Book::release`] gives them back when the lease ends, and the
//!   freed capacity is matched against resting buys at once.
//! - A **buy** wants `instances` identical leases; it may be filled by several
//!   sells, and rests until all instances are filled, it is cancelled or it
//!   expires.
//! - **Compatibility**: the sell offers the buy's sandbox kind, has free cpus
//!   and memory for one instance, accepts the lease length, asks no more than
//!   the buy's cap, neither order has expired, and seller != buyer (no self
//!   trade).
//! - **Priority**: an incoming buy takes the cheapest compatible sell first,
//!   then the earliest (lowest id); an incoming sell (or released capacity)
//!   serves the buy with the highest cap first, then the earliest.
//! - **Pay-as-ask**: every fill trades at the seller's price. The buyer's
//!   `max_price` is only a cap; a buyer never pays more than the seller asked,
//!   so the hold reserved at the cap is partly released after matching.
//!
//! Cost: sells with free capacity sit in a `BTreeSet` keyed by (price, id)
//! per kind; buys by (cap descending, id) per kind; a sell whose cpus are all
//! taken leaves the index until capacity is released, so exhausted sellers
//! cost nothing. A match costs O(log n) plus one `Fill`. Worst case: an
//! incoming buy scans, in price order, every cheaper sell that is still
//! incompatible (too little capacity left for this instance size, wrong lease
//! length, the buyer's own sell, expired but not yet swept by
//! [`Book::expire`]); likewise an incoming sell scans every buy with a high
//! enough cap that does not fit. With uniform instance sizes this does not
//! happen; with a mix of sizes it is bounded by the number of such orders.

mod depth;
mod order;
#[cfg(test)]
mod props;

pub use depth::{BookDepth, DepthLevel};
pub use order::{
    BookError, BuyOrder, Cancelled, Fill, OrderId, RestingBuy, RestingSell, SandboxKind, SellOrder,
};

use cpushare_proto::money::Micros;
use order::{instances_fitting, live};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Key of a sell in a kind's index: cheapest first, then earliest.
type SellKey = (Micros, OrderId);
/// Key of a buy in a kind's index: highest cap first, then earliest.
type BuyKey = (Reverse<Micros>, OrderId);

/// The order book of both sides and both sandbox kinds.
#[derive(Debug, Default)]
pub struct Book {
    sells: BTreeMap<OrderId, RestingSell>,
    buys: BTreeMap<OrderId, RestingBuy>,
    /// Per kind, the sells with free cpus.
    sell_index: [BTreeSet<SellKey>; 2],
    /// Per kind, all resting buys.
    buy_index: [BTreeSet<BuyKey>; 2],
    /// Orders of either side that carry an expiry, by expiry time.
    expiries: BTreeSet<(u64, OrderId)>,
    /// Reused list of orders to drop from the indexes after a matching pass.
    scratch: Vec<OrderId>,
}

impl Book {
    /// An empty book.
    pub fn new() -> Book {
        Book::default()
    }

    /// Places a sell order and matches its capacity against resting buys.
    pub fn add_sell(&mut self, order: SellOrder, now_ms: u64) -> Result<Vec<Fill>, BookError> {
        order.validate()?;
        self.check_unique(order.id)?;
        let id = order.id;
        if let Some(t) = order.expires_at_ms {
            self.expiries.insert((t, id));
        }
        index_sell(&mut self.sell_index, &order);
        self.sells.insert(
            id,
            RestingSell {
                remaining_cpus: order.cpus,
                remaining_mem_mib: order.mem_mib,
                order,
            },
        );
        let mut fills = Vec::new();
        self.match_sell(id, now_ms, &mut fills);
        Ok(fills)
    }

    /// Places a buy order, fills what it can from resting sells (cheapest
    /// first), and rests the unfilled instances.
    pub fn add_buy(&mut self, order: BuyOrder, now_ms: u64) -> Result<Vec<Fill>, BookError> {
        order.validate()?;
        self.check_unique(order.id)?;
        let mut fills = Vec::new();
        let mut remaining = order.instances;
        let mut exhausted = std::mem::take(&mut self.scratch);
        if live(order.expires_at_ms, now_ms) {
            let bound = (order.max_price, OrderId(u64::MAX));
            for &(_, sell_id) in self.sell_index[order.kind.index()].range(..=bound) {
                let Some(sell) = self.sells.get_mut(&sell_id) else {
                    continue;
                };
                let n = instances_fitting(
                    &sell.order,
                    sell.remaining_cpus,
                    sell.remaining_mem_mib,
                    &order,
                    now_ms,
                )
                .min(remaining);
                if n == 0 {
                    continue;
                }
                take_instances(sell, &order, n, &mut fills);
                if sell.remaining_cpus == 0 {
                    exhausted.push(sell_id);
                }
                remaining -= n;
                if remaining == 0 {
                    break;
                }
            }
        }
        for sell_id in exhausted.drain(..) {
            if let Some(sell) = self.sells.get(&sell_id) {
                unindex_sell(&mut self.sell_index, &sell.order);
            }
        }
        self.scratch = exhausted;
        if remaining > 0 {
            if let Some(t) = order.expires_at_ms {
                self.expiries.insert((t, order.id));
            }
            self.buy_index[order.kind.index()].insert((Reverse(order.max_price), order.id));
            self.buys.insert(
                order.id,
                RestingBuy {
                    remaining_instances: remaining,
                    order,
                },
            );
        }
        Ok(fills)
    }

    /// Gives back capacity of a lease that ended (never above the order's
    /// original capacity) and matches it against resting buys.
    ///
    /// `None` when the sell is no longer in the book (cancelled, expired or
    /// unknown): nothing changes.
    pub fn release(
        &mut self,
        sell_id: OrderId,
        cpus: u32,
        mem_mib: u64,
        now_ms: u64,
    ) -> Option<Vec<Fill>> {
        let sell = self.sells.get_mut(&sell_id)?;
        let was_exhausted = sell.remaining_cpus == 0;
        sell.remaining_cpus = sell
            .remaining_cpus
            .saturating_add(cpus)
            .min(sell.order.cpus);
        sell.remaining_mem_mib = sell
            .remaining_mem_mib
            .saturating_add(mem_mib)
            .min(sell.order.mem_mib);
        if was_exhausted && sell.remaining_cpus > 0 {
            index_sell(&mut self.sell_index, &sell.order);
        }
        let mut fills = Vec::new();
        self.match_sell(sell_id, now_ms, &mut fills);
        Some(fills)
    }

    /// Removes an order of either side; `None` if it is not in the book.
    pub fn cancel(&mut self, id: OrderId) -> Option<Cancelled> {
        if let Some(sell) = self.sells.remove(&id) {
            unindex_sell(&mut self.sell_index, &sell.order);
            if let Some(t) = sell.order.expires_at_ms {
                self.expiries.remove(&(t, id));
            }
            return Some(Cancelled::Sell {
                remaining_cpus: sell.remaining_cpus,
                remaining_mem_mib: sell.remaining_mem_mib,
                order: sell.order,
            });
        }
        let buy = self.buys.remove(&id)?;
        self.buy_index[buy.order.kind.index()].remove(&(Reverse(buy.order.max_price), id));
        if let Some(t) = buy.order.expires_at_ms {
            self.expiries.remove(&(t, id));
        }
        Some(Cancelled::Buy {
            remaining_instances: buy.remaining_instances,
            order: buy.order,
        })
    }

    /// Removes every order whose expiry is at or before `now_ms`; returns
    /// their ids, earliest expiry first. Leases already filled from an
    /// expired sell keep running; their `release` then returns `None`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<OrderId> {
        let due: Vec<OrderId> = self
            .expiries
            .range(..=(now_ms, OrderId(u64::MAX)))
            .map(|&(_, id)| id)
            .collect();
        for &id in &due {
            self.cancel(id);
        }
        due
    }

    /// A resting sell order and its free capacity.
    pub fn sell(&self, id: OrderId) -> Option<&RestingSell> {
        self.sells.get(&id)
    }

    /// A resting buy order and its unfilled instances.
    pub fn buy(&self, id: OrderId) -> Option<&RestingBuy> {
        self.buys.get(&id)
    }

    /// All resting sells (including those whose capacity is all leased), by id.
    pub fn sells(&self) -> impl Iterator<Item = &RestingSell> + '_ {
        self.sells.values()
    }

    /// All resting buys, by id.
    pub fn buys(&self) -> impl Iterator<Item = &RestingBuy> + '_ {
        self.buys.values()
    }

    /// Aggregated price levels per side and kind, for `cpushare book`.
    pub fn depth(&self) -> BookDepth {
        BookDepth::of(self)
    }

    fn check_unique(&self, id: OrderId) -> Result<(), BookError> {
        if self.sells.contains_key(&id) || self.buys.contains_key(&id) {
            return Err(BookError::DuplicateId(id));
        }
        Ok(())
    }

    /// Matches the free capacity of one sell against resting buys of every
    /// kind it offers, highest cap first, then earliest.
    fn match_sell(&mut self, sell_id: OrderId, now_ms: u64, fills: &mut Vec<Fill>) {
        let Some(sell) = self.sells.get_mut(&sell_id) else {
            return;
        };
        if sell.remaining_cpus == 0 || !live(sell.order.expires_at_ms, now_ms) {
            return;
        }
        let mut filled = std::mem::take(&mut self.scratch);
        let bound = (Reverse(sell.order.price), OrderId(u64::MAX));
        let side = |kind: SandboxKind| {
            sell.order
                .offers(kind)
                .then(|| self.buy_index[kind.index()].range(..=bound))
        };
        let mut wasm = side(SandboxKind::Wasm).into_iter().flatten().peekable();
        let mut vm = side(SandboxKind::Vm).into_iter().flatten().peekable();
        loop {
            let next = match (wasm.peek(), vm.peek()) {
                (None, None) => break,
                (Some(a), Some(b)) if b < a => vm.next(),
                (Some(_), _) => wasm.next(),
                (None, Some(_)) => vm.next(),
            };
            let Some(&(_, buy_id)) = next else { break };
            let Some(buy) = self.buys.get_mut(&buy_id) else {
                continue;
            };
            let n = instances_fitting(
                &sell.order,
                sell.remaining_cpus,
                sell.remaining_mem_mib,
                &buy.order,
                now_ms,
            )
            .min(buy.remaining_instances);
            if n == 0 {
                continue;
            }
            take_instances(sell, &buy.order, n, fills);
            buy.remaining_instances -= n;
            if buy.remaining_instances == 0 {
                filled.push(buy_id);
            }
            if sell.remaining_cpus == 0 {
                break;
            }
        }
        if sell.remaining_cpus == 0 {
            unindex_sell(&mut self.sell_index, &sell.order);
        }
        for buy_id in filled.drain(..) {
            if let Some(buy) = self.buys.remove(&buy_id) {
                self.buy_index[buy.order.kind.index()]
                    .remove(&(Reverse(buy.order.max_price), buy_id));
                if let Some(t) = buy.order.expires_at_ms {
                    self.expiries.remove(&(t, buy_id));
                }
            }
        }
        self.scratch = filled;
    }
}

/// Takes `n` instances of `buy` from `sell`'s free capacity, one fill each.
/// The caller has checked that `n` instances fit.
fn take_instances(sell: &mut RestingSell, buy: &BuyOrder, n: u32, fills: &mut Vec<Fill>) {
    sell.remaining_cpus -= n * buy.cpus;
    sell.remaining_mem_mib -= u64::from(n) * buy.mem_mib;
    fills.reserve(n as usize);
    for _ in 0..n {
        fills.push(Fill {
            buy: buy.id,
            sell: sell.order.id,
            buyer: buy.buyer.clone(),
            seller: sell.order.seller.clone(),
            cpus: buy.cpus,
            mem_mib: buy.mem_mib,
            minutes: buy.minutes,
            price: sell.order.price,
            kind: buy.kind,
        });
    }
}

fn index_sell(index: &mut [BTreeSet<SellKey>; 2], order: &SellOrder) {
    for kind in SandboxKind::ALL {
        if order.offers(kind) {
            index[kind.index()].insert((order.price, order.id));
        }
    }
}

fn unindex_sell(index: &mut [BTreeSet<SellKey>; 2], order: &SellOrder) {
    for kind in SandboxKind::ALL {
        if order.offers(kind) {
            index[kind.index()].remove(&(order.price, order.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sell(id: u64, seller: &str, cpus: u32, price: u64) -> SellOrder {
        SellOrder {
            id: OrderId(id),
            seller: seller.into(),
            cpus,
            mem_mib: u64::from(cpus) * 1024,
            kinds: vec![SandboxKind::Wasm, SandboxKind::Vm],
            price: Micros(price),
            min_minutes: 1,
            max_minutes: 120,
            expires_at_ms: None,
        }
    }

    fn buy(id: u64, buyer: &str, instances: u32, cpus: u32, max_price: u64) -> BuyOrder {
        BuyOrder {
            id: OrderId(id),
            buyer: buyer.into(),
            instances,
            cpus,
            mem_mib: u64::from(cpus) * 1024,
            minutes: 30,
            max_price: Micros(max_price),
            kind: SandboxKind::Wasm,
            expires_at_ms: None,
        }
    }

    fn sells_of(fills: &[Fill]) -> Vec<u64> {
        fills.iter().map(|f| f.sell.0).collect()
    }

    #[test]
    fn incoming_buy_takes_cheapest_then_earliest_sell_at_the_sellers_price() {
        let mut book = Book::new();
        book.add_sell(sell(1, "s1", 2, 30), 0).unwrap();
        book.add_sell(sell(2, "s2", 2, 20), 0).unwrap();
        book.add_sell(sell(3, "s3", 2, 20), 0).unwrap();
        let fills = book.add_buy(buy(4, "b", 3, 2, 50), 0).unwrap();
        assert_eq!(sells_of(&fills), vec![2, 3, 1]);
        assert_eq!(
            fills.iter().map(|f| f.price.0).collect::<Vec<_>>(),
            vec![20, 20, 30],
            "pay-as-ask: the buyer's cap of 50 is not the price"
        );
        assert!(
            book.buy(OrderId(4)).is_none(),
            "fully filled buys do not rest"
        );
    }

    #[test]
    fn incoming_sell_serves_highest_cap_then_earliest_buy_across_kinds() {
        let mut book = Book::new();
        book.add_buy(buy(1, "b1", 1, 2, 10), 0).unwrap();
        let mut vm = buy(2, "b2", 1, 2, 40);
        vm.kind = SandboxKind::Vm;
        book.add_buy(vm, 0).unwrap();
        book.add_buy(buy(3, "b3", 1, 2, 40), 0).unwrap();
        book.add_buy(buy(4, "b4", 1, 2, 5), 0).unwrap();
        let fills = book.add_sell(sell(5, "s", 6, 8), 0).unwrap();
        let order: Vec<u64> = fills.iter().map(|f| f.buy.0).collect();
        assert_eq!(order, vec![2, 3, 1], "b4's cap 5 is below the ask 8");
        assert_eq!(fills[0].kind, SandboxKind::Vm);
        assert!(fills.iter().all(|f| f.price == Micros(8)));
        assert_eq!(book.sell(OrderId(5)).unwrap().remaining_cpus, 0);
        assert_eq!(book.buys().count(), 1);
    }

    #[test]
    fn partial_fill_rests_the_remainder_and_release_fills_it() {
        let mut book = Book::new();
        book.add_sell(sell(1, "s", 4, 10), 0).unwrap();
        let fills = book.add_buy(buy(2, "b", 3, 2, 10), 0).unwrap();
        assert_eq!(fills.len(), 2);
        assert_eq!(book.buy(OrderId(2)).unwrap().remaining_instances, 1);
        assert_eq!(book.depth().sells.len(), 0, "no free capacity left");
        let fills = book.release(OrderId(1), 2, 2048, 1).unwrap();
        assert_eq!(fills.len(), 1);
        assert_eq!(fills[0].buy, OrderId(2));
        assert!(book.buy(OrderId(2)).is_none());
        assert_eq!(book.sell(OrderId(1)).unwrap().remaining_cpus, 0);
    }

    #[test]
    fn release_never_exceeds_original_capacity_and_ignores_unknown_orders() {
        let mut book = Book::new();
        book.add_sell(sell(1, "s", 4, 10), 0).unwrap();
        assert_eq!(book.release(OrderId(1), 100, 1 << 40, 0), Some(vec![]));
        let s = book.sell(OrderId(1)).unwrap();
        assert_eq!((s.remaining_cpus, s.remaining_mem_mib), (4, 4096));
        assert_eq!(book.release(OrderId(9), 1, 1, 0), None);
        book.cancel(OrderId(1)).unwrap();
        assert_eq!(book.release(OrderId(1), 1, 1, 0), None);
    }

    #[test]
    fn a_seller_never_fills_its_own_buy() {
        let mut book = Book::new();
        book.add_sell(sell(1, "alice", 4, 10), 0).unwrap();
        assert!(book
            .add_buy(buy(2, "alice", 1, 1, 10), 0)
            .unwrap()
            .is_empty());
        let fills = book.add_buy(buy(3, "bob", 1, 1, 10), 0).unwrap();
        assert_eq!(fills[0].seller, "alice");
        assert_eq!(fills[0].buyer, "bob");
        assert!(book.add_sell(sell(4, "alice", 4, 1), 0).unwrap().is_empty());
    }

    #[test]
    fn expired_orders_do_not_match_and_are_swept() {
        let mut book = Book::new();
        let mut s = sell(1, "s", 4, 10);
        s.expires_at_ms = Some(100);
        book.add_sell(s, 0).unwrap();
        let mut b = buy(2, "b", 1, 1, 10);
        b.expires_at_ms = Some(300);
        assert!(
            book.add_buy(b, 100).unwrap().is_empty(),
            "sell expired at 100"
        );
        assert_eq!(book.expire(99), vec![]);
        assert_eq!(book.expire(100), vec![OrderId(1)]);
        assert!(
            book.add_sell(sell(3, "s2", 4, 10), 300).unwrap().is_empty(),
            "buy expired"
        );
        assert_eq!(book.expire(1000), vec![OrderId(2)]);
        assert_eq!(book.buys().count(), 0);
        assert_eq!(book.sells().count(), 1);
    }

    #[test]
    fn cancel_reports_what_was_left() {
        let mut book = Book::new();
        book.add_sell(sell(1, "s", 4, 10), 0).unwrap();
        book.add_buy(buy(2, "b", 5, 1, 10), 0).unwrap();
        match book.cancel(OrderId(2)) {
            Some(Cancelled::Buy {
                remaining_instances,
                order,
            }) => {
                assert_eq!(remaining_instances, 1);
                assert_eq!(order.instances, 5);
            }
            other => panic!("expected a cancelled buy, got {other:?}"),
        }
        match book.cancel(OrderId(1)) {
            Some(Cancelled::Sell { remaining_cpus, .. }) => assert_eq!(remaining_cpus, 0),
            other => panic!("expected a cancelled sell, got {other:?}"),
        }
        assert_eq!(book.cancel(OrderId(1)), None);
        assert!(book.add_sell(sell(5, "s", 4, 10), 0).unwrap().is_empty());
    }

    #[test]
    fn duplicate_and_malformed_orders_are_refused_without_change() {
        let mut book = Book::new();
        book.add_sell(sell(1, "s", 4, 10), 0).unwrap();
        assert_eq!(
            book.add_buy(buy(1, "b", 1, 1, 10), 0),
            Err(BookError::DuplicateId(OrderId(1)))
        );
        assert_eq!(
            book.add_buy(buy(2, "b", 0, 1, 10), 0),
            Err(BookError::ZeroInstances(OrderId(2)))
        );
        assert_eq!(book.sell(OrderId(1)).unwrap().remaining_cpus, 4);
    }

    #[test]
    fn small_leftovers_do_not_block_a_larger_buy_further_up() {
        let mut book = Book::new();
        book.add_sell(sell(1, "s1", 1, 5), 0).unwrap();
        book.add_sell(sell(2, "s2", 8, 9), 0).unwrap();
        let fills = book.add_buy(buy(3, "b", 1, 4, 10), 0).unwrap();
        assert_eq!(sells_of(&fills), vec![2]);
    }

    #[test]
    fn depth_aggregates_free_capacity_and_unfilled_instances_per_price() {
        let mut book = Book::new();
        book.add_sell(sell(1, "s1", 4, 10), 0).unwrap();
        book.add_sell(sell(2, "s2", 2, 10), 0).unwrap();
        book.add_sell(sell(3, "s3", 2, 12), 0).unwrap();
        book.add_buy(buy(4, "b", 2, 1, 5), 0).unwrap();
        book.add_buy(buy(5, "b", 1, 2, 7), 0).unwrap();
        let d = book.depth();
        let wasm_asks: Vec<_> = d
            .sells
            .iter()
            .filter(|l| l.kind == SandboxKind::Wasm)
            .map(|l| (l.price.0, l.cpus, l.orders))
            .collect();
        assert_eq!(wasm_asks, vec![(10, 6, 2), (12, 2, 1)]);
        let bids: Vec<_> = d
            .buys
            .iter()
            .map(|l| (l.price.0, l.cpus, l.instances))
            .collect();
        assert_eq!(bids, vec![(7, 2, 1), (5, 2, 2)]);
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"kind\":\"wasm\""), "{json}");
    }
}
