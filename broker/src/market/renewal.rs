//! Sticky renewal, decided without I/O: a job that outlives its lease's
//! paid minutes is extended with the same seller (so its guest is never
//! disconnected and re-placed) when the buyer allowed it, the seller is
//! still there and still offers a price the buyer accepts, and the buyer
//! can pay for the extension now.
//!
//! The market asks [`decide`] on every tick for each running lease. The
//! answer is [`Renewal::NotYet`] until the lease is within
//! [`RENEW_AHEAD_MS`] of its end; then it is final for that period:
//! [`Renewal::Extend`] (escrow `escrow` more for `minutes` more, same
//! seller, the seller's current ask) or [`Renewal::End`] with the reason
//! the lease will end when its minutes run out.

use crate::ledger::billing::{self, MS_PER_MINUTE};
use cpushare_proto::money::Micros;

/// How long before its paid minutes run out a lease is renewed: enough for
/// one transaction and the seller hearing of it, well before the overrun
/// grace starts stopping the lease.
pub const RENEW_AHEAD_MS: u64 = 20_000;

/// What the buyer allowed for its order's leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Most minutes one lease may reach through renewals, its first
    /// minutes included (`--renew-up-to`); at most the first minutes means
    /// no renewal.
    pub max_total_minutes: u32,
    /// Highest price per vCPU-minute the buyer accepts (the order's cap).
    pub max_price: Micros,
}

/// A running lease as renewal sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// vCPUs.
    pub cpus: u32,
    /// The lease's first length, minutes: each renewal adds as much again
    /// (or what the allowance leaves).
    pub first_minutes: u32,
    /// Minutes paid for so far (first length plus renewals).
    pub paid_minutes: u32,
    /// When the sandbox came up (billing runs from here); `None` if not yet.
    pub started_ms: Option<u64>,
    /// The broker already asked the seller to stop it (cancel, overrun).
    pub stopping: bool,
}

/// The lease's seller now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SellerState {
    /// Its session is connected and beating.
    pub connected: bool,
    /// Its current ask per vCPU-minute.
    pub ask: Micros,
    /// Longest lease it accepts, minutes (caps one renewal).
    pub max_minutes: u32,
}

/// Why a lease is not renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRenewal {
    /// The buyer did not ask for renewals.
    NotAllowed,
    /// The lease reached the buyer's total minutes.
    AllowanceUsed,
    /// The buyer stopped it, or the broker is stopping it.
    Stopping,
    /// The seller's session is gone (the lease ends as `seller lost`).
    SellerGone,
    /// The seller now asks more than the buyer's cap.
    PriceAbove {
        /// The seller's ask.
        ask: Micros,
        /// The buyer's cap.
        max: Micros,
    },
    /// The buyer's available balance cannot cover the extension.
    CannotAfford {
        /// Escrow the extension needs.
        needed: Micros,
        /// What the buyer has available.
        available: Micros,
    },
    /// The extension's cost does not fit in the money type.
    Overflow,
    /// Its paid minutes ran out before it was renewed (ticks ran late):
    /// extending now would bill minutes the guest may not have had.
    Lapsed,
}

impl NoRenewal {
    /// Whether the buyer is told: it asked for renewals and did not stop
    /// the lease itself, so an end at its paid minutes would surprise it.
    pub fn tells_buyer(self) -> bool {
        !matches!(self, NoRenewal::NotAllowed | NoRenewal::Stopping)
    }
}

/// The reason in words for the buyer, saying what to do where it can.
impl std::fmt::Display for NoRenewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoRenewal::NotAllowed => write!(f, "renewals were not asked for (--renew-up-to)"),
            NoRenewal::AllowanceUsed => write!(f, "it reached the minutes --renew-up-to allows"),
            NoRenewal::Stopping => write!(f, "it is being stopped"),
            NoRenewal::SellerGone => write!(f, "its seller is gone"),
            NoRenewal::PriceAbove { ask, max } => write!(
                f,
                "the seller now asks {ask} credits per vCPU-minute, above your price cap of {max}"
            ),
            NoRenewal::CannotAfford { needed, available } => write!(
                f,
                "your available balance of {available} credits does not cover the {needed} \
                 credits the next minutes cost; add credits to renew"
            ),
            NoRenewal::Overflow => write!(f, "the next minutes' cost is too large to bill"),
            NoRenewal::Lapsed => write!(f, "its paid minutes ran out before it could be renewed"),
        }
    }
}

