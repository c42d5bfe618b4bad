//! Leases: a matched buy and sell order running on a seller, settled minute
//! by minute from escrow.

use super::columns::{
    col_micros, col_opt_i32, col_opt_text, col_opt_u64, col_text, col_u32, col_u64, money_to_db,
    text_enum, to_db,
};
use super::error::{db, StoreError};
use super::{Store, Tx};
use cpushare_proto::money::Micros;
use sqlx::any::AnyRow;

text_enum! {
    /// Where a lease is in its life.
    pub enum LeaseState {
        /// Matched; the seller is fetching the image and starting the sandbox.
        Starting = "starting",
        /// The sandbox runs; minutes are being settled.
        Running = "running",
        /// Over, for the reason in `end_reason`.
        Ended = "ended",
    }
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// Broker-assigned id (see [`Store::max_ids`]).
    pub id: u64,
    /// Short id the user sees, like `K-1a2b3c4d`; unique.
    pub key: String,
    /// The buy order it filled.
    pub buy_order: u64,
    /// The sell order it filled.
    pub sell_order: u64,
    /// The buyer's user name.
    pub buyer: String,
    /// The seller's user name.
    pub seller: String,
    /// Sandbox kind: `wasm` or `vm`.
    pub kind: String,
    /// vCPUs leased.
    pub cpus: u32,
    /// Memory leased, MiB.
    pub mem_mib: u64,
    /// Minutes bought.
    pub minutes: u32,
    /// Price per vCPU-minute.
    pub price: Micros,
    /// Funds put in escrow when the lease started.
    pub escrow: Micros,
    /// Minutes settled to the seller so far.
    pub settled_minutes: u32,
    /// Where the lease is in its life.
    pub state: LeaseState,
    /// Why it ended (`done`, `seller lost`, `cancelled`...), once ended.
    pub end_reason: Option<String>,
    /// The job's exit code, if it ran to an exit.
    pub exit_code: Option<i32>,
    /// When it was matched, unix milliseconds.
    pub started_ms: u64,
    /// When it ended, unix milliseconds.
    pub ended_ms: Option<u64>,
    /// What the buyer has paid so far (all of it, once ended).
    pub cost: Micros,
}

const LEASE_COLUMNS: &str = "id, key, buy_order, sell_order, buyer, seller, kind, cpus, mem_mib, \
     minutes, price, escrow, settled_minutes, state, end_reason, exit_code, started_ms, ended_ms, \
     cost";

fn lease_from_row(row: &AnyRow) -> Result<LeaseRow, StoreError> {
    Ok(LeaseRow {
        id: col_u64(row, "id")?,
        key: col_text(row, "key")?,
        buy_order: col_u64(row, "buy_order")?,
        sell_order: col_u64(row, "sell_order")?,
        buyer: col_text(row, "buyer")?,
        seller: col_text(row, "seller")?,
        kind: col_text(row, "kind")?,
        cpus: col_u32(row, "cpus")?,
        mem_mib: col_u64(row, "mem_mib")?,
        minutes: col_u32(row, "minutes")?,
        price: col_micros(row, "price")?,
        escrow: col_micros(row, "escrow")?,
        settled_minutes: col_u32(row, "settled_minutes")?,
        state: LeaseState::from_db("state", &col_text(row, "state")?)?,
        end_reason: col_opt_text(row, "end_reason")?,
        exit_code: col_opt_i32(row, "exit_code")?,
        started_ms: col_u64(row, "started_ms")?,
        ended_ms: col_opt_u64(row, "ended_ms")?,
        cost: col_micros(row, "cost")?,
    })
}

