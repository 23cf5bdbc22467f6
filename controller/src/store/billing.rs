//! What billing reads: usage per tenant, user and model over a range of the
//! tenants' local days, priced with the markup in force on each day
//! (`tenant_markup_periods`), and the frozen lines of closed months.
//! Products and sums are exact NUMERIC; nothing is rounded here.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use super::{Store, StoreError};

/// One tenant's usage over a range of days.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantUsage {
    pub tenant: String,
    pub in_spec: bool,
    pub tokens: i64,
    pub requests: i64,
    pub raw_cost: Decimal,
    pub client_cost: Decimal,
    /// The markup of the range's last day with usage (or the tenant's current one).
    pub markup_rate: Decimal,
    /// More than one markup applied within the range.
    pub markup_changed: bool,
}

/// A line of a breakdown (per user, per model or per day) of one tenant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageLine {
    pub key: String,
    pub tokens: i64,
    pub requests: i64,
    pub raw_cost: Decimal,
    pub client_cost: Decimal,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DayLine {
    pub day: NaiveDate,
    pub tokens: i64,
    pub requests: i64,
    pub raw_cost: Decimal,
    pub client_cost: Decimal,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Close {
    pub closed_at: DateTime<Utc>,
    pub closed_by: String,
    pub rate_table: String,
}

/// A tenant's line as frozen when its month was closed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClosedLine {
    pub tenant: String,
    pub tokens: i64,
    pub requests: i64,
    pub raw_cost: Decimal,
    pub client_cost: Decimal,
    pub markup_rate: Decimal,
    pub rate: Option<Decimal>,
    pub rate_date: Option<NaiveDate>,
    pub rate_table_no: Option<String>,
    pub client_cost_pln: Option<Decimal>,
}

#[derive(Debug, Clone, Copy)]
pub enum Breakdown {
    User,
    Model,
}

/// The SQL of [`Store::usage_by_tenant`] (the benchmark runs it bare in psql).
pub const USAGE_BY_TENANT_SQL: &str = "WITH p AS MATERIALIZED (SELECT * FROM tenant_markup_periods),
    u AS (
        SELECT d.tenant_id, sum(d.total_tokens)::bigint AS tokens, sum(d.total_requests)::bigint AS requests,
               sum(d.raw_cost) AS raw_cost, sum(d.raw_cost * coalesce(p.markup_rate, 1)) AS client_cost,
               min(d.usage_date) AS first_day, max(d.usage_date) AS last_day
        FROM usage_daily d
        LEFT JOIN p ON p.tenant_id = d.tenant_id AND d.usage_date >= p.period_from AND d.usage_date < p.period_until
        WHERE d.usage_date BETWEEN $1 AND $2
        GROUP BY d.tenant_id),
    last_markup AS (
        SELECT u.tenant_id, p.markup_rate FROM u
        JOIN p ON p.tenant_id = u.tenant_id AND u.last_day >= p.period_from AND u.last_day < p.period_until),
    changed AS (
        SELECT DISTINCT u.tenant_id FROM u
        JOIN p ON p.tenant_id = u.tenant_id AND p.period_from > u.first_day AND p.period_from <= u.last_day)
    SELECT coalesce(t.id, u.tenant_id) AS tenant, coalesce(t.in_spec, FALSE) AS in_spec,
           coalesce(u.tokens, 0) AS tokens, coalesce(u.requests, 0) AS requests,
           coalesce(u.raw_cost, 0) AS raw_cost, coalesce(u.client_cost, 0) AS client_cost,
           coalesce(l.markup_rate, t.markup_rate, 1) AS markup_rate,
           c.tenant_id IS NOT NULL AS markup_changed
    FROM u FULL JOIN (SELECT * FROM tenants WHERE in_spec) t ON t.id = u.tenant_id
    LEFT JOIN last_markup l ON l.tenant_id = u.tenant_id
    LEFT JOIN changed c ON c.tenant_id = u.tenant_id
    ORDER BY 1";

