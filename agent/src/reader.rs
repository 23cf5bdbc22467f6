//! Source: a tenant's SQLite usage store (shared/reference/mai-usage-store.md), read
//! without ever writing it, locking it for writing or blocking the app: opened
//! read-only with `query_only`, all tables read in one read transaction (a consistent
//! snapshot in WAL and rollback-journal modes alike).

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub const DAILY: &str = "client_daily_usage";
pub const USER: &str = "client_user_daily_usage";
pub const MODEL: &str = "client_model_daily_usage";
pub const LIVE: &str = "client_live_counters";
pub const GENERATIONS: &str = "processed_generations";
const ORGS: &str = "client_organizations";

/// Columns the agent reads; a store lacking one is of an unknown schema.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        DAILY,
        &[
            "client_org_id",
            "usage_date",
            "total_tokens",
            "total_requests",
            "raw_cost",
            "markup_cost",
            "primary_model",
            "unique_users",
            "updated_at",
        ],
    ),
    (
        USER,
        &[
            "client_org_id",
            "user_id",
            "openrouter_user_id",
            "usage_date",
            "total_tokens",
            "total_requests",
            "raw_cost",
            "markup_cost",
            "updated_at",
        ],
    ),
    (
        MODEL,
        &[
            "client_org_id",
            "model_name",
            "usage_date",
            "total_tokens",
            "total_requests",
            "raw_cost",
            "markup_cost",
            "provider",
            "updated_at",
        ],
    ),
    (ORGS, &["id"]),
];
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
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        ReadError::Unreadable(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyRow {
    pub usage_date: NaiveDate,
    pub client_org_id: String,
    pub total_tokens: i64,
    pub total_requests: i64,
    pub raw_cost: Decimal,
    pub markup_cost: Decimal,
    pub primary_model: Option<String>,
    pub unique_users: i32,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRow {
    pub user_id: String,
    pub usage_date: NaiveDate,
    pub openrouter_user_id: Option<String>,
    pub total_tokens: i64,
    pub total_requests: i64,
    pub raw_cost: Decimal,
    pub markup_cost: Decimal,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    pub model_name: String,
    pub usage_date: NaiveDate,
    pub provider: Option<String>,
    pub total_tokens: i64,
    pub total_requests: i64,
    pub raw_cost: Decimal,
    pub markup_cost: Decimal,
    pub updated_at: i64,
}

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
    /// Highest `updated_at` (or its table's equivalent) per table, now.
    pub max_updated: HashMap<String, i64>,
}

impl Snapshot {
    pub fn last_usage_change(&self) -> Option<i64> {
        self.max_updated.get(DAILY).copied().filter(|t| *t > 0)
    }
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
) -> Result<Snapshot, ReadError> {
    if !path.exists() {
        return Err(ReadError::Missing(path.display().to_string()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_millis(2000))?;
    conn.pragma_update(None, "query_only", true)?;
    let tx = conn.transaction()?;
    let (variant, has_live, has_generations) = schema_variant(&tx)?;
    let wm = |table: &str| {
        watermarks
            .get(table)
            .map_or(i64::MIN, |w| w.saturating_sub(WATERMARK_MARGIN_S))
    };
    let mut snap = Snapshot {
        variant,
        ..Snapshot::default()
    };
    snap.org_row_present = tx.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {ORGS} WHERE id = ?1)"),
        [org],
        |r| r.get(0),
    )?;
    for table in [DAILY, USER, MODEL] {
        let (count, max): (i64, Option<i64>) = tx.query_row(
            &format!("SELECT COUNT(*), MAX(updated_at) FROM {table} WHERE client_org_id = ?1"),
            [org],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        snap.row_counts.insert(table.to_string(), count);
        snap.max_updated.insert(table.to_string(), max.unwrap_or(0));
    }
    let mut stmt = tx.prepare(&format!(
        "SELECT usage_date, client_org_id, total_tokens, total_requests, raw_cost, markup_cost, primary_model, unique_users, updated_at
         FROM {DAILY} WHERE client_org_id = ?1 AND updated_at >= ?2"
    ))?;
    snap.daily = stmt
        .query_map(rusqlite::params![org, wm(DAILY)], |r| {
            Ok(DailyRow {
                usage_date: date(r.get(0)?)?,
                client_org_id: r.get(1)?,
                total_tokens: r.get(2)?,
                total_requests: r.get(3)?,
                raw_cost: money(r.get(4)?)?,
                markup_cost: money(r.get(5)?)?,
                primary_model: r.get(6)?,
                unique_users: r.get::<_, Option<i32>>(7)?.unwrap_or(0),
                updated_at: r.get(8)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt = tx.prepare(&format!(
        "SELECT user_id, usage_date, openrouter_user_id, total_tokens, total_requests, raw_cost, markup_cost, updated_at
         FROM {USER} WHERE client_org_id = ?1 AND updated_at >= ?2"
    ))?;
    snap.user = stmt
        .query_map(rusqlite::params![org, wm(USER)], |r| {
            Ok(UserRow {
                user_id: r.get(0)?,
                usage_date: date(r.get(1)?)?,
                openrouter_user_id: r.get(2)?,
                total_tokens: r.get(3)?,
                total_requests: r.get(4)?,
                raw_cost: money(r.get(5)?)?,
                markup_cost: money(r.get(6)?)?,
                updated_at: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt = tx.prepare(&format!(
        "SELECT model_name, usage_date, provider, total_tokens, total_requests, raw_cost, markup_cost, updated_at
         FROM {MODEL} WHERE client_org_id = ?1 AND updated_at >= ?2"
    ))?;
    snap.model = stmt
        .query_map(rusqlite::params![org, wm(MODEL)], |r| {
            Ok(ModelRow {
                model_name: r.get(0)?,
                usage_date: date(r.get(1)?)?,
                provider: r.get(2)?,
                total_tokens: r.get(3)?,
                total_requests: r.get(4)?,
                raw_cost: money(r.get(5)?)?,
                markup_cost: money(r.get(6)?)?,
                updated_at: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    if has_live {
        // "current_date" quoted: unquoted it is SQLite's CURRENT_DATE, not the column.
        let mut stmt = tx.prepare(&format!(
            "SELECT \"current_date\", today_tokens, today_requests, today_raw_cost, today_markup_cost, last_updated
             FROM {LIVE} WHERE client_org_id = ?1"
        ))?;
        // Always read (one row): health reports its date; the sink ignores an old one.
        snap.live = stmt
            .query_map(rusqlite::params![org], |r| {
                Ok(LiveRow {
                    counter_date: date(r.get(0)?)?,
                    today_tokens: r.get(1)?,
                    today_requests: r.get(2)?,
                    today_raw_cost: money(r.get(3)?)?,
                    today_markup_cost: money(r.get(4)?)?,
                    last_updated: r.get(5)?,
                })
            })?
            .next()
            .transpose()?;
    }
    if has_generations {
        let (count, max): (i64, Option<i64>) = tx.query_row(
            &format!(
                "SELECT COUNT(*), MAX(processed_at) FROM {GENERATIONS} WHERE client_org_id = ?1"
            ),
            [org],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        snap.row_counts.insert(GENERATIONS.to_string(), count);
        snap.max_updated
            .insert(GENERATIONS.to_string(), max.unwrap_or(0));
        let mut stmt = tx.prepare(&format!(
            "SELECT id, generation_date, processed_at, total_cost, total_tokens
             FROM {GENERATIONS} WHERE client_org_id = ?1 AND processed_at >= ?2"
        ))?;
        snap.generations = stmt
            .query_map(rusqlite::params![org, wm(GENERATIONS)], |r| {
                Ok(GenerationRow {
                    id: r.get(0)?,
                    generation_date: date(r.get(1)?)?,
                    processed_at: r.get(2)?,
                    total_cost: money(r.get(3)?)?,
                    total_tokens: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(snap)
}

/// Names the schema variant, or says what is missing.
fn schema_variant(conn: &Connection) -> Result<(String, bool, bool), ReadError> {
    let columns = |table: &str| -> Result<Vec<String>, rusqlite::Error> {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect();
        names
    };
    let mut problems = Vec::new();
    for (table, wanted) in REQUIRED {
        let have = columns(table)?;
        if have.is_empty() {
            problems.push(format!("table {table} is missing"));
            continue;
        }
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| !have.iter().any(|h| h == c))
            .collect();
        if !missing.is_empty() {
            problems.push(format!("{table} lacks {}", missing.join(", ")));
        }
    }
    let mut present = [false; 2];
    for (i, (table, wanted)) in OPTIONAL.iter().enumerate() {
        let have = columns(table)?;
        if have.is_empty() {
            continue;
        }
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| !have.iter().any(|h| h == c))
            .collect();
        if missing.is_empty() {
            present[i] = true;
        } else {
            problems.push(format!("{table} lacks {}", missing.join(", ")));
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

fn date(v: Value) -> rusqlite::Result<NaiveDate> {
    let text = match &v {
        Value::Text(t) => t.as_str(),
        _ => "",
    };
    // DATE values are text `YYYY-MM-DD`; some writers append a time.
    NaiveDate::parse_from_str(text.get(..10).unwrap_or(text), "%Y-%m-%d").map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// REAL dollars to a decimal with the 6 places the app keeps.
fn money(v: Option<f64>) -> rusqlite::Result<Decimal> {
    let f = v.unwrap_or(0.0);
    Decimal::from_f64(f).map(|d| d.round_dp(6)).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Real,
            format!("{f} is not a finite amount").into(),
        )
    })
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
        let snap = read(&path, "org_a", &HashMap::new()).unwrap();
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
        let snap = read(&path, "org_a", &since).unwrap();
        assert_eq!(snap.daily.len(), 1);
        assert_eq!(snap.daily[0].usage_date.to_string(), "2026-11-22");
        assert!(read(&path, "org_x", &HashMap::new())
            .is_ok_and(|s| !s.org_row_present && s.daily.is_empty()));
    }

    #[test]
    fn scripts_variant_with_foreign_keys_and_extra_tables_is_read() {
        let path = make("scripts", SCRIPTS_DDL, ROWS);
        let snap = read(&path, "org_a", &HashMap::new()).unwrap();
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
        let snap = read(&path, "org_a", &HashMap::new()).unwrap();
        assert_eq!(snap.variant, "migration-no-live-counters");
        assert!(snap.live.is_none());
    }

    #[test]
    fn unknown_schema_and_missing_store_say_what_is_wrong() {
        let ddl = mai_tenant::store::SCHEMA.replace("unique_users INTEGER NOT NULL,", "");
        let path = make("unknown", &ddl, "");
        match read(&path, "org_a", &HashMap::new()) {
            Err(ReadError::UnknownSchema(what)) => assert!(
                what.contains("client_daily_usage lacks unique_users"),
                "{what}"
            ),
            other => panic!("{other:?}"),
        }
        let empty = make("empty", "CREATE TABLE auth (id TEXT);", "");
        assert!(
            matches!(read(&empty, "org_a", &HashMap::new()), Err(ReadError::UnknownSchema(w)) if w.contains("table client_daily_usage is missing"))
        );
        assert!(matches!(
            read(&temp_db("none"), "org_a", &HashMap::new()),
            Err(ReadError::Missing(_))
        ));
    }

    #[test]
    fn reading_neither_writes_nor_waits_for_a_writer() {
        let path = make("locks", mai_tenant::store::SCHEMA, ROWS);
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        // The app in the middle of a write transaction (rollback-journal mode).
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE; UPDATE client_daily_usage SET total_tokens = 1 WHERE client_org_id = 'org_a';").unwrap();
        let started = std::time::Instant::now();
        let snap = read(&path, "org_a", &HashMap::new()).unwrap();
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
