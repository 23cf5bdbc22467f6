//! The fleet Postgres: schema (sqlx migrations in `controller/migrations`), desired
//! state and the record of every apply.

pub mod alerts;
pub mod billing;
pub mod dashboard;
pub mod hosts;
pub mod invoices;
pub mod keys;
pub mod migrations;
pub mod model;
pub mod operations;
pub mod rates;
pub mod reports;
pub mod users;

use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::plan::Workload;
use crate::spec::{FleetSpec, TenantSpec};
use model::{Outcome, Status};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the fleet database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the fleet database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "another apply of fleet `{fleet}` is running (started by {holder}); wait for it or stop it"
    )]
    Locked { fleet: String, holder: String },
    #[error("fleet database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("host {host} already has agent credentials; `controller host add {host} --rotate` gives it a new password")]
    HostExists { host: String },
    #[error("host {host} has no agent credentials yet; run `controller host add {host}` first")]
    NoSuchHost { host: String },
    #[error("database role {role} exists but belongs to no host of this fleet database (another database on this server?); remove or rename it")]
    RoleTaken { role: String },
    #[error("another `controller invoices send` is running (one sends at a time, so no invoice is handed to KSeF twice); wait for it")]
    SendingLocked,
    #[error("no randomness for a password: {0}")]
    Random(#[source] std::io::Error),
}

#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
}

impl Store {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_sized(url, 4).await
    }

    /// A pool of up to `connections` (the dashboard serves several requests at once).
    pub async fn connect_sized(url: &str, connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::Connect)?;
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options.application_name("mai-fleet-controller"))
            .await
            .map_err(StoreError::Connect)?;
        Ok(Self { pool })
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::repair_superseded(&self.pool).await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Takes the fleet's apply lock for as long as the returned guard lives; two
    /// applies of one fleet would otherwise race on the same containers.
    pub async fn lock_fleet(&self, url: &str, fleet: &str) -> Result<ApplyLock, StoreError> {
        let conn = PgConnection::connect(url)
            .await
            .map_err(StoreError::Connect)?;
        self.lock_fleet_on(conn, fleet).await
    }

    /// [`Store::lock_fleet`] on a connection taken out of the pool (for commands that
    /// change containers outside an apply: a key rotation).
    pub async fn lock_fleet_pooled(&self, fleet: &str) -> Result<ApplyLock, StoreError> {
        let conn = self.pool.acquire().await?.detach();
        self.lock_fleet_on(conn, fleet).await
    }

    async fn lock_fleet_on(
        &self,
        mut conn: PgConnection,
        fleet: &str,
    ) -> Result<ApplyLock, StoreError> {
        let got: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('mai-fleet.apply'), hashtext($1))",
        )
        .bind(fleet)
        .fetch_one(&mut conn)
        .await?;
        if !got {
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT actor || ' at ' || to_char(started_at, 'YYYY-MM-DD HH24:MI:SS TZ') || ', run #' || id
                 FROM apply_runs WHERE fleet = $1 AND status = 'running' ORDER BY id DESC LIMIT 1",
            )
            .bind(fleet)
            .fetch_optional(&self.pool)
            .await?;
            return Err(StoreError::Locked {
                fleet: fleet.to_string(),
                holder: holder.unwrap_or_else(|| "another controller".to_string()),
            });
        }
        // Holding the lock means no other apply runs: a 'running' row left now is
        // one that was killed.
        sqlx::query("UPDATE apply_runs SET status = 'interrupted', finished_at = now() WHERE fleet = $1 AND status = 'running'")
            .bind(fleet)
            .execute(&self.pool)
            .await?;
        Ok(ApplyLock { _conn: conn })
    }

    pub async fn begin_run(
        &self,
        spec: &FleetSpec,
        actor: &str,
        spec_sha256: &str,
        options: Value,
        plan: Value,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO apply_runs (fleet, actor, spec_file, spec_sha256, options, plan)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&spec.fleet)
        .bind(actor)
        .bind(spec.file.display().to_string())
        .bind(spec_sha256)
        .bind(options)
        .bind(plan)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// Records the results and the desired state in one transaction.
    pub async fn finish_run(
        &self,
        run_id: i64,
        spec: &FleetSpec,
        desired: &[(&TenantSpec, &Workload)],
        outcomes: &[Outcome],
    ) -> Result<&'static str, StoreError> {
        let mut tx = self.pool.begin().await?;
        for o in outcomes {
            sqlx::query(
                "INSERT INTO apply_results (run_id, host, tenant_id, action, status, detail, container_id, duration_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(run_id)
            .bind(&o.host)
            .bind(&o.tenant)
            .bind(o.action)
            .bind(o.status)
            .bind(&o.detail)
            .bind(&o.container)
            .bind(o.duration_ms as i64)
            .execute(&mut *tx)
            .await?;
        }
        for h in &spec.hosts {
            sqlx::query(
                "INSERT INTO hosts (name, fleet, docker_url, data_root) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET fleet = $2, docker_url = $3, data_root = $4, updated_at = now()
                 WHERE (hosts.fleet, hosts.docker_url, hosts.data_root) IS DISTINCT FROM ($2, $3, $4)",
            )
            .bind(&h.name)
            .bind(&spec.fleet)
            .bind(&h.docker)
            .bind(&h.data_root)
            .execute(&mut *tx)
            .await?;
        }
        for (t, d) in desired {
            upsert_tenant(&mut tx, &spec.fleet, t, d, run_id).await?;
            let launched = outcomes.iter().find(|o| {
                o.tenant == t.id
                    && matches!(
                        o.action,
                        crate::plan::Verb::Create | crate::plan::Verb::Update
                    )
            });
            if let Some(o) = launched {
                operations::add_revision(&mut tx, run_id, t, d, o).await?;
            }
        }
        let ids: Vec<&str> = spec.tenants.iter().map(|t| t.id.as_str()).collect();
        sqlx::query("UPDATE tenants SET in_spec = FALSE, updated_at = now() WHERE fleet = $1 AND in_spec AND NOT (id = ANY($2))")
            .bind(&spec.fleet)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let status = run_status(outcomes);
        let summary = summary(outcomes);
        sqlx::query(
            "UPDATE apply_runs SET status = $2, finished_at = now(), summary = $3 WHERE id = $1",
        )
        .bind(run_id)
        .bind(status)
        .bind(summary)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(status)
    }
}

