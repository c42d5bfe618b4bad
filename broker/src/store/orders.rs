//! Orders on the book, persisted so a restarted broker can rebuild it.

use super::columns::{
    col_micros, col_opt_u64, col_text, col_u32, col_u64, money_to_db, opt_to_db, text_enum, to_db,
};
use super::error::{db, StoreError};
use super::{Store, Tx};
use cpushare_proto::money::Micros;
use sqlx::any::AnyRow;

text_enum! {
    /// Which side of the book an order is on.
    pub enum Side {
        /// A buyer's order for capacity.
        Buy = "buy",
        /// A seller's offer of capacity.
        Sell = "sell",
    }
}

text_enum! {
    /// Where an order is in its life.
    pub enum OrderState {
        /// On the book, may still match.
        Open = "open",
        /// Every instance matched.
        Filled = "filled",
        /// Withdrawn by its owner.
        Cancelled = "cancelled",
        /// Its time ran out before it filled.
        Expired = "expired",
        /// Taken off the book by the broker (seller gone, broker shutdown).
        Closed = "closed",
    }
}

/// An order as stored: the fields the book needs plus the job spec as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// Broker-assigned id (see [`Store::max_ids`]).
    pub id: u64,
    /// Short id the user sees, like `K-1a2b3c4d`; unique.
    pub key: String,
    /// Buy or sell.
    pub side: Side,
    /// The user who posted it.
    pub owner: String,
    /// Sandbox kind(s), as the book writes them (`wasm`, `vm`, `wasm,vm`).
    pub kind: String,
    /// vCPUs per instance (buy) or offered (sell).
    pub cpus: u32,
    /// Memory per instance (buy) or offered (sell), MiB.
    pub mem_mib: u64,
    /// Instances wanted (buy); 1 for a sell order.
    pub instances: u32,
    /// Instances matched so far.
    pub filled: u32,
    /// Minutes wanted (buy).
    pub minutes: u32,
    /// Shortest lease accepted (sell).
    pub min_minutes: u32,
    /// Longest lease accepted (sell).
    pub max_minutes: u32,
    /// Ask (sell) or maximum price (buy) per vCPU-minute.
    pub price: Micros,
    /// The job spec as JSON (image id, command, ...); `{}` if none.
    pub spec: String,
    /// Where the order is in its life.
    pub state: OrderState,
    /// When it was posted, unix milliseconds.
    pub created_ms: u64,
    /// When it stops matching, unix milliseconds, if ever.
    pub expires_ms: Option<u64>,
    /// Most minutes one lease may reach through renewals (buy); 0 for none.
    pub renew_up_to: u32,
}

const ORDER_COLUMNS: &str = "id, key, side, owner, kind, cpus, mem_mib, instances, filled, \
     minutes, min_minutes, max_minutes, price, spec, state, created_ms, expires_ms, renew_up_to";

fn order_from_row(row: &AnyRow) -> Result<OrderRow, StoreError> {
    Ok(OrderRow {
        id: col_u64(row, "id")?,
        key: col_text(row, "key")?,
        side: Side::from_db("side", &col_text(row, "side")?)?,
        owner: col_text(row, "owner")?,
        kind: col_text(row, "kind")?,
        cpus: col_u32(row, "cpus")?,
        mem_mib: col_u64(row, "mem_mib")?,
        instances: col_u32(row, "instances")?,
        filled: col_u32(row, "filled")?,
        minutes: col_u32(row, "minutes")?,
        min_minutes: col_u32(row, "min_minutes")?,
        max_minutes: col_u32(row, "max_minutes")?,
        price: col_micros(row, "price")?,
        spec: col_text(row, "spec")?,
        state: OrderState::from_db("state", &col_text(row, "state")?)?,
        created_ms: col_u64(row, "created_ms")?,
        expires_ms: col_opt_u64(row, "expires_ms")?,
        renew_up_to: col_u32(row, "renew_up_to")?,
    })
}

