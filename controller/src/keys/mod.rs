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
use crate::execution::{ExecuteOptions, Outcome, Progress, Status};
use crate::openrouter::{decimal_json, Created, KeyInfo, Management, OpenRouterError};
use crate::ops::{self, OpsError};
use crate::plan::Workload;
use crate::spec::{ApiKey, FleetSpec, KeySource, TenantSpec};
use crate::store::keys::{
    KeyOrigin, KeyRecord, KeyStatus, NewKey, DISABLED_OFFBOARDED, DISABLED_ROTATED,
};
use crate::store::{Store, StoreError};

pub use crate::spec::MASTER_KEY_FILE_ENV;
pub use account::{AccountJob, AccountRoundError};
pub use adopt::{ListedKey, Listing, OrphanKey};

mod account;
mod adopt;
mod offboard;
mod rotate;

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
    #[error("{0} tenant(s) have `provision: true`, which needs the fleet database (DATABASE_URL or --database-url) to keep their keys")]
    NeedDatabase(usize),
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

    /// The rule `plan` and `apply` share: with a keyring (a fleet database), every
    /// provisioned tenant gets its key ([`Keyring::prepare`]); without one, a spec
    /// with provisioned tenants cannot be planned, and any other needs no database.
    pub async fn prepare_if_any(
        keyring: Option<&Keyring>,
        spec: &mut FleetSpec,
        dry_run: bool,
    ) -> Result<Vec<KeyEvent>, KeyError> {
        match keyring {
            Some(k) => k.prepare(spec, dry_run).await,
            None => match spec
                .tenants
                .iter()
                .filter(|t| t.key_source.is_provisioned())
                .count()
            {
                0 => Ok(Vec::new()),
                n => Err(KeyError::NeedDatabase(n)),
            },
        }
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
