//! The reader against stores made here: each schema variant, hostile rows, budgets.

use super::*;
use rusqlite::Connection;

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
