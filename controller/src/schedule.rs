//! Cron expressions as operators write them (NBP fetches, alert evaluation).

use mai_fleet_core::Invalid;
use std::str::FromStr;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use cron::Schedule;

/// Five fields (minute first), as standard cron: day of week 0–7, with 0 and 7
/// Sunday and 1–5 Monday to Friday. Or six/seven fields (seconds first, years last),
/// as the `cron` crate reads them (there day numbers run 1 = Sunday to 7; names are
/// the same either way).
pub fn parse_cron(text: &str) -> Result<Schedule, Invalid> {
    let hint = "e.g. `20 8 * * 1-5` (or `Mon-Fri`) for 08:20 on business days";
    let fields: Vec<&str> = text.split_whitespace().collect();
    let full = if fields.len() == 5 {
        // The crate numbers Sunday 1: a standard `1-5` would run Sunday to Thursday.
        // Days are handed over by name, which both read alike.
        let days = standard_weekdays(fields[4]).map_err(|e| format!("{e}; {hint}"))?;
        format!("0 {} {days}", fields[..4].join(" "))
    } else {
        text.to_string()
    };
    Schedule::from_str(&full).map_err(|e| Invalid(format!("not a cron expression ({e}); {hint}")))
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A standard cron day-of-week field (`*`, `1-5`, `0,6`, `*/2`, `Mon-Fri`, `5-7`) as
/// a list of day names. 7 is Sunday, as 0 is.
fn standard_weekdays(field: &str) -> Result<String, Invalid> {
    if field == "*" || field == "?" {
        return Ok("*".into());
    }
    let day = |t: &str| -> Result<usize, Invalid> {
        if let Ok(n) = t.parse::<usize>() {
            return if n <= 7 {
                Ok(n % 7)
            } else {
                Err(format!("day of week {n} is not 0-7").into())
            };
        }
        DAY_NAMES
            .iter()
            .position(|d| d.eq_ignore_ascii_case(t))
            .ok_or_else(|| Invalid(format!("`{t}` is not a day of the week")))
    };
    let mut set = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<usize>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("`{item}`: the step must be a whole number above 0"))?,
            ),
            None => (item, 1),
        };
        let (first, last) = match range.split_once('-') {
            _ if range == "*" => (0, 6),
            Some((a, b)) => {
                // `5-7` is Friday to Sunday: the end is taken before 7 becomes 0.
                let end = if b == "7" { 7 } else { day(b)? };
                (day(a)?, end)
            }
            None if step > 1 => (day(range)?, 6),
            None => {
                let d = day(range)?;
                (d, d)
            }
        };
        if first > last {
            return Err(format!("`{item}`: the range runs backwards").into());
        }
        for d in (first..=last).step_by(step) {
            set[d % 7] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|d| set[*d]).map(|d| DAY_NAMES[d]).collect();
    Ok(names.join(","))
}

/// A schedule that names no future time (a cron expression for a date that never
/// comes): the job it drives stops, and the supervisor says so.
#[derive(Debug, thiserror::Error)]
#[error("the {0} schedule has no next time")]
pub struct NoNextTime(pub &'static str);

/// How long until the schedule's next time in `tz` (None: it has no next time).
pub fn until_next<Z: TimeZone>(schedule: &Schedule, tz: Z) -> Option<Duration> {
    let next = schedule.upcoming(tz).next()?;
    Some(
        (next.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Weekday};

    fn days(expr: &str) -> Vec<Weekday> {
        let s = parse_cron(expr).unwrap();
        // A week of runs from just before Monday 2026-11-30 (`after` excludes its start).
        let start = Utc.with_ymd_and_hms(2026, 11, 29, 23, 59, 59).unwrap();
        let mut seen: Vec<Weekday> = s
            .after(&start)
            .take_while(|t| *t < start + chrono::Duration::days(7))
            .map(|t| t.weekday())
            .collect();
        seen.dedup();
        seen
    }

    /// Issue 13: `20 8 * * 1-5`, documented as business days, ran Sunday to Thursday.
    #[test]
    fn five_fields_follow_standard_cron_for_days_of_the_week() {
        use Weekday::*;
        assert_eq!(days("20 8 * * 1-5"), [Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(days("20 8 * * Mon-Fri"), [Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(days("0 0 * * 0"), [Sun]);
        assert_eq!(days("0 0 * * 7"), [Sun]);
        assert_eq!(days("0 0 * * 5-7"), [Fri, Sat, Sun]);
        assert_eq!(days("0 0 * * 0,6"), [Sat, Sun]);
        assert_eq!(days("0 0 * * */2"), [Tue, Thu, Sat, Sun]);
        assert_eq!(days("0 0 * * 1/2"), [Mon, Wed, Fri]);
        assert_eq!(days("0 0 * * *").len(), 7);
        assert!(parse_cron("0 0 * * 8").unwrap_err().0.contains("0-7"));
        assert!(parse_cron("0 0 * * 5-1")
            .unwrap_err()
            .0
            .contains("backwards"));
        // Six fields keep the crate's own reading (names are the same).
        assert_eq!(days("0 0 0 * * Mon-Fri"), [Mon, Tue, Wed, Thu, Fri]);
    }
}