/// The SQL of [`Store::usage_per_day`] (the benchmark runs it bare in psql).
pub const USAGE_PER_DAY_SQL: &str = "SELECT g.day::date AS day, coalesce(d.total_tokens, 0) AS tokens, coalesce(d.total_requests, 0) AS requests,
                    coalesce(d.raw_cost, 0) AS raw_cost, coalesce(d.raw_cost * coalesce(p.markup_rate, 1), 0) AS client_cost
             FROM generate_series($2::date, $3::date, interval '1 day') g(day)
             LEFT JOIN usage_daily d ON d.tenant_id = $1 AND d.usage_date = g.day::date
             LEFT JOIN tenant_markup_periods p ON p.tenant_id = d.tenant_id
                  AND d.usage_date >= p.period_from AND d.usage_date < p.period_until
             ORDER BY 1";

/// The SQL of [`Store::month_close`] (the benchmark runs it bare in psql).
pub const MONTH_CLOSE_SQL: &str =
    "SELECT closed_at, closed_by, rate_table FROM billing_closes WHERE month = $1";

/// The SQL of [`Store::usage_breakdown`]: `$1` tenant, `$2`..`$3` days.
pub fn breakdown_sql(by: Breakdown) -> String {
    let (table, key) = match by {
        Breakdown::User => ("usage_user_daily", "user_id"),
        Breakdown::Model => ("usage_model_daily", "model_name"),
    };
    format!(
            "SELECT d.{key} AS key, sum(d.total_tokens)::bigint AS tokens, sum(d.total_requests)::bigint AS requests,
                    sum(d.raw_cost) AS raw_cost, sum(d.raw_cost * coalesce(p.markup_rate, 1)) AS client_cost
             FROM {table} d
             LEFT JOIN tenant_markup_periods p ON p.tenant_id = d.tenant_id
                  AND d.usage_date >= p.period_from AND d.usage_date < p.period_until
             WHERE d.tenant_id = $1 AND d.usage_date BETWEEN $2 AND $3
             GROUP BY d.{key} ORDER BY raw_cost DESC, key"
    )
}

impl Store {
    /// Every tenant of the spec (with zeros where nothing was used) and every other
    /// tenant with usage in `[from, to]`.
    pub async fn usage_by_tenant(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<TenantUsage>, StoreError> {
        Ok(sqlx::query_as(USAGE_BY_TENANT_SQL)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?)
    }

    /// One tenant's usage per user or per model over `[from, to]`, largest first.
    pub async fn usage_breakdown(
        &self,
        tenant: &str,
        by: Breakdown,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageLine>, StoreError> {
        let sql = breakdown_sql(by);
        // Table and column come from the enum above, never from input.
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?)
    }

    /// One tenant's usage per day over `[from, to]`, every day present (zeros).
    pub async fn usage_per_day(
        &self,
        tenant: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DayLine>, StoreError> {
        Ok(sqlx::query_as(USAGE_PER_DAY_SQL)
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn month_close(&self, month: NaiveDate) -> Result<Option<Close>, StoreError> {
        Ok(sqlx::query_as(MONTH_CLOSE_SQL)
            .bind(month)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn closed_lines(&self, month: NaiveDate) -> Result<Vec<ClosedLine>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT tenant_id AS tenant, tokens, requests, raw_cost, client_cost, markup_rate, rate, rate_date,
                    rate_table_no, client_cost_pln
             FROM billing_closed_lines WHERE month = $1 ORDER BY tenant_id",
        )
        .bind(month)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Freezes a month's lines; None when it was already closed (the primary key
    /// refuses a second close; the caller says so in words).
    pub async fn close_month(
        &self,
        month: NaiveDate,
        closed_by: &str,
        rate_table: &str,
        lines: &[ClosedLine],
    ) -> Result<Option<Close>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let close: Option<Close> = sqlx::query_as(
            "INSERT INTO billing_closes (month, closed_by, rate_table) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
             RETURNING closed_at, closed_by, rate_table",
        )
        .bind(month)
        .bind(closed_by)
        .bind(rate_table)
        .fetch_optional(&mut *tx)
        .await?;
        if close.is_none() {
            return Ok(None);
        }
        for l in lines {
            sqlx::query(
                "INSERT INTO billing_closed_lines (month, tenant_id, tokens, requests, raw_cost, client_cost, markup_rate,
                     rate, rate_date, rate_table_no, client_cost_pln)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(month)
            .bind(&l.tenant)
            .bind(l.tokens)
            .bind(l.requests)
            .bind(l.raw_cost)
            .bind(l.client_cost)
            .bind(l.markup_rate)
            .bind(l.rate)
            .bind(l.rate_date)
            .bind(&l.rate_table_no)
            .bind(l.client_cost_pln)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(close)
    }
}
