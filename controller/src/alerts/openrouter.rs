//! OpenRouter as ground truth: `GET /key` with each tenant's own key, on a
//! schedule (jittered; 429/5xx back off), kept as snapshots next to what the fleet
//! recorded. Keys are read from the spec at start and never logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::spec::{ApiKey, FleetSpec};
use crate::store::Store;

pub const DEFAULT_BASE_URL: &str = "https://openrouter.ai/api/v1";

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("OpenRouter cannot be reached: {0}")]
    Unreachable(String),
    #[error("OpenRouter answered {0}")]
    Status(u16),
    #[error("OpenRouter's answer is not a key: {0}")]
    Malformed(String),
}

impl PollError {
    /// 429 and 5xx pass; a 401 will not fix itself by asking again soon.
    pub fn transient(&self) -> bool {
        match self {
            PollError::Status(s) => *s == 429 || *s >= 500,
            PollError::Unreachable(_) => true,
            PollError::Malformed(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct KeyAnswer {
    data: KeyData,
}

#[derive(Deserialize)]
struct KeyData {
    usage: serde_json::Number,
    usage_daily: Option<serde_json::Number>,
    usage_monthly: Option<serde_json::Number>,
    limit: Option<serde_json::Number>,
    limit_remaining: Option<serde_json::Number>,
}

/// A JSON number as OpenRouter wrote it, as a decimal (no float arithmetic).
fn dec(n: &serde_json::Number) -> Option<Decimal> {
    n.to_string().parse::<Decimal>().ok().map(|d| d.round_dp(6))
}

#[derive(Debug, Clone)]
pub struct KeyUsage {
    pub usage: Decimal,
    pub usage_daily: Option<Decimal>,
    pub usage_monthly: Option<Decimal>,
    pub limit: Option<Decimal>,
    pub limit_remaining: Option<Decimal>,
}

pub struct Poller {
    base_url: String,
    http: reqwest::Client,
    /// Tenant id → its key, as resolved from the spec.
    keys: Vec<(String, ApiKey)>,
    /// Tenant id → when it may be asked again after a 429/5xx, and how often it failed.
    backoff: HashMap<String, (Instant, u32)>,
}

impl Poller {
    pub fn from_spec(spec: &FleetSpec) -> Self {
        let base_url = std::env::var("MAI_FLEET_OPENROUTER_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Poller {
            base_url: base_url.trim_end_matches('/').to_string(),
            http: crate::http::client(),
            keys: spec
                .tenants
                .iter()
                .map(|t| (t.id.clone(), t.api_key.clone()))
                .collect(),
            backoff: HashMap::new(),
        }
    }

    pub async fn key_usage(&self, key: &ApiKey) -> Result<KeyUsage, PollError> {
        let res = self
            .http
            .get(format!("{}/key", self.base_url))
            .bearer_auth(key.expose())
            .send()
            .await
            .map_err(|e| {
                PollError::Unreachable(if e.is_timeout() {
                    "timed out".into()
                } else {
                    "connection failed".into()
                })
            })?;
        let status = res.status().as_u16();
        if status != 200 {
            return Err(PollError::Status(status));
        }
        let body = res
            .bytes()
            .await
            .map_err(|_| PollError::Unreachable("answer cut off".into()))?;
        let a: KeyAnswer =
            serde_json::from_slice(&body).map_err(|e| PollError::Malformed(e.to_string()))?;
        Ok(KeyUsage {
            usage: dec(&a.data.usage).ok_or_else(|| PollError::Malformed("usage".into()))?,
            usage_daily: a.data.usage_daily.as_ref().and_then(dec),
            usage_monthly: a.data.usage_monthly.as_ref().and_then(dec),
            limit: a.data.limit.as_ref().and_then(dec),
            limit_remaining: a.data.limit_remaining.as_ref().and_then(dec),
        })
    }

    /// Asks about every key once (skipping those backing off); how many snapshots
    /// were stored.
    pub async fn poll_all(&mut self, store: &Store) -> usize {
        let mut stored = 0;
        let keys = self.keys.clone();
        for (tenant, key) in keys {
            if self
                .backoff
                .get(&tenant)
                .is_some_and(|(until, _)| Instant::now() < *until)
            {
                continue;
            }
            match self.key_usage(&key).await {
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
    ) -> Result<(), String> {
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

fn rand_u32() -> u32 {
    crate::crypto::random_bytes::<4>()
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

/// `MAI_FLEET_OPENROUTER_POLL_INTERVAL`, default 10 minutes.
pub fn poll_interval_from_env() -> Result<Duration, String> {
    match std::env::var("MAI_FLEET_OPENROUTER_POLL_INTERVAL") {
        Ok(v) if !v.trim().is_empty() => crate::duration::parse(&v)
            .map_err(|e| format!("MAI_FLEET_OPENROUTER_POLL_INTERVAL: {e}")),
        _ => Ok(Duration::from_secs(600)),
    }
}