/// Held while an apply runs; dropping it closes the session and frees the lock.
pub struct ApplyLock {
    _conn: PgConnection,
}

async fn upsert_tenant(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    fleet: &str,
    t: &TenantSpec,
    d: &Workload,
    run_id: i64,
) -> Result<(), StoreError> {
    let spec = recorded_spec(t);
    let previous_markup: Option<rust_decimal::Decimal> =
        sqlx::query_scalar("SELECT markup_rate FROM tenants WHERE id = $1")
            .bind(&t.id)
            .fetch_optional(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO tenants (id, fleet, host, name, org_id, timezone, markup_rate, monthly_limit_usd, spec, spec_hash, key_fingerprint, key_masked, on_limit)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (id) DO UPDATE SET fleet = $2, host = $3, name = $4, org_id = $5, timezone = $6,
             markup_rate = $7, monthly_limit_usd = $8, spec = $9, spec_hash = $10, key_fingerprint = $11,
             key_masked = $12, on_limit = $13, in_spec = TRUE, updated_at = now(),
             rolled_back_to = NULL",
    )
    .bind(&t.id)
    .bind(fleet)
    .bind(&t.host)
    .bind(&t.name)
    .bind(&t.org_id)
    .bind(&t.timezone)
    .bind(t.markup_rate)
    .bind(t.monthly_limit_usd)
    .bind(spec)
    .bind(d.hash_label())
    .bind(t.api_key.as_ref().map(|k| k.fingerprint()).unwrap_or_default())
    .bind(t.api_key.as_ref().map(|k| k.masked()).unwrap_or_default())
    .bind(t.on_limit)
    .execute(&mut **tx)
    .await?;
    if previous_markup != Some(t.markup_rate) {
        sqlx::query("INSERT INTO tenant_markup_history (tenant_id, markup_rate, effective_from, apply_run_id) VALUES ($1, $2, now(), $3)")
            .bind(&t.id)
            .bind(t.markup_rate)
            .bind(run_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The spec as the operator wrote it, resolved, minus the key: secrets stay as their
/// `${env:}`/`${file:}` references and the key as its mask.
pub fn recorded_spec(t: &TenantSpec) -> Value {
    json!({
        "name": t.name, "org_id": t.org_id, "host": t.host, "image": t.image,
        "timezone": t.timezone, "markup_rate": t.markup_rate, "monthly_limit_usd": t.monthly_limit_usd,
        "email": t.email, "nip": t.nip, "port": t.port, "env": t.env_for_record(),
        "memory_bytes": t.memory_bytes, "cpus": t.cpus, "pids_limit": t.pids_limit,
        "api_key": t.api_key.as_ref().map(|k| k.masked()),
        "key_fingerprint": t.api_key.as_ref().map(|k| k.fingerprint()),
        "key_source": t.key_source, "on_limit": t.on_limit,
    })
}

fn run_status(outcomes: &[Outcome]) -> &'static str {
    let bad = outcomes.iter().filter(|o| o.status != Status::Ok).count();
    match bad {
        0 => "succeeded",
        n if n == outcomes.len() => "failed",
        _ => "partial",
    }
}

fn summary(outcomes: &[Outcome]) -> Value {
    let mut counts = serde_json::Map::new();
    for o in outcomes {
        let key = format!("{}_{}", o.action, o.status);
        let n = counts.get(&key).and_then(Value::as_u64).unwrap_or(0);
        counts.insert(key, json!(n + 1));
    }
    Value::Object(counts)
}
