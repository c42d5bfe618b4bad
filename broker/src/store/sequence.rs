//! Where the broker's id sequences stand, so a restarted broker resumes
//! numbering orders and leases after the last one it stored.

use super::columns::col_u64;
use super::error::{db, StoreError};
use super::Store;

/// The largest ids stored so far (0 when there are none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaxIds {
    /// Largest order id.
    pub order: u64,
    /// Largest lease id.
    pub lease: u64,
}

impl Store {
    /// The largest order and lease ids stored; the broker continues above them.
    pub async fn max_ids(&self) -> Result<MaxIds, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM orders) AS max_order, \
                    (SELECT COALESCE(MAX(id), 0) FROM leases) AS max_lease",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading the largest ids"))?;
        Ok(MaxIds {
            order: col_u64(&row, "max_order")?,
            lease: col_u64(&row, "max_lease")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::leases::tests::lease;
    use crate::store::orders::tests::buy_order;

    async fn max_ids_follow_inserts(store: Store) {
        assert_eq!(store.max_ids().await.expect("ids"), MaxIds::default());
        let mut tx = store.begin().await.expect("begin");
        tx.insert_order(&buy_order(41, "ada")).await.expect("order");
        tx.insert_order(&buy_order(7, "ada")).await.expect("order");
        tx.insert_lease(&lease(1_000_000_000_000, "ada", "bo"))
            .await
            .expect("lease");
        tx.commit().await.expect("commit");
        assert_eq!(
            store.max_ids().await.expect("ids"),
            MaxIds {
                order: 41,
                lease: 1_000_000_000_000
            }
        );
    }

    store_tests!(max_ids_follow_inserts);
}
