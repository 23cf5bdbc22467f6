//! Sink: the fleet Postgres. Each tenant's changes, watermarks, regressions and health
//! go in one transaction, so a killed agent neither loses nor double-counts: the
//! watermarks move only with the rows they cover, and upserts are idempotent.
//! Every upsert also writes its `host`: a row left by the tenant's earlier host is
//! taken over (row-level security lets the host the spec names see it, migration 0007).

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

use crate::health::Health;
use crate::reader::{Snapshot, DAILY, MODEL, USER};
use crate::tables::{DailyRow, ModelRow, UsageTable, UserRow};

const DESIRED_SQL: &str = "SELECT id, spec_hash FROM tenants WHERE host = $1 AND in_spec";

const WATERMARKS_SQL: &str = "SELECT tenant_id, store_table, updated_at, row_count FROM agent_watermarks WHERE tenant_id = ANY($1)";

const WATERMARK_SQL: &str = "INSERT INTO agent_watermarks (host, tenant_id, store_table, updated_at, row_count) VALUES ($5, $1, $2, $3, $4)
                 ON CONFLICT (tenant_id, store_table) DO UPDATE SET host = $5, updated_at = $3, row_count = $4";

const REGRESSION_SQL: &str =
    "INSERT INTO store_regressions (tenant_id, host, store_table, detail) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, store_table, detail) DO NOTHING";

const HEALTH_HISTORY_SQL: &str = "INSERT INTO tenant_health_history (tenant_id, host, tracking, reasons, snapshot)
             SELECT $1, $2, $3, $4, $5
             WHERE NOT EXISTS (SELECT 1 FROM tenant_health WHERE tenant_id = $1 AND tracking = $3 AND reasons = $4)";

const HEALTH_SQL: &str = "INSERT INTO tenant_health (tenant_id, host, observed_at, container, container_state, restart_count, started_at,
                 in_spec, env_missing, store_status, schema_variant, org_row_present, last_usage_change, live_counter_date,
                 tracking, reasons)
             VALUES ($1, $2, now(), $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (tenant_id) DO UPDATE SET host = $2, observed_at = now(), container = $3, container_state = $4,
                 restart_count = $5, started_at = $6, in_spec = $7, env_missing = $8, store_status = $9,
                 schema_variant = $10, org_row_present = $11, last_usage_change = $12, live_counter_date = $13,
                 tracking = $14, reasons = $15";

const HEARTBEAT_SQL: &str = "INSERT INTO agent_heartbeats (host, agent_version, seen_at, cycle_ms, tenants, rows_shipped, errors, spool_bytes)
             VALUES ($1, $2, now(), $3, $4, $5, $6, $7)
             ON CONFLICT (host) DO UPDATE SET agent_version = $2, seen_at = now(), cycle_ms = $3, tenants = $4,
                 rows_shipped = $5, errors = $6, spool_bytes = $7";

const LIVE_SQL: &str = "INSERT INTO usage_live_counters (host, tenant_id, counter_date, today_tokens, today_requests, today_raw_cost,
             today_markup_cost, last_updated)
         VALUES ($8, $1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant_id) DO UPDATE SET host = $8, counter_date = $2, today_tokens = $3, today_requests = $4,
             today_raw_cost = $5, today_markup_cost = $6, last_updated = $7, synced_at = now()
         WHERE usage_live_counters.last_updated < $7";

const GENERATIONS_SQL: &str = "INSERT INTO usage_generations (host, tenant_id, generation_id, generation_date, processed_at, total_cost, total_tokens)
         SELECT $7, $1, * FROM UNNEST($2::text[], $3::date[], $4::int8[], $5::numeric[], $6::int8[])
         ON CONFLICT (tenant_id, generation_id) DO NOTHING";

/// The statements besides the generated upserts.
const STATEMENTS: [&str; 9] = [
    DESIRED_SQL,
    WATERMARKS_SQL,
    WATERMARK_SQL,
    REGRESSION_SQL,
    HEALTH_HISTORY_SQL,
    HEALTH_SQL,
    HEARTBEAT_SQL,
    LIVE_SQL,
    GENERATIONS_SQL,
];

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Watermark {
    pub updated_at: i64,
    pub row_count: i64,
}

