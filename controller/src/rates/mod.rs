//! USD→PLN exchange rates of the National Bank of Poland (NBP): which table the
//! fleet bills with, how a day finds its rate, and the scheduled fetch.
//!
//! A day uses the table published that day or, failing that (weekend, holiday,
//! before publication), the last one before it, at most [`LOOKBACK_DAYS`] back.
//! Without one, figures stay in USD and say so.

pub mod nbp;

use mai_fleet_core::Invalid;
use std::fmt;
use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

/// How far back a day may look for a published table (NBP's own advice).
pub const LOOKBACK_DAYS: i64 = 7;

/// NBP table C (buy/sell; the fleet bills with its ask, as the seeds do) or table A
/// (average; the one Polish VAT rules name for invoices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum RateTable {
    #[default]
    C,
    A,
}

impl RateTable {
    pub fn code(self) -> &'static str {
        match self {
            RateTable::C => "C",
            RateTable::A => "A",
        }
    }

    /// What the rate is, for people: "NBP table C ask".
    pub fn describe(self) -> &'static str {
        match self {
            RateTable::C => "NBP table C ask",
            RateTable::A => "NBP table A mid",
        }
    }

    /// The fleet's choice from `MAI_FLEET_RATE_TABLE` (C when unset).
    pub fn from_env() -> Result<Self, Invalid> {
        match crate::env::text("MAI_FLEET_RATE_TABLE") {
            Some(v) => v.parse(),
            None => Ok(RateTable::C),
        }
    }
}

impl FromStr for RateTable {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s.trim().to_ascii_uppercase().as_str() {
            "C" => Ok(RateTable::C),
            "A" => Ok(RateTable::A),
            _ => Err(format!(
                "`{s}` is not an NBP table the fleet bills with; use C (ask, default) or A (mid)"
            )
            .into()),
        }
    }
}

impl fmt::Display for RateTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One published rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Rate {
    #[sqlx(try_from = "String")]
    pub rate_table: TableCode,
    pub effective_date: NaiveDate,
    /// NBP's number of the table, e.g. `143/C/NBP/2025`.
    pub table_no: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
}

/// A table code as stored (`A`/`C`), readable straight from a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TableCode(pub RateTable);

impl TryFrom<String> for TableCode {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse().map(TableCode)
    }
}
