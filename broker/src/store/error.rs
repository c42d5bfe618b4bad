//! What can go wrong in the store, one variant per problem.

use cpushare_proto::money::Micros;

/// An error from the broker's persistent store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// the database URL scheme `{scheme}` is not supported; use `sqlite://PATH` or `postgres://...`
    #[error(
        "the database URL scheme `{scheme}` is not supported; use `sqlite://PATH` or `postgres://...`"
    )]
    UnsupportedUrl {
        /// The scheme found (never the whole URL: it may hold a password).
        scheme: String,
    },
    /// database error while {op}
    #[error("database error while {op}")]
    Db {
        /// What the store was doing.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// migrating the store's schema failed; is the database from a newer broker?
    #[error("migrating the store's schema failed; is the database from a newer broker?")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// column `{column}` could not be read
    #[error("column `{column}` could not be read")]
    Decode {
        /// The column.
        column: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// column `{column}` holds `{value}`, which this broker cannot interpret
    #[error("column `{column}` holds `{value}`, which this broker cannot interpret")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// {what} = {value} does not fit in a signed 64-bit database column
    #[error("{what} = {value} does not fit in a signed 64-bit database column")]
    ValueTooLarge {
        /// Which value.
        what: &'static str,
        /// The value given.
        value: u64,
    },
    /// {what} of {amount} micro-credits is larger than the store can hold (at most 2^63-1)
    #[error("{what} of {amount} micro-credits is larger than the store can hold (at most 2^63-1)")]
    AmountTooLarge {
        /// Which amount.
        what: &'static str,
        /// The amount given.
        amount: Micros,
    },
    /// user `{name}` already exists; pick another name
    #[error("user `{name}` already exists; pick another name")]
    UserExists {
        /// The name taken.
        name: String,
    },
    /// no user is named `{name}`
    #[error("no user is named `{name}`")]
    UserUnknown {
        /// The name asked for.
        name: String,
    },
    /// an enrollment token with this secret already exists
    #[error("an enrollment token with this secret already exists")]
    TokenExists,
    /// this enrollment token is not known; ask the broker admin for a new one
    #[error("this enrollment token is not known; ask the broker admin for a new one")]
    TokenUnknown,
    /// the enrollment token for `{name}` was already used (at {used_ms} ms); ask for a new one
    #[error(
        "the enrollment token for `{name}` was already used (at {used_ms} ms); ask for a new one"
    )]
    TokenUsed {
        /// Whom the token was for.
        name: String,
        /// When it was redeemed, unix milliseconds.
        used_ms: u64,
    },
    /// the enrollment token for `{name}` expired (at {expires_ms} ms); ask for a new one
    #[error("the enrollment token for `{name}` expired (at {expires_ms} ms); ask for a new one")]
    TokenExpired {
        /// Whom the token was for.
        name: String,
        /// When it expired, unix milliseconds.
        expires_ms: u64,
    },
    /// account `{account}` holds {balance} micro-credits but {needed} are needed
    #[error("account `{account}` holds {balance} micro-credits but {needed} are needed")]
    InsufficientFunds {
        /// The account that would go negative.
        account: String,
        /// Its balance when the transfer was tried.
        balance: i64,
        /// The amount the transfer takes out.
        needed: Micros,
    },
    /// moving {amount} micro-credits would overflow account `{account}` (balance {balance})
    #[error(
        "moving {amount} micro-credits would overflow account `{account}` (balance {balance})"
    )]
    BalanceOverflow {
        /// The account.
        account: String,
        /// Its balance when the transfer was tried.
        balance: i64,
        /// The amount moved.
        amount: Micros,
    },
    /// an order with id {id} or key `{key}` already exists
    #[error("an order with id {id} or key `{key}` already exists")]
    OrderExists {
        /// The id given.
        id: u64,
        /// The key given.
        key: String,
    },
    /// no order has id {id}
    #[error("no order has id {id}")]
    OrderUnknown {
        /// The id asked for.
        id: u64,
    },
    /// a lease with id {id} or key `{key}` already exists
    #[error("a lease with id {id} or key `{key}` already exists")]
    LeaseExists {
        /// The id given.
        id: u64,
        /// The key given.
        key: String,
    },
    /// no lease has id {id}
    #[error("no lease has id {id}")]
    LeaseUnknown {
        /// The id asked for.
        id: u64,
    },
    /// lease {id} has already ended
    #[error("lease {id} has already ended")]
    LeaseEnded {
        /// The lease.
        id: u64,
    },
}

/// Wraps a driver error with what the store was doing, for `map_err`.
pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}
