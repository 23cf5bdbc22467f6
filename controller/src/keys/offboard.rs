//! Offboarding: the keys of tenants that left the spec disabled or deleted, decided
//! from the fleet's own records.

use super::*;

impl Keyring {
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
}
