//! The account's round for `serve`: the daily ledger snapshotted, credits polled,
//! limits enforced, rotations that are due.

use super::*;
use mai_fleet_core::Invalid;

impl Keyring {
    /// Snapshots `GET /activity` for every key of the fleet that may have spent in
    /// the last 30 days and for the whole account; how many items were stored.
    pub async fn snapshot_activity(&self) -> Result<usize, KeyError> {
        let mgmt = self.mgmt()?;
        let cutoff = Utc::now() - chrono::Duration::days(31);
        let keys = self.store.fleet_keys(&self.fleet).await?;
        let mut items = 0;
        let mut asked = 0;
        for k in keys
            .iter()
            .filter(|k| k.retired_at.is_none_or(|r| r > cutoff))
        {
            let got = mgmt
                .activity(Some(&k.hash))
                .await
                .map_err(Self::or_err(&k.tenant_id))?;
            self.store.upsert_activity(&k.hash, &got).await?;
            items += got.len();
            asked += 1;
        }
        let account = mgmt.activity(None).await.map_err(Self::or_err("-"))?;
        self.store.upsert_activity("*", &account).await?;
        items += account.len();
        self.store
            .record_activity_fetch(asked, items as i32)
            .await?;
        Ok(items)
    }

    pub async fn poll_credits(&self) -> Result<crate::openrouter::Credits, KeyError> {
        let c = self.mgmt()?.credits().await.map_err(Self::or_err("-"))?;
        self.store.record_credits(&c).await?;
        Ok(c)
    }

