//! The tenant's SQLite usage store, in the "migration" variant of
//! docs/agent.md's usage store (no foreign keys, `processed_generations`
//! and `client_live_counters` present).

use chrono::{Duration, Utc};
use chrono_tz::Tz;
use rusqlite::{params, Connection, OptionalExtension};

/// The usage tables as the app's Alembic migration creates them.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS client_organizations (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, openrouter_api_key TEXT NOT NULL,
    openrouter_key_hash TEXT, markup_rate REAL NOT NULL, monthly_limit REAL,
    billing_email TEXT, is_active INTEGER NOT NULL, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS user_client_mapping (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, client_org_id TEXT NOT NULL,
    openrouter_user_id TEXT NOT NULL, is_active INTEGER NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS client_daily_usage (
    id TEXT PRIMARY KEY, client_org_id TEXT NOT NULL, usage_date DATE NOT NULL,
    total_tokens INTEGER NOT NULL, total_requests INTEGER NOT NULL, raw_cost REAL NOT NULL,
    markup_cost REAL NOT NULL, primary_model TEXT, unique_users INTEGER NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS client_user_daily_usage (
    id TEXT PRIMARY KEY, client_org_id TEXT NOT NULL, user_id TEXT NOT NULL,
    openrouter_user_id TEXT NOT NULL, usage_date DATE NOT NULL, total_tokens INTEGER NOT NULL,
    total_requests INTEGER NOT NULL, raw_cost REAL NOT NULL, markup_cost REAL NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS client_model_daily_usage (
    id TEXT PRIMARY KEY, client_org_id TEXT NOT NULL, model_name TEXT NOT NULL,
    usage_date DATE NOT NULL, total_tokens INTEGER NOT NULL, total_requests INTEGER NOT NULL,
    raw_cost REAL NOT NULL, markup_cost REAL NOT NULL, provider TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS client_live_counters (
    client_org_id TEXT PRIMARY KEY, \"current_date\" DATE NOT NULL, today_tokens INTEGER NOT NULL,
    today_requests INTEGER NOT NULL, today_raw_cost REAL NOT NULL,
    today_markup_cost REAL NOT NULL, last_updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS processed_generations (
    id TEXT PRIMARY KEY, client_org_id TEXT NOT NULL, generation_date DATE NOT NULL,
    processed_at INTEGER NOT NULL, total_cost REAL NOT NULL, total_tokens INTEGER NOT NULL);
";

/// The app's notion of "now": the container's timezone (`TZ`) and an optional
/// offset (`SIM_CLOCK_OFFSET_S`) so tests can move a tenant past midnight.
pub struct Clock {
    tz: Tz,
    offset: Duration,
}

impl Clock {
    pub fn from_env() -> Result<Self, String> {
        let tz_name = std::env::var("TZ").unwrap_or_else(|_| "UTC".to_string());
        let tz: Tz = tz_name
            .parse()
            .map_err(|_| format!("unknown timezone TZ={tz_name}"))?;
        let offset_s: i64 = std::env::var("SIM_CLOCK_OFFSET_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Self {
            tz,
            offset: Duration::seconds(offset_s),
        })
    }

    fn now_unix(&self) -> i64 {
        (Utc::now() + self.offset).timestamp()
    }

    fn today(&self) -> String {
        (Utc::now() + self.offset)
            .with_timezone(&self.tz)
            .format("%Y-%m-%d")
            .to_string()
    }
}

pub struct Usage {
    pub generation_id: String,
    pub user: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: u64,
}

impl Usage {
    pub fn priced(
        generation_id: &str,
        user: &str,
        model: &str,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Self {
        let tokens = prompt_tokens + completion_tokens;
        Self {
            generation_id: generation_id.to_string(),
            user: user.to_string(),
            model: model.to_string(),
            prompt_tokens,
            completion_tokens,
            cost_micros: tokens * crate::price_per_k(model) / 1000,
        }
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

pub struct Store {
    conn: Connection,
    clock: Clock,
}

impl Store {
    pub fn open(path: &str, journal_mode: &str, clock: Clock) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", journal_mode)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn, clock })
    }

    pub fn ensure_organization(
        &mut self,
        org: &str,
        name: &str,
        key: &str,
        markup: f64,
    ) -> rusqlite::Result<()> {
        let now = self.clock.now_unix();
        self.conn.execute(
            "INSERT INTO client_organizations (id, name, openrouter_api_key, markup_rate, is_active, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)
             ON CONFLICT(id) DO UPDATE SET name = ?2, openrouter_api_key = ?3, markup_rate = ?4, updated_at = ?5",
            params![org, name, key, markup, now],
        )?;
        Ok(())
    }

    /// Records one generation in all usage tables in one transaction; a generation
    /// already in `processed_generations` is not counted again.
    pub fn record(&mut self, org: &str, u: &Usage) -> rusqlite::Result<bool> {
        let today = self.clock.today();
        self.record_on(org, u, &today)
    }

    /// The day `n` days before the app's today.
    pub fn day_before(&self, n: i64) -> String {
        ((Utc::now() + self.clock.offset) - Duration::days(n))
            .with_timezone(&self.clock.tz)
            .format("%Y-%m-%d")
            .to_string()
    }

    /// Records a generation on `day` (its rows stamped with the time of writing, as
    /// a late sync would); the live counter moves only for today.
    pub fn record_on(&mut self, org: &str, u: &Usage, day: &str) -> rusqlite::Result<bool> {
        let now = self.clock.now_unix();
        let today = day.to_string();
        let is_today = today == self.clock.today();
        // The write lock first, waited for (busy timeout), as Open WebUI's Python
        // sqlite3 takes it at its first write: a transaction that reads and then
        // writes fails at once with SQLITE_BUSY when another process (a second pod
        // on the same store during a switch) wrote in between, losing the record.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seen: Option<String> = tx
            .query_row(
                "SELECT id FROM processed_generations WHERE id = ?1",
                [&u.generation_id],
                |r| r.get(0),
            )
            .optional()?;
        if seen.is_some() {
            return Ok(false);
        }
        let markup: f64 = tx
            .query_row(
                "SELECT markup_rate FROM client_organizations WHERE id = ?1",
                [org],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(1.3);
        let tokens = u.total_tokens() as i64;
        let raw = u.cost_micros as f64 / 1e6;
        let marked = raw * markup;
        tx.execute(
            "INSERT INTO processed_generations (id, client_org_id, generation_date, processed_at, total_cost, total_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![u.generation_id, org, today, now, raw, tokens],
        )?;
        tx.execute(
            "INSERT INTO user_client_mapping (id, user_id, client_org_id, openrouter_user_id, is_active, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5) ON CONFLICT(id) DO NOTHING",
            params![format!("{org}:{}", u.user), u.user, org, format!("temp_{}", u.user), now],
        )?;
        tx.execute(
            "INSERT INTO client_user_daily_usage (id, client_org_id, user_id, openrouter_user_id, usage_date,
                 total_tokens, total_requests, raw_cost, markup_cost, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?9)
             ON CONFLICT(id) DO UPDATE SET total_tokens = total_tokens + ?6, total_requests = total_requests + 1,
                 raw_cost = raw_cost + ?7, markup_cost = markup_cost + ?8, updated_at = ?9",
            params![format!("{org}:{}:{today}", u.user), org, u.user, format!("temp_{}", u.user), today, tokens, raw, marked, now],
        )?;
        tx.execute(
            "INSERT INTO client_model_daily_usage (id, client_org_id, model_name, usage_date,
                 total_tokens, total_requests, raw_cost, markup_cost, provider, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?9)
             ON CONFLICT(id) DO UPDATE SET total_tokens = total_tokens + ?5, total_requests = total_requests + 1,
                 raw_cost = raw_cost + ?6, markup_cost = markup_cost + ?7, updated_at = ?9",
            params![format!("{org}:{}:{today}", u.model), org, u.model, today, tokens, raw, marked,
                    u.model.split('/').next(), now],
        )?;
        let unique_users: i64 = tx.query_row(
            "SELECT COUNT(DISTINCT user_id) FROM client_user_daily_usage WHERE client_org_id = ?1 AND usage_date = ?2",
            params![org, today],
            |r| r.get(0),
        )?;
        let primary_model: Option<String> = tx
            .query_row(
                "SELECT model_name FROM client_model_daily_usage WHERE client_org_id = ?1 AND usage_date = ?2
                 ORDER BY total_tokens DESC, model_name LIMIT 1",
                params![org, today],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "INSERT INTO client_daily_usage (id, client_org_id, usage_date, total_tokens, total_requests,
                 raw_cost, markup_cost, primary_model, unique_users, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, ?9, ?9)
             ON CONFLICT(id) DO UPDATE SET total_tokens = total_tokens + ?4, total_requests = total_requests + 1,
                 raw_cost = raw_cost + ?5, markup_cost = markup_cost + ?6, primary_model = ?7,
                 unique_users = ?8, updated_at = ?9",
            params![format!("{org}:{today}"), org, today, tokens, raw, marked, primary_model, unique_users, now],
        )?;
        if !is_today {
            tx.commit()?;
            return Ok(true);
        }
        // A counter left from an earlier day is reset, not carried into today (seed 001).
        tx.execute(
            "INSERT INTO client_live_counters (client_org_id, \"current_date\", today_tokens, today_requests,
                 today_raw_cost, today_markup_cost, last_updated)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)
             ON CONFLICT(client_org_id) DO UPDATE SET
                 today_tokens = CASE WHEN \"current_date\" = ?2 THEN today_tokens + ?3 ELSE ?3 END,
                 today_requests = CASE WHEN \"current_date\" = ?2 THEN today_requests + 1 ELSE 1 END,
                 today_raw_cost = CASE WHEN \"current_date\" = ?2 THEN today_raw_cost + ?4 ELSE ?4 END,
                 today_markup_cost = CASE WHEN \"current_date\" = ?2 THEN today_markup_cost + ?5 ELSE ?5 END,
                 \"current_date\" = ?2, last_updated = ?6",
            params![org, today, tokens, raw, marked, now],
        )?;
        tx.commit()?;
        Ok(true)
    }
}
