//! Exact money: integer micro-credits.
//!
//! One credit is 1,000,000 micro-credits. Every amount the system stores,
//! moves or compares is a [`Micros`]; decimal text is parsed exactly (no
//! floating point anywhere on the money path).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Micro-credits in one credit.
pub const MICROS_PER_CREDIT: u64 = 1_000_000;

/// An amount of money in micro-credits.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Micros(pub u64);

/// Why a money string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// amount `{0}` is not a decimal number like `12` or `0.02`
    #[error("amount `{0}` is not a decimal number like `12` or `0.02`")]
    NotANumber(String),
    /// amount `{0}` has more than 6 decimal places (the smallest unit is 0.000001)
    #[error("amount `{0}` has more than 6 decimal places (the smallest unit is 0.000001)")]
    TooPrecise(String),
    /// amount `{0}` is too large
    #[error("amount `{0}` is too large")]
    TooLarge(String),
}

impl Micros {
    /// Zero credits.
    pub const ZERO: Micros = Micros(0);

    /// Whole credits.
    pub const fn credits(c: u64) -> Micros {
        Micros(c * MICROS_PER_CREDIT)
    }

    /// `self + rhs`, or `None` on overflow.
    pub fn checked_add(self, rhs: Micros) -> Option<Micros> {
        self.0.checked_add(rhs.0).map(Micros)
    }

    /// `self - rhs`, or `None` if it would go below zero.
    pub fn checked_sub(self, rhs: Micros) -> Option<Micros> {
        self.0.checked_sub(rhs.0).map(Micros)
    }

    /// `self * n`, or `None` on overflow.
    pub fn checked_mul(self, n: u64) -> Option<Micros> {
        self.0.checked_mul(n).map(Micros)
    }

    /// `self - rhs`, floored at zero.
    pub fn saturating_sub(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Display for Micros {
    /// Credits with the trailing zeros of the fraction dropped: `0.02`, `12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_CREDIT;
        let frac = self.0 % MICROS_PER_CREDIT;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl FromStr for Micros {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let all_digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) {
            return Err(MoneyError::NotANumber(s.to_string()));
        }
        if frac.len() > 6 {
            return Err(MoneyError::TooPrecise(s.to_string()));
        }
        let too_large = || MoneyError::TooLarge(s.to_string());
        let w: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let f: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| too_large())?
        };
        w.checked_mul(MICROS_PER_CREDIT)
            .and_then(|m| m.checked_add(f))
            .map(Micros)
            .ok_or_else(too_large)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!("0.02".parse::<Micros>().unwrap(), Micros(20_000));
        assert_eq!("12".parse::<Micros>().unwrap(), Micros(12_000_000));
        assert_eq!(".5".parse::<Micros>().unwrap(), Micros(500_000));
        assert_eq!("1.000001".parse::<Micros>().unwrap(), Micros(1_000_001));
    }

    #[test]
    fn rejects_bad_amounts_by_name() {
        assert!(matches!(
            "".parse::<Micros>(),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            "-1".parse::<Micros>(),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            "1e3".parse::<Micros>(),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            "0.0000001".parse::<Micros>(),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            "99999999999999999999".parse::<Micros>(),
            Err(MoneyError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(m in any::<u64>()) {
            let text = Micros(m).to_string();
            prop_assert_eq!(text.parse::<Micros>().unwrap(), Micros(m));
        }
    }
}
