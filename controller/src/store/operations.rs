//! Day-2 records: what each apply launched per tenant (revisions), operations on one
//! tenant (restart, exec, rollback, backup, restore) with who did them, a tenant's
//! history, backups and restores.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;

use super::model::{OperationKind, OperationStatus, Outcome};
use super::{recorded_spec, Store, StoreError};
use crate::plan::Workload;
use crate::spec::TenantSpec;

/// A tenant as one run launched it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Revision {
    pub run_id: i64,
    pub tenant_id: String,
    pub host: String,
    pub action: String,
    pub status: String,
    pub spec: Value,
    pub spec_hash: String,
    pub image: String,
    pub recorded_at: DateTime<Utc>,
}

/// One line of a tenant's history: an apply's result for it, or an operation.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    /// `apply` or the operation's kind.
    pub kind: String,
    /// The apply run, or the run a rollback put back.
    pub run_id: Option<i64>,
    pub operation_id: Option<i64>,
    pub action: Option<String>,
    pub image: Option<String>,
    pub spec_hash: Option<String>,
    pub actor: String,
    pub status: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RolledBack {
    pub tenant: String,
    pub run_id: i64,
    pub at: Option<DateTime<Utc>>,
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BackupRecord {
    pub id: i64,
    pub tenant_id: String,
    pub host: String,
    pub taken_at: DateTime<Utc>,
    pub path: String,
    pub bytes: i64,
    pub files: i32,
    pub store_sha256: String,
    pub tokens: i64,
    pub raw_cost: Decimal,
    pub actor: String,
    pub scheduled: bool,
}

/// What a backup holds, as recorded.
pub struct NewBackup<'a> {
    pub tenant: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub bytes: i64,
    pub files: i32,
    pub store_sha256: &'a str,
    pub tokens: i64,
    pub raw_cost: Decimal,
    pub actor: &'a str,
    pub scheduled: bool,
}

pub(super) async fn add_revision(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    run_id: i64,
    t: &TenantSpec,
    d: &Workload,
    o: &Outcome,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tenant_revisions (run_id, tenant_id, host, action, status, spec, spec_hash, image)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(run_id)
    .bind(&t.id)
    .bind(&t.host)
    .bind(o.action)
    .bind(o.status)
    .bind(recorded_spec(t))
    .bind(d.hash_label())
    .bind(&d.image)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Every revision of a tenant, newest first.
    pub async fn revisions(&self, tenant: &str) -> Result<Vec<Revision>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM tenant_revisions WHERE tenant_id = $1 ORDER BY run_id DESC",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The spec hash the fleet database says a tenant runs.
    pub async fn current_spec_hash(&self, tenant: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT spec_hash FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn begin_operation(
        &self,
        tenant: &str,
        host: &str,
        actor: &str,
        kind: OperationKind,
        command: Option<&[String]>,
        run_id: Option<i64>,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO tenant_operations (tenant_id, host, actor, kind, command, run_id)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(tenant)
        .bind(host)
        .bind(actor)
        .bind(kind)
        .bind(command)
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn finish_operation(
        &self,
        id: i64,
        status: OperationStatus,
        exit_code: Option<i32>,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tenant_operations SET status = $2, exit_code = $3, detail = $4, finished_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(exit_code)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that operation `id` failed, the error's text as the detail.
    pub async fn fail_operation(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.finish_operation(id, OperationStatus::Failed, None, error)
            .await
    }

    /// Applies and operations of a tenant, newest first.
    pub async fn history(&self, tenant: &str, limit: i64) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM (
                 SELECT r.recorded_at AS at, 'apply' AS kind, r.run_id, NULL::bigint AS operation_id,
                        r.action, v.image, v.spec_hash, a.actor, r.status, r.detail
                 FROM apply_results r JOIN apply_runs a ON a.id = r.run_id
                 LEFT JOIN tenant_revisions v ON v.run_id = r.run_id AND v.tenant_id = r.tenant_id
                 WHERE r.tenant_id = $1
                 UNION ALL
                 SELECT o.started_at, o.kind, o.run_id, o.id, NULL,
                        v.image, v.spec_hash, o.actor, o.status,
                        coalesce(array_to_string(o.command, ' ') || ': ', '') || o.detail
                 FROM tenant_operations o
                 LEFT JOIN tenant_revisions v ON v.run_id = o.run_id AND v.tenant_id = o.tenant_id
                 WHERE o.tenant_id = $1) h
             ORDER BY at DESC LIMIT $2",
        )
        .bind(tenant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A rollback took effect: the tenant now runs `revision`.
    pub async fn record_rollback(&self, revision: &Revision) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tenants SET spec = $2, spec_hash = $3, rolled_back_to = $4, updated_at = now() WHERE id = $1",
        )
        .bind(&revision.tenant_id)
        .bind(&revision.spec)
        .bind(&revision.spec_hash)
        .bind(revision.run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tenants of the fleet running a revision `controller rollback` put back.
    pub async fn rolled_back(&self, fleet: &str) -> Result<Vec<RolledBack>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT t.id AS tenant, t.rolled_back_to AS run_id, o.started_at AS at, o.actor
             FROM tenants t
             LEFT JOIN LATERAL (SELECT started_at, actor FROM tenant_operations o
                                WHERE o.tenant_id = t.id AND o.kind = 'rollback' AND o.status = 'ok'
                                ORDER BY started_at DESC LIMIT 1) o ON TRUE
             WHERE t.fleet = $1 AND t.rolled_back_to IS NOT NULL",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn add_backup(&self, b: &NewBackup<'_>) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO tenant_backups (tenant_id, host, path, bytes, files, store_sha256, tokens, raw_cost, actor, scheduled)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(b.tenant)
        .bind(b.host)
        .bind(b.path)
        .bind(b.bytes)
        .bind(b.files)
        .bind(b.store_sha256)
        .bind(b.tokens)
        .bind(b.raw_cost)
        .bind(b.actor)
        .bind(b.scheduled)
        .fetch_one(&self.pool)
        .await?)
    }

    /// A tenant's backups still on disk, newest first.
    pub async fn backups(&self, tenant: &str) -> Result<Vec<BackupRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, host, taken_at, path, bytes, files, store_sha256, tokens, raw_cost, actor, scheduled
             FROM tenant_backups WHERE tenant_id = $1 AND removed_at IS NULL ORDER BY taken_at DESC",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn mark_backup_removed(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE tenant_backups SET removed_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn add_restore(
        &self,
        tenant: &str,
        backup_id: Option<i64>,
        path: &str,
        actor: &str,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO tenant_restores (tenant_id, backup_id, path, actor) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(tenant)
        .bind(backup_id)
        .bind(path)
        .bind(actor)
        .fetch_one(&self.pool)
        .await?)
    }
}