impl Tx {
    /// Stores a new order; `OrderExists` if its id or key is taken.
    pub async fn insert_order(&mut self, o: &OrderRow) -> Result<(), StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO orders ({ORDER_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(to_db("order id", o.id)?)
        .bind(&o.key)
        .bind(o.side.as_str())
        .bind(&o.owner)
        .bind(&o.kind)
        .bind(i64::from(o.cpus))
        .bind(to_db("mem_mib", o.mem_mib)?)
        .bind(i64::from(o.instances))
        .bind(i64::from(o.filled))
        .bind(i64::from(o.minutes))
        .bind(i64::from(o.min_minutes))
        .bind(i64::from(o.max_minutes))
        .bind(money_to_db("order price", o.price)?)
        .bind(&o.spec)
        .bind(o.state.as_str())
        .bind(to_db("created_ms", o.created_ms)?)
        .bind(opt_to_db("expires_ms", o.expires_ms)?)
        .bind(i64::from(o.renew_up_to))
        .execute(&mut *self.inner)
        .await
        .map_err(db("inserting an order"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::OrderExists {
                id: o.id,
                key: o.key.clone(),
            });
        }
        Ok(())
    }

    /// Sets an order's state and filled count; `OrderUnknown` if no such id.
    pub async fn update_order(
        &mut self,
        id: u64,
        state: OrderState,
        filled: u32,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE orders SET state = $2, filled = $3 WHERE id = $1")
            .bind(to_db("order id", id)?)
            .bind(state.as_str())
            .bind(i64::from(filled))
            .execute(&mut *self.inner)
            .await
            .map_err(db("updating an order"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::OrderUnknown { id });
        }
        Ok(())
    }
}

impl Store {
    async fn orders_where(
        &self,
        condition: &str,
        arg: &str,
        op: &'static str,
    ) -> Result<Vec<OrderRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE {condition} ORDER BY id"
        ))
        .bind(arg)
        .fetch_all(&self.pool)
        .await
        .map_err(db(op))?
        .iter()
        .map(order_from_row)
        .collect()
    }

    /// Orders still on the book, oldest first: what a restarted broker loads.
    pub async fn open_orders(&self) -> Result<Vec<OrderRow>, StoreError> {
        self.orders_where(
            "state = $1",
            OrderState::Open.as_str(),
            "loading open orders",
        )
        .await
    }

    /// Every order `owner` ever posted, oldest first.
    pub async fn orders_of(&self, owner: &str) -> Result<Vec<OrderRow>, StoreError> {
        self.orders_where("owner = $1", owner, "listing a user's orders")
            .await
    }

    /// The order with short id `key`, if any.
    pub async fn order_by_key(&self, key: &str) -> Result<Option<OrderRow>, StoreError> {
        Ok(self
            .orders_where("key = $1", key, "finding an order")
            .await?
            .into_iter()
            .next())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A buy order with every field set to something distinct.
    pub(crate) fn buy_order(id: u64, owner: &str) -> OrderRow {
        OrderRow {
            id,
            key: format!("K-{id:08x}"),
            side: Side::Buy,
            owner: owner.into(),
            kind: "vm".into(),
            cpus: 2,
            mem_mib: 1024,
            instances: 3,
            filled: 0,
            minutes: 30,
            min_minutes: 0,
            max_minutes: 0,
            price: Micros(20_000),
            spec: r#"{"image":"C-ab12","args":["-j2"]}"#.into(),
            state: OrderState::Open,
            created_ms: 1_700_000_000_123,
            expires_ms: Some(1_700_000_600_000),
            renew_up_to: 90,
        }
    }

    async fn orders_round_trip_update_and_reload_as_open(store: Store) {
        let buy = buy_order(1, "ada");
        let sell = OrderRow {
            id: 2,
            key: "K-00000002".into(),
            side: Side::Sell,
            owner: "bo".into(),
            kind: "wasm,vm".into(),
            cpus: u32::MAX,
            mem_mib: i64::MAX as u64,
            instances: 1,
            min_minutes: 5,
            max_minutes: 600,
            price: Micros(i64::MAX as u64),
            spec: "{}".into(),
            expires_ms: None,
            renew_up_to: 0,
            ..buy_order(2, "bo")
        };
        let mut tx = store.begin().await.expect("begin");
        tx.insert_order(&buy).await.expect("insert buy");
        tx.insert_order(&sell).await.expect("insert sell");
        tx.insert_order(&buy_order(3, "ada"))
            .await
            .expect("insert 3");
        assert!(matches!(
            tx.insert_order(&buy).await,
            Err(StoreError::OrderExists { id: 1, .. })
        ));
        tx.commit().await.expect("commit");

        assert_eq!(
            store.order_by_key("K-00000001").await.expect("get"),
            Some(buy.clone())
        );
        assert_eq!(
            store.order_by_key("K-00000002").await.expect("get"),
            Some(sell.clone())
        );
        assert_eq!(store.order_by_key("K-nope").await.expect("get"), None);

        let mut tx = store.begin().await.expect("begin");
        tx.update_order(1, OrderState::Filled, 3)
            .await
            .expect("fill");
        tx.update_order(3, OrderState::Cancelled, 1)
            .await
            .expect("cancel");
        assert!(matches!(
            tx.update_order(99, OrderState::Closed, 0).await,
            Err(StoreError::OrderUnknown { id: 99 })
        ));
        tx.commit().await.expect("commit");

        let open = store.open_orders().await.expect("open");
        assert_eq!(open, [sell]);
        let ada: Vec<_> = store
            .orders_of("ada")
            .await
            .expect("of ada")
            .iter()
            .map(|o| (o.id, o.state, o.filled))
            .collect();
        assert_eq!(
            ada,
            [(1, OrderState::Filled, 3), (3, OrderState::Cancelled, 1)]
        );
    }

    async fn order_price_above_i64_is_rejected(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        let o = OrderRow {
            price: Micros(u64::MAX),
            ..buy_order(1, "ada")
        };
        assert!(matches!(
            tx.insert_order(&o).await,
            Err(StoreError::AmountTooLarge {
                amount: Micros(u64::MAX),
                ..
            })
        ));
    }

    store_tests!(
        orders_round_trip_update_and_reload_as_open,
        order_price_above_i64_is_rejected,
    );
}
