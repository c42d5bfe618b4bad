//! What parties may read: balances, the book, their orders and leases.

use super::{Market, MarketError};
use crate::ledger::accounts;
use crate::store::{LeaseRow, LeaseState, OrderRow};
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{BookLevel, LeaseView, OrderView, Response, SandboxKind};

fn micros(v: i64) -> Micros {
    Micros(u64::try_from(v).unwrap_or(0))
}

impl Market {
    /// `name`'s spendable balance, what its open orders hold, and what its
    /// running leases have in escrow.
    pub async fn balance(&self, name: &str) -> Result<Response, MarketError> {
        let available = micros(self.store.balance(&accounts::user(name)).await?);
        let mut held = Micros::ZERO;
        for b in self.buys.values().filter(|b| b.buyer == name) {
            held = held.checked_add(b.held).unwrap_or(held);
        }
        let mut escrow = Micros::ZERO;
        for l in self.leases.values().filter(|l| l.buyer == name) {
            let e = micros(self.store.balance(&accounts::escrow(&l.key)).await?);
            escrow = escrow.checked_add(e).unwrap_or(escrow);
        }
        Ok(Response::Balance {
            available,
            held,
            escrow,
        })
    }

    /// The aggregated book.
    pub fn book_levels(&self) -> Vec<BookLevel> {
        let depth = self.book.depth();
        let level = |side: &str, d: &crate::book::DepthLevel| BookLevel {
            side: side.to_string(),
            kind: d.kind,
            price: d.price,
            cpus: d.cpus,
            orders: d.orders,
        };
        depth
            .sells
            .iter()
            .map(|d| level("sell", d))
            .chain(depth.buys.iter().map(|d| level("buy", d)))
            .collect()
    }

    /// `name`'s orders, newest first.
    pub async fn orders_of(&self, name: &str) -> Result<Vec<OrderView>, MarketError> {
        let mut rows = self.store.orders_of(name).await?;
        rows.sort_by_key(|r| std::cmp::Reverse(r.id));
        Ok(rows.iter().map(order_view).collect())
    }

    /// `name`'s leases as buyer or seller, newest first.
    pub async fn leases_of(&self, name: &str) -> Result<Vec<LeaseView>, MarketError> {
        let mut rows = self.store.leases_of(name).await?;
        rows.sort_by_key(|r| std::cmp::Reverse(r.id));
        let orders = self.store.orders_of(name).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let order = orders
                    .iter()
                    .find(|o| o.id == r.buy_order)
                    .map(|o| o.key.clone())
                    .unwrap_or_else(|| cpushare_proto::id::short_id("order", r.buy_order));
                let mut view = lease_view(r, order);
                // A started lease is written as running with its next
                // write (see `lease_started`); show the live state.
                let live_started = self
                    .leases
                    .get(&r.key)
                    .is_some_and(|l| l.started_ms.is_some());
                if r.state == LeaseState::Starting && live_started {
                    view.state = LeaseState::Running.as_str().to_string();
                }
                view
            })
            .collect())
    }
}

fn order_view(r: &OrderRow) -> OrderView {
    OrderView {
        id: r.key.clone(),
        side: r.side.as_str().to_string(),
        kind: r.kind.clone(),
        cpus: r.cpus,
        mem_mib: r.mem_mib,
        instances: r.instances,
        filled: r.filled,
        minutes: r.minutes,
        price: r.price,
        state: r.state.as_str().to_string(),
        created_ms: r.created_ms,
    }
}

fn lease_view(r: &LeaseRow, order: String) -> LeaseView {
    LeaseView {
        id: r.key.clone(),
        order,
        buyer: r.buyer.clone(),
        seller: r.seller.clone(),
        kind: SandboxKind::parse(&r.kind).unwrap_or(SandboxKind::Wasm),
        cpus: r.cpus,
        mem_mib: r.mem_mib,
        minutes: r.minutes,
        price: r.price,
        settled_minutes: r.settled_minutes,
        cost: r.cost,
        state: r.state.as_str().to_string(),
        end: if r.state == LeaseState::Ended {
            r.end_reason.clone()
        } else {
            None
        },
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
    }
}
