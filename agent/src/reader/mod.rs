//! Source: a tenant's SQLite usage store (docs/agent.md, "The usage store"), read
//! without ever writing it, locking it for writing or blocking the app: opened
//! read-only with `query_only`, all tables read in one read transaction (a consistent
//! snapshot in WAL and rollback-journal modes alike).

mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::checks::{text_of, Check, RowError};
use crate::tables::{store_select, UsageTable};
pub use crate::tables::{DailyRow, ModelRow, UserRow};

pub const DAILY: &str = DailyRow::STORE;
pub const USER: &str = UserRow::STORE;
pub const MODEL: &str = ModelRow::STORE;
pub const LIVE: &str = "client_live_counters";
pub const GENERATIONS: &str = "processed_generations";
use schema::ORGS;
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("usage store {0} does not exist")]
    Missing(String),
    #[error("usage store unreadable: {0}")]
    Unreadable(String),
    #[error("usage store of an unknown schema: {0}")]
    UnknownSchema(String),
    /// The store is not something the agent may open or read within its budget: the
    /// tenant owns the file, and so its shape.
    #[error("usage store refused: {0}")]
    Refused(String),
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        match mai_fleet_core::store::refusal(&e) {
            Some(why) => ReadError::Refused(why.into()),
            None => ReadError::Unreadable(e.to_string()),
        }
    }
}

/// What one store read may cost the agent: every tenant of the host is read by the
/// same agent in the same cycle, so one store cannot be allowed to take it all.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Wall time of the whole read; SQLite is interrupted past it.
    pub time: std::time::Duration,
    /// Rows changed since the watermark, per table, that one read may load.
    pub max_rows: i64,
    /// Largest string or blob SQLite will hand over (ids, names, dates are short).
    pub max_value_bytes: i32,
    /// How far ahead of the agent's clock a row's time stamp may be. A container
    /// shares its host's clock, so beyond a little skew a stamp is a lie, and one in
    /// the future would carry the watermark past every real row.
    pub max_clock_skew: std::time::Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            time: std::time::Duration::from_secs(10),
            max_rows: 200_000,
            max_value_bytes: 64 * 1024,
            max_clock_skew: std::time::Duration::from_secs(3600),
        }
    }
}

pub use crate::checks::bounds;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRow {
    pub counter_date: NaiveDate,
    pub today_tokens: i64,
    pub today_requests: i64,
    pub today_raw_cost: Decimal,
    pub today_markup_cost: Decimal,
    pub last_updated: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRow {
    pub id: String,
    pub generation_date: NaiveDate,
    pub processed_at: i64,
    pub total_cost: Decimal,
    pub total_tokens: i64,
}

/// What changed in one store since the watermarks, plus what health needs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// e.g. `migration`, `scripts`, `migration-no-live-counters`
    pub variant: String,
    pub org_row_present: bool,
    pub daily: Vec<DailyRow>,
    pub user: Vec<UserRow>,
    pub model: Vec<ModelRow>,
    pub live: Option<LiveRow>,
    pub generations: Vec<GenerationRow>,
    /// Rows of the tenant's organization per table, now.
    pub row_counts: HashMap<String, i64>,
    /// Highest `updated_at` (or its table's equivalent) per table, now, among rows
    /// not stamped in the future.
    pub max_updated: HashMap<String, i64>,
    /// Rows read but refused (out of bounds, not numbers, dated in the future): how
    /// many, and the first few reasons.
    pub refused_rows: u64,
    pub refused_examples: Vec<String>,
}

impl Snapshot {
    pub fn last_usage_change(&self) -> Option<i64> {
        self.max_updated.get(DAILY).copied().filter(|t| *t > 0)
    }

    /// What health says of the refused rows, if any.
    pub fn refused_reason(&self) -> Option<String> {
        (self.refused_rows > 0).then(|| {
            format!(
                "{} row(s) refused, not shipped: {}",
                self.refused_rows,
                self.refused_examples.join("; ")
            )
        })
    }

