//! One evaluation cycle, and the schedule that repeats it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use super::config::{AlertsConfig, Evaluation};
use super::lifecycle::{reconcile, State};
use super::{notify, rules};
use crate::rates::RateTable;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub duration: Duration,
    pub queries: i32,
    pub candidates: usize,
    pub transitions: usize,
    pub notifications: usize,
    pub silenced: usize,
}

/// Rules → candidates → transitions → queued notifications, in a fixed number of
/// queries whatever the fleet's size.
pub async fn run_cycle(
    store: &Store,
    config: &AlertsConfig,
    table: RateTable,
) -> Result<CycleReport, StoreError> {
    let started = Instant::now();
    let (candidates, rule_queries) = rules::find(store, config, table).await?;
    let open: Vec<_> = store
        .open_alerts()
        .await?
        .iter()
        .filter_map(|r| r.to_alert())
        .collect();
    let silences = store.active_silences().await?;
    let step = reconcile(&open, &candidates, &silences, Utc::now(), config);
    let mut queued: Vec<(String, String, &'static str, Value)> = Vec::new();
    for (alert, status) in &step.notify {
        for r in &config.receivers {
            queued.push((
                alert.fingerprint.clone(),
                r.name.clone(),
                if *status == State::Firing {
                    "firing"
                } else {
                    "resolved"
                },
                notify::payload(r, alert, *status, config),
            ));
        }
    }
    store.write_step(&step, &queued).await?;
    let duration = started.elapsed();
    let queries = rule_queries + 4;
    store
        .record_evaluation(
            duration.as_millis() as i64,
            queries,
            candidates.len() as i32,
            step.transitions.len() as i32,
        )
        .await?;
    Ok(CycleReport {
        duration,
        queries: queries + 1,
        candidates: candidates.len(),
        transitions: step.transitions.len(),
        notifications: queued.len(),
        silenced: step.silenced,
    })
}

/// Why a one-off round could not run.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("OpenRouter account settings: {0}")]
    Account(#[source] mai_fleet_core::Invalid),
}

/// What a one-off round did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// Key snapshots taken from OpenRouter (with a spec).
    pub polled: usize,
    pub cycle: CycleReport,
    /// Notifications delivered.
    pub sent: usize,
    /// The account's round failed (credit, ledger); the alerts were evaluated anyway.
    pub account_error: Option<crate::keys::AccountRoundError>,
}

/// One round as `serve`'s jobs take it, once (`controller alerts evaluate`): with the
/// spec, each key's snapshot from OpenRouter and, with the management key, the
/// account's round (credit, daily ledger); then the rules; then every receiver's due
/// deliveries, one receiver after another.
pub async fn round(
    store: &Store,
    config: &AlertsConfig,
    table: RateTable,
    spec: Option<crate::spec::FleetSpec>,
) -> Result<RoundReport, RoundError> {
    let mut report = RoundReport::default();
    if let Some(mut spec) = spec {
        let keyring = crate::keys::Keyring::from_env(store, &spec.fleet)?;
        keyring.prepare(&mut spec, true).await?;
        report.polled = super::openrouter::Poller::from_spec(&spec)
            .poll_all(store)
            .await;
        if keyring.has_management_key() {
            let job = crate::keys::AccountJob::from_env(None).map_err(RoundError::Account)?;
            let job = crate::keys::AccountJob {
                activity_every: Duration::ZERO,
                ..job
            };
            if let Err(e) = keyring.account_round(&job).await {
                report.account_error = Some(e);
            }
        }
    }
    report.cycle = run_cycle(store, config, table).await?;
    let http = crate::http::client();
    for r in &config.receivers {
        report.sent += notify::deliver_due(store, config, r, &http).await?;
    }
    Ok(report)
}

/// Evaluates on the configured schedule for as long as the server runs.
pub async fn run_schedule(
    store: Store,
    config: Arc<AlertsConfig>,
    table: RateTable,
    ctx: crate::supervisor::JobContext,
) -> Result<(), crate::supervisor::JobError> {
    let failures = mai_fleet_core::log::Repeats::new(Duration::from_secs(300));
    loop {
        match run_cycle(&store, &config, table).await {
            Ok(r) => {
                failures.clear("evaluation");
                let level_info = r.transitions > 0 || r.notifications > 0;
                if level_info {
                    tracing::info!(
                        elapsed_ms = r.duration.as_millis() as u64,
                        queries = r.queries,
                        findings = r.candidates,
                        changes = r.transitions,
                        queued = r.notifications,
                        "alert evaluation"
                    );
                } else {
                    tracing::debug!(
                        elapsed_ms = r.duration.as_millis() as u64,
                        findings = r.candidates,
                        "alert evaluation"
                    );
                }
            }
            Err(e) => {
                if let Some(held_back) = failures.check("evaluation") {
                    tracing::warn!(held_back, error = %e, "alert evaluation failed");
                }
            }
        }
        ctx.beat();
        let wait = match &config.evaluation {
            Evaluation::Every(d) => *d,
            Evaluation::Cron(s) => {
                crate::schedule::until_next(s, Utc).unwrap_or(Duration::from_secs(60))
            }
        };
        if !ctx.sleep(wait).await {
            return Ok(());
        }
    }
}