    /// `billing.on_limit: disable` for managed keys: a key whose tenant reached its
    /// monthly limit is disabled at OpenRouter until the month ends; a key disabled
    /// so in an earlier month is enabled again.
    pub async fn enforce_limits(&self) -> Result<Vec<KeyEvent>, KeyError> {
        let mgmt = self.mgmt()?;
        let mut events = Vec::new();
        let keys = self.store.fleet_keys(&self.fleet).await?;
        let rows = self.store.fleet_rows().await?;
        let policies = self.store.tenants_on_limit(&self.fleet).await?;
        for k in keys.iter().filter(|k| k.status == KeyStatus::Current) {
            let Some(row) = rows.iter().find(|r| r.tenant == k.tenant_id) else {
                continue;
            };
            let month = format!("limit {}", row.today.format("%Y-%m"));
            let disable = policies
                .iter()
                .any(|(t, on)| *t == k.tenant_id && on == "disable");
            let reached = row
                .monthly_limit_usd
                .is_some_and(|l| l > Decimal::ZERO && row.month_client_cost >= l);
            match k.disabled_for.as_deref() {
                Some(d) if d.starts_with("limit ") && d != month => {
                    mgmt.patch_key(&k.hash, json!({ "disabled": false }))
                        .await
                        .map_err(Self::or_err(&k.tenant_id))?;
                    self.store.set_key_disabled_for(k.id, None).await?;
                    events.push(KeyEvent::new(
                        &k.tenant_id,
                        "enabled",
                        format!("{}: a new month", k.mask),
                    ));
                }
                None if disable && reached => {
                    mgmt.patch_key(&k.hash, json!({ "disabled": true }))
                        .await
                        .map_err(Self::or_err(&k.tenant_id))?;
                    self.store.set_key_disabled_for(k.id, Some(&month)).await?;
                    events.push(KeyEvent::new(
                        &k.tenant_id,
                        "disabled",
                        format!(
                            "{}: monthly limit reached (billing.on_limit: disable)",
                            k.mask
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(events)
    }
}

/// How `serve` looks after the account.
pub struct AccountJob {
    /// Between rounds (credits, limits, rotations due).
    pub every: Duration,
    /// Between `/activity` snapshots (it reports completed days only).
    pub activity_every: Duration,
    /// For scheduled rotations (`rotate_every`); none: no rotation.
    pub spec: Option<FleetSpec>,
    pub execute: ExecuteOptions,
}

impl AccountJob {
    /// `MAI_FLEET_OPENROUTER_ACCOUNT_INTERVAL` (default 15m) and
    /// `MAI_FLEET_OPENROUTER_ACTIVITY_INTERVAL` (default 24h).
    pub fn from_env(spec: Option<FleetSpec>) -> Result<Self, Invalid> {
        let read = |name: &str, default: u64| match crate::env::text(name) {
            Some(v) => crate::duration::parse(&v).map_err(|e| format!("{name}: {e}")),
            _ => Ok(Duration::from_secs(default)),
        };
        Ok(Self {
            every: read("MAI_FLEET_OPENROUTER_ACCOUNT_INTERVAL", 900)?,
            activity_every: read("MAI_FLEET_OPENROUTER_ACTIVITY_INTERVAL", 86_400)?,
            spec,
            execute: ExecuteOptions {
                parallel: 1,
                verify: Default::default(),
                stop_timeout_s: 10,
                purge_data: false,
                max_failures: None,
                surge: false,
            },
        })
    }
}

/// The steps of an account round that failed (each step runs whatever the others
/// did), with their causes.
#[derive(Debug, thiserror::Error)]
#[error("{}", .failures.iter().map(|(step, e)| format!("{step}: {}", crate::error_chain(e))).collect::<Vec<_>>().join("; "))]
pub struct AccountRoundError {
    pub failures: Vec<(&'static str, KeyError)>,
}

impl Keyring {
    /// One round of the account job; its failures are logged, each step on its own.
    pub async fn account_round(&self, job: &AccountJob) -> Result<(), AccountRoundError> {
        let mut failed: Vec<(&'static str, KeyError)> = Vec::new();
        match self.poll_credits().await {
            Ok(c) => tracing::debug!(remaining = %c.remaining(), "OpenRouter credit polled"),
            Err(e) => failed.push(("credits", e)),
        }
        let due = match self.store.last_activity_fetch().await {
            Ok(last) => last.is_none_or(|t| {
                Utc::now() - t >= chrono::Duration::from_std(job.activity_every).unwrap_or_default()
            }),
            Err(e) => {
                failed.push(("activity", e.into()));
                false
            }
        };
        if due {
            match self.snapshot_activity().await {
                Ok(n) => tracing::info!(items = n, "OpenRouter activity snapshotted"),
                Err(e) => failed.push(("activity", e)),
            }
        }
        match self.enforce_limits().await {
            Ok(events) => {
                for e in events {
                    tracing::warn!(
                        tenant = e.tenant.as_str(),
                        action = e.action,
                        detail = e.detail.as_str(),
                        "key limit"
                    );
                }
            }
            Err(e) => failed.push(("limits", e)),
        }
        if let Some(spec) = &job.spec {
            if let Err(e) = self.rotate_due(spec, job).await {
                failed.push(("rotation", e));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(AccountRoundError { failures: failed })
        }
    }

    async fn rotate_due(&self, spec: &FleetSpec, job: &AccountJob) -> Result<(), KeyError> {
        let due = self.due_for_rotation(spec, None, Utc::now()).await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut spec = spec.clone();
        self.prepare(&mut spec, true).await?;
        let step = |_: &str, _: &str, _: &str| {};
        for tenant in due {
            let r = self
                .rotate(&spec, &tenant, "controller serve", &job.execute, &step)
                .await?;
            tracing::info!(
                tenant = tenant.as_str(),
                old = r.old_mask.as_str(),
                new = r.new_mask.as_str(),
                status = r.outcome.status.as_str(),
                detail = r.outcome.detail.as_str(),
                "scheduled key rotation"
            );
        }
        Ok(())
    }

    /// `serve`'s account job: credits, the daily ledger, limits and scheduled
    /// rotations, every `job.every`.
    pub async fn run_account_job(
        self,
        job: &AccountJob,
        ctx: crate::supervisor::JobContext,
    ) -> Result<(), crate::supervisor::JobError> {
        let repeats = mai_fleet_core::log::Repeats::new(Duration::from_secs(300));
        loop {
            match self.account_round(job).await {
                Ok(()) => {
                    if repeats.clear("account") {
                        tracing::info!("OpenRouter account checks work again");
                    }
                }
                Err(e) => {
                    if let Some(held_back) = repeats.check("account") {
                        tracing::warn!(
                            held_back,
                            error = %e,
                            "OpenRouter account checks failed"
                        );
                    }
                }
            }
            ctx.beat();
            if !ctx.sleep(job.every).await {
                return Ok(());
            }
        }
    }
}
