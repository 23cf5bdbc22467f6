//! The fleet's OpenRouter keys (sealed), OpenRouter's per-day ledger and the
//! account's credit, as kept in Postgres (migration 0009).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Store, StoreError};
use crate::openrouter::{ActivityItem, Credits};

mai_fleet_core::text_enum! {
    /// Where a fleet key stands.
    pub enum KeyStatus, "key status" {
        /// The tenant's key.
        Current = "current",
        /// Made by a rotation that has not finished.
        Next = "next",
        /// Kept at OpenRouter, stopped.
        Disabled = "disabled",
        /// Gone from OpenRouter.
        Deleted = "deleted",
    }
}

mai_fleet_core::text_enum! {
    pub enum KeyOrigin, "key origin" {
        Provisioned = "provisioned",
        Adopted = "adopted",
    }
}

/// Why the fleet disabled a key that still exists.
pub const DISABLED_OFFBOARDED: &str = "offboarded";
/// A key replaced by a rotation, disabled until it is deleted.
pub const DISABLED_ROTATED: &str = "rotated";

/// A key as recorded. `sealed` opens only with the fleet's master key.
#[derive(Clone, sqlx::FromRow)]
pub struct KeyRecord {
    pub id: i64,
    pub fleet: String,
    pub tenant_id: String,
    pub hash: String,
    pub name: String,
    pub mask: String,
    pub fingerprint: String,
    pub sealed: Vec<u8>,
    pub origin: KeyOrigin,
    pub status: KeyStatus,
    pub limit_usd: Option<Decimal>,
    pub disabled_for: Option<String>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("tenant", &self.tenant_id)
            .field("hash", &self.hash)
            .field("mask", &self.mask)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A key to record.
pub struct NewKey<'a> {
    pub fleet: &'a str,
    pub tenant: &'a str,
    pub hash: &'a str,
    pub name: &'a str,
    pub mask: &'a str,
    pub fingerprint: &'a str,
    pub sealed: &'a [u8],
    pub origin: KeyOrigin,
    pub status: KeyStatus,
    pub limit: Option<Decimal>,
}

/// One day of a tenant: what OpenRouter charged its key(s) and what the tenant's
/// store recorded, with the model that differs most.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReconcileDay {
    pub day: NaiveDate,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub openrouter_usd: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub recorded_usd: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub difference_usd: Decimal,
}

/// A tenant × day × model where OpenRouter's ledger and the store's differ.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ModelGap {
    pub tenant: String,
    pub day: NaiveDate,
    pub model: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub openrouter_usd: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub recorded_usd: Decimal,
    pub markup_rate: Decimal,
}

/// The account's credit as last polled, and its trailing 7-day spend.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CreditState {
    pub polled_at: DateTime<Utc>,
    pub total_credits: Decimal,
    pub total_usage: Decimal,
    /// Spend of the last 7 completed UTC days with activity on record.
    pub burn_7d: Option<Decimal>,
}

/// The columns of a [`KeyRecord`], for `concat!` (statements stay static text).
macro_rules! key_columns {
    () => {
        "id, fleet, tenant_id, hash, name, mask, fingerprint, sealed, origin, status, limit_usd, disabled_for, created_at, retired_at"
    };
}

