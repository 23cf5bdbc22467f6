//! How money and counts are rounded and written (docs/billing.md, "Rounding").
//!
//! Amounts stay exact `Decimal` until presented. USD is kept to the micro-dollar
//! (the stores' own precision) in JSON and CSV; PLN is rounded to the grosz once,
//! from the exact USD amount times the rate. Halves round away from zero, as Polish
//! invoices do.

use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds to `places` decimals, halves away from zero.
pub fn round(d: Decimal, places: u32) -> Decimal {
    d.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero)
}

/// USD to the micro-dollar: what JSON and CSV carry.
pub fn usd_micros(d: Decimal) -> Decimal {
    round(d, 6)
}

/// PLN to the grosz.
pub fn pln_grosze(d: Decimal) -> Decimal {
    round(d, 2)
}

/// An invoice amount in its currency: `1 234,56 zł` for PLN, `$1,234.56` else.
pub fn format_in(currency: &str, d: Decimal) -> String {
    if currency == "PLN" {
        format_pln(d)
    } else {
        format_usd(d)
    }
}

/// `$1,234.56`; amounts under a cent keep 6 decimals (`$0.002002`), so a small
/// tenant never shows as `$0.00` (seed 002).
pub fn format_usd(d: Decimal) -> String {
    let places = if !d.is_zero() && d.abs() < Decimal::new(1, 2) {
        6
    } else {
        2
    };
    let (sign, digits) = split_sign(round(d, places), places);
    let (int, frac) = digits.split_once('.').unwrap_or((&digits, ""));
    format!("{sign}${}.{frac}", group(int, ','))
}

/// [`format_usd`] of an amount that may be unknown: `-` then.
pub fn format_usd_or_dash(d: Option<Decimal>) -> String {
    d.map_or_else(|| "-".to_string(), format_usd)
}

/// `1 234,56 zł` (Polish: space between thousands, comma before grosze).
pub fn format_pln(d: Decimal) -> String {
    let (sign, digits) = split_sign(pln_grosze(d), 2);
    let (int, frac) = digits.split_once('.').unwrap_or((&digits, ""));
    format!("{sign}{},{frac} zł", group(int, ' '))
}

/// `1,751` tokens.
pub fn format_count(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", group(&n.unsigned_abs().to_string(), ','))
}

/// An NBP rate as published: 4 places.
pub fn format_rate(d: Decimal) -> String {
    let mut r = round(d, 4);
    r.rescale(4);
    r.to_string()
}

fn split_sign(mut d: Decimal, places: u32) -> (&'static str, String) {
    d.rescale(places);
    let sign = if d.is_sign_negative() && !d.is_zero() {
        "-"
    } else {
        ""
    };
    (sign, d.abs().to_string())
}

fn group(int: &str, sep: char) -> String {
    let mut out = String::with_capacity(int.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push(sep);
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn usd_keeps_six_places_under_a_cent() {
        assert_eq!(format_usd(d("0.002002")), "$0.002002");
        assert_eq!(format_usd(d("0.0000004")), "$0.000000");
        assert_eq!(format_usd(d("0")), "$0.00");
        assert_eq!(format_usd(d("0.01")), "$0.01");
        assert_eq!(format_usd(d("1234.565")), "$1,234.57");
        assert_eq!(format_usd(d("1234567.1")), "$1,234,567.10");
        assert_eq!(format_usd(d("-12.5")), "-$12.50");
    }

    #[test]
    fn pln_is_written_the_polish_way() {
        assert_eq!(format_pln(d("1234.56")), "1 234,56 zł");
        assert_eq!(format_pln(d("0.005")), "0,01 zł");
        assert_eq!(format_pln(d("0.004999")), "0,00 zł");
        assert_eq!(format_pln(d("1000000")), "1 000 000,00 zł");
        assert_eq!(format_pln(d("-2.345")), "-2,35 zł");
    }

    #[test]
    fn counts_and_rates() {
        assert_eq!(format_count(1751), "1,751");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1_000_000), "1,000,000");
        assert_eq!(format_rate(d("3.658")), "3.6580");
    }

    #[test]
    fn halves_round_away_from_zero() {
        assert_eq!(pln_grosze(d("10.125")), d("10.13"));
        assert_eq!(pln_grosze(d("-10.125")), d("-10.13"));
        assert_eq!(usd_micros(d("0.0000005")), d("0.000001"));
    }
}
