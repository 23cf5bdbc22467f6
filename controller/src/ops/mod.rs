//! Day-2 operations on one tenant: its logs, a verified restart, a recorded exec, a
//! rollback to a revision an earlier apply launched, and backups of its data
//! (`backup`). The spec file names the tenant's host and engine; the fleet database
//! records who did what.

pub mod backup;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;

use futures_util::{Stream, StreamExt};

use crate::backend::{BackendError, Host, Observe};
use crate::execution::{ExecuteOptions, Outcome, Progress, Status, Unverified, VerifyOptions};
use crate::plan::{changes, Action, Observed, Workload};
use crate::plan::{desired, DesiredTenant};
use crate::spec::{FleetSpec, TenantSpec};
use crate::store::model::{OperationKind, OperationStatus};
use crate::store::operations::Revision;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("tenant `{0}` is not in the spec")]
    UnknownTenant(String),
    #[error(
        "tenant {tenant} has no container {name} on host {host}; `controller apply` creates it"
    )]
    NoContainer {
        tenant: String,
        name: String,
        host: String,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Desired(#[from] crate::plan::DesiredError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Revision(#[from] RevisionError),
    #[error("backup: {0}")]
    Backup(#[from] backup::BackupError),
}

/// A tenant of the spec, its host and its workload as found there.
pub struct Located {
    pub host: Host,
    pub tenant: DesiredTenant,
    pub container: Observed,
}

/// Connects to the tenant's engine and finds its container (`mai-<id>` with this
/// fleet's and host's labels), with what it runs.
pub async fn locate(spec: &FleetSpec, tenant: &str) -> Result<Located, OpsError> {
    let wanted = desired(spec)?
        .into_iter()
        .find(|d| d.spec.id == tenant)
        .ok_or_else(|| OpsError::UnknownTenant(tenant.to_string()))?;
    let host = spec
        .hosts
        .iter()
        .find(|h| h.name == wanted.spec.host)
        .ok_or_else(|| OpsError::UnknownTenant(tenant.to_string()))?;
    let mut connected = Host::connect(host).await?;
    let observation = connected.observe(Observe::Full).await?;
    // Rollouts of day 2 (rollback, restore, key rotation) verify as apply does.
    connected.use_running_agent(&spec.fleet, &observation.agents);
    let observed = observation.managed;
    let name = wanted.container.name.clone();
    let container = observed
        .into_iter()
        .find(|o| {
            o.name == name
                && o.host() == host.name
                && o.fleet() == spec.fleet
                && o.tenant() == tenant
        })
        .ok_or_else(|| OpsError::NoContainer {
            tenant: tenant.to_string(),
            name,
            host: host.name.clone(),
        })?;
    Ok(Located {
        host: connected,
        tenant: wanted,
        container,
    })
}

pub use crate::quote::Masker;

pub use crate::execution::LogsRequest as LogsOptions;

/// The container's output, whole lines, masked. A line split across the engine's
/// frames is joined first, so a secret cannot escape the mask by being cut in two.
pub fn logs<'a>(
    at: &'a Located,
    opts: &LogsOptions,
) -> impl Stream<Item = Result<String, OpsError>> + 'a {
    let masker = Masker::new(Some(&at.tenant.container));
    let raw = at.host.output(&at.container.id, opts);
    let mut pending = String::new();
    raw.map(Some)
        .chain(futures_util::stream::iter([None]))
        .flat_map(move |item| {
            let lines: Vec<Result<String, OpsError>> = match item {
                Some(Ok(chunk)) => {
                    pending.push_str(&chunk.text);
                    let mut out = Vec::new();
                    while let Some(end) = pending.find('\n') {
                        let line: String = pending.drain(..=end).collect();
                        out.push(Ok(masker.mask(&line)));
                    }
                    out
                }
                Some(Err(e)) => vec![Err(OpsError::Backend(e))],
                None if pending.is_empty() => Vec::new(),
                None => vec![Ok(masker.mask(&std::mem::take(&mut pending)))],
            };
            futures_util::stream::iter(lines)
        })
}

