//! OpenRouter keys owned by the fleet: created for tenants that say
//! `provision: true` (named `mai-fleet/<fleet>/<tenant>`, limited to the client's
//! `monthly_limit_usd`, reset monthly), kept sealed under the master key, rotated
//! without downtime, disabled or deleted when a tenant leaves, adopted when they
//! were made by hand; and the account's own ledger (`/activity`, `/credits`).
//!
//! The rule that keeps keys from being lost or doubled: a key is recorded the
//! moment OpenRouter returns it, before anything uses it; a key that carries the
//! fleet's name for a tenant but is not on record was made by a run that died
//! before recording it, and is deleted before a new one is made.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use crate::crypto::{SealError, Sealer};
use crate::docker::{ExecuteOptions, Outcome, Progress, Status};
use crate::openrouter::{decimal_json, Created, KeyInfo, Management, OpenRouterError};
use crate::ops::{self, OpsError};
use crate::plan::DesiredContainer;
use crate::spec::{ApiKey, FleetSpec, KeySource, TenantSpec};
use crate::store::keys::{
    KeyOrigin, KeyRecord, KeyStatus, NewKey, DISABLED_OFFBOARDED, DISABLED_ROTATED,
};
use crate::store::{Store, StoreError};

pub use crate::spec::MASTER_KEY_FILE_ENV;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the fleet's keys need the OpenRouter management key: set {} or {}",
        crate::openrouter::MANAGEMENT_KEY_ENV,
        crate::openrouter::MANAGEMENT_KEY_FILE_ENV
    )]
    NoManagementKey,
    #[error("the fleet's keys need the master key that seals them: set {MASTER_KEY_FILE_ENV} (`head -c 32 /dev/urandom > master.key; chmod 600 master.key`)")]
    NoMasterKey,
    #[error("{0}")]
    Config(String),
    #[error("master key: {0}")]
    Seal(#[from] SealError),
    #[error("tenant {tenant}: {source}")]
    OpenRouter {
        tenant: String,
        #[source]
        source: OpenRouterError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant `{0}` is not in the spec")]
    UnknownTenant(String),
    #[error("{0}")]
    Refused(String),
    /// Boxed: the tenant's engine errors are large, and rare here.
    #[error(transparent)]
    Ops(Box<OpsError>),
}

impl From<OpsError> for KeyError {
    fn from(e: OpsError) -> Self {
        KeyError::Ops(Box::new(e))
    }
}

/// What the keyring did or found, one line each, for the operator.
#[derive(Debug, Clone, Serialize)]
pub struct KeyEvent {
    pub tenant: String,
    pub action: &'static str,
    pub detail: String,
}

impl KeyEvent {
    fn new(tenant: &str, action: &'static str, detail: String) -> Self {
        Self {
            tenant: tenant.to_string(),
            action,
            detail,
        }
    }
}

/// A key of the fleet as `keys list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedKey {
    pub tenant: String,
    pub hash: String,
    pub mask: String,
    pub status: KeyStatus,
    pub origin: KeyOrigin,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub limit_usd: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub usage_month_usd: Option<Decimal>,
    /// As OpenRouter reports it.
    pub disabled: Option<bool>,
    pub age_days: i64,
    pub in_spec: bool,
    /// Whether OpenRouter still knows the key.
    pub at_openrouter: bool,
}

/// A key at OpenRouter that no tenant of any fleet on record owns.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanKey {
    pub hash: String,
    pub name: String,
    pub label: String,
    pub disabled: bool,
    #[serde(with = "rust_decimal::serde::str")]
    pub usage_usd: Decimal,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub keys: Vec<ListedKey>,
    pub orphans: Vec<OrphanKey>,
    /// Tenants whose key OpenRouter no longer knows.
    pub missing: Vec<String>,
    /// Tenants of the spec whose key (from `api_key`) the fleet does not manage.
    pub unmanaged: Vec<String>,
}

