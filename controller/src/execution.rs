//! How a plan is carried out on a host, whichever backend carries it: the options of
//! an execution and of a launch's verification, progress, and the day-2 verbs' logs
//! request and output. The backends take these; the use cases pass them through
//! [`crate::backend`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use crate::plan::Action;

// Apply results are persisted: the store defines them.
pub use crate::store::model::{Outcome, Status};

/// Receives progress lines as they happen (host, tenant, message).
pub type Progress = dyn Fn(&str, &str, &str) + Send + Sync;

#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    pub parallel: usize,
    pub verify: VerifyOptions,
    pub stop_timeout_s: i32,
    pub purge_data: bool,
    /// Stop starting rollouts once this many tenants failed, fleet-wide.
    pub max_failures: Option<usize>,
    /// An update starts the new revision beside the running pod and switches once it
    /// serves, so no request goes unanswered (Kubernetes hosts; a key rotation). A
    /// Docker host replaces the container in place.
    pub surge: bool,
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// How long the container must run without restarting.
    pub settle: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    pub poll: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

/// How one action ended: its status, what to say, the workload it left (short id).
pub type Done = (Status, String, Option<String>);

/// A backend's way of carrying out one action of a tenant; `say` reports progress.
pub trait Launcher: Sync {
    fn run<'a>(&'a self, action: Action, say: &'a (dyn Fn(&str) + Sync)) -> BoxFuture<'a, Done>;
}

/// Carries out a host's actions, whichever backend: tenants in parallel up to
/// `opts.parallel`, each tenant's own actions in order, no change started once the
/// fleet-wide failure budget is spent.
pub async fn schedule(
    host: &str,
    actions: Vec<Action>,
    opts: &ExecuteOptions,
    failures: &AtomicUsize,
    progress: &Progress,
    launcher: &dyn Launcher,
) -> Vec<Outcome> {
    let mut by_tenant: Vec<(String, Vec<Action>)> = Vec::new();
    for a in actions {
        match by_tenant.iter_mut().find(|(t, _)| t == a.tenant()) {
            Some((_, list)) => list.push(a),
            None => by_tenant.push((a.tenant().to_string(), vec![a])),
        }
    }
    futures_util::stream::iter(by_tenant)
        .map(|(_, actions)| schedule_tenant(host, actions, opts, failures, progress, launcher))
        .buffer_unordered(opts.parallel.max(1))
        .flat_map(futures_util::stream::iter)
        .collect()
        .await
}

async fn schedule_tenant(
    host: &str,
    actions: Vec<Action>,
    opts: &ExecuteOptions,
    failures: &AtomicUsize,
    progress: &Progress,
    launcher: &dyn Launcher,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for action in actions {
        let started = Instant::now();
        let tenant = action.tenant().to_string();
        let verb = action.verb();
        let budget_spent = opts
            .max_failures
            .is_some_and(|max| failures.load(Ordering::SeqCst) >= max);
        let (status, detail, container) = if budget_spent && action.is_change() {
            (
                Status::Skipped,
                "failure budget spent (--max-failures); left as it was".to_string(),
                None,
            )
        } else {
            let say = |msg: &str| progress(host, &tenant, msg);
            launcher.run(action, &say).await
        };
        if matches!(status, Status::Failed | Status::RolledBack) {
            failures.fetch_add(1, Ordering::SeqCst);
        }
        progress(
            host,
            &tenant,
            &format!("{verb}: {} {detail}", status.word()),
        );
        outcomes.push(Outcome {
            host: host.to_string(),
            tenant,
            action: verb,
            status,
            detail,
            container,
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    outcomes
}

/// What a logs request asks for.
pub struct LogsRequest {
    pub follow: bool,
    /// Unix seconds.
    pub since: Option<i64>,
    pub tail: Option<String>,
}

/// A piece of a container's output, as the engine frames it.
pub struct Output {
    pub stderr: bool,
    pub text: String,
}

/// Why a launched workload was not verified, with its last log lines (masked): the
/// outcome's detail. `Ok` of a verification says how it was verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unverified(pub String);

impl From<String> for Unverified {
    fn from(why: String) -> Self {
        Unverified(why)
    }
}

/// The tenant contract's optional `GET /health/usage-tracking`, as read from an
/// answer whichever way a backend asked it (a published port, an agent, the
/// Kubernetes API's pod proxy).
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    /// `initialized: true`
    Active,
    /// `initialized: false`, with the app's status word.
    Inactive(String),
    /// The image does not serve the endpoint (404): the contract makes it optional.
    NoEndpoint,
}

pub use mai_fleet_core::probe::PATH as HEALTH_PATH;

/// An answer that says nothing about tracking (worth retrying until the deadline).
#[derive(Debug, thiserror::Error)]
pub enum HealthAnswerError {
    #[error("{HEALTH_PATH} answered HTTP {0}")]
    Status(u16),
    #[error("{HEALTH_PATH} is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("{HEALTH_PATH} has no boolean `initialized`")]
    NoFlag,
}

/// Reads an answer's status and body.
pub fn read_health(status: u16, body: &str) -> Result<Health, HealthAnswerError> {
    if status == 404 {
        return Ok(Health::NoEndpoint);
    }
    if status != 200 {
        return Err(HealthAnswerError::Status(status));
    }
    let json: serde_json::Value = serde_json::from_str(body).map_err(HealthAnswerError::NotJson)?;
    match json["initialized"].as_bool() {
        Some(true) => Ok(Health::Active),
        Some(false) => Ok(Health::Inactive(
            json["status"].as_str().unwrap_or("inactive").to_string(),
        )),
        None => Err(HealthAnswerError::NoFlag),
    }
}
