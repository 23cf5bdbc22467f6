//! OpenRouter as ground truth: `GET /key` with each tenant's own key, on a
//! schedule (jittered; 429/5xx back off), kept as snapshots next to what the fleet
//! recorded. Keys are read from the spec at start and never logged.

use mai_fleet_core::Invalid;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::openrouter::Client;
use crate::spec::{ApiKey, FleetSpec};
use crate::store::Store;

pub struct Poller {
    client: Client,
    /// For provisioned tenants: their keys are read again from the keyring each
    /// round, so a rotation is followed.
    refresh: Option<(crate::keys::Keyring, FleetSpec)>,
    /// Tenant id → its key, as resolved from the spec.
    keys: Vec<(String, ApiKey)>,
    /// Tenant id → when it may be asked again after a 429/5xx, and how often it failed.
    backoff: HashMap<String, (Instant, u32)>,
}

impl Poller {
    /// The tenants of `spec` with their keys (a provisioned tenant's comes from
    /// the keyring, `keys::Keyring::prepare`; one without a key yet is skipped).
    pub fn from_spec(spec: &FleetSpec) -> Self {
        Poller {
            client: Client::from_env(),
            refresh: None,
            keys: keys_of(spec),
            backoff: HashMap::new(),
        }
    }

    /// Keys of provisioned tenants follow the keyring.
    pub fn with_keyring(mut self, keyring: crate::keys::Keyring, spec: FleetSpec) -> Self {
        self.refresh = Some((keyring, spec));
        self
    }

    /// Asks about every key once (skipping those backing off); how many snapshots
    /// were stored.
    pub async fn poll_all(&mut self, store: &Store) -> usize {
        let mut stored = 0;
        if let Some((keyring, spec)) = &self.refresh {
            let mut spec = spec.clone();
            match keyring.prepare(&mut spec, true).await {
                Ok(_) => self.keys = keys_of(&spec),
                Err(e) => tracing::warn!(error = %e, "keys not read again; polling the ones known"),
            }
        }
        let keys = self.keys.clone();
        for (tenant, key) in keys {
            if self
                .backoff
                .get(&tenant)
                .is_some_and(|(until, _)| Instant::now() < *until)
            {
                continue;
            }
            match self.client.key_usage(&key).await {
                Ok(u) => {
                    self.backoff.remove(&tenant);
                    match store
                        .add_snapshot(
                            &tenant,
                            &key.fingerprint(),
                            u.usage,
                            u.usage_daily,
                            u.usage_monthly,
                            u.limit,
                            u.limit_remaining,
                        )
                        .await
                    {
                        Ok(()) => stored += 1,
                        Err(e) => {
                            tracing::warn!(tenant = tenant.as_str(), error = %e, "storing an OpenRouter snapshot failed")
                        }
                    }
                }
                Err(e) => {
                    let failures = self.backoff.get(&tenant).map_or(0, |(_, n)| *n) + 1;
                    let wait = if e.transient() {
                        Duration::from_secs((5u64 << failures.min(8)).min(1800))
                    } else {
                        Duration::from_secs(1800)
                    };
                    self.backoff
                        .insert(tenant.clone(), (Instant::now() + wait, failures));
                    // The key is named by its mask only. Each failure is followed by
                    // a back-off of its own, so these are already rate-limited.
                    tracing::warn!(
                        tenant = tenant.as_str(),
                        key = key.masked().as_str(),
                        error = %e,
                        retry_in_s = wait.as_secs(),
                        "OpenRouter key not polled"
                    );
                }
            }
        }
        stored
    }

    /// Polls every `interval` (± 10 % jitter, so that several controllers or a
    /// restart do not ask in step) for as long as the server runs.
    pub async fn run(
        mut self,
        store: Store,
        interval: Duration,
        ctx: crate::supervisor::JobContext,
    ) -> Result<(), crate::supervisor::JobError> {
        loop {
            let n = self.poll_all(&store).await;
            if n > 0 {
                let _ = store.prune_snapshots().await;
            }
            ctx.beat();
            let jitter = interval.as_millis() as u64 / 10;
            let offset = if jitter == 0 {
                0
            } else {
                u64::from(rand_u32()) % (2 * jitter)
            };
            let wait = interval.as_millis() as u64 - jitter + offset;
            if !ctx.sleep(Duration::from_millis(wait.max(100))).await {
                return Ok(());
            }
        }
    }
}

/// Each tenant's key, for those that have one (not yet provisioned: none).
fn keys_of(spec: &FleetSpec) -> Vec<(String, ApiKey)> {
    spec.tenants
        .iter()
        .filter_map(|t| {
            t.api_key
                .as_ref()
                .filter(|k| !k.is_pending())
                .map(|k| (t.id.clone(), k.clone()))
        })
        .collect()
}

fn rand_u32() -> u32 {
    crate::crypto::random_bytes::<4>()
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

/// `MAI_FLEET_OPENROUTER_POLL_INTERVAL`, default 10 minutes.
pub fn poll_interval_from_env() -> Result<Duration, Invalid> {
    match crate::env::text("MAI_FLEET_OPENROUTER_POLL_INTERVAL") {
        Some(v) => Ok(crate::duration::parse(&v)
            .map_err(|e| format!("MAI_FLEET_OPENROUTER_POLL_INTERVAL: {e}"))?),
        _ => Ok(Duration::from_secs(600)),
    }
}