/// How a rotation ended.
pub struct Rotation {
    pub tenant: String,
    pub outcome: Outcome,
    pub old_mask: String,
    pub new_mask: String,
    pub events: Vec<KeyEvent>,
}

#[derive(Clone)]
pub struct Keyring {
    store: Store,
    fleet: String,
    management: Option<Management>,
    sealer: Option<std::sync::Arc<Sealer>>,
}

fn same_limit(a: Option<Decimal>, b: Option<Decimal>) -> bool {
    a.map(|d| d.normalize()) == b.map(|d| d.normalize())
}

fn limit_text(l: Option<Decimal>) -> String {
    l.map_or("none".into(), |d| format!("${}", d.normalize()))
}

/// Whether OpenRouter's `label` (`sk-or-v1-abc...xyz`) can be `key`'s mask.
fn label_matches(label: &str, key: &ApiKey) -> bool {
    let (Some(l), Some(k)) = (
        label.strip_prefix("sk-or-v1-"),
        key.expose().strip_prefix("sk-or-v1-"),
    ) else {
        return false;
    };
    match l.split_once("...").or_else(|| l.split_once('…')) {
        Some((head, tail)) if !head.is_empty() && !tail.is_empty() => {
            k.starts_with(head) && k.ends_with(tail)
        }
        _ => false,
    }
}

impl Keyring {
    pub fn new(
        store: Store,
        fleet: &str,
        management: Option<Management>,
        sealer: Option<Sealer>,
    ) -> Self {
        Self {
            store,
            fleet: fleet.to_string(),
            management,
            sealer: sealer.map(std::sync::Arc::new),
        }
    }

    /// The management key and the master key from the environment; either may be
    /// missing until something needs it.
    pub fn from_env(store: &Store, fleet: &str) -> Result<Self, KeyError> {
        let management = Management::from_env().map_err(KeyError::Config)?;
        let sealer = match crate::env::text(MASTER_KEY_FILE_ENV) {
            Some(path) => Some(Sealer::from_file(std::path::Path::new(&path))?),
            None => None,
        };
        Ok(Self::new(store.clone(), fleet, management, sealer))
    }

    pub fn has_management_key(&self) -> bool {
        self.management.is_some()
    }

    fn mgmt(&self) -> Result<&Management, KeyError> {
        self.management.as_ref().ok_or(KeyError::NoManagementKey)
    }

    fn sealer(&self) -> Result<&Sealer, KeyError> {
        self.sealer.as_deref().ok_or(KeyError::NoMasterKey)
    }

    pub fn key_name(&self, tenant: &str) -> String {
        format!("mai-fleet/{}/{tenant}", self.fleet)
    }

    /// What a sealed key is bound to: a row copied onto another tenant or hash
    /// does not open.
    fn context(tenant: &str, hash: &str) -> String {
        format!("{tenant}/{hash}")
    }

    fn open(&self, rec: &KeyRecord) -> Result<ApiKey, KeyError> {
        let plain = self
            .sealer()?
            .open(&Self::context(&rec.tenant_id, &rec.hash), &rec.sealed)?;
        String::from_utf8(plain)
            .map(ApiKey::new)
            .map_err(|_| KeyError::Seal(SealError::Open))
    }