impl Store {
    /// Every key of the fleet, any status, oldest first.
    pub async fn fleet_keys(&self, fleet: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM openrouter_keys WHERE fleet = $1 ORDER BY tenant_id, id"
        ))
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Keys of every fleet that OpenRouter still holds (not deleted): what the
    /// account's listing is compared against.
    pub async fn live_key_hashes(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM openrouter_keys WHERE status <> 'deleted'")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn tenant_key(
        &self,
        tenant: &str,
        status: KeyStatus,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM openrouter_keys WHERE tenant_id = $1 AND status = $2"
        ))
        .bind(tenant)
        .bind(status)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records a key the moment OpenRouter returned it, before anything uses it.
    pub async fn insert_key(&self, k: &NewKey<'_>) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO openrouter_keys (fleet, tenant_id, hash, name, mask, fingerprint, sealed, origin, status, limit_usd)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(k.fleet)
        .bind(k.tenant)
        .bind(k.hash)
        .bind(k.name)
        .bind(k.mask)
        .bind(k.fingerprint)
        .bind(k.sealed)
        .bind(k.origin)
        .bind(k.status)
        .bind(k.limit)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn set_key_status(
        &self,
        id: i64,
        status: KeyStatus,
        disabled_for: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE openrouter_keys SET status = $2, disabled_for = $3, updated_at = now(),
                 retired_at = CASE WHEN $2 IN ('disabled', 'deleted') THEN coalesce(retired_at, now()) ELSE NULL END
             WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(disabled_for)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `disabled_for` of a key that stays current (stopped at the client's limit).
    pub async fn set_key_disabled_for(
        &self,
        id: i64,
        disabled_for: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE openrouter_keys SET disabled_for = $2, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(disabled_for)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_key_limit(&self, id: i64, limit: Option<Decimal>) -> Result<(), StoreError> {
        sqlx::query("UPDATE openrouter_keys SET limit_usd = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(limit)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A rotation that took: the new key becomes the tenant's, the old one is
    /// disabled until OpenRouter has deleted it; the tenant's record follows the
    /// container that now runs.
    pub async fn promote_key(
        &self,
        tenant: &str,
        next: &KeyRecord,
        spec_hash: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE openrouter_keys SET status = 'disabled', disabled_for = $2, retired_at = now(), updated_at = now()
             WHERE tenant_id = $1 AND status = 'current'",
        )
        .bind(tenant)
        .bind(DISABLED_ROTATED)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE openrouter_keys SET status = 'current', updated_at = now() WHERE id = $1",
        )
        .bind(next.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE tenants SET spec_hash = $2, key_fingerprint = $3, key_masked = $4, updated_at = now() WHERE id = $1",
        )
        .bind(tenant)
        .bind(spec_hash)
        .bind(&next.fingerprint)
        .bind(&next.mask)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// `on_limit` of each tenant of the fleet, as the last apply recorded it.
    pub async fn tenants_on_limit(&self, fleet: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT id, on_limit FROM tenants WHERE fleet = $1 AND in_spec")
                .bind(fleet)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Stores one `GET /activity` answer (`key_hash` '*' for the whole account):
    /// a day fetched again replaces what was kept of it.
    pub async fn upsert_activity(
        &self,
        key_hash: &str,
        items: &[ActivityItem],
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for i in items {
            sqlx::query(
                "INSERT INTO openrouter_activity (key_hash, activity_date, model, endpoint_id, provider_name, usage,
                     requests, prompt_tokens, completion_tokens, reasoning_tokens)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (key_hash, activity_date, model, endpoint_id) DO UPDATE SET
                     provider_name = $5, usage = $6, requests = $7, prompt_tokens = $8,
                     completion_tokens = $9, reasoning_tokens = $10, fetched_at = now()
                 WHERE (openrouter_activity.usage, openrouter_activity.requests) IS DISTINCT FROM ($6, $7)",
            )
            .bind(key_hash)
            .bind(i.date)
            .bind(&i.model)
            .bind(&i.endpoint_id)
            .bind(&i.provider_name)
            .bind(i.usage)
            .bind(i.requests)
            .bind(i.prompt_tokens)
            .bind(i.completion_tokens)
            .bind(i.reasoning_tokens)
            .execute(&mut *tx)
            .await?;
        }
        let days: Vec<NaiveDate> = items.iter().map(|i| i.date).collect();
        sqlx::query(
            "INSERT INTO openrouter_activity_days (key_hash, activity_date, usage)
             SELECT key_hash, activity_date, sum(usage) FROM openrouter_activity
             WHERE key_hash = $1 AND activity_date = ANY($2) GROUP BY 1, 2
             ON CONFLICT (key_hash, activity_date) DO UPDATE SET usage = EXCLUDED.usage",
        )
        .bind(key_hash)
        .bind(&days)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_activity_fetch(&self, keys: i32, items: i32) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO openrouter_activity_fetches (keys, items) VALUES ($1, $2)")
            .bind(keys)
            .bind(items)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn last_activity_fetch(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT max(fetched_at) FROM openrouter_activity_fetches")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn record_credits(&self, c: &Credits) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO openrouter_credits (total_credits, total_usage) VALUES ($1, $2)")
            .bind(c.total_credits)
            .bind(c.total_usage)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest credit snapshot with the account's spend over the last 7 days of
    /// OpenRouter's ledger (before today, UTC).
    pub async fn credit_state(&self) -> Result<Option<CreditState>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.polled_at, c.total_credits, c.total_usage, b.burn AS burn_7d
             FROM (SELECT * FROM openrouter_credits ORDER BY polled_at DESC LIMIT 1) c
             CROSS JOIN (SELECT sum(usage) AS burn
                         FROM openrouter_activity
                         WHERE key_hash = '*' AND activity_date >= (now() AT TIME ZONE 'UTC')::date - 7
                           AND activity_date < (now() AT TIME ZONE 'UTC')::date) b",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// OpenRouter against the store per day of `tenant` from `from` to `to`
    /// (inclusive): OpenRouter's side sums every key the fleet ever held for it.
    pub async fn reconcile_days(
        &self,
        tenant: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ReconcileDay>, StoreError> {
        Ok(sqlx::query_as(
            "WITH o AS (SELECT a.activity_date AS day, sum(a.usage) AS usd
                        FROM openrouter_activity a JOIN openrouter_keys k ON k.hash = a.key_hash
                        WHERE k.tenant_id = $1 AND a.activity_date BETWEEN $2 AND $3 GROUP BY 1),
                  r AS (SELECT usage_date AS day, raw_cost AS usd FROM usage_daily
                        WHERE tenant_id = $1 AND usage_date BETWEEN $2 AND $3)
             SELECT coalesce(o.day, r.day) AS day, o.usd AS openrouter_usd, r.usd AS recorded_usd,
                    coalesce(o.usd, 0) - coalesce(r.usd, 0) AS difference_usd
             FROM o FULL JOIN r ON r.day = o.day ORDER BY 1",
        )
        .bind(tenant)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Per tenant × day × model over the last `days` days OpenRouter's ledger
    /// holds: what its keys were charged and what the store recorded, where they
    /// differ by more than `min_usd`. Days are compared first (one row per key and
    /// day); only a day whose totals differ by more than `min_usd` is broken down by
    /// model, so the cost follows the days that differ, not the ledger's size. A day
    /// whose totals agree is not broken down: its money was captured, whatever model
    /// the store put it under. (`OFFSET 0` keeps each day's breakdown an index lookup:
    /// the planner cannot tell how few days differ.)
    pub async fn model_gaps(
        &self,
        days: i32,
        min_usd: Decimal,
    ) -> Result<Vec<ModelGap>, StoreError> {
        Ok(sqlx::query_as(
            "WITH od AS (SELECT k.tenant_id AS tenant, d.activity_date AS day, sum(d.usage) AS usd
                         FROM openrouter_activity_days d JOIN openrouter_keys k ON k.hash = d.key_hash
                         WHERE d.activity_date >= (now() AT TIME ZONE 'UTC')::date - $1
                         GROUP BY 1, 2),
                  off AS MATERIALIZED (
                         SELECT od.tenant, od.day FROM od
                         LEFT JOIN usage_daily u ON u.tenant_id = od.tenant AND u.usage_date = od.day
                         WHERE abs(od.usd - coalesce(u.raw_cost, 0)) > $2),
                  o AS (SELECT off.tenant, off.day, a.model, sum(a.usage) AS usd
                        FROM off JOIN openrouter_keys k ON k.tenant_id = off.tenant
                        CROSS JOIN LATERAL (SELECT model, usage FROM openrouter_activity a
                                            WHERE a.key_hash = k.hash AND a.activity_date = off.day OFFSET 0) a
                        GROUP BY 1, 2, 3),
                  r AS (SELECT off.tenant, off.day, m.model_name AS model, m.raw_cost AS usd
                        FROM off CROSS JOIN LATERAL (SELECT model_name, raw_cost FROM usage_model_daily m
                                                     WHERE m.tenant_id = off.tenant AND m.usage_date = off.day OFFSET 0) m)
             SELECT coalesce(o.tenant, r.tenant) AS tenant, coalesce(o.day, r.day) AS day,
                    coalesce(o.model, r.model) AS model,
                    coalesce(o.usd, 0) AS openrouter_usd, coalesce(r.usd, 0) AS recorded_usd,
                    coalesce(t.markup_rate, 1) AS markup_rate
             FROM o FULL JOIN r ON r.tenant = o.tenant AND r.day = o.day AND r.model = o.model
             LEFT JOIN tenants t ON t.id = coalesce(o.tenant, r.tenant)
             WHERE abs(coalesce(o.usd, 0) - coalesce(r.usd, 0)) > $2
             ORDER BY 1, 2, 3",
        )
        .bind(days)
        .bind(min_usd)
        .fetch_all(&self.pool)
        .await?)
    }
}
