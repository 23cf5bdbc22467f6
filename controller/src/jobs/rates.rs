//! When the fleet fetches NBP tables: cron expressions in Warsaw time, by default
//! shortly after each table's publication on business days, with later retries the
//! same morning (a late table is not missed until the next day).

use chrono::{NaiveDate, Utc};
use chrono_tz::Europe::Warsaw;
use cron::Schedule;
use mai_fleet_core::Invalid;

use crate::schedule::{parse_cron, until_next};

use crate::rates::nbp::{NbpClient, NbpError};
use crate::rates::RateTable;
use crate::store::{Store, StoreError};

/// Table C is published 07:45–08:15, table A 11:45–12:15 (Warsaw).
pub const DEFAULT_CRON_C: &str = "0 20 8,9,10,14 * * Mon-Fri";
pub const DEFAULT_CRON_A: &str = "0 20 12,13,14 * * Mon-Fri";
/// Each scheduled fetch takes the last days again: a table missed while NBP or the
/// controller was down is filled in by the next run.
const CATCH_UP_DAYS: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Nbp(#[from] NbpError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The fetch schedule of a table: `MAI_FLEET_NBP_CRON_C` / `_A`, else the default.
/// Five fields (minute first) or six/seven (seconds first, years last) are accepted.
pub fn schedule_for(table: RateTable) -> Result<Schedule, Invalid> {
    let (var, default) = match table {
        RateTable::C => ("MAI_FLEET_NBP_CRON_C", DEFAULT_CRON_C),
        RateTable::A => ("MAI_FLEET_NBP_CRON_A", DEFAULT_CRON_A),
    };
    let text = crate::env::text(var).unwrap_or_else(|| default.to_string());
    parse_cron(&text).map_err(|e| Invalid(format!("{var}=`{text}`: {e}")))
}

/// Fetches `table` from `from` to `to` and stores what NBP published; the attempt
/// is recorded either way.
pub async fn sync_range(
    store: &Store,
    nbp: &NbpClient,
    table: RateTable,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<usize, SyncError> {
    match nbp.fetch_range(table, from, to).await {
        Ok(rates) => {
            let stored = store.upsert_rates(&rates).await?;
            store
                .record_rate_fetch(
                    table,
                    true,
                    stored,
                    &format!("{from}..{to}: {} table(s)", rates.len()),
                )
                .await?;
            Ok(stored)
        }
        Err(e) => {
            store
                .record_rate_fetch(table, false, 0, &e.to_string())
                .await?;
            Err(e.into())
        }
    }
}

/// The last days up to today (Warsaw).
pub async fn sync_recent(
    store: &Store,
    nbp: &NbpClient,
    table: RateTable,
) -> Result<usize, SyncError> {
    let today = Utc::now().with_timezone(&Warsaw).date_naive();
    sync_range(
        store,
        nbp,
        table,
        today - chrono::Duration::days(CATCH_UP_DAYS),
        today,
    )
    .await
}

/// Runs for as long as the server does: once at start, then on the schedule.
/// Failures are recorded and logged; the dashboard shows the consequences.
pub async fn run(
    store: Store,
    nbp: NbpClient,
    table: RateTable,
    schedule: Schedule,
    ctx: crate::supervisor::JobContext,
) -> Result<(), crate::schedule::NoNextTime> {
    loop {
        match sync_recent(&store, &nbp, table).await {
            Ok(n) => tracing::info!(table = table.code(), stored = n, "NBP rates fetched"),
            Err(e) => tracing::warn!(table = table.code(), error = %e, "NBP rates not fetched"),
        }
        ctx.beat();
        let Some(wait) = until_next(&schedule, Warsaw) else {
            return Err(crate::schedule::NoNextTime("rate"));
        };
        if !ctx.sleep(wait).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};

    #[test]
    fn default_fetch_follows_publication_on_business_days() {
        let s = parse_cron(DEFAULT_CRON_C).unwrap();
        // Friday 2026-11-20 09:00 Warsaw → 09:20, 10:20, 14:20 that day, then Monday 08:20.
        let start = Warsaw.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap();
        let mut it = s.after(&start);
        for hour in [9, 10, 14] {
            let t = it.next().unwrap();
            assert_eq!((t.day(), t.hour(), t.minute()), (20, hour, 20));
        }
        let monday = it.next().unwrap();
        assert_eq!((monday.day(), monday.hour()), (23, 8));
        assert!(parse_cron("20 8 * * Mon-Fri").is_ok());
        assert!(parse_cron("every morning").unwrap_err().0.contains("e.g."));
    }
}
