//! The bounds and checks of one value read from a tenant's store: what a usage row
//! may hold before it is refused, never shipped. Shared by the table descriptions
//! (`tables`) and the store read (`reader`).

use chrono::NaiveDate;
use rusqlite::types::ValueRef;
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;

/// Bounds of one store row (one organization, day, user or model). Beyond them a row
/// is refused, never shipped; migration 0007 makes the database refuse the same.
pub mod bounds {
    pub const MAX_TOKENS: i64 = 1_000_000_000_000;
    pub const MAX_REQUESTS: i64 = 1_000_000_000;
    /// USD.
    pub const MAX_COST: i64 = 1_000_000;
}

/// Why one row was not taken: refused for its values, or SQLite failed (which fails
/// the whole read).
pub enum RowError {
    Refused(String),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for RowError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            // A column of another type than the app writes (text in a name column).
            rusqlite::Error::FromSqlConversionFailure(_, t, _)
            | rusqlite::Error::InvalidColumnType(_, _, t) => {
                RowError::Refused(format!("a value of type {t} where the app writes another"))
            }
            e => RowError::Sqlite(e),
        }
    }
}

/// The checks every value of a row passes before it may leave the store.
pub struct Check {
    /// The latest time stamp taken (the clock plus the skew allowed).
    pub horizon: i64,
    /// The latest usage day taken.
    pub last_day: NaiveDate,
}

impl Check {
    pub fn count(&self, v: ValueRef<'_>, max: i64, column: &str) -> Result<i64, RowError> {
        match v {
            ValueRef::Integer(n) if (0..=max).contains(&n) => Ok(n),
            ValueRef::Null => Ok(0),
            ValueRef::Integer(n) => Err(RowError::Refused(format!(
                "{column} {n} is outside 0..={max}"
            ))),
            other => Err(RowError::Refused(format!(
                "{column} is not a whole number ({})",
                other.data_type()
            ))),
        }
    }

    /// REAL dollars to a decimal with the 6 places the app keeps.
    pub fn money(&self, v: ValueRef<'_>, column: &str) -> Result<Decimal, RowError> {
        let f = match v {
            ValueRef::Real(f) => f,
            ValueRef::Integer(n) => n as f64,
            ValueRef::Null => 0.0,
            other => {
                return Err(RowError::Refused(format!(
                    "{column} is not a number ({})",
                    other.data_type()
                )))
            }
        };
        if !(0.0..=bounds::MAX_COST as f64).contains(&f) {
            return Err(RowError::Refused(format!(
                "{column} {f} USD is outside 0..={}",
                bounds::MAX_COST
            )));
        }
        Decimal::from_f64(f)
            .map(|d| d.round_dp(6))
            .ok_or_else(|| RowError::Refused(format!("{column} {f} is not an amount")))
    }

    pub fn stamp(&self, v: ValueRef<'_>) -> Result<i64, RowError> {
        match v {
            ValueRef::Integer(t) if t <= self.horizon => Ok(t),
            ValueRef::Integer(t) => Err(RowError::Refused(format!(
                "updated {t} is in the future (the tenant's clock, or a hand, lies)"
            ))),
            other => Err(RowError::Refused(format!(
                "its time stamp is not a number ({})",
                other.data_type()
            ))),
        }
    }

    /// DATE values are text `YYYY-MM-DD`; some writers append a time.
    pub fn date(&self, v: ValueRef<'_>) -> Result<NaiveDate, RowError> {
        let text = match v {
            ValueRef::Text(t) => std::str::from_utf8(t).unwrap_or(""),
            _ => "",
        };
        let day = NaiveDate::parse_from_str(text.get(..10).unwrap_or(text), "%Y-%m-%d")
            .map_err(|_| RowError::Refused("its date is not a YYYY-MM-DD date".into()))?;
        if day > self.last_day {
            return Err(RowError::Refused(format!(
                "its date {day} is in the future"
            )));
        }
        Ok(day)
    }
}

/// A row's key for a report, shortened: it is the tenant's text.
pub(crate) fn text_of(v: ValueRef<'_>) -> String {
    let s = match v {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        _ => String::from("?"),
    };
    let short: String = s.chars().take(40).filter(|c| !c.is_control()).collect();
    format!("{short:?}")
}
