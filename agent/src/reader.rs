//! Source: a tenant's SQLite usage store (docs/agent.md, "The usage store"), read
//! without ever writing it, locking it for writing or blocking the app: opened
//! read-only with `query_only`, all tables read in one read transaction (a consistent
//! snapshot in WAL and rollback-journal modes alike).

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;

use rusqlite::Connection;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::checks::{text_of, Check, RowError};
use crate::tables::{store_required, store_select, UsageTable};
pub use crate::tables::{DailyRow, ModelRow, UserRow};

pub const DAILY: &str = DailyRow::STORE;
pub const USER: &str = UserRow::STORE;
pub const MODEL: &str = ModelRow::STORE;
pub const LIVE: &str = "client_live_counters";
pub const GENERATIONS: &str = "processed_generations";
const ORGS: &str = "client_organizations";

/// Tables a store must have, with the columns the agent reads; a store lacking one is
/// of an unknown schema.
fn required() -> [(&'static str, Vec<&'static str>); 4] {
    [
        (DAILY, store_required::<DailyRow>()),
        (USER, store_required::<UserRow>()),
        (MODEL, store_required::<ModelRow>()),
        (ORGS, vec!["id"]),
    ]
}

const OPTIONAL: &[(&str, &[&str])] = &[
    (
        LIVE,
        &[
            "client_org_id",
            "current_date",
            "today_tokens",
            "today_requests",
            "today_raw_cost",
            "today_markup_cost",
            "last_updated",
        ],
    ),
    (
        GENERATIONS,
        &[
            "id",
            "client_org_id",
            "generation_date",
            "processed_at",
            "total_cost",
            "total_tokens",
        ],
    ),
];

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
    let (variant, has_live, has_generations) = schema_variant(&tx)?;
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
        // "current_date" quoted: unquoted it is SQLite's CURRENT_DATE, not the column.
        // Always read (one row): health reports its date; the sink ignores an old one.
        let sql = format!(
            "SELECT \"current_date\", today_tokens, today_requests, today_raw_cost, today_markup_cost, last_updated
             FROM {LIVE} WHERE client_org_id = ?1 LIMIT 1"
        );
        let live = collect(
            &tx,
            &sql,
            rusqlite::params![org],
            |_| org.to_string(),
            LIVE,
            &mut snap,
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
        snap.live = live.into_iter().next();
    }
    if has_generations {
        let sql = format!(
            "SELECT id, generation_date, processed_at, total_cost, total_tokens
             FROM {GENERATIONS} WHERE client_org_id = ?1 AND processed_at >= ?2"
        );
        let key = |r: &rusqlite::Row<'_>| r.get_ref(0).map_or_else(|_| "?".into(), text_of);
        snap.generations = collect(
            &tx,
            &sql,
            rusqlite::params![org, wm(GENERATIONS)],
            key,
            GENERATIONS,
            &mut snap,
            |r| {
                Ok(GenerationRow {
                    id: r.get(0)?,
                    generation_date: check.date(r.get_ref(1)?)?,
                    processed_at: check.stamp(r.get_ref(2)?)?,
                    total_cost: check.money(r.get_ref(3)?, "total_cost")?,
                    total_tokens: check.count(r.get_ref(4)?, bounds::MAX_TOKENS, "total_tokens")?,
                })
            },
        )?;
    }
    Ok(snap)
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

