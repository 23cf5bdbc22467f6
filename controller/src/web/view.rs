//! What every page shows around its content, and money written for people.

use rust_decimal::Decimal;

use crate::billing::money::{format_pln, format_rate, format_usd};
use crate::rates::Rate;

/// The layout's data: who is logged in and the token its forms carry.
pub struct Chrome {
    pub user: String,
    pub csrf: String,
    pub nav: &'static str,
}

/// A USD amount and, when there is a rate, its PLN: `$12.50 (50,75 zł)`.
pub fn usd_pln(usd: Decimal, rate: Option<&Rate>) -> (String, String) {
    (
        format_usd(usd),
        rate.map(|r| format_pln(usd * r.rate)).unwrap_or_default(),
    )
}

/// `3.6580 PLN/USD, NBP 143/C/NBP/2025 of 2025-07-25`.
pub fn describe_rate(rate: &Rate) -> String {
    format!(
        "{} PLN/USD, NBP table {} of {}",
        format_rate(rate.rate),
        rate.table_no,
        rate.effective_date
    )
}

/// `3m`, `2h 5m`, `3d 4h` for an age in seconds.
pub fn age(seconds: Option<i64>) -> String {
    match seconds {
        None => "never".into(),
        Some(s) if s < 0 => "just now".into(),
        Some(s) if s < 60 => format!("{s}s"),
        Some(s) if s < 3600 => format!("{}m", s / 60),
        Some(s) if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        Some(s) => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}
