//! Conversions between Rust values and the store's columns.
//!
//! Every number is a signed 64-bit column on both backends, so unsigned
//! values are checked on the way in (too large is an error, never a wrap)
//! and on the way out (a negative count or amount means the row is corrupt).

use super::error::StoreError;
use cpushare_proto::money::Micros;
use sqlx::any::AnyRow;
use sqlx::Row;

/// An unsigned value as a BIGINT, or `ValueTooLarge`.
pub(crate) fn to_db(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::ValueTooLarge { what, value })
}

/// An optional unsigned value as a nullable BIGINT.
pub(crate) fn opt_to_db(what: &'static str, value: Option<u64>) -> Result<Option<i64>, StoreError> {
    value.map(|v| to_db(what, v)).transpose()
}

/// An amount of money as a BIGINT, or `AmountTooLarge`.
pub(crate) fn money_to_db(what: &'static str, amount: Micros) -> Result<i64, StoreError> {
    i64::try_from(amount.0).map_err(|_| StoreError::AmountTooLarge { what, amount })
}

/// A column of any decodable type.
fn get<'r, T>(row: &'r AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column)
        .map_err(|source| StoreError::Decode { column, source })
}

/// A signed BIGINT column.
pub(crate) fn col_i64(row: &AnyRow, column: &'static str) -> Result<i64, StoreError> {
    get(row, column)
}

/// A TEXT column.
pub(crate) fn col_text(row: &AnyRow, column: &'static str) -> Result<String, StoreError> {
    get(row, column)
}

/// A nullable TEXT column.
pub(crate) fn col_opt_text(
    row: &AnyRow,
    column: &'static str,
) -> Result<Option<String>, StoreError> {
    get(row, column)
}

fn non_negative(column: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        column,
        value: v.to_string(),
    })
}

/// A BIGINT column that must hold a non-negative value.
pub(crate) fn col_u64(row: &AnyRow, column: &'static str) -> Result<u64, StoreError> {
    non_negative(column, col_i64(row, column)?)
}

/// A nullable BIGINT column that must hold a non-negative value.
pub(crate) fn col_opt_u64(row: &AnyRow, column: &'static str) -> Result<Option<u64>, StoreError> {
    get::<Option<i64>>(row, column)?
        .map(|v| non_negative(column, v))
        .transpose()
}

/// A BIGINT column that must fit a `u32`.
pub(crate) fn col_u32(row: &AnyRow, column: &'static str) -> Result<u32, StoreError> {
    let v = col_i64(row, column)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        column,
        value: v.to_string(),
    })
}

/// A nullable BIGINT column that must fit an `i32`.
pub(crate) fn col_opt_i32(row: &AnyRow, column: &'static str) -> Result<Option<i32>, StoreError> {
    get::<Option<i64>>(row, column)?
        .map(|v| {
            i32::try_from(v).map_err(|_| StoreError::Corrupt {
                column,
                value: v.to_string(),
            })
        })
        .transpose()
}

/// A BIGINT column of money that can never be negative.
pub(crate) fn col_micros(row: &AnyRow, column: &'static str) -> Result<Micros, StoreError> {
    col_u64(row, column).map(Micros)
}

/// Defines an enum stored as one of a fixed set of TEXT values.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Reads the stored text back; unknown text means a corrupt row.
            pub(crate) fn from_db(
                column: &'static str,
                text: &str,
            ) -> Result<Self, $crate::store::StoreError> {
                match text {
                    $( $text => Ok($name::$variant), )+
                    other => Err($crate::store::StoreError::Corrupt {
                        column,
                        value: other.to_string(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_above_i64_max_are_rejected_not_wrapped() {
        assert_eq!(to_db("x", i64::MAX as u64).ok(), Some(i64::MAX));
        assert!(matches!(
            to_db("cpus", u64::MAX),
            Err(StoreError::ValueTooLarge {
                what: "cpus",
                value: u64::MAX
            })
        ));
        let too_much = Micros(i64::MAX as u64 + 1);
        assert!(matches!(
            money_to_db("price", too_much),
            Err(StoreError::AmountTooLarge { what: "price", amount }) if amount == too_much
        ));
        assert_eq!(
            money_to_db("price", Micros(i64::MAX as u64)).ok(),
            Some(i64::MAX)
        );
    }

    #[test]
    fn negative_counts_read_back_as_corrupt() {
        assert!(matches!(
            non_negative("filled", -1),
            Err(StoreError::Corrupt { column: "filled", value }) if value == "-1"
        ));
    }
}