/// Names the schema variant, or says what is missing.
fn schema_variant(conn: &Connection) -> Result<(String, bool, bool), ReadError> {
    let columns = |table: &str| -> Result<Vec<String>, rusqlite::Error> {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect();
        names
    };
    // Only plain tables are read: a view or a virtual table named like a usage table
    // runs the tenant's code (a recursive view never ends).
    let required = required();
    for table in required
        .iter()
        .map(|(t, _)| *t)
        .chain(OPTIONAL.iter().map(|(t, _)| *t))
    {
        mai_fleet_core::store::plain_table(conn, table)?.map_err(ReadError::Refused)?;
    }
    // A table: absent (None), or the wanted columns it lacks.
    let lacking = |table: &str, wanted: &[&str]| -> Result<Option<Vec<String>>, rusqlite::Error> {
        let have = columns(table)?;
        Ok((!have.is_empty()).then(|| {
            wanted
                .iter()
                .filter(|c| !have.iter().any(|h| h == *c))
                .map(|c| c.to_string())
                .collect()
        }))
    };
    let mut problems = Vec::new();
    for (table, wanted) in &required {
        match lacking(table, wanted)? {
            None => problems.push(format!("table {table} is missing")),
            Some(missing) if !missing.is_empty() => {
                problems.push(format!("{table} lacks {}", missing.join(", ")))
            }
            Some(_) => {}
        }
    }
    let mut present = [false; 2];
    for (i, (table, wanted)) in OPTIONAL.iter().enumerate() {
        match lacking(table, wanted)? {
            None => {}
            Some(missing) if missing.is_empty() => present[i] = true,
            Some(missing) => problems.push(format!("{table} lacks {}", missing.join(", "))),
        }
    }
    if !problems.is_empty() {
        return Err(ReadError::UnknownSchema(problems.join("; ")));
    }
    // The app's ad-hoc scripts declare foreign keys; its Alembic migration does not.
    let has_fk: bool = conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM pragma_foreign_key_list('{DAILY}'))"),
        [],
        |r| r.get(0),
    )?;
    let mut variant = String::from(if has_fk { "scripts" } else { "migration" });
    if !present[0] {
        variant.push_str("-no-live-counters");
    }
    if !present[1] {
        variant.push_str("-no-generations");
    }
    Ok((variant, present[0], present[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mai-reader-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("webui.db")
    }

    const ROWS: &str = "
        INSERT INTO client_organizations (id, name, openrouter_api_key, markup_rate, is_active, created_at, updated_at)
            VALUES ('org_a', 'A', 'k', 1.3, 1, 1, 1), ('org_b', 'B', 'k', 1.3, 1, 1, 1);
        INSERT INTO client_daily_usage (id, client_org_id, usage_date, total_tokens, total_requests, raw_cost, markup_cost, primary_model, unique_users, created_at, updated_at)
            VALUES ('org_a:2026-11-21', 'org_a', '2026-11-21', 100, 2, 0.000123, 0.0001599, 'm', 1, 10, 10),
                   ('org_a:2026-11-22', 'org_a', '2026-11-22', 50, 1, 0.1, 0.13, 'm', 1, 20, 20),
                   ('org_b:2026-11-22', 'org_b', '2026-11-22', 999, 9, 9.0, 11.7, 'm', 1, 20, 20);
        INSERT INTO client_user_daily_usage (id, client_org_id, user_id, openrouter_user_id, usage_date, total_tokens, total_requests, raw_cost, markup_cost, created_at, updated_at)
            VALUES ('u1', 'org_a', 'anna', 'temp_anna', '2026-11-22', 50, 1, 0.1, 0.13, 20, 20);
        INSERT INTO client_model_daily_usage (id, client_org_id, model_name, usage_date, total_tokens, total_requests, raw_cost, markup_cost, provider, created_at, updated_at)
            VALUES ('m1', 'org_a', 'openai/gpt-4o-mini', '2026-11-22', 50, 1, 0.1, 0.13, 'openai', 20, 20);
    ";

    /// The app's ad-hoc scripts: foreign keys, defaults, another column order, no
    /// processed_generations, an extra table.
    const SCRIPTS_DDL: &str = "
        CREATE TABLE client_organizations (id TEXT PRIMARY KEY, name TEXT NOT NULL, openrouter_api_key TEXT NOT NULL,
            openrouter_key_hash TEXT, markup_rate REAL DEFAULT 1.3, monthly_limit REAL, billing_email TEXT,
            is_active INTEGER DEFAULT 1, created_at INTEGER, updated_at INTEGER, timezone TEXT DEFAULT 'Europe/Warsaw');
        CREATE TABLE client_daily_usage (id TEXT PRIMARY KEY, usage_date DATE NOT NULL, client_org_id TEXT NOT NULL,
            total_tokens INTEGER DEFAULT 0, total_requests INTEGER DEFAULT 0, raw_cost REAL DEFAULT 0.0,
            markup_cost REAL DEFAULT 0.0, primary_model TEXT, unique_users INTEGER DEFAULT 0, created_at INTEGER, updated_at INTEGER,
            FOREIGN KEY (client_org_id) REFERENCES client_organizations(id));
        CREATE TABLE client_user_daily_usage (id TEXT PRIMARY KEY, client_org_id TEXT NOT NULL, user_id TEXT NOT NULL,
            openrouter_user_id TEXT, usage_date DATE NOT NULL, total_tokens INTEGER DEFAULT 0, total_requests INTEGER DEFAULT 0,
            raw_cost REAL DEFAULT 0.0, markup_cost REAL DEFAULT 0.0, created_at INTEGER, updated_at INTEGER,
            FOREIGN KEY (client_org_id) REFERENCES client_organizations(id));
        CREATE TABLE client_model_daily_usage (id TEXT PRIMARY KEY, client_org_id TEXT NOT NULL, model_name TEXT NOT NULL,
            usage_date DATE NOT NULL, total_tokens INTEGER DEFAULT 0, total_requests INTEGER DEFAULT 0, raw_cost REAL DEFAULT 0.0,
            markup_cost REAL DEFAULT 0.0, provider TEXT, created_at INTEGER, updated_at INTEGER,
            FOREIGN KEY (client_org_id) REFERENCES client_organizations(id));
        CREATE TABLE client_live_counters (client_org_id TEXT PRIMARY KEY, \"current_date\" DATE, today_tokens INTEGER DEFAULT 0,
            today_requests INTEGER DEFAULT 0, today_raw_cost REAL DEFAULT 0.0, today_markup_cost REAL DEFAULT 0.0, last_updated INTEGER,
            FOREIGN KEY (client_org_id) REFERENCES client_organizations(id));
        CREATE TABLE processed_generation_cleanup_log (id INTEGER PRIMARY KEY, cleaned_at INTEGER);
    ";

    fn make(name: &str, ddl: &str, extra: &str) -> std::path::PathBuf {
        let path = temp_db(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(ddl).unwrap();
        conn.execute_batch(extra).unwrap();
        path
    }

    #[test]
    fn migration_variant_reads_only_the_tenants_org_with_exact_money() {
        let path = make("migration", mai_tenant::store::SCHEMA, ROWS);
        let snap = read(&path, "org_a", &HashMap::new(), &Budget::default()).unwrap();
        assert_eq!(snap.variant, "migration");
        assert!(snap.org_row_present);
        assert_eq!(snap.daily.len(), 2, "org_b's rows are not org_a's");
        assert_eq!(snap.daily[0].raw_cost.to_string(), "0.000123");
        assert_eq!(
            snap.daily[0].markup_cost.to_string(),
            "0.000160",
            "rounded to the 6 places the app keeps"
        );
        assert_eq!(snap.row_counts[DAILY], 2);
        assert_eq!(snap.max_updated[DAILY], 20);
        // Watermarks: only what changed since, from WATERMARK_MARGIN_S before.
        let since = HashMap::from([(DAILY.to_string(), 20 + WATERMARK_MARGIN_S)]);
        let snap = read(&path, "org_a", &since, &Budget::default()).unwrap();
        assert_eq!(snap.daily.len(), 1);
        assert_eq!(snap.daily[0].usage_date.to_string(), "2026-11-22");
        assert!(read(&path, "org_x", &HashMap::new(), &Budget::default())
            .is_ok_and(|s| !s.org_row_present && s.daily.is_empty()));
    }

    #[test]
    fn scripts_variant_with_foreign_keys_and_extra_tables_is_read() {
        let path = make("scripts", SCRIPTS_DDL, ROWS);
        let snap = read(&path, "org_a", &HashMap::new(), &Budget::default()).unwrap();
        assert_eq!(snap.variant, "scripts-no-generations");
        assert_eq!(snap.daily.len(), 2);
        assert_eq!(snap.user.len(), 1);
        assert_eq!(snap.model[0].provider.as_deref(), Some("openai"));
    }

    #[test]
    fn older_store_without_live_counters_is_read() {
        let ddl = mai_tenant::store::SCHEMA.replace(
            "CREATE TABLE IF NOT EXISTS client_live_counters",
            "CREATE TABLE IF NOT EXISTS unused_live",
        );
        let path = make("nolive", &ddl, ROWS);
        let snap = read(&path, "org_a", &HashMap::new(), &Budget::default()).unwrap();
        assert_eq!(snap.variant, "migration-no-live-counters");
        assert!(snap.live.is_none());
    }

    #[test]
    fn unknown_schema_and_missing_store_say_what_is_wrong() {
        let ddl = mai_tenant::store::SCHEMA.replace("unique_users INTEGER NOT NULL,", "");
        let path = make("unknown", &ddl, "");
        match read(&path, "org_a", &HashMap::new(), &Budget::default()) {
            Err(ReadError::UnknownSchema(what)) => assert!(
                what.contains("client_daily_usage lacks unique_users"),
                "{what}"
            ),
            other => panic!("{other:?}"),
        }
        let empty = make("empty", "CREATE TABLE auth (id TEXT);", "");
        assert!(
            matches!(read(&empty, "org_a", &HashMap::new(), &Budget::default()), Err(ReadError::UnknownSchema(w)) if w.contains("table client_daily_usage is missing"))
        );
        assert!(matches!(
            read(
                &temp_db("none"),
                "org_a",
                &HashMap::new(),
                &Budget::default()
            ),
            Err(ReadError::Missing(_))
        ));
    }

    #[test]
    fn the_time_budget_interrupts_a_read_and_says_so() {
        let path = make("slow", mai_tenant::store::SCHEMA, ROWS);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 300000)
             INSERT INTO client_model_daily_usage (id, client_org_id, model_name, usage_date, total_tokens, total_requests, raw_cost, markup_cost, provider, created_at, updated_at)
             SELECT 'x' || n, 'org_a', 'm' || n, '2026-11-22', 1, 1, 0.0, 0.0, NULL, 1, 1 FROM r",
        )
        .unwrap();
        let tight = Budget {
            time: std::time::Duration::from_millis(1),
            max_rows: 1_000_000,
            ..Budget::default()
        };
        match read(&path, "org_a", &HashMap::new(), &tight) {
            Err(ReadError::Refused(why)) => assert!(why.contains("budget"), "{why}"),
            other => panic!("{other:?}"),
        }
        let few = Budget {
            max_rows: 1000,
            ..Budget::default()
        };
        match read(&path, "org_a", &HashMap::new(), &few) {
            Err(ReadError::Refused(why)) => assert!(why.contains("300001 rows changed"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reading_neither_writes_nor_waits_for_a_writer() {
        let path = make("locks", mai_tenant::store::SCHEMA, ROWS);
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        // The app in the middle of a write transaction (rollback-journal mode).
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE; UPDATE client_daily_usage SET total_tokens = 1 WHERE client_org_id = 'org_a';").unwrap();
        let started = std::time::Instant::now();
        let snap = read(&path, "org_a", &HashMap::new(), &Budget::default()).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "the reader waited for the writer"
        );
        assert_eq!(
            snap.daily[0].total_tokens, 100,
            "the committed figures, not the writer's uncommitted ones"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before,
            "the reader wrote nothing"
        );
        // And the app's transaction was not disturbed by the reader.
        writer.execute_batch("COMMIT").unwrap();
        let tokens: i64 = writer
            .query_row(
                "SELECT total_tokens FROM client_daily_usage WHERE id = 'org_a:2026-11-21'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tokens, 1);
    }
}