impl Tx {
    /// Stores a new lease; `LeaseExists` if its id or key is taken.
    pub async fn insert_lease(&mut self, l: &LeaseRow) -> Result<(), StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO leases ({LEASE_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(to_db("lease id", l.id)?)
        .bind(&l.key)
        .bind(to_db("buy_order", l.buy_order)?)
        .bind(to_db("sell_order", l.sell_order)?)
        .bind(&l.buyer)
        .bind(&l.seller)
        .bind(&l.kind)
        .bind(i64::from(l.cpus))
        .bind(to_db("mem_mib", l.mem_mib)?)
        .bind(i64::from(l.minutes))
        .bind(money_to_db("lease price", l.price)?)
        .bind(money_to_db("lease escrow", l.escrow)?)
        .bind(i64::from(l.settled_minutes))
        .bind(l.state.as_str())
        .bind(l.end_reason.as_deref())
        .bind(l.exit_code.map(i64::from))
        .bind(to_db("started_ms", l.started_ms)?)
        .bind(l.ended_ms.map(|v| to_db("ended_ms", v)).transpose()?)
        .bind(money_to_db("lease cost", l.cost)?)
        .execute(&mut *self.inner)
        .await
        .map_err(db("inserting a lease"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseExists {
                id: l.id,
                key: l.key.clone(),
            });
        }
        Ok(())
    }

    /// Marks a starting lease as running (the sandbox is up).
    pub async fn set_lease_running(&mut self, id: u64) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE leases SET state = 'running' WHERE id = $1 AND state <> 'ended'")
                .bind(to_db("lease id", id)?)
                .execute(&mut *self.inner)
                .await
                .map_err(db("marking a lease running"))?;
        self.check_live_lease(id, done.rows_affected()).await
    }

    /// Ends a lease as [`Tx::end_lease`] does and records its settled
    /// minutes in the same statement (what ending a lease writes).
    pub async fn finish_lease(
        &mut self,
        id: u64,
        settled_minutes: u32,
        reason: &str,
        exit_code: Option<i32>,
        ended_ms: u64,
        cost: Micros,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET state = 'ended', end_reason = $2, exit_code = $3, ended_ms = $4, \
             cost = $5, settled_minutes = $6 WHERE id = $1 AND state <> 'ended'",
        )
        .bind(to_db("lease id", id)?)
        .bind(reason)
        .bind(exit_code.map(i64::from))
        .bind(to_db("ended_ms", ended_ms)?)
        .bind(money_to_db("lease cost", cost)?)
        .bind(i64::from(settled_minutes))
        .execute(&mut *self.inner)
        .await
        .map_err(db("ending a lease"))?;
        self.check_live_lease(id, done.rows_affected()).await
    }

    /// Records minutes settled so far and what they cost the buyer; the
    /// lease is running (only a started lease settles minutes), which is
    /// also recorded here rather than in a transaction of its own.
    pub async fn update_lease_settled(
        &mut self,
        id: u64,
        settled_minutes: u32,
        cost: Micros,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET settled_minutes = $2, cost = $3, state = 'running' \
             WHERE id = $1 AND state <> 'ended'",
        )
        .bind(to_db("lease id", id)?)
        .bind(i64::from(settled_minutes))
        .bind(money_to_db("lease cost", cost)?)
        .execute(&mut *self.inner)
        .await
        .map_err(db("settling a lease minute"))?;
        self.check_live_lease(id, done.rows_affected()).await
    }

    /// Renews a running lease: it is now paid for `minutes` in all, with
    /// `escrow` put in escrow in all (the caller moves the money in the
    /// same transaction).
    pub async fn extend_lease(
        &mut self,
        id: u64,
        minutes: u32,
        escrow: Micros,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET minutes = $2, escrow = $3 WHERE id = $1 AND state <> 'ended'",
        )
        .bind(to_db("lease id", id)?)
        .bind(i64::from(minutes))
        .bind(money_to_db("lease escrow", escrow)?)
        .execute(&mut *self.inner)
        .await
        .map_err(db("renewing a lease"))?;
        self.check_live_lease(id, done.rows_affected()).await
    }

    /// Ends a lease with its reason, exit code, end time and final cost;
    /// `LeaseEnded` if it already ended (a lease ends once).
    pub async fn end_lease(
        &mut self,
        id: u64,
        reason: &str,
        exit_code: Option<i32>,
        ended_ms: u64,
        cost: Micros,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET state = 'ended', end_reason = $2, exit_code = $3, ended_ms = $4, \
             cost = $5 WHERE id = $1 AND state <> 'ended'",
        )
        .bind(to_db("lease id", id)?)
        .bind(reason)
        .bind(exit_code.map(i64::from))
        .bind(to_db("ended_ms", ended_ms)?)
        .bind(money_to_db("lease cost", cost)?)
        .execute(&mut *self.inner)
        .await
        .map_err(db("ending a lease"))?;
        self.check_live_lease(id, done.rows_affected()).await
    }

    /// After an UPDATE guarded by `state <> 'ended'` touched `rows` rows:
    /// says whether the lease is unknown or already ended.
    async fn check_live_lease(&mut self, id: u64, rows: u64) -> Result<(), StoreError> {
        if rows == 1 {
            return Ok(());
        }
        let exists = sqlx::query("SELECT id FROM leases WHERE id = $1")
            .bind(to_db("lease id", id)?)
            .fetch_optional(&mut *self.inner)
            .await
            .map_err(db("finding a lease"))?
            .is_some();
        Err(if exists {
            StoreError::LeaseEnded { id }
        } else {
            StoreError::LeaseUnknown { id }
        })
    }
}

