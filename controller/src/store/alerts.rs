//! What the alert rules read (one query per rule for the whole fleet) and how
//! alert state, silences and notifications are stored.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};

use super::model::{Alert, Rule, Silence, State, Step};
use super::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InactiveTenant {
    pub tenant: String,
    pub host: String,
    pub reasons: Vec<String>,
    pub markup_rate: Option<Decimal>,
}

/// A tenant's OpenRouter ledger against what the fleet recorded: the latest
/// snapshot, the one before it, and the first of the last 24 h and of the month.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ledger {
    pub tenant: String,
    pub markup_rate: Decimal,
    pub polled_at: DateTime<Utc>,
    pub usage: Decimal,
    pub recorded: Decimal,
    pub key_limit: Option<Decimal>,
    pub limit_remaining: Option<Decimal>,
    pub prev_at: Option<DateTime<Utc>>,
    pub prev_usage: Option<Decimal>,
    pub prev_recorded: Option<Decimal>,
    pub day_at: Option<DateTime<Utc>>,
    pub day_usage: Option<Decimal>,
    pub day_recorded: Option<Decimal>,
    pub month_at: Option<DateTime<Utc>>,
    pub month_usage: Option<Decimal>,
    pub month_recorded: Option<Decimal>,
}

/// A tenant's current fleet key that is stopped on purpose (at the client's limit).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoppedKey {
    pub tenant: String,
    pub mask: String,
    pub why: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SilentAgent {
    pub host: String,
    pub last_seen: Option<DateTime<Utc>>,
    pub tenants: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DownContainer {
    pub tenant: String,
    pub host: String,
    pub container: String,
    pub state: String,
    pub restart_count: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Regression {
    pub tenant: String,
    pub store_table: String,
    pub detected_at: DateTime<Utc>,
    pub detail: String,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct AlertRow {
    pub fingerprint: String,
    pub rule: String,
    pub tenant_id: Option<String>,
    pub labels: Value,
    pub annotations: Value,
    pub state: String,
    pub active_since: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub last_seen_at: DateTime<Utc>,
    pub last_notified_at: Option<DateTime<Utc>>,
    pub notified_state: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct SilenceRow {
    pub id: i64,
    pub tenant_id: Option<String>,
    pub rule: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub comment: String,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub fingerprint: String,
    pub receiver: String,
    pub status: String,
    pub payload: Value,
    pub state: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl AlertRow {
    pub fn to_alert(&self) -> Option<Alert> {
        let labels: BTreeMap<String, String> = serde_json::from_value(self.labels.clone()).ok()?;
        Some(Alert {
            fingerprint: self.fingerprint.clone(),
            rule: self.rule.parse().ok()?,
            tenant: self.tenant_id.clone(),
            labels,
            summary: self.annotations["summary"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            description: self.annotations["description"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            state: self.state.parse().ok()?,
            active_since: self.active_since,
            fired_at: self.fired_at,
            resolved_at: self.resolved_at,
            last_seen_at: self.last_seen_at,
            last_notified_at: self.last_notified_at,
            notified_state: self.notified_state.as_deref().and_then(|s| s.parse().ok()),
        })
    }
}

impl Store {
    pub async fn inactive_tenants(&self) -> Result<Vec<InactiveTenant>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT h.tenant_id AS tenant, h.host, h.reasons, t.markup_rate
             FROM tenant_health h LEFT JOIN tenants t ON t.id = h.tenant_id
             WHERE h.tracking = $1 AND coalesce(t.in_spec, TRUE)",
        )
        .bind(mai_fleet_core::Tracking::Inactive)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn ledgers(&self) -> Result<Vec<Ledger>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT t.id AS tenant, t.markup_rate, l.polled_at, l.usage, l.recorded_total AS recorded, l.key_limit, l.limit_remaining,
                    p.polled_at AS prev_at, p.usage AS prev_usage, p.recorded_total AS prev_recorded,
                    d.polled_at AS day_at, d.usage AS day_usage, d.recorded_total AS day_recorded,
                    m.polled_at AS month_at, m.usage AS month_usage, m.recorded_total AS month_recorded
             FROM tenants t
             JOIN LATERAL (SELECT * FROM openrouter_snapshots s WHERE s.tenant_id = t.id ORDER BY polled_at DESC LIMIT 1) l ON TRUE
             LEFT JOIN LATERAL (SELECT * FROM openrouter_snapshots s WHERE s.tenant_id = t.id AND s.polled_at < l.polled_at
                                ORDER BY polled_at DESC LIMIT 1) p ON TRUE
             LEFT JOIN LATERAL (SELECT * FROM openrouter_snapshots s WHERE s.tenant_id = t.id AND s.polled_at >= l.polled_at - interval '24 hours'
                                ORDER BY polled_at LIMIT 1) d ON TRUE
             LEFT JOIN LATERAL (SELECT * FROM openrouter_snapshots s WHERE s.tenant_id = t.id
                                AND s.polled_at >= date_trunc('month', l.polled_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                ORDER BY polled_at LIMIT 1) m ON TRUE
             WHERE t.in_spec",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Current keys the fleet disabled at the client's monthly limit.
    pub async fn stopped_keys(&self) -> Result<Vec<StoppedKey>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT tenant_id AS tenant, mask,
                    'disabled by the fleet at the monthly limit, billing.on_limit: disable' AS why
             FROM openrouter_keys WHERE status = 'current' AND disabled_for LIKE 'limit %'",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn silent_agents(&self, older_than_s: i64) -> Result<Vec<SilentAgent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT h.name AS host, a.seen_at AS last_seen,
                    (SELECT count(*) FROM tenants t WHERE t.in_spec AND t.host = h.name) AS tenants
             FROM hosts h LEFT JOIN agent_heartbeats a ON a.host = h.name
             WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.in_spec AND t.host = h.name)
               AND (a.seen_at IS NULL OR a.seen_at < now() - make_interval(secs => $1))",
        )
        .bind(older_than_s as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn down_containers(&self) -> Result<Vec<DownContainer>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT h.tenant_id AS tenant, h.host, h.container, h.container_state AS state, h.restart_count
             FROM tenant_health h JOIN tenants t ON t.id = h.tenant_id AND t.in_spec
             WHERE h.container_state <> 'running' OR h.restart_count >= 3",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn latest_rate_date(&self, table: &str) -> Result<Option<NaiveDate>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT max(effective_date) FROM exchange_rates WHERE rate_table = $1",
        )
        .bind(table)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn recent_regressions(&self) -> Result<Vec<Regression>, StoreError> {
        Ok(sqlx::query_as(
            // A store restored on purpose (`controller restore`) goes back: what the
            // agent sees of it in the day after raises nothing.
            "SELECT tenant_id AS tenant, store_table, detected_at, detail FROM store_regressions s
             WHERE detected_at > now() - interval '24 hours'
               AND NOT EXISTS (SELECT 1 FROM tenant_restores r WHERE r.tenant_id = s.tenant_id
                               AND s.detected_at >= r.restored_at AND s.detected_at < r.restored_at + interval '1 day')",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tenants of the spec applied more than `max_age_s` ago without a backup taken
    /// since then: their newest backup (if any).
    pub async fn tenants_without_backup(
        &self,
        max_age_s: i64,
    ) -> Result<Vec<(String, Option<DateTime<Utc>>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT t.id, b.taken_at FROM tenants t
             LEFT JOIN LATERAL (SELECT taken_at FROM tenant_backups b WHERE b.tenant_id = t.id AND b.removed_at IS NULL
                                ORDER BY taken_at DESC LIMIT 1) b ON TRUE
             WHERE t.in_spec AND t.created_at < now() - make_interval(secs => $1)
               AND (b.taken_at IS NULL OR b.taken_at < now() - make_interval(secs => $1))
             ORDER BY t.id",
        )
        .bind(max_age_s as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn open_alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM alerts WHERE state <> 'resolved'")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn alerts_listed(&self, include_resolved: bool) -> Result<Vec<AlertRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM alerts WHERE $1 OR state <> 'resolved'
             ORDER BY CASE state WHEN 'firing' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, coalesce(fired_at, active_since) DESC LIMIT 500",
        )
        .bind(include_resolved)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn silences(&self, active_only: bool) -> Result<Vec<SilenceRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM silences WHERE NOT $1 OR (ended_at IS NULL AND starts_at <= now() AND expires_at > now())
             ORDER BY id DESC LIMIT 200",
        )
        .bind(active_only)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn active_silences(&self) -> Result<Vec<Silence>, StoreError> {
        Ok(self
            .silences(true)
            .await?
            .into_iter()
            .map(|s| Silence {
                id: s.id,
                tenant: s.tenant_id,
                rule: s.rule.and_then(|r| r.parse::<Rule>().ok()),
            })
            .collect())
    }

    pub async fn add_silence(
        &self,
        tenant: Option<&str>,
        rule: Option<Rule>,
        for_s: i64,
        created_by: &str,
        comment: &str,
    ) -> Result<SilenceRow, StoreError> {
        Ok(sqlx::query_as(
            "INSERT INTO silences (tenant_id, rule, expires_at, created_by, comment)
             VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5) RETURNING *",
        )
        .bind(tenant)
        .bind(rule.map(Rule::name))
        .bind(for_s as f64)
        .bind(created_by)
        .bind(comment)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Ends a silence now; false when there is no such active silence.
    pub async fn end_silence(&self, id: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query("UPDATE silences SET ended_at = now() WHERE id = $1 AND ended_at IS NULL AND expires_at > now()")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    /// Writes one evaluation's changes in one transaction: alert rows, their
    /// history and the notifications per receiver (each a single statement).
    pub async fn write_step(
        &self,
        step: &Step,
        notifications: &[(String, String, &'static str, Value)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if !step.upserts.is_empty() {
            let rows: Vec<Value> = step
                .upserts
                .iter()
                .map(|a| {
                    json!({
                        "fingerprint": a.fingerprint, "rule": a.rule.name(), "tenant_id": a.tenant,
                        "labels": a.labels, "annotations": {"summary": a.summary, "description": a.description},
                        "state": a.state.as_str(), "active_since": a.active_since, "fired_at": a.fired_at,
                        "resolved_at": a.resolved_at, "last_seen_at": a.last_seen_at,
                        "last_notified_at": a.last_notified_at, "notified_state": a.notified_state.map(State::as_str),
                    })
                })
                .collect();
            sqlx::query(
                "INSERT INTO alerts SELECT * FROM jsonb_populate_recordset(NULL::alerts, $1)
                 ON CONFLICT (fingerprint) DO UPDATE SET rule = EXCLUDED.rule, tenant_id = EXCLUDED.tenant_id,
                     labels = EXCLUDED.labels, annotations = EXCLUDED.annotations, state = EXCLUDED.state,
                     active_since = EXCLUDED.active_since, fired_at = EXCLUDED.fired_at, resolved_at = EXCLUDED.resolved_at,
                     last_seen_at = EXCLUDED.last_seen_at, last_notified_at = EXCLUDED.last_notified_at,
                     notified_state = EXCLUDED.notified_state",
            )
            .bind(Value::Array(rows))
            .execute(&mut *tx)
            .await?;
        }
        if !step.transitions.is_empty() {
            let rows: Vec<Value> = step
                .transitions
                .iter()
                .map(|t| json!({"fingerprint": t.fingerprint, "rule": t.rule.name(), "tenant_id": t.tenant,
                                "from_state": t.from.map(State::as_str), "to_state": t.to.as_str(), "summary": t.summary}))
                .collect();
            sqlx::query(
                "INSERT INTO alert_events (fingerprint, rule, tenant_id, from_state, to_state, summary)
                 SELECT fingerprint, rule, tenant_id, from_state, to_state, summary
                 FROM jsonb_to_recordset($1) AS x(fingerprint TEXT, rule TEXT, tenant_id TEXT, from_state TEXT, to_state TEXT, summary TEXT)",
            )
            .bind(Value::Array(rows))
            .execute(&mut *tx)
            .await?;
        }
        if !notifications.is_empty() {
            let rows: Vec<Value> = notifications
                .iter()
                .map(|(fp, receiver, status, payload)| json!({"fingerprint": fp, "receiver": receiver, "status": status, "payload": payload}))
                .collect();
            sqlx::query(
                "INSERT INTO alert_notifications (fingerprint, receiver, status, payload)
                 SELECT fingerprint, receiver, status, payload
                 FROM jsonb_to_recordset($1) AS x(fingerprint TEXT, receiver TEXT, status TEXT, payload JSONB)",
            )
            .bind(Value::Array(rows))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_evaluation(
        &self,
        duration_ms: i64,
        queries: i32,
        candidates: i32,
        transitions: i32,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO alert_evaluations (duration_ms, queries, candidates, transitions) VALUES ($1, $2, $3, $4)")
            .bind(duration_ms)
            .bind(queries)
            .bind(candidates)
            .bind(transitions)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Due notifications of one receiver, claimed so that two senders never send
    /// the same one.
    pub async fn due_notifications(
        &self,
        receiver: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE alert_notifications SET next_attempt_at = now() + interval '2 minutes'
             WHERE id IN (SELECT id FROM alert_notifications WHERE receiver = $1 AND state = 'pending' AND next_attempt_at <= now()
                          ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING *",
        )
        .bind(receiver)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn mark_sent(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE alert_notifications SET state = 'sent', sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A failed attempt: retried after `retry_in_s`, or given up.
    pub async fn mark_failed(
        &self,
        id: i64,
        error: &str,
        retry_in_s: Option<f64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE alert_notifications SET attempts = attempts + 1, last_error = $2,
                 state = CASE WHEN $3::float8 IS NULL THEN 'failed' ELSE 'pending' END,
                 next_attempt_at = now() + make_interval(secs => coalesce($3::float8, 0))
             WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(retry_in_s)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn deliveries(&self, limit: i64) -> Result<Vec<Delivery>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM alert_notifications ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Stores one `GET /key` answer with what the fleet recorded for the tenant so far.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_snapshot(
        &self,
        tenant: &str,
        key_fingerprint: &str,
        usage: Decimal,
        usage_daily: Option<Decimal>,
        usage_monthly: Option<Decimal>,
        key_limit: Option<Decimal>,
        limit_remaining: Option<Decimal>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO openrouter_snapshots (tenant_id, key_fingerprint, usage, usage_daily, usage_monthly, key_limit, limit_remaining, recorded_total)
             SELECT $1, $2, $3, $4, $5, $6, $7, coalesce((SELECT sum(raw_cost) FROM usage_daily WHERE tenant_id = $1), 0)",
        )
        .bind(tenant)
        .bind(key_fingerprint)
        .bind(usage)
        .bind(usage_daily)
        .bind(usage_monthly)
        .bind(key_limit)
        .bind(limit_remaining)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps 40 days of snapshots (the month window needs at most 31).
    pub async fn prune_snapshots(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM openrouter_snapshots WHERE polled_at < now() - interval '40 days'",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