    fn refuse(&mut self, table: &str, key: &str, why: String) {
        self.refused_rows += 1;
        if self.refused_examples.len() < 5 {
            self.refused_examples.push(format!("{table} {key}: {why}"));
        }
    }
}

/// Refuses what SQLite must never open (core's `check_store_files`).
fn check_files(path: &Path) -> Result<(), ReadError> {
    use mai_fleet_core::contract::{check_store_files, StoreFileError};
    check_store_files(path).map_err(|e| match e {
        StoreFileError::Missing(p) => ReadError::Missing(p),
        refused => ReadError::Refused(refused.to_string()),
    })
}

/// How far before a watermark rows are read again: a row updated in the boundary
/// second, or stamped by a tenant clock that stepped back a little, is not missed.
/// Re-read rows are idempotent upserts.
pub const WATERMARK_MARGIN_S: i64 = 120;

/// Reads the rows of `org` changed since `watermarks` (per table, less
/// [`WATERMARK_MARGIN_S`]).
pub fn read(
    path: &Path,
    org: &str,
    watermarks: &HashMap<String, i64>,
    budget: &Budget,
) -> Result<Snapshot, ReadError> {
    check_files(path)?;
    // The defences the controller's backups share (core::store).
    let guard = mai_fleet_core::store::Guard {
        time: budget.time,
        max_value_bytes: budget.max_value_bytes,
    };
    let mut conn = mai_fleet_core::store::open(path, &guard)?;
    let tx = conn.transaction()?;
    let schema::Schema {
        name: variant,
        has_live,
        has_generations,
    } = schema::variant(&tx)?;
    let wm = |table: &str| {
        watermarks
            .get(table)
            .map_or(i64::MIN, |w| w.saturating_sub(WATERMARK_MARGIN_S))
    };
    let now = chrono::Utc::now();
    let horizon = now
        .timestamp()
        .saturating_add(budget.max_clock_skew.as_secs() as i64);
    // Usage dates are the tenant's local days: a day ahead of UTC at most, plus skew.
    let last_day =
        now.date_naive() + chrono::Days::new(2 + budget.max_clock_skew.as_secs() / 86_400);
    let mut snap = Snapshot {
        variant,
        ..Snapshot::default()
    };
    snap.org_row_present = tx.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {ORGS} WHERE id = ?1)"),
        [org],
        |r| r.get(0),
    )?;
    let mut tables = vec![
        (DAILY, "updated_at"),
        (USER, "updated_at"),
        (MODEL, "updated_at"),
    ];
    if has_generations {
        tables.push((GENERATIONS, "processed_at"));
    }
    for (table, stamp) in &tables {
        let (count, max, changed): (i64, Option<i64>, i64) = tx.query_row(
            &format!(
                "SELECT COUNT(*), MAX(CASE WHEN typeof({stamp}) = 'integer' AND {stamp} <= ?2 THEN {stamp} END),
                        COUNT(CASE WHEN {stamp} >= ?3 THEN 1 END)
                 FROM {table} WHERE client_org_id = ?1"
            ),
            rusqlite::params![org, horizon, wm(table)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if changed > budget.max_rows {
            return Err(ReadError::Refused(format!(
                "{table}: {changed} rows changed since the last sync, more than the {} rows one read may load",
                budget.max_rows
            )));
        }
        snap.row_counts.insert(table.to_string(), count);
        snap.max_updated.insert(table.to_string(), max.unwrap_or(0));
    }
    let check = Check { horizon, last_day };
    snap.daily = read_table::<DailyRow>(&tx, org, wm(DAILY), &check, &mut snap)?;
    snap.user = read_table::<UserRow>(&tx, org, wm(USER), &check, &mut snap)?;
    snap.model = read_table::<ModelRow>(&tx, org, wm(MODEL), &check, &mut snap)?;
    if has_live {
        snap.live = read_live(&tx, org, &check, &mut snap)?;
    }
    if has_generations {
        snap.generations = read_generations(&tx, org, wm(GENERATIONS), &check, &mut snap)?;
    }
    Ok(snap)
}

/// The tenant's live counters (one row). Always read: health reports its date; the
/// sink ignores an old one.
fn read_live(
    tx: &rusqlite::Transaction<'_>,
    org: &str,
    check: &Check,
    snap: &mut Snapshot,
) -> Result<Option<LiveRow>, ReadError> {
    // "current_date" quoted: unquoted it is SQLite's CURRENT_DATE, not the column.
    let sql = format!(
        "SELECT \"current_date\", today_tokens, today_requests, today_raw_cost, today_markup_cost, last_updated
         FROM {LIVE} WHERE client_org_id = ?1 LIMIT 1"
    );
    let live = collect(
        tx,
        &sql,
        rusqlite::params![org],
        |_| org.to_string(),
        LIVE,
        snap,
        |r| {
            Ok(LiveRow {
                counter_date: check.date(r.get_ref(0)?)?,
                today_tokens: check.count(r.get_ref(1)?, bounds::MAX_TOKENS, "today_tokens")?,
                today_requests: check.count(
                    r.get_ref(2)?,
                    bounds::MAX_REQUESTS,
                    "today_requests",
                )?,
                today_raw_cost: check.money(r.get_ref(3)?, "today_raw_cost")?,
                today_markup_cost: check.money(r.get_ref(4)?, "today_markup_cost")?,
                last_updated: check.stamp(r.get_ref(5)?)?,
            })
        },
    )?;
    Ok(live.into_iter().next())
}

/// The generations processed since `since`, each checked.
fn read_generations(
    tx: &rusqlite::Transaction<'_>,
    org: &str,
    since: i64,
    check: &Check,
    snap: &mut Snapshot,
) -> Result<Vec<GenerationRow>, ReadError> {
    let sql = format!(
        "SELECT id, generation_date, processed_at, total_cost, total_tokens
         FROM {GENERATIONS} WHERE client_org_id = ?1 AND processed_at >= ?2"
    );
    let key = |r: &rusqlite::Row<'_>| r.get_ref(0).map_or_else(|_| "?".into(), text_of);
    collect(
        tx,
        &sql,
        rusqlite::params![org, since],
        key,
        GENERATIONS,
        snap,
        |r| {
            Ok(GenerationRow {
                id: r.get(0)?,
                generation_date: check.date(r.get_ref(1)?)?,
                processed_at: check.stamp(r.get_ref(2)?)?,
                total_cost: check.money(r.get_ref(3)?, "total_cost")?,
                total_tokens: check.count(r.get_ref(4)?, bounds::MAX_TOKENS, "total_tokens")?,
            })
        },
    )
}

/// The rows of one usage table changed since `since`, each checked; a refused row is
/// counted and named in `snap`, the rest are returned.
fn read_table<T: UsageTable>(
    tx: &rusqlite::Transaction<'_>,
    org: &str,
    since: i64,
    check: &Check,
    snap: &mut Snapshot,
) -> Result<Vec<T>, ReadError> {
    let id = T::COLUMNS.len();
    let key = |r: &rusqlite::Row<'_>| r.get_ref(id).map_or_else(|_| "?".into(), text_of);
    collect(
        tx,
        &store_select::<T>(),
        rusqlite::params![org, since],
        key,
        T::STORE,
        snap,
        |r| T::from_store(r, check),
    )
}

/// Runs one store query and keeps the rows `row` accepts; refusals go to `snap`
/// under `table` and the row's `key`. A failure of SQLite itself fails the read.
fn collect<T>(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    key: impl Fn(&rusqlite::Row<'_>) -> String,
    table: &str,
    snap: &mut Snapshot,
    row: impl Fn(&rusqlite::Row<'_>) -> Result<T, RowError>,
) -> Result<Vec<T>, ReadError> {
    let mut stmt = tx.prepare(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        match row(r) {
            Ok(v) => out.push(v),
            Err(RowError::Refused(why)) => snap.refuse(table, &key(r), why),
            Err(RowError::Sqlite(e)) => return Err(e.into()),
        }
    }
    Ok(out)
}