impl Store {
    async fn leases_where(
        &self,
        condition: &str,
        arg: &str,
        op: &'static str,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE {condition} ORDER BY id"
        ))
        .bind(arg)
        .fetch_all(&self.pool)
        .await
        .map_err(db(op))?
        .iter()
        .map(lease_from_row)
        .collect()
    }

    /// Leases not yet ended, oldest first: what a restarted broker resumes.
    pub async fn open_leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        self.leases_where(
            "state <> $1",
            LeaseState::Ended.as_str(),
            "loading open leases",
        )
        .await
    }

    /// Every lease `user` took part in, as buyer or seller, oldest first.
    pub async fn leases_of(&self, user: &str) -> Result<Vec<LeaseRow>, StoreError> {
        self.leases_where("buyer = $1 OR seller = $1", user, "listing a user's leases")
            .await
    }

    /// The lease with short id `key`, if any.
    pub async fn lease_by_key(&self, key: &str) -> Result<Option<LeaseRow>, StoreError> {
        Ok(self
            .leases_where("key = $1", key, "finding a lease")
            .await?
            .into_iter()
            .next())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A starting lease with every field set to something distinct.
    pub(crate) fn lease(id: u64, buyer: &str, seller: &str) -> LeaseRow {
        LeaseRow {
            id,
            key: format!("K-1e{id:06x}"),
            buy_order: 10 + id,
            sell_order: 20 + id,
            buyer: buyer.into(),
            seller: seller.into(),
            kind: "wasm".into(),
            cpus: 4,
            mem_mib: 2048,
            minutes: 30,
            price: Micros(15_000),
            escrow: Micros(1_800_000),
            settled_minutes: 0,
            state: LeaseState::Starting,
            end_reason: None,
            exit_code: None,
            started_ms: 1_700_000_000_000,
            ended_ms: None,
            cost: Micros::ZERO,
        }
    }

    async fn leases_round_trip_settle_end_and_reload_as_open(store: Store) {
        let a = lease(1, "ada", "bo");
        let b = LeaseRow {
            escrow: Micros(i64::MAX as u64),
            price: Micros(i64::MAX as u64 - 1),
            ..lease(2, "cy", "ada")
        };
        let c = lease(3, "cy", "bo");
        let mut tx = store.begin().await.expect("begin");
        for l in [&a, &b, &c] {
            tx.insert_lease(l).await.expect("insert");
        }
        assert!(matches!(
            tx.insert_lease(&a).await,
            Err(StoreError::LeaseExists { id: 1, .. })
        ));
        tx.commit().await.expect("commit");
        assert_eq!(
            store.lease_by_key(&b.key).await.expect("get"),
            Some(b.clone())
        );

        let mut tx = store.begin().await.expect("begin");
        tx.set_lease_running(1).await.expect("running");
        tx.update_lease_settled(1, 2, Micros(120_000))
            .await
            .expect("settle");
        tx.extend_lease(1, 60, Micros(3_600_000))
            .await
            .expect("renew");
        tx.end_lease(
            3,
            "seller lost",
            Some(-9),
            1_700_000_060_000,
            Micros(60_000),
        )
        .await
        .expect("end");
        assert!(matches!(
            tx.end_lease(3, "again", None, 1, Micros::ZERO).await,
            Err(StoreError::LeaseEnded { id: 3 })
        ));
        assert!(matches!(
            tx.finish_lease(3, 1, "again", None, 1, Micros::ZERO).await,
            Err(StoreError::LeaseEnded { id: 3 })
        ));
        assert!(matches!(
            tx.finish_lease(78, 1, "never", None, 1, Micros::ZERO).await,
            Err(StoreError::LeaseUnknown { id: 78 })
        ));
        assert!(matches!(
            tx.update_lease_settled(3, 9, Micros(1)).await,
            Err(StoreError::LeaseEnded { id: 3 })
        ));
        assert!(matches!(
            tx.update_lease_settled(77, 1, Micros(1)).await,
            Err(StoreError::LeaseUnknown { id: 77 })
        ));
        assert!(matches!(
            tx.extend_lease(3, 60, Micros(1)).await,
            Err(StoreError::LeaseEnded { id: 3 })
        ));
        tx.commit().await.expect("commit");

        let open = store.open_leases().await.expect("open");
        let expected_a = LeaseRow {
            state: LeaseState::Running,
            settled_minutes: 2,
            cost: Micros(120_000),
            minutes: 60,
            escrow: Micros(3_600_000),
            ..a
        };
        assert_eq!(open, [expected_a, b]);
        let ended = store.lease_by_key(&c.key).await.expect("get").expect("c");
        assert_eq!(ended.state, LeaseState::Ended);
        assert_eq!(ended.end_reason.as_deref(), Some("seller lost"));
        assert_eq!(ended.exit_code, Some(-9));
        assert_eq!(ended.ended_ms, Some(1_700_000_060_000));
        assert_eq!(ended.cost, Micros(60_000));

        let ada: Vec<u64> = store
            .leases_of("ada")
            .await
            .expect("of")
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ada, [1, 2], "as buyer of 1 and seller of 2");
        let bo: Vec<u64> = store
            .leases_of("bo")
            .await
            .expect("of")
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(bo, [1, 3]);
    }

    async fn settling_marks_running_and_finishing_records_the_minutes(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.insert_lease(&lease(1, "ada", "bo"))
            .await
            .expect("insert");
        tx.insert_lease(&lease(2, "ada", "bo"))
            .await
            .expect("insert");
        tx.update_lease_settled(1, 1, Micros(60_000))
            .await
            .expect("settle");
        tx.finish_lease(
            2,
            3,
            "exited 0",
            Some(0),
            1_700_000_180_000,
            Micros(180_000),
        )
        .await
        .expect("finish");
        tx.commit().await.expect("commit");
        let settled = store
            .lease_by_key(&lease(1, "ada", "bo").key)
            .await
            .expect("get")
            .expect("lease 1");
        assert_eq!(
            (settled.state, settled.settled_minutes, settled.cost),
            (LeaseState::Running, 1, Micros(60_000))
        );
        let finished = store
            .lease_by_key(&lease(2, "ada", "bo").key)
            .await
            .expect("get")
            .expect("lease 2");
        assert_eq!(
            finished,
            LeaseRow {
                state: LeaseState::Ended,
                settled_minutes: 3,
                cost: Micros(180_000),
                end_reason: Some("exited 0".into()),
                exit_code: Some(0),
                ended_ms: Some(1_700_000_180_000),
                ..lease(2, "ada", "bo")
            }
        );
    }

    store_tests!(
        leases_round_trip_settle_end_and_reload_as_open,
        settling_marks_running_and_finishing_records_the_minutes,
    );
}
