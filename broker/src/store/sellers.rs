//! Seller reliability: how many leases each seller finished or lost.

use super::columns::{col_text, col_u64, to_db};
use super::error::{db, StoreError};
use super::{Store, Tx};
use sqlx::any::AnyRow;

/// A seller's track record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerStats {
    /// The seller's user name.
    pub name: String,
    /// Leases that ran to their end.
    pub leases_done: u64,
    /// Leases lost through the seller's fault (vanished, crashed).
    pub leases_failed: u64,
    /// Last time a lease outcome was recorded, unix milliseconds.
    pub last_seen_ms: u64,
}

fn stats_from_row(row: &AnyRow) -> Result<SellerStats, StoreError> {
    Ok(SellerStats {
        name: col_text(row, "name")?,
        leases_done: col_u64(row, "leases_done")?,
        leases_failed: col_u64(row, "leases_failed")?,
        last_seen_ms: col_u64(row, "last_seen_ms")?,
    })
}

impl Tx {
    /// Counts one finished (`failed == false`) or failed lease for `seller`.
    pub async fn record_lease_outcome(
        &mut self,
        seller: &str,
        failed: bool,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (done, lost) = if failed { (0_i64, 1_i64) } else { (1, 0) };
        sqlx::query(
            "INSERT INTO sellers (name, leases_done, leases_failed, last_seen_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET \
             leases_done = sellers.leases_done + excluded.leases_done, \
             leases_failed = sellers.leases_failed + excluded.leases_failed, \
             last_seen_ms = excluded.last_seen_ms",
        )
        .bind(seller)
        .bind(done)
        .bind(lost)
        .bind(to_db("now_ms", now_ms)?)
        .execute(&mut *self.inner)
        .await
        .map_err(db("recording a lease outcome"))?;
        Ok(())
    }
}

impl Store {
    /// The track record of `name`, if any lease of theirs ever ended.
    pub async fn seller(&self, name: &str) -> Result<Option<SellerStats>, StoreError> {
        sqlx::query(
            "SELECT name, leases_done, leases_failed, last_seen_ms FROM sellers WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a seller's record"))?
        .as_ref()
        .map(stats_from_row)
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lease_outcomes_accumulate(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.record_lease_outcome("bo", false, 10)
            .await
            .expect("done");
        tx.record_lease_outcome("bo", false, 20)
            .await
            .expect("done");
        tx.record_lease_outcome("bo", true, 30)
            .await
            .expect("failed");
        tx.record_lease_outcome("cy", true, 5)
            .await
            .expect("failed");
        tx.commit().await.expect("commit");
        assert_eq!(
            store.seller("bo").await.expect("read"),
            Some(SellerStats {
                name: "bo".into(),
                leases_done: 2,
                leases_failed: 1,
                last_seen_ms: 30,
            })
        );
        let cy = store.seller("cy").await.expect("read").expect("cy");
        assert_eq!((cy.leases_done, cy.leases_failed), (0, 1));
        assert_eq!(store.seller("dee").await.expect("read"), None);
    }

    store_tests!(lease_outcomes_accumulate);
}