pub struct Sink {
    pool: PgPool,
    host: String,
}

#[derive(Debug, Default)]
pub struct Shipped {
    pub rows_changed: u64,
    pub regressions: usize,
}

impl Sink {
    pub async fn connect(url: &str, host: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            // Short: an unreachable database is noticed (and the spool used) early in a cycle.
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_lazy(url)?;
        Ok(Self {
            pool,
            host: host.to_string(),
        })
    }

    /// Tenant id -> spec hash of what the last apply wanted on this host.
    pub async fn desired(&self) -> Result<HashMap<String, String>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(DESIRED_SQL)
            .bind(&self.host)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Watermarks of the given tenants, in one query.
    pub async fn watermarks(
        &self,
        tenants: &[String],
    ) -> Result<HashMap<String, HashMap<String, Watermark>>, sqlx::Error> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(WATERMARKS_SQL)
            .bind(tenants)
            .fetch_all(&self.pool)
            .await?;
        let mut out: HashMap<String, HashMap<String, Watermark>> = HashMap::new();
        for (tenant, table, updated_at, row_count) in rows {
            out.entry(tenant).or_default().insert(
                table,
                Watermark {
                    updated_at,
                    row_count,
                },
            );
        }
        Ok(out)
    }

    pub async fn ship(
        &self,
        tenant: &str,
        snap: &Snapshot,
        previous: &HashMap<String, Watermark>,
        health: &Health,
    ) -> Result<Shipped, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut shipped = Shipped::default();
        let mut went_back: Vec<(&str, String)> = Vec::new();

        for (table, (n, back)) in [
            (
                DAILY,
                upsert(&mut tx, &self.host, tenant, &snap.daily).await?,
            ),
            (USER, upsert(&mut tx, &self.host, tenant, &snap.user).await?),
            (
                MODEL,
                upsert(&mut tx, &self.host, tenant, &snap.model).await?,
            ),
        ] {
            shipped.rows_changed += n;
            went_back.extend(back.into_iter().map(|k| (table, k)));
        }
        shipped.rows_changed += upsert_live(&mut tx, &self.host, tenant, snap).await?;
        shipped.rows_changed += insert_generations(&mut tx, &self.host, tenant, snap).await?;

        for (table, key) in went_back {
            let detail = format!("row {key} went back in the store; the fleet keeps its figures");
            shipped.regressions += self.regression(&mut tx, tenant, table, &detail).await?;
        }
        for (table, count) in &snap.row_counts {
            let before = previous.get(table).map_or(0, |w| w.row_count);
            if *count < before {
                let detail = format!("{} row(s) now, {before} before: rows were deleted from the store (a reset or a restored backup?); the fleet keeps its history", count);
                shipped.regressions += self.regression(&mut tx, tenant, table, &detail).await?;
            }
        }
        for (table, w) in watermarks_after(snap) {
            sqlx::query(WATERMARK_SQL)
                .bind(tenant)
                .bind(table)
                .bind(w.updated_at)
                .bind(w.row_count)
                .bind(&self.host)
                .execute(&mut *tx)
                .await?;
        }
        self.write_health(&mut tx, health).await?;
        tx.commit().await?;
        Ok(shipped)
    }

    /// Health alone, for a tenant whose store could not be read.
    pub async fn record_health(&self, health: &Health) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        self.write_health(&mut tx, health).await?;
        tx.commit().await
    }

    async fn regression(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        tenant: &str,
        table: &str,
        detail: &str,
    ) -> Result<usize, sqlx::Error> {
        let r = sqlx::query(REGRESSION_SQL)
            .bind(tenant)
            .bind(&self.host)
            .bind(table)
            .bind(detail)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() as usize)
    }

    async fn write_health(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        h: &Health,
    ) -> Result<(), sqlx::Error> {
        // History keeps changes of the verdict, not every cycle.
        sqlx::query(HEALTH_HISTORY_SQL)
            .bind(&h.tenant)
            .bind(&self.host)
            .bind(h.tracking)
            .bind(&h.reasons)
            .bind(serde_json::to_value(h).unwrap_or_default())
            .execute(&mut **tx)
            .await?;
        sqlx::query(HEALTH_SQL)
            .bind(&h.tenant)
            .bind(&self.host)
            .bind(&h.container)
            .bind(&h.container_state)
            .bind(h.restart_count)
            .bind(&h.started_at)
            .bind(h.in_spec)
            .bind(&h.env_missing)
            .bind(h.store_status)
            .bind(&h.schema_variant)
            .bind(h.org_row_present)
            .bind(h.last_usage_change)
            .bind(h.live_counter_date)
            .bind(h.tracking)
            .bind(&h.reasons)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn heartbeat(
        &self,
        cycle_ms: u64,
        tenants: usize,
        rows: u64,
        errors: usize,
        spool_bytes: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(HEARTBEAT_SQL)
            .bind(&self.host)
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(cycle_ms as i64)
            .bind(tenants as i32)
            .bind(rows as i64)
            .bind(errors as i32)
            .bind(spool_bytes as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The watermarks once `snap` is shipped: its tables' highest `updated_at` and row
/// counts.
pub fn watermarks_after(snap: &Snapshot) -> HashMap<String, Watermark> {
    snap.max_updated
        .iter()
        .map(|(table, max)| {
            let row_count = snap.row_counts.get(table).copied().unwrap_or(0);
            (
                table.clone(),
                Watermark {
                    updated_at: *max,
                    row_count,
                },
            )
        })
        .collect()
}

/// Whether an error means Postgres could not be reached (spool and retry), as
/// opposed to a statement it refused (which retrying would not change).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // Class 08: connection exception; 57P01-03: shutdown, crash, starting up.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Rows written or changed, and the keys of rows whose figures went down in the store
/// (not written: fleet history is never rewritten backwards).
type Upserted = (u64, Vec<String>);

async fn upsert<T: UsageTable>(
    tx: &mut Transaction<'_, Postgres>,
    host: &str,
    tenant: &str,
    rows: &[T],
) -> Result<Upserted, sqlx::Error> {
    if rows.is_empty() {
        return Ok((0, Vec::new()));
    }
    // Built from the table descriptions alone, never from input.
    let q = sqlx::query_as(sqlx::AssertSqlSafe(T::upsert_sql())).bind(tenant);
    let (changed, back): (i64, Vec<String>) = T::bind_columns(rows, q)
        .bind(host)
        .fetch_one(&mut **tx)
        .await?;
    Ok((changed as u64, back))
}

/// Every statement the agent sends to the fleet Postgres, for a test that prepares
/// each against a freshly migrated database.
pub fn statements() -> Vec<String> {
    let mut all = vec![
        DailyRow::upsert_sql().to_string(),
        UserRow::upsert_sql().to_string(),
        ModelRow::upsert_sql().to_string(),
    ];
    all.extend(STATEMENTS.iter().map(|s| s.to_string()));
    all
}

async fn upsert_live(
    tx: &mut Transaction<'_, Postgres>,
    host: &str,
    tenant: &str,
    snap: &Snapshot,
) -> Result<u64, sqlx::Error> {
    let Some(l) = &snap.live else { return Ok(0) };
    let r = sqlx::query(LIVE_SQL)
        .bind(tenant)
        .bind(l.counter_date)
        .bind(l.today_tokens)
        .bind(l.today_requests)
        .bind(l.today_raw_cost)
        .bind(l.today_markup_cost)
        .bind(l.last_updated)
        .bind(host)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}

async fn insert_generations(
    tx: &mut Transaction<'_, Postgres>,
    host: &str,
    tenant: &str,
    snap: &Snapshot,
) -> Result<u64, sqlx::Error> {
    if snap.generations.is_empty() {
        return Ok(0);
    }
    let g = &snap.generations;
    let r = sqlx::query(GENERATIONS_SQL)
        .bind(tenant)
        .bind(g.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.generation_date).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.processed_at).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.total_cost).collect::<Vec<Decimal>>())
        .bind(g.iter().map(|r| r.total_tokens).collect::<Vec<_>>())
        .bind(host)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}