/// Restarts the tenant's container and verifies it as a launch is verified.
pub async fn restart(
    at: &Located,
    verify: &VerifyOptions,
    stop_timeout_s: i32,
) -> Result<Result<String, Unverified>, OpsError> {
    at.host.restart(&at.container.id, stop_timeout_s).await?;
    Ok(at
        .host
        .verify(&at.container.id, &at.tenant.container, verify)
        .await)
}

/// Runs `command` in the tenant's container, its output (masked) handed to `out`
/// as it comes (`true` for stderr); the command's exit code.
pub async fn exec(
    at: &Located,
    command: &[String],
    out: &mut (dyn FnMut(bool, &str) + Send),
) -> Result<i64, OpsError> {
    let masker = Masker::new(Some(&at.tenant.container));
    let mut masked = |is_err: bool, text: &str| out(is_err, &masker.mask(text));
    Ok(at.host.exec(&at.container.id, command, &mut masked).await?)
}

/// The restart use case: the tenant's container restarted, verified and recorded
/// (who, when, how it ended). `Ok(Err(why))`: restarted but not verified.
pub async fn restart_recorded(
    spec: &FleetSpec,
    store: &Store,
    tenant: &str,
    actor: &str,
    verify: &VerifyOptions,
    stop_timeout_s: i32,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Result<String, Unverified>, OpsError> {
    let at = locate(spec, tenant).await?;
    let op = store
        .begin_operation(
            tenant,
            at.host.name(),
            actor,
            OperationKind::Restart,
            None,
            None,
        )
        .await?;
    progress(&format!("{}/{tenant}: restarting", at.host.name()));
    let verified = restart(&at, verify, stop_timeout_s).await;
    let (status, detail) = match &verified {
        Ok(Ok(v)) => (OperationStatus::Ok, v.clone()),
        Ok(Err(e)) => (OperationStatus::Failed, e.0.clone()),
        Err(e) => (OperationStatus::Failed, e.to_string()),
    };
    store.finish_operation(op, status, None, &detail).await?;
    verified
}

/// The exec use case: `command` run in the tenant's container and recorded, the
/// command masked for the tenant's secrets (even typed on the command line) and its
/// exit code kept. The command's exit code.
pub async fn exec_recorded(
    spec: &FleetSpec,
    store: &Store,
    tenant: &str,
    actor: &str,
    command: &[String],
    out: &mut (dyn FnMut(bool, &str) + Send),
) -> Result<i64, OpsError> {
    let at = locate(spec, tenant).await?;
    let masker = Masker::new(Some(&at.tenant.container));
    let recorded: Vec<String> = command.iter().map(|a| masker.mask(a)).collect();
    let op = store
        .begin_operation(
            tenant,
            at.host.name(),
            actor,
            OperationKind::Exec,
            Some(&recorded),
            None,
        )
        .await?;
    match exec(&at, command, out).await {
        Ok(code) => {
            store
                .finish_operation(
                    op,
                    OperationStatus::of(code == 0),
                    Some(code as i32),
                    &format!("exit code {code}"),
                )
                .await?;
            Ok(code)
        }
        Err(e) => {
            store.fail_operation(op, &e.to_string()).await?;
            Err(e)
        }
    }
}

/// Why a rollback has no revision to put back.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("run #{run} did not launch this tenant successfully; {known}")]
    NotLaunched { run: i64, known: String },
    #[error("no earlier revision differs from what runs now; {known}")]
    NoEarlier { known: String },
    #[error("the revision has no image")]
    NoImage,
    #[error("its env: {0}")]
    Env(#[source] serde_json::Error),
    /// A secret of the revision's env that cannot be resolved now.
    #[error("{0}")]
    Secret(#[source] mai_fleet_core::Invalid),
}

/// The revision a rollback puts back: run `to` (which must have launched the
/// tenant successfully), or else the newest successful one that differs from what
/// runs now.
pub fn rollback_target(
    revisions: &[Revision],
    running_hash: &str,
    to: Option<i64>,
) -> Result<Revision, RevisionError> {
    let ok = |r: &&Revision| r.status == "ok";
    let found = match to {
        Some(run) => revisions.iter().filter(ok).find(|r| r.run_id == run),
        None => revisions
            .iter()
            .filter(ok)
            .find(|r| r.spec_hash != running_hash),
    };
    found.cloned().ok_or_else(|| {
        let runs: Vec<String> = revisions
            .iter()
            .filter(ok)
            .map(|r| format!("#{} ({})", r.run_id, r.image))
            .collect();
        let known = if runs.is_empty() {
            "no apply has launched it successfully yet".to_string()
        } else {
            format!("runs that launched it: {}", runs.join(", "))
        };
        match to {
            Some(run) => RevisionError::NotLaunched { run, known },
            None => RevisionError::NoEarlier { known },
        }
    })
}

/// The tenant as `revision` had it: image, environment and resources from the
/// revision (secrets resolved again now); identity, port and key from the spec file
/// (a key is never rolled back: an old one may be revoked).
pub fn tenant_at(
    spec: &FleetSpec,
    current: &TenantSpec,
    revision: &Revision,
) -> Result<TenantSpec, RevisionError> {
    let r = &revision.spec;
    let mut t = current.clone();
    t.image = r["image"]
        .as_str()
        .ok_or(RevisionError::NoImage)?
        .to_string();
    let recorded: BTreeMap<String, String> =
        serde_json::from_value(r["env"].clone()).map_err(RevisionError::Env)?;
    let (env, secrets) =
        crate::spec::resolve_recorded_env(&spec.file, &recorded).map_err(RevisionError::Secret)?;
    t.env = env;
    t.secret_env = secrets;
    t.memory_bytes = r["memory_bytes"].as_i64();
    t.cpus = r["cpus"].as_str().and_then(|c| c.parse().ok());
    t.pids_limit = r["pids_limit"].as_i64();
    Ok(t)
}

/// Launches `t` in place of the tenant's container, verified, rolled back to the
/// running container if verification fails (as an apply's update is).
pub async fn launch_revision(
    spec: &FleetSpec,
    at: &Located,
    t: &TenantSpec,
    opts: &ExecuteOptions,
    progress: &Progress,
) -> Outcome {
    let host = at.host.spec();
    let d = Workload::new(&spec.fleet, host, t);
    let found = at
        .container
        .runtime
        .as_ref()
        .map(|r| changes(&d, r))
        .unwrap_or_default();
    let action = Action::Update {
        desired: Box::new(d),
        tenant: t.id.clone(),
        previous: at.container.clone(),
        changes: found,
        drift: false,
    };
    let failures = AtomicUsize::new(0);
    let mut outcomes = at
        .host
        .execute(vec![action], opts, &failures, progress)
        .await;
    outcomes.pop().unwrap_or(Outcome {
        host: host.name.clone(),
        tenant: t.id.clone(),
        action: crate::plan::Verb::Update,
        status: Status::Failed,
        detail: "nothing was executed".into(),
        container: None,
        duration_ms: 0,
    })
}

/// Rolls `tenant` back to a revision and records it: the operation, and (when it
/// took) that the tenant now runs that revision, which `plan` then reports.
pub async fn rollback(
    spec: &FleetSpec,
    store: &Store,
    tenant: &str,
    to: Option<i64>,
    actor: &str,
    opts: &ExecuteOptions,
    progress: &Progress,
) -> Result<(Revision, Outcome), OpsError> {
    let at = locate(spec, tenant).await?;
    let revisions = store.revisions(tenant).await?;
    let target = rollback_target(&revisions, at.container.spec_hash(), to)?;
    let t = tenant_at(spec, &at.tenant.spec, &target)?;
    let op = store
        .begin_operation(
            tenant,
            at.host.name(),
            actor,
            crate::store::model::OperationKind::Rollback,
            None,
            Some(target.run_id),
        )
        .await?;
    let outcome = launch_revision(spec, &at, &t, opts, progress).await;
    store
        .finish_operation(op, outcome.status.into(), None, &outcome.detail)
        .await?;
    if outcome.status == Status::Ok {
        let mut running = target.clone();
        running.spec_hash = Workload::new(&spec.fleet, at.host.spec(), &t)
            .hash_label()
            .to_string();
        store.record_rollback(&running).await?;
    }
    Ok((target, outcome))
}
