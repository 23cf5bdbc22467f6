//! A calendar month, as written on the command line and in URLs: `2026-10`.

use mai_fleet_core::Invalid;
use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, Months, NaiveDate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(NaiveDate);

impl Month {
    pub fn of(day: NaiveDate) -> Self {
        Month(day.with_day(1).unwrap_or(day))
    }

    pub fn first_day(self) -> NaiveDate {
        self.0
    }

    pub fn last_day(self) -> NaiveDate {
        self.next().0.pred_opt().unwrap_or(self.0)
    }

    pub fn next(self) -> Self {
        Month(self.0.checked_add_months(Months::new(1)).unwrap_or(self.0))
    }

    pub fn prev(self) -> Self {
        Month(self.0.checked_sub_months(Months::new(1)).unwrap_or(self.0))
    }

    /// `text` as a month; none (or empty): this month in Warsaw.
    pub fn parse_or_current(text: Option<&str>) -> Result<Self, Invalid> {
        match text.map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => m.parse(),
            None => Ok(Month::of(super::fleet_today())),
        }
    }

    pub fn contains(self, day: NaiveDate) -> bool {
        Month::of(day) == self
    }
}

impl FromStr for Month {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        NaiveDate::parse_from_str(&format!("{}-01", s.trim()), "%Y-%m-%d")
            .map(Month)
            .map_err(|_| {
                Invalid(format!(
                    "`{s}` is not a month; write it as YYYY-MM, e.g. 2026-10"
                ))
            })
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m"))
    }
}

impl serde::Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds() {
        let m: Month = "2024-02".parse().unwrap();
        assert_eq!(m.last_day(), NaiveDate::from_ymd_opt(2024, 2, 29).unwrap());
        assert_eq!(m.to_string(), "2024-02");
        assert_eq!(m.prev().to_string(), "2024-01");
        assert_eq!(
            "2025-12".parse::<Month>().unwrap().next().to_string(),
            "2026-01"
        );
        assert!("2025-13".parse::<Month>().is_err());
        assert!("october"
            .parse::<Month>()
            .unwrap_err()
            .0
            .contains("YYYY-MM"));
    }
}
