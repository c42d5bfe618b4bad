//! Accounts of people: buyers, sellers and admins, and the key each holds.

use super::columns::{col_opt_text, col_text, col_u64, text_enum, to_db};
use super::error::{db, StoreError};
use super::{Store, Tx};
use sqlx::any::AnyRow;

text_enum! {
    /// What a user may do. Buyer and seller match the wire `Role` by name;
    /// admin exists only inside the broker.
    pub enum Role {
        /// Posts buy orders and runs jobs.
        Buyer = "buyer",
        /// Offers capacity with sell orders.
        Seller = "seller",
        /// Runs the broker: enrolls users, deposits funds.
        Admin = "admin",
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Unique name, chosen at enrollment.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// Id of the key the broker certified for this user, once enrolled.
    pub key_id: Option<String>,
    /// When the user was created, unix milliseconds.
    pub created_ms: u64,
}

const USER_COLUMNS: &str = "name, role, key_id, created_ms";

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        name: col_text(row, "name")?,
        role: Role::from_db("role", &col_text(row, "role")?)?,
        key_id: col_opt_text(row, "key_id")?,
        created_ms: col_u64(row, "created_ms")?,
    })
}

impl Tx {
    /// Creates a user without a key; `UserExists` if the name is taken.
    pub async fn create_user(
        &mut self,
        name: &str,
        role: Role,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO users (name, role, key_id, created_ms) VALUES ($1, $2, NULL, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(to_db("created_ms", now_ms)?)
        .execute(&mut *self.inner)
        .await
        .map_err(db("creating a user"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UserExists {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Records the key the broker certified for `name`; `UserUnknown` if none.
    pub async fn set_user_key(&mut self, name: &str, key_id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET key_id = $2 WHERE name = $1")
            .bind(name)
            .bind(key_id)
            .execute(&mut *self.inner)
            .await
            .map_err(db("setting a user's key"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UserUnknown {
                name: name.to_string(),
            });
        }
        Ok(())
    }
}

impl Store {
    /// The user named `name`, if any.
    pub async fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a user"))?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing users"))?
            .iter()
            .map(user_from_row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn users_are_created_once_and_get_keys(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.create_user("ada", Role::Buyer, 1_700_000_000_000)
            .await
            .expect("create ada");
        tx.create_user("bo", Role::Seller, 2)
            .await
            .expect("create bo");
        assert!(matches!(
            tx.create_user("ada", Role::Admin, 3).await,
            Err(StoreError::UserExists { name }) if name == "ada"
        ));
        tx.set_user_key("bo", "K-1a2b3c4d").await.expect("set key");
        assert!(matches!(
            tx.set_user_key("nobody", "K-0").await,
            Err(StoreError::UserUnknown { name }) if name == "nobody"
        ));
        tx.commit().await.expect("commit");

        let ada = store.user("ada").await.expect("read").expect("ada exists");
        assert_eq!(
            ada,
            User {
                name: "ada".into(),
                role: Role::Buyer,
                key_id: None,
                created_ms: 1_700_000_000_000,
            }
        );
        assert_eq!(store.user("zed").await.expect("read"), None);
        let all = store.users().await.expect("list");
        let names: Vec<_> = all
            .iter()
            .map(|u| (u.name.as_str(), u.key_id.as_deref()))
            .collect();
        assert_eq!(names, [("ada", None), ("bo", Some("K-1a2b3c4d"))]);
    }

    async fn created_ms_above_i64_is_rejected(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        assert!(matches!(
            tx.create_user("ada", Role::Buyer, u64::MAX).await,
            Err(StoreError::ValueTooLarge {
                what: "created_ms",
                ..
            })
        ));
    }

    store_tests!(
        users_are_created_once_and_get_keys,
        created_ms_above_i64_is_rejected
    );
}