    fn or_err(tenant: &str) -> impl FnOnce(OpenRouterError) -> KeyError + '_ {
        move |source| KeyError::OpenRouter {
            tenant: tenant.to_string(),
            source,
        }
    }

    async fn record(
        &self,
        tenant: &str,
        key: &ApiKey,
        info: &KeyInfo,
        origin: KeyOrigin,
        status: KeyStatus,
        limit: Option<Decimal>,
    ) -> Result<KeyRecord, KeyError> {
        let sealed = self
            .sealer()?
            .seal(&Self::context(tenant, &info.hash), key.expose().as_bytes())?;
        let name = if info.name.is_empty() {
            self.key_name(tenant)
        } else {
            info.name.clone()
        };
        let id = self
            .store
            .insert_key(&NewKey {
                fleet: &self.fleet,
                tenant,
                hash: &info.hash,
                name: &name,
                mask: &key.masked(),
                fingerprint: &key.fingerprint(),
                sealed: &sealed,
                origin,
                status,
                limit,
            })
            .await?;
        Ok(KeyRecord {
            id,
            fleet: self.fleet.clone(),
            tenant_id: tenant.to_string(),
            hash: info.hash.clone(),
            name,
            mask: key.masked(),
            fingerprint: key.fingerprint(),
            sealed,
            origin,
            status,
            limit_usd: limit,
            disabled_for: None,
            created_at: Utc::now(),
            retired_at: None,
        })
    }

    /// Creates a key for `tenant` and records it at once with `status`. Keys of the
    /// tenant's name that are on no record (left by a run killed between the
    /// creation and the record) are deleted first.
    async fn create(
        &self,
        tenant: &str,
        limit: Option<Decimal>,
        status: KeyStatus,
        events: &mut Vec<KeyEvent>,
    ) -> Result<(Created, KeyRecord), KeyError> {
        let mgmt = self.mgmt()?;
        self.sealer()?;
        let name = self.key_name(tenant);
        let known = self.store.live_key_hashes().await?;
        let stray: Vec<KeyInfo> = mgmt
            .list_keys()
            .await
            .map_err(Self::or_err(tenant))?
            .into_iter()
            .filter(|k| k.name == name && !known.contains(&k.hash))
            .collect();
        for k in stray {
            mgmt.delete_key(&k.hash)
                .await
                .map_err(Self::or_err(tenant))?;
            events.push(KeyEvent::new(
                tenant,
                "swept",
                format!(
                    "deleted {} ({name}): created by an earlier run that ended before recording it",
                    k.label
                ),
            ));
        }
        let created = mgmt
            .create_key(&name, limit)
            .await
            .map_err(Self::or_err(tenant))?;
        let rec = self
            .record(
                tenant,
                &created.key,
                &created.info,
                KeyOrigin::Provisioned,
                status,
                limit,
            )
            .await?;
        Ok((created, rec))
    }

    /// Finishes what an interrupted rotation left: a `next` key is deleted (the
    /// current one still serves, and apply puts it back where needed), a replaced
    /// key waiting for deletion is deleted.
    async fn finish_interrupted(
        &self,
        tenant: &str,
        records: &[KeyRecord],
        events: &mut Vec<KeyEvent>,
    ) -> Result<(), KeyError> {
        for k in records.iter().filter(|k| k.tenant_id == tenant) {
            let leftover = k.status == KeyStatus::Next
                || (k.status == KeyStatus::Disabled
                    && k.disabled_for.as_deref() == Some(DISABLED_ROTATED));
            if !leftover {
                continue;
            }
            self.mgmt()?
                .delete_key(&k.hash)
                .await
                .map_err(Self::or_err(tenant))?;
            self.store
                .set_key_status(k.id, KeyStatus::Deleted, None)
                .await?;
            events.push(KeyEvent::new(
                tenant,
                "deleted",
                format!("{} (left by an interrupted rotation)", k.mask),
            ));
        }
        Ok(())
    }

    /// Gives every provisioned tenant of `spec` its key, creating the ones missing,
    /// and brings each managed key's limit to the tenant's `monthly_limit_usd`.
    /// With `dry_run` nothing is created or changed: a key still to be made shows as
    /// [`ApiKey::pending`].
    pub async fn prepare(
        &self,
        spec: &mut FleetSpec,
        dry_run: bool,
    ) -> Result<Vec<KeyEvent>, KeyError> {
        let mut events = Vec::new();
        // One read for the whole fleet: `serve` asks this every polling round.
        let records = self.store.fleet_keys(&self.fleet).await?;
        for t in spec.tenants.iter_mut() {
            let provisioned = t.key_source.is_provisioned();
            if provisioned && !dry_run {
                self.finish_interrupted(&t.id, &records, &mut events)
                    .await?;
            }
            let current = records
                .iter()
                .find(|k| k.tenant_id == t.id && k.status == KeyStatus::Current)
                .cloned();
            let managed = match (&t.api_key, current) {
                // A key from the file is managed once adopted (the same key).
                (Some(given), Some(rec)) if !provisioned => {
                    (rec.fingerprint == given.fingerprint()).then_some(rec)
                }
                (_, Some(rec)) if provisioned => {
                    t.api_key = Some(self.open(&rec)?);
                    Some(rec)
                }
                (_, None) if provisioned => {
                    if let Some(rec) = self.reinstate(t, &records, dry_run, &mut events).await? {
                        t.api_key = Some(self.open(&rec)?);
                        Some(rec)
                    } else if dry_run {
                        t.api_key = Some(ApiKey::pending());
                        events.push(KeyEvent::new(
                            &t.id,
                            "create",
                            format!("a key named {} will be created", self.key_name(&t.id)),
                        ));
                        None
                    } else {
                        let (created, rec) = self
                            .create(&t.id, t.monthly_limit_usd, KeyStatus::Current, &mut events)
                            .await?;
                        events.push(KeyEvent::new(
                            &t.id,
                            "created",
                            format!(
                                "{} ({}), limit {} monthly",
                                created.key.masked(),
                                rec.name,
                                limit_text(t.monthly_limit_usd)
                            ),
                        ));
                        t.api_key = Some(created.key);
                        // Its limit was set at creation.
                        None
                    }
                }
                _ => None,
            };
            if let Some(rec) = managed {
                self.sync_limit(t, &rec, dry_run, &mut events).await?;
            }
        }
        Ok(events)
    }

    /// A tenant back in the spec after `--prune` disabled its key: the key is
    /// enabled again rather than replaced.
    async fn reinstate(
        &self,
        t: &TenantSpec,
        records: &[KeyRecord],
        dry_run: bool,
        events: &mut Vec<KeyEvent>,
    ) -> Result<Option<KeyRecord>, KeyError> {
        let Some(rec) = records
            .iter()
            .rev()
            .find(|k| {
                k.tenant_id == t.id
                    && k.status == KeyStatus::Disabled
                    && k.disabled_for.as_deref() == Some(DISABLED_OFFBOARDED)
            })
            .cloned()
        else {
            return Ok(None);
        };
        if dry_run {
            events.push(KeyEvent::new(
                &t.id,
                "enable",
                format!(
                    "{} (disabled when the tenant was pruned) will be enabled",
                    rec.mask
                ),
            ));
            return Ok(Some(rec));
        }
        self.mgmt()?
            .patch_key(&rec.hash, json!({ "disabled": false }))
            .await
            .map_err(Self::or_err(&t.id))?;
        self.store
            .set_key_status(rec.id, KeyStatus::Current, None)
            .await?;
        events.push(KeyEvent::new(
            &t.id,
            "enabled",
            format!("{} (disabled when the tenant was pruned)", rec.mask),
        ));
        Ok(Some(rec))
    }

    async fn sync_limit(
        &self,
        t: &TenantSpec,
        rec: &KeyRecord,
        dry_run: bool,
        events: &mut Vec<KeyEvent>,
    ) -> Result<(), KeyError> {
        if same_limit(rec.limit_usd, t.monthly_limit_usd) {
            return Ok(());
        }
        let detail = format!(
            "{}: limit {} -> {}",
            rec.mask,
            limit_text(rec.limit_usd),
            limit_text(t.monthly_limit_usd)
        );
        if dry_run {
            events.push(KeyEvent::new(&t.id, "limit", detail));
            return Ok(());
        }
        let body = match t.monthly_limit_usd {
            Some(l) => json!({ "limit": decimal_json(l), "limit_reset": "monthly" }),
            None => json!({ "limit": null }),
        };
        self.mgmt()?
            .patch_key(&rec.hash, body)
            .await
            .map_err(Self::or_err(&t.id))?;
        self.store
            .set_key_limit(rec.id, t.monthly_limit_usd)
            .await?;
        events.push(KeyEvent::new(&t.id, "limit", detail));
        Ok(())
    }

    /// Keys of tenants no longer in the spec: disabled (`--prune`), or deleted
    /// (`--purge-data`, also for keys an earlier prune disabled). Failures are
    /// reported as events and retried by the next apply.
    pub async fn offboard(&self, spec: &FleetSpec, purge: bool) -> Vec<KeyEvent> {
        let mut events = Vec::new();
        let keys = match self.store.fleet_keys(&self.fleet).await {
            Ok(k) => k,
            Err(e) => {
                events.push(KeyEvent::new("-", "failed", e.to_string()));
                return events;
            }
        };
        for k in keys {
            if spec.tenants.iter().any(|t| t.id == k.tenant_id) || k.status == KeyStatus::Deleted {
                continue;
            }
            let result = if purge {
                self.offboard_one(&k, true).await
            } else if k.status == KeyStatus::Disabled {
                continue;
            } else {
                self.offboard_one(&k, false).await
            };
            events.push(match result {
                Ok(()) if purge => KeyEvent::new(&k.tenant_id, "deleted", k.mask.clone()),
                Ok(()) => KeyEvent::new(&k.tenant_id, "disabled", k.mask.clone()),
                Err(e) => KeyEvent::new(&k.tenant_id, "failed", format!("{}: {e}", k.mask)),
            });
        }
        events
    }

    async fn offboard_one(&self, k: &KeyRecord, delete: bool) -> Result<(), KeyError> {
        let mgmt = self.mgmt()?;
        if delete {
            mgmt.delete_key(&k.hash)
                .await
                .map_err(Self::or_err(&k.tenant_id))?;
            self.store
                .set_key_status(k.id, KeyStatus::Deleted, None)
                .await?;
        } else {
            mgmt.patch_key(&k.hash, json!({ "disabled": true }))
                .await
                .map_err(Self::or_err(&k.tenant_id))?;
            self.store
                .set_key_status(k.id, KeyStatus::Disabled, Some(DISABLED_OFFBOARDED))
                .await?;
        }
        Ok(())
    }

    /// Rotates a provisioned tenant's key without downtime: a new key is made and
    /// recorded, proven with a request made with it, and the tenant's container is
    /// rolled with it and verified; only then is the old key deleted. If anything
    /// before that fails, the new key is deleted and the old one goes on serving.
    /// `spec` must have been prepared (keys filled).
    pub async fn rotate(
        &self,
        spec: &FleetSpec,
        tenant: &str,
        actor: &str,
        opts: &ExecuteOptions,
        progress: &Progress,
    ) -> Result<Rotation, KeyError> {
        let t = spec
            .tenants
            .iter()
            .find(|t| t.id == tenant)
            .ok_or_else(|| KeyError::UnknownTenant(tenant.to_string()))?;
        if !t.key_source.is_provisioned() {
            return Err(KeyError::Refused(format!(
                "tenant {tenant}: its key comes from `openrouter.api_key` in the file, which would put the old key back; rotate after changing it to `provision: true` (`controller keys adopt {tenant}` first keeps the key it has)"
            )));
        }
        let old = self
            .store
            .tenant_key(tenant, KeyStatus::Current)
            .await?
            .ok_or_else(|| {
                KeyError::Refused(format!(
                    "tenant {tenant} has no key yet; `controller apply` provisions it"
                ))
            })?;
        // An apply at the same time would take the `next` key for a leftover.
        let _lock = self.store.lock_fleet_pooled(&self.fleet).await?;
        let at = ops::locate(spec, tenant).await?;
        let mut events = Vec::new();
        let records = self.store.fleet_keys(&self.fleet).await?;
        self.finish_interrupted(tenant, &records, &mut events)
            .await?;
        let op = self
            .store
            .begin_operation(
                tenant,
                &at.engine.host.name,
                actor,
                crate::store::model::OperationKind::RotateKey,
                None,
                None,
            )
            .await?;
        let (created, next) = match self
            .create(tenant, t.monthly_limit_usd, KeyStatus::Next, &mut events)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = self.store.fail_operation(op, &e.to_string()).await;
                return Err(e);
            }
        };
        let new_mask = created.key.masked();
        let host = at.engine.host.name.clone();
        let failed = |detail: String| Outcome {
            host: host.clone(),
            tenant: tenant.to_string(),
            action: "rotate",
            status: Status::Failed,
            detail,
            container: None,
            duration_ms: 0,
        };
        // A request made with the new key: OpenRouter serves it before any
        // container depends on it.
        let outcome = match self.mgmt()?.client().key_usage(&created.key).await {
            Err(e) => failed(format!("OpenRouter does not accept the new key: {e}")),
            Ok(_) => {
                let mut with_new = t.clone();
                with_new.api_key = Some(created.key.clone());
                let outcome = ops::launch_revision(spec, &at, &with_new, opts, progress).await;
                if outcome.status == Status::Ok {
                    let hash = DesiredContainer::new(&spec.fleet, &at.engine.host, &with_new)
                        .hash_label()
                        .to_string();
                    self.store.promote_key(tenant, &next, &hash).await?;
                    match self.mgmt()?.delete_key(&old.hash).await {
                        Ok(()) => {
                            self.store
                                .set_key_status(old.id, KeyStatus::Deleted, None)
                                .await?;
                            events.push(KeyEvent::new(tenant, "deleted", old.mask.clone()));
                        }
                        Err(e) => events.push(KeyEvent::new(
                            tenant,
                            "failed",
                            format!(
                                "the old key {} is disabled on record but OpenRouter did not delete it ({e}); the next apply or rotation deletes it",
                                old.mask
                            ),
                        )),
                    }
                }
                outcome
            }
        };
        if outcome.status != Status::Ok {
            // The old key and container serve on; the new key must not linger.
            match self.mgmt()?.delete_key(&next.hash).await {
                Ok(()) => {
                    self.store
                        .set_key_status(next.id, KeyStatus::Deleted, None)
                        .await?;
                    events.push(KeyEvent::new(
                        tenant,
                        "deleted",
                        format!("{new_mask} (the new key; the rotation did not take)"),
                    ));
                }
                Err(e) => events.push(KeyEvent::new(
                    tenant,
                    "failed",
                    format!("the new key {new_mask} could not be deleted ({e}); the next apply deletes it"),
                )),
            }
        }
        self.store
            .finish_operation(op, outcome.status.into(), None, &outcome.detail)
            .await?;
        Ok(Rotation {
            tenant: tenant.to_string(),
            outcome,
            old_mask: old.mask,
            new_mask,
            events,
        })
    }

    /// Provisioned tenants whose key is older than `older_than` (or, without it,
    /// than their own `rotate_every`).
    pub async fn due_for_rotation(
        &self,
        spec: &FleetSpec,
        older_than: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, KeyError> {
        let keys = self.store.fleet_keys(&self.fleet).await?;
        Ok(spec
            .tenants
            .iter()
            .filter_map(|t| {
                let KeySource::Provisioned { rotate_every } = t.key_source else {
                    return None;
                };
                let age = older_than.or(rotate_every)?;
                let rec = keys
                    .iter()
                    .find(|k| k.tenant_id == t.id && k.status == KeyStatus::Current)?;
                let age = chrono::Duration::from_std(age).ok()?;
                (rec.created_at + age <= now).then(|| t.id.clone())
            })
            .collect())
    }

    /// Takes a key the operator made by hand (the tenant's `api_key`) under
    /// management: found at OpenRouter by its label (or the `hash` given), sealed
    /// and recorded; its limit follows `monthly_limit_usd` from now on.
    pub async fn adopt(
        &self,
        spec: &FleetSpec,
        tenant: &str,
        hash: Option<&str>,
    ) -> Result<Vec<KeyEvent>, KeyError> {
        let t = spec
            .tenants
            .iter()
            .find(|t| t.id == tenant)
            .ok_or_else(|| KeyError::UnknownTenant(tenant.to_string()))?;
        let key = match (&t.key_source, &t.api_key) {
            (KeySource::Given, Some(k)) => k.clone(),
            _ => {
                return Err(KeyError::Refused(format!(
                    "tenant {tenant}: only a key given by `openrouter.api_key` is adopted; a provisioned one is the fleet's already"
                )))
            }
        };
        self.sealer()?;
        if let Some(rec) = self.store.tenant_key(tenant, KeyStatus::Current).await? {
            if rec.fingerprint == key.fingerprint() {
                return Ok(vec![KeyEvent::new(
                    tenant,
                    "unchanged",
                    format!("{} is managed already ({})", rec.mask, rec.hash),
                )]);
            }
            return Err(KeyError::Refused(format!(
                "tenant {tenant} already has the fleet key {}; the file's key {} is another",
                rec.mask,
                key.masked()
            )));
        }
        let mgmt = self.mgmt()?;
        let known = self.store.live_key_hashes().await?;
        let info = match hash {
            Some(h) => {
                let info = mgmt.get_key(h).await.map_err(Self::or_err(tenant))?;
                if !label_matches(&info.label, &key) {
                    return Err(KeyError::Refused(format!(
                        "key {h} at OpenRouter is {}, not the tenant's {}",
                        info.label,
                        key.masked()
                    )));
                }
                info
            }
            None => {
                let mut found: Vec<KeyInfo> = mgmt
                    .list_keys()
                    .await
                    .map_err(Self::or_err(tenant))?
                    .into_iter()
                    .filter(|k| label_matches(&k.label, &key) && !known.contains(&k.hash))
                    .collect();
                match found.len() {
                    1 => found.remove(0),
                    0 => {
                        return Err(KeyError::Refused(format!(
                            "no key of the account looks like {} (by its label); is the management key of the same account?",
                            key.masked()
                        )))
                    }
                    n => {
                        return Err(KeyError::Refused(format!(
                            "{n} keys of the account have the label of {}; name the right one with --hash ({})",
                            key.masked(),
                            found.iter().map(|k| k.hash.as_str()).collect::<Vec<_>>().join(", ")
                        )))
                    }
                }
            }
        };
        if known.contains(&info.hash) {
            return Err(KeyError::Refused(format!(
                "key {} is on record for another tenant",
                info.hash
            )));
        }
        let rec = self
            .record(
                tenant,
                &key,
                &info,
                KeyOrigin::Adopted,
                KeyStatus::Current,
                info.limit,
            )
            .await?;
        let mut events = vec![KeyEvent::new(
            tenant,
            "adopted",
            format!("{} ({}, named {:?})", rec.mask, rec.hash, info.name),
        )];
        self.sync_limit(t, &rec, false, &mut events).await?;
        Ok(events)
    }

    /// Every key of the fleet with what OpenRouter says of it, the keys of the
    /// account no fleet owns, and tenants whose key OpenRouter no longer knows.
    pub async fn list(&self, spec: &FleetSpec) -> Result<Listing, KeyError> {
        let at_or = self.mgmt()?.list_keys().await.map_err(Self::or_err("-"))?;
        let records = self.store.fleet_keys(&self.fleet).await?;
        let known = self.store.live_key_hashes().await?;
        let now = Utc::now();
        let mut keys = Vec::new();
        let mut missing = Vec::new();
        for r in records.iter().filter(|r| r.status != KeyStatus::Deleted) {
            let info = at_or.iter().find(|k| k.hash == r.hash);
            let in_spec = spec.tenants.iter().any(|t| t.id == r.tenant_id);
            if info.is_none() && r.status == KeyStatus::Current && in_spec {
                missing.push(r.tenant_id.clone());
            }
            keys.push(ListedKey {
                tenant: r.tenant_id.clone(),
                hash: r.hash.clone(),
                mask: r.mask.clone(),
                status: r.status,
                origin: r.origin,
                limit_usd: info.and_then(|i| i.limit).or(r.limit_usd),
                usage_month_usd: info.and_then(|i| i.usage_monthly),
                disabled: info.map(|i| i.disabled),
                age_days: (now - r.created_at).num_days(),
                in_spec,
                at_openrouter: info.is_some(),
            });
        }
        let orphans = at_or
            .iter()
            .filter(|k| !known.contains(&k.hash))
            .map(|k| OrphanKey {
                hash: k.hash.clone(),
                name: k.name.clone(),
                label: k.label.clone(),
                disabled: k.disabled,
                usage_usd: k.usage,
            })
            .collect();
        let unmanaged = spec
            .tenants
            .iter()
            .filter(|t| {
                !t.key_source.is_provisioned()
                    && !records.iter().any(|r| {
                        r.tenant_id == t.id
                            && r.status == KeyStatus::Current
                            && t.api_key.as_ref().map(|k| k.fingerprint()).as_deref()
                                == Some(r.fingerprint.as_str())
                    })
            })
            .map(|t| t.id.clone())
            .collect();
        Ok(Listing {
            keys,
            orphans,
            missing,
            unmanaged,
        })
    }

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
    pub fn from_env(spec: Option<FleetSpec>) -> Result<Self, String> {
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
            },
        })
    }
}

