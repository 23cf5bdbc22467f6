//! Keys made by hand adopted into the fleet's records, and the listing of every key
//! with what the records and OpenRouter say of it.

use super::*;

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

impl Keyring {
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
}
