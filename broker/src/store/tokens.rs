//! Single-use enrollment tokens: an admin hands a secret to a new user, who
//! redeems it once to get a certificate. Only a hash of the secret is stored.

use super::columns::{col_opt_u64, col_text, col_u64, to_db};
use super::error::{db, StoreError};
use super::Tx;

impl Tx {
    /// Stores a token for user `name` valid until `expires_ms`.
    pub async fn create_token(
        &mut self,
        secret_hash: &str,
        name: &str,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO tokens (secret_hash, name, expires_ms, used_ms) VALUES ($1, $2, $3, NULL) \
             ON CONFLICT (secret_hash) DO NOTHING",
        )
        .bind(secret_hash)
        .bind(name)
        .bind(to_db("expires_ms", expires_ms)?)
        .execute(&mut *self.inner)
        .await
        .map_err(db("creating an enrollment token"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenExists);
        }
        Ok(())
    }

    /// Marks the token used and returns the name it was issued for.
    ///
    /// Single use even when redeemed from many connections at once: the
    /// conditional UPDATE succeeds for exactly one of them.
    pub async fn redeem_token(
        &mut self,
        secret_hash: &str,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        let now = to_db("now_ms", now_ms)?;
        let won = sqlx::query(
            "UPDATE tokens SET used_ms = $2 \
             WHERE secret_hash = $1 AND used_ms IS NULL AND expires_ms > $2 \
             RETURNING name",
        )
        .bind(secret_hash)
        .bind(now)
        .fetch_optional(&mut *self.inner)
        .await
        .map_err(db("redeeming an enrollment token"))?;
        if let Some(row) = won {
            return col_text(&row, "name");
        }
        // Lost: say why.
        let row =
            sqlx::query("SELECT name, expires_ms, used_ms FROM tokens WHERE secret_hash = $1")
                .bind(secret_hash)
                .fetch_optional(&mut *self.inner)
                .await
                .map_err(db("reading an enrollment token"))?
                .ok_or(StoreError::TokenUnknown)?;
        let name = col_text(&row, "name")?;
        if let Some(used_ms) = col_opt_u64(&row, "used_ms")? {
            return Err(StoreError::TokenUsed { name, used_ms });
        }
        Err(StoreError::TokenExpired {
            name,
            expires_ms: col_u64(&row, "expires_ms")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    async fn token_redeems_once_then_reports_used(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.create_token("h1", "ada", 1_000).await.expect("create");
        assert!(matches!(
            tx.create_token("h1", "eve", 1_000).await,
            Err(StoreError::TokenExists)
        ));
        tx.commit().await.expect("commit");

        let mut tx = store.begin().await.expect("begin");
        assert_eq!(tx.redeem_token("h1", 500).await.expect("redeem"), "ada");
        tx.commit().await.expect("commit");

        let mut tx = store.begin().await.expect("begin");
        assert!(matches!(
            tx.redeem_token("h1", 600).await,
            Err(StoreError::TokenUsed { name, used_ms: 500 }) if name == "ada"
        ));
    }

    async fn token_expires(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.create_token("h2", "bo", 1_000).await.expect("create");
        assert!(matches!(
            tx.redeem_token("h2", 1_000).await,
            Err(StoreError::TokenExpired { name, expires_ms: 1_000 }) if name == "bo"
        ));
        assert_eq!(tx.redeem_token("h2", 999).await.expect("still valid"), "bo");
    }

    async fn unknown_token_is_rejected(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        assert!(matches!(
            tx.redeem_token("nope", 1).await,
            Err(StoreError::TokenUnknown)
        ));
    }

    async fn concurrent_redeems_have_one_winner(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.create_token("h3", "cy", 10_000).await.expect("create");
        tx.commit().await.expect("commit");

        let tries: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut tx = store.begin().await.expect("begin");
                    let got = tx.redeem_token("h3", 100 + i).await;
                    // Hold the row lock a moment so the others really contend.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    tx.commit().await.expect("commit");
                    got
                })
            })
            .collect();
        let mut wins = 0;
        for t in tries {
            match t.await.expect("task") {
                Ok(name) => {
                    assert_eq!(name, "cy");
                    wins += 1;
                }
                Err(StoreError::TokenUsed { name, .. }) => assert_eq!(name, "cy"),
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(wins, 1);
    }

    store_tests!(
        token_redeems_once_then_reports_used,
        token_expires,
        unknown_token_is_rejected,
        concurrent_redeems_have_one_winner,
    );
}