impl Keyring {
    /// One round of the account job; its failures are logged, each step on its own.
    pub async fn account_round(&self, job: &AccountJob) -> Result<(), String> {
        let mut failed = Vec::new();
        match self.poll_credits().await {
            Ok(c) => tracing::debug!(remaining = %c.remaining(), "OpenRouter credit polled"),
            Err(e) => failed.push(format!("credits: {e}")),
        }
        let due = match self.store.last_activity_fetch().await {
            Ok(last) => last.is_none_or(|t| {
                Utc::now() - t >= chrono::Duration::from_std(job.activity_every).unwrap_or_default()
            }),
            Err(e) => {
                failed.push(e.to_string());
                false
            }
        };
        if due {
            match self.snapshot_activity().await {
                Ok(n) => tracing::info!(items = n, "OpenRouter activity snapshotted"),
                Err(e) => failed.push(format!("activity: {e}")),
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
            Err(e) => failed.push(format!("limits: {e}")),
        }
        if let Some(spec) = &job.spec {
            if let Err(e) = self.rotate_due(spec, job).await {
                failed.push(format!("rotation: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
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
    ) -> Result<(), String> {
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
                            error = e.as_str(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_keys_by_head_and_tail() {
        let key = ApiKey::new(format!("sk-or-v1-abc{}xyz", "0".repeat(58)));
        assert!(label_matches("sk-or-v1-abc...xyz", &key));
        assert!(!label_matches("sk-or-v1-abd...xyz", &key));
        assert!(!label_matches("sk-or-v1-...", &key));
        assert!(!label_matches("", &key));
    }

    #[test]
    fn limits_compare_as_amounts() {
        assert!(same_limit(
            Some(Decimal::new(15000, 2)),
            Some(Decimal::from(150))
        ));
        assert!(!same_limit(Some(Decimal::from(150)), None));
        assert_eq!(decimal_json(Decimal::new(9950, 2)).to_string(), "99.5");
    }
}
