//! The postings of the lease money flow, built but not applied.
//!
//! Flow: deposit (world -> user), place a buy (user -> hold, at the buyer's
//! cap), each fill (hold -> escrow, at the trade price), the unneeded rest of
//! the hold (hold -> user), each settled minute (escrow -> seller and fee),
//! and at lease end the unused minutes (escrow -> user). Names are user
//! names and order/lease keys; the account prefixes are added here. Zero
//! amounts produce no posting.

use super::accounts::{escrow, hold, user, FEES, WORLD};
use super::Transfer;
use cpushare_proto::money::Micros;

/// Basis points in one whole (100 %).
const BPS_PER_WHOLE: u64 = 10_000;

fn posting(from: String, to: String, amount: Micros, memo: String) -> Vec<Transfer> {
    if amount == Micros::ZERO {
        return Vec::new();
    }
    vec![Transfer {
        from,
        to,
        amount,
        memo,
    }]
}

/// Money arriving from outside for `name` (world -> user).
pub fn deposit(name: &str, amount: Micros) -> Transfer {
    Transfer {
        from: WORLD.to_string(),
        to: user(name),
        amount,
        memo: "deposit".to_string(),
    }
}

/// Reserves a buy order's worst case (instances x cpus x minutes x cap).
pub fn reserve_order(buyer: &str, order_key: &str, amount: Micros) -> Vec<Transfer> {
    posting(
        user(buyer),
        hold(order_key),
        amount,
        format!("reserve {order_key}"),
    )
}

/// Moves one fill's price (cpus x minutes x trade price) from the order's
/// hold into the new lease's escrow.
pub fn open_lease(order_key: &str, lease_key: &str, escrow_amount: Micros) -> Vec<Transfer> {
    posting(
        hold(order_key),
        escrow(lease_key),
        escrow_amount,
        format!("open {lease_key} from {order_key}"),
    )
}

/// Adds a renewal's escrow to a running lease, from the buyer's own funds
/// (the order's hold covered only the first minutes).
pub fn top_up(buyer: &str, lease_key: &str, amount: Micros) -> Vec<Transfer> {
    posting(
        user(buyer),
        escrow(lease_key),
        amount,
        format!("renew {lease_key}"),
    )
}

/// Returns what the order no longer needs (filled below the cap, cancelled,
/// expired) to the buyer.
pub fn release_hold(order_key: &str, buyer: &str, amount: Micros) -> Vec<Transfer> {
    posting(
        hold(order_key),
        user(buyer),
        amount,
        format!("release {order_key}"),
    )
}

/// Pays settled minutes from escrow: the broker keeps
/// `floor(amount * fee_bps / 10000)` (fee_bps capped at 10000), the seller
/// gets the rest.
pub fn settle(lease_key: &str, seller: &str, amount: Micros, fee_bps: u32) -> Vec<Transfer> {
    let bps = u64::from(fee_bps).min(BPS_PER_WHOLE);
    let fee = u128::from(amount.0) * u128::from(bps) / u128::from(BPS_PER_WHOLE);
    let fee = Micros(u64::try_from(fee).expect("fee <= amount, which is a u64"));
    let to_seller = amount.saturating_sub(fee);
    let mut out = posting(
        escrow(lease_key),
        user(seller),
        to_seller,
        format!("settle {lease_key}"),
    );
    out.extend(posting(
        escrow(lease_key),
        FEES.to_string(),
        fee,
        format!("fee {lease_key}"),
    ));
    out
}

/// Returns a lease's unused escrow to the buyer.
pub fn refund(lease_key: &str, buyer: &str, amount: Micros) -> Vec<Transfer> {
    posting(
        escrow(lease_key),
        user(buyer),
        amount,
        format!("refund {lease_key}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn settle_splits_fee_rounding_down_and_skips_zero_postings() {
        let t = settle("L", "sam", Micros(1_999), 50);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].to.as_str(), t[0].amount), ("user:sam", Micros(1_990)));
        assert_eq!((t[1].to.as_str(), t[1].amount), (FEES, Micros(9)));
        assert_eq!(
            settle("L", "sam", Micros(100), 0).len(),
            1,
            "no fee posting"
        );
        let all_fee = settle("L", "sam", Micros(100), 20_000);
        assert_eq!(all_fee.len(), 1, "fee capped at 100 %");
        assert_eq!(all_fee[0].to, FEES);
        assert!(settle("L", "sam", Micros::ZERO, 100).is_empty());
    }

    #[test]
    fn builders_name_their_accounts() {
        let r = reserve_order("ann", "O1", Micros(5));
        assert_eq!(
            (r[0].from.as_str(), r[0].to.as_str()),
            ("user:ann", "hold:O1")
        );
        let o = open_lease("O1", "L1", Micros(5));
        assert_eq!(
            (o[0].from.as_str(), o[0].to.as_str()),
            ("hold:O1", "escrow:L1")
        );
        let h = release_hold("O1", "ann", Micros(5));
        assert_eq!(
            (h[0].from.as_str(), h[0].to.as_str()),
            ("hold:O1", "user:ann")
        );
        let f = refund("L1", "ann", Micros(5));
        assert_eq!(
            (f[0].from.as_str(), f[0].to.as_str()),
            ("escrow:L1", "user:ann")
        );
        assert!(refund("L1", "ann", Micros::ZERO).is_empty());
        let t = top_up("ann", "L1", Micros(5));
        assert_eq!(
            (t[0].from.as_str(), t[0].to.as_str()),
            ("user:ann", "escrow:L1")
        );
    }

    proptest! {
        #[test]
        fn settle_postings_sum_to_the_amount(amount in any::<u64>(), bps in 0..20_000u32) {
            let sum: u128 = settle("L", "s", Micros(amount), bps)
                .iter()
                .map(|t| u128::from(t.amount.0))
                .sum();
            prop_assert_eq!(sum, u128::from(amount));
        }
    }
}
