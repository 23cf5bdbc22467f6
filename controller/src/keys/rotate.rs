//! Rotation without downtime: the new key verified in the tenant before the old one
//! is deleted; scheduled rotations.

use super::*;

impl Keyring {
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
                at.host.name(),
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
        let host = at.host.name().to_string();
        let failed = |detail: String| Outcome {
            host: host.clone(),
            tenant: tenant.to_string(),
            action: crate::plan::Verb::Rotate,
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
                // The new pod serves beside the old one before the old one goes.
                let opts = ExecuteOptions {
                    surge: true,
                    ..opts.clone()
                };
                let outcome = ops::launch_revision(spec, &at, &with_new, &opts, progress).await;
                if outcome.status == Status::Ok {
                    let hash = Workload::new(&spec.fleet, at.host.spec(), &with_new)
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
}
