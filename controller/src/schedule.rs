//! Cron expressions as operators write them (NBP fetches, alert evaluation).

use std::str::FromStr;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use cron::Schedule;

/// Five fields (minute first) or six/seven (seconds first, years last).
pub fn parse_cron(text: &str) -> Result<Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_string()
    };
    Schedule::from_str(&full).map_err(|e| {
        format!("not a cron expression ({e}); e.g. `20 8 * * Mon-Fri` for 08:20 on business days")
    })
}

/// How long until the schedule's next time in `tz` (None: it has no next time).
pub fn until_next<Z: TimeZone>(schedule: &Schedule, tz: Z) -> Option<Duration> {
    let next = schedule.upcoming(tz).next()?;
    Some(
        (next.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}
