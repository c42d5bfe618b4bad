//! Account names, built in one place so every part spells them alike.

use super::Account;

/// The broker's fee income.
pub const FEES: &str = "broker:fees";

/// The outside world: the source of deposits and sink of withdrawals; the
/// only account that may go negative.
pub const WORLD: &str = "world:deposits";

/// Spendable funds of a buyer or seller: `user:NAME`.
pub fn user(name: &str) -> Account {
    format!("user:{name}")
}

/// Funds held by an open buy order: `hold:ORDER`.
pub fn hold(order_key: &str) -> Account {
    format!("hold:{order_key}")
}

/// Funds of a running lease: `escrow:LEASE`.
pub fn escrow(lease_key: &str) -> Account {
    format!("escrow:{lease_key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_kind_as_prefix() {
        assert_eq!(user("ann"), "user:ann");
        assert_eq!(hold("K-1a2b"), "hold:K-1a2b");
        assert_eq!(escrow("L-9"), "escrow:L-9");
    }
}
