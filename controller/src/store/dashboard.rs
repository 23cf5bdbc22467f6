//! What the dashboard reads besides billing: the fleet at a glance, one tenant's
//! record, the hosts and their agents. One query per view, not per tenant.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Store, StoreError};

/// A row of the fleet page.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FleetRow {
    pub tenant: String,
    pub host: Option<String>,
    pub in_spec: bool,
    pub container_state: Option<String>,
    /// `active`, `inactive`, or `unknown` (no agent has reported the tenant).
    pub tracking: mai_fleet_core::Tracking,
    pub reasons: Vec<String>,
    /// The tenant's own today (its timezone).
    pub today: NaiveDate,
    pub today_tokens: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub today_client_cost: Decimal,
    pub month_tokens: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub month_raw_cost: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub month_client_cost: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub monthly_limit_usd: Option<Decimal>,
    /// Seconds since the tenant's store last recorded usage.
    pub data_age_s: Option<i64>,
    /// Seconds since this tenant's host agent last reported.
    pub agent_age_s: Option<i64>,
    pub firing_alerts: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TenantRecord {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub host: String,
    pub timezone: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup_rate: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub monthly_limit_usd: Option<Decimal>,
    /// `sk-or-v1-…c96`: never more of the key than that.
    pub key_masked: String,
    pub in_spec: bool,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HealthChange {
    pub observed_at: DateTime<Utc>,
    pub host: String,
    pub tracking: mai_fleet_core::Tracking,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApplyEvent {
    pub run_id: i64,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub status: String,
    pub detail: String,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HostRow {
    pub host: String,
    pub docker_url: Option<String>,
    pub agent_version: Option<String>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub heartbeat_age_s: Option<i64>,
    pub cycle_ms: Option<i64>,
    pub agent_errors: Option<i32>,
    pub has_credentials: bool,
    pub tenants_in_spec: i64,
    pub tenants_reported: i64,
    pub tenants_inactive: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LastApply {
    pub id: i64,
    pub fleet: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The SQL of [`Store::fleet_rows`] (the benchmark runs it bare in psql).
// One pass over the month's rows of every tenant; the markup periods are computed
// once (a LATERAL per tenant recomputed them 100 times).
pub const FLEET_ROWS_SQL: &str = "WITH t AS (
    SELECT coalesce(s.id, h.tenant_id) AS tenant, coalesce(h.host, s.host) AS host,
           coalesce(s.in_spec AND coalesce(h.in_spec, TRUE), FALSE) AS in_spec,
           h.container_state, coalesce(h.tracking, 'unknown') AS tracking,
           coalesce(h.reasons, CASE WHEN h.tenant_id IS NULL THEN ARRAY['no agent has reported this tenant'] ELSE '{}' END) AS reasons,
           s.monthly_limit_usd, h.last_usage_change,
           (now() AT TIME ZONE coalesce(s.timezone, 'Europe/Warsaw'))::date AS today
    FROM (SELECT * FROM tenants WHERE in_spec) s FULL JOIN tenant_health h ON h.tenant_id = s.id),
p AS MATERIALIZED (SELECT * FROM tenant_markup_periods),
m AS (
    SELECT d.tenant_id,
           (sum(d.total_tokens) FILTER (WHERE d.usage_date = t.today))::bigint AS today_tokens,
           sum(d.raw_cost * coalesce(p.markup_rate, 1)) FILTER (WHERE d.usage_date = t.today) AS today_client,
           sum(d.total_tokens)::bigint AS month_tokens, sum(d.raw_cost) AS month_raw,
           sum(d.raw_cost * coalesce(p.markup_rate, 1)) AS month_client
    FROM t JOIN usage_daily d ON d.tenant_id = t.tenant AND d.usage_date BETWEEN date_trunc('month', t.today)::date AND t.today
    LEFT JOIN p ON p.tenant_id = d.tenant_id AND d.usage_date >= p.period_from AND d.usage_date < p.period_until
    GROUP BY d.tenant_id)
SELECT t.tenant, t.host, t.in_spec, t.container_state, t.tracking, t.reasons, t.today,
       coalesce(m.today_tokens, 0) AS today_tokens, coalesce(m.today_client, 0) AS today_client_cost,
       coalesce(m.month_tokens, 0) AS month_tokens, coalesce(m.month_raw, 0) AS month_raw_cost,
       coalesce(m.month_client, 0) AS month_client_cost, t.monthly_limit_usd,
       extract(epoch FROM now())::bigint - t.last_usage_change AS data_age_s,
       extract(epoch FROM now() - a.seen_at)::bigint AS agent_age_s,
       (SELECT count(*) FROM alerts al WHERE al.tenant_id = t.tenant AND al.state = 'firing') AS firing_alerts
FROM t LEFT JOIN m ON m.tenant_id = t.tenant
LEFT JOIN agent_heartbeats a ON a.host = t.host
ORDER BY t.tenant";

/// The SQL of [`Store::tenant_record`] (the benchmark runs it bare in psql).
pub const TENANT_RECORD_SQL: &str = "SELECT id, name, org_id, host, timezone, markup_rate, monthly_limit_usd, key_masked, in_spec, updated_at
             FROM tenants WHERE id = $1";

/// The SQL of [`Store::tenant_known`] (the benchmark runs it bare in psql).
pub const TENANT_KNOWN_SQL: &str = "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1) OR EXISTS (SELECT 1 FROM tenant_health WHERE tenant_id = $1)";

/// The SQL of [`Store::health_history`] (the benchmark runs it bare in psql).
pub const HEALTH_HISTORY_SQL: &str =
    "SELECT observed_at, host, tracking, reasons FROM tenant_health_history
             WHERE tenant_id = $1 ORDER BY observed_at DESC, id DESC LIMIT $2";

/// The SQL of [`Store::apply_history`] (the benchmark runs it bare in psql).
pub const APPLY_HISTORY_SQL: &str =
    "SELECT r.run_id, r.recorded_at, a.actor, r.action, r.status, r.detail, r.duration_ms
             FROM apply_results r JOIN apply_runs a ON a.id = r.run_id
             WHERE r.tenant_id = $1 ORDER BY r.recorded_at DESC, r.id DESC LIMIT $2";

impl Store {
    pub async fn fleet_rows(&self) -> Result<Vec<FleetRow>, StoreError> {
        Ok(sqlx::query_as(FLEET_ROWS_SQL).fetch_all(&self.pool).await?)
    }

    pub async fn tenant_record(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        Ok(sqlx::query_as(TENANT_RECORD_SQL)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Whether any agent or apply knows the tenant (a hand-started container is
    /// known only to its agent).
    pub async fn tenant_known(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(TENANT_KNOWN_SQL)
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn health_history(
        &self,
        id: &str,
        limit: i64,
    ) -> Result<Vec<HealthChange>, StoreError> {
        Ok(sqlx::query_as(HEALTH_HISTORY_SQL)
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn apply_history(&self, id: &str, limit: i64) -> Result<Vec<ApplyEvent>, StoreError> {
        Ok(sqlx::query_as(APPLY_HISTORY_SQL)
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn host_rows(&self) -> Result<Vec<HostRow>, StoreError> {
        Ok(sqlx::query_as(
            "WITH names AS (SELECT name AS host FROM hosts UNION SELECT host FROM agent_heartbeats
                            UNION SELECT host FROM agent_roles)
             SELECT n.host, h.docker_url, a.agent_version, a.seen_at AS last_heartbeat,
                    extract(epoch FROM now() - a.seen_at)::bigint AS heartbeat_age_s, a.cycle_ms, a.errors AS agent_errors,
                    EXISTS (SELECT 1 FROM agent_roles r WHERE r.host = n.host) AS has_credentials,
                    (SELECT count(*) FROM tenants t WHERE t.in_spec AND t.host = n.host) AS tenants_in_spec,
                    (SELECT count(*) FROM tenant_health th WHERE th.host = n.host) AS tenants_reported,
                    (SELECT count(*) FROM tenant_health th WHERE th.host = n.host AND th.tracking <> $1) AS tenants_inactive
             FROM names n LEFT JOIN hosts h ON h.name = n.host LEFT JOIN agent_heartbeats a ON a.host = n.host
             ORDER BY n.host",
        )
        .bind(mai_fleet_core::Tracking::Active)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn last_apply(&self) -> Result<Option<LastApply>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, fleet, status, started_at, finished_at FROM apply_runs ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }
}
