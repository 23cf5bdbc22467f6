//! Read-only views of the fleet database for the operator's commands.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Store, StoreError};

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct UsageDay {
    pub tenant: String,
    pub date: NaiveDate,
    pub tokens: i64,
    pub requests: i64,
    /// USD as OpenRouter charged it; a string in JSON so no float rounds it.
    #[serde(with = "rust_decimal::serde::str")]
    pub raw_cost: Decimal,
}

/// A host's agent as its last heartbeat tells (all `None`: never reported).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AgentStatus {
    pub host: String,
    pub version: Option<String>,
    pub last_heartbeat: Option<chrono::DateTime<chrono::Utc>>,
    pub age_s: Option<i64>,
    /// What waits in its spool for the database, in bytes.
    pub spool_bytes: Option<i64>,
    /// Tenants that failed in its last cycle, and tenants it saw.
    pub errors: Option<i32>,
    pub tenants: Option<i32>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct TenantStatus {
    pub tenant: String,
    pub host: Option<String>,
    pub container: Option<String>,
    pub container_state: Option<String>,
    /// `active`, `inactive`, or `unknown` when no agent has reported the tenant.
    pub tracking: mai_fleet_core::Tracking,
    pub reasons: Vec<String>,
    /// In the spec of the last apply (false: a managed container started otherwise).
    pub in_spec: bool,
    /// Seconds since the tenant's store last recorded usage.
    pub last_data_age_s: Option<i64>,
    /// Seconds since this tenant's host agent last reported.
    pub agent_age_s: Option<i64>,
}

impl Store {
    pub async fn usage_by_day(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        tenant: Option<&str>,
    ) -> Result<Vec<UsageDay>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT tenant_id AS tenant, usage_date AS date, total_tokens AS tokens, total_requests AS requests, raw_cost
             FROM usage_daily WHERE usage_date BETWEEN $1 AND $2 AND ($3::text IS NULL OR tenant_id = $3)
             ORDER BY tenant_id, usage_date",
        )
        .bind(from)
        .bind(to)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every host of the fleet database and every host an agent reported from, with
    /// its agent's last heartbeat.
    pub async fn agent_status(&self) -> Result<Vec<AgentStatus>, StoreError> {
        Ok(sqlx::query_as(
            "WITH names AS (SELECT name AS host FROM hosts UNION SELECT host FROM agent_heartbeats)
             SELECT n.host, a.agent_version AS version, a.seen_at AS last_heartbeat,
                    extract(epoch FROM now() - a.seen_at)::bigint AS age_s,
                    a.spool_bytes, a.errors, a.tenants
             FROM names n LEFT JOIN agent_heartbeats a ON a.host = n.host
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every tenant of the spec and every tenant an agent reported, spec or not.
    pub async fn tenant_status(&self) -> Result<Vec<TenantStatus>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT coalesce(t.id, h.tenant_id) AS tenant,
                    coalesce(h.host, t.host) AS host,
                    h.container, h.container_state,
                    coalesce(h.tracking, 'unknown') AS tracking,
                    coalesce(h.reasons, CASE WHEN h.tenant_id IS NULL THEN ARRAY['no agent has reported this tenant'] ELSE '{}' END) AS reasons,
                    coalesce(t.in_spec AND coalesce(h.in_spec, TRUE), FALSE) AS in_spec,
                    (extract(epoch FROM now())::bigint - h.last_usage_change) AS last_data_age_s,
                    extract(epoch FROM now() - a.seen_at)::bigint AS agent_age_s
             FROM (SELECT * FROM tenants WHERE in_spec) t
             FULL JOIN tenant_health h ON h.tenant_id = t.id
             LEFT JOIN agent_heartbeats a ON a.host = coalesce(h.host, t.host)
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