/// What to do with one running lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Not within [`RENEW_AHEAD_MS`] of the end (or not started): ask again later.
    NotYet,
    /// Extend with the same seller: move `escrow` from the buyer to the
    /// lease's escrow, add `minutes` at `price`, tell the seller to raise
    /// the sandbox's limits and the buyer that its lease was renewed.
    Extend {
        /// Minutes added.
        minutes: u32,
        /// Price per vCPU-minute of the added minutes (the seller's ask).
        price: Micros,
        /// Escrow to add: `cpus x minutes x price`.
        escrow: Micros,
    },
    /// Let the lease end when its paid minutes run out.
    End(NoRenewal),
}

/// Decides whether `lease` is renewed at `now_ms`, the buyer having
/// `available` to spend.
pub fn decide(
    lease: &LeaseState,
    seller: &SellerState,
    allow: &Allowance,
    available: Micros,
    now_ms: u64,
) -> Renewal {
    let Some(started) = lease.started_ms else {
        return Renewal::NotYet;
    };
    let end_ms = started + u64::from(lease.paid_minutes) * MS_PER_MINUTE;
    if now_ms.saturating_add(RENEW_AHEAD_MS) < end_ms {
        return Renewal::NotYet;
    }
    if now_ms >= end_ms {
        return Renewal::End(NoRenewal::Lapsed);
    }
    if allow.max_total_minutes <= lease.first_minutes {
        return Renewal::End(NoRenewal::NotAllowed);
    }
    let left = allow.max_total_minutes.saturating_sub(lease.paid_minutes);
    if left == 0 {
        return Renewal::End(NoRenewal::AllowanceUsed);
    }
    if lease.stopping {
        return Renewal::End(NoRenewal::Stopping);
    }
    if !seller.connected {
        return Renewal::End(NoRenewal::SellerGone);
    }
    if seller.ask > allow.max_price {
        return Renewal::End(NoRenewal::PriceAbove {
            ask: seller.ask,
            max: allow.max_price,
        });
    }
    let minutes = lease.first_minutes.min(left).min(seller.max_minutes.max(1));
    let Ok(escrow) = billing::cost(u64::from(lease.cpus), minutes, seller.ask) else {
        return Renewal::End(NoRenewal::Overflow);
    };
    if escrow > available {
        return Renewal::End(NoRenewal::CannotAfford {
            needed: escrow,
            available,
        });
    }
    Renewal::Extend {
        minutes,
        price: seller.ask,
        escrow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buyer_hears_of_balance_and_price_but_not_of_its_own_stop() {
        let poor = NoRenewal::CannotAfford {
            needed: Micros(2000),
            available: Micros(500),
        };
        assert!(poor.tells_buyer());
        let text = poor.to_string();
        assert!(text.contains("balance of 0.0005 credits"), "{text}");
        assert!(text.contains("0.002"), "{text}");
        let dear = NoRenewal::PriceAbove {
            ask: Micros(3000),
            max: Micros(2000),
        };
        assert!(dear.tells_buyer());
        assert!(dear.to_string().contains("asks 0.003"), "{dear}");
        assert!(!NoRenewal::NotAllowed.tells_buyer());
        assert!(!NoRenewal::Stopping.tells_buyer());
    }

    const START: u64 = 1_000_000;

    fn lease() -> LeaseState {
        LeaseState {
            cpus: 2,
            first_minutes: 5,
            paid_minutes: 5,
            started_ms: Some(START),
            stopping: false,
        }
    }

    fn seller() -> SellerState {
        SellerState {
            connected: true,
            ask: Micros(1000),
            max_minutes: 60,
        }
    }

    fn allow(total: u32) -> Allowance {
        Allowance {
            max_total_minutes: total,
            max_price: Micros(2000),
        }
    }

    #[test]
    fn a_lease_past_its_paid_end_is_not_extended() {
        let l = lease();
        let end = START + u64::from(l.paid_minutes) * MS_PER_MINUTE;
        for now in [end, end + 1, end + 10 * MS_PER_MINUTE] {
            assert_eq!(
                decide(&l, &seller(), &allow(60), Micros(1 << 40), now),
                Renewal::End(NoRenewal::Lapsed)
            );
        }
        assert!(matches!(
            decide(&l, &seller(), &allow(60), Micros(1 << 40), end - 1),
            Renewal::Extend { .. }
        ));
    }

    /// `ms` before the paid minutes of `l` run out.
    fn before_end(l: &LeaseState, ms: u64) -> u64 {
        START + u64::from(l.paid_minutes) * MS_PER_MINUTE - ms
    }

    #[test]
    fn nothing_is_decided_before_the_window_or_before_the_start() {
        let l = lease();
        let now = before_end(&l, RENEW_AHEAD_MS + 1);
        assert_eq!(
            decide(&l, &seller(), &allow(20), Micros(u64::MAX), now),
            Renewal::NotYet
        );
        let not_started = LeaseState {
            started_ms: None,
            ..l
        };
        assert_eq!(
            decide(
                &not_started,
                &seller(),
                &allow(20),
                Micros(u64::MAX),
                u64::MAX
            ),
            Renewal::NotYet
        );
    }

    #[test]
    fn a_lease_in_its_last_seconds_is_extended_by_its_first_length_at_the_sellers_ask() {
        let l = lease();
        let now = before_end(&l, RENEW_AHEAD_MS);
        assert_eq!(
            decide(&l, &seller(), &allow(20), Micros(1_000_000), now),
            Renewal::Extend {
                minutes: 5,
                price: Micros(1000),
                // 2 vCPUs x 5 min x 1000.
                escrow: Micros(10_000),
            }
        );
    }

    #[test]
    fn the_allowance_and_the_sellers_longest_lease_cap_the_extension() {
        let l = LeaseState {
            paid_minutes: 18,
            ..lease()
        };
        let now = before_end(&l, 1000);
        match decide(&l, &seller(), &allow(20), Micros(1_000_000), now) {
            Renewal::Extend { minutes: 2, .. } => {}
            other => panic!("{other:?}"),
        }
        let short = SellerState {
            max_minutes: 3,
            ..seller()
        };
        match decide(
            &lease(),
            &short,
            &allow(20),
            Micros(1_000_000),
            before_end(&lease(), 1),
        ) {
            Renewal::Extend { minutes: 3, .. } => {}
            other => panic!("{other:?}"),
        }
        let used = LeaseState {
            paid_minutes: 20,
            ..lease()
        };
        assert_eq!(
            decide(
                &used,
                &seller(),
                &allow(20),
                Micros(1_000_000),
                before_end(&used, 1)
            ),
            Renewal::End(NoRenewal::AllowanceUsed)
        );
    }

    #[test]
    fn each_reason_not_to_renew_is_named() {
        let l = lease();
        let now = before_end(&l, 1);
        let rich = Micros(1_000_000);
        assert_eq!(
            decide(&l, &seller(), &allow(5), rich, now),
            Renewal::End(NoRenewal::NotAllowed)
        );
        let stopping = LeaseState {
            stopping: true,
            ..l
        };
        assert_eq!(
            decide(&stopping, &seller(), &allow(20), rich, now),
            Renewal::End(NoRenewal::Stopping)
        );
        let gone = SellerState {
            connected: false,
            ..seller()
        };
        assert_eq!(
            decide(&l, &gone, &allow(20), rich, now),
            Renewal::End(NoRenewal::SellerGone)
        );
        let dear = SellerState {
            ask: Micros(3000),
            ..seller()
        };
        assert_eq!(
            decide(&l, &dear, &allow(20), rich, now),
            Renewal::End(NoRenewal::PriceAbove {
                ask: Micros(3000),
                max: Micros(2000)
            })
        );
        assert_eq!(
            decide(&l, &seller(), &allow(20), Micros(9_999), now),
            Renewal::End(NoRenewal::CannotAfford {
                needed: Micros(10_000),
                available: Micros(9_999)
            })
        );
        let huge = LeaseState {
            cpus: u32::MAX,
            first_minutes: 1_000_000,
            paid_minutes: 1,
            ..l
        };
        let rich_allow = Allowance {
            max_total_minutes: u32::MAX,
            max_price: Micros(u64::MAX),
        };
        let pricey = SellerState {
            ask: Micros(u64::MAX),
            max_minutes: u32::MAX,
            ..seller()
        };
        assert_eq!(
            decide(&huge, &pricey, &rich_allow, rich, before_end(&huge, 1)),
            Renewal::End(NoRenewal::Overflow)
        );
    }
}
