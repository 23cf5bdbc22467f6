//! The apply use case: a fleet's hosts observed and planned in parallel, then
//! executed in parallel (hosts independent), recorded in the fleet database when one
//! is given. The CLI, tests and benchmarks call [`run`]; they only render.

use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

pub use crate::backend::Observe;
use crate::backend::{BackendError, Host, Observation};
use crate::execution::{ExecuteOptions, Outcome, Progress, Status};
use crate::keys::{KeyError, KeyEvent, Keyring};
use crate::plan::agent::{AgentAction, DesiredAgent};
use crate::plan::{self, Action, PlanError, Workload};
pub use crate::plan::{desired, DesiredTenant};
use crate::spec::{FleetSpec, TenantSpec};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Desired(#[from] plan::DesiredError),
}

pub struct HostPlan {
    pub host: Host,
    pub actions: Vec<Action>,
    /// The host's agent container, when `apply` keeps one (or removes the last one).
    pub agent: Option<(AgentAction, Option<DesiredAgent>)>,
}

/// A host whose engine could not be reached: its tenants are left as they are and
/// reported `unreachable`; the other hosts go on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnreachableHost {
    pub host: String,
    pub reason: String,
    /// Its tenants in the spec.
    pub tenants: Vec<String>,
}

pub struct FleetPlan {
    pub hosts: Vec<HostPlan>,
    pub unreachable: Vec<UnreachableHost>,
    /// One per tenant of the spec, in spec order.
    pub desired: Vec<DesiredTenant>,
}

impl FleetPlan {
    pub fn changes(&self) -> usize {
        let agents = self
            .hosts
            .iter()
            .filter(|h| h.agent.as_ref().is_some_and(|(a, _)| a.is_change()))
            .count();
        self.hosts
            .iter()
            .flat_map(|h| &h.actions)
            .filter(|a| a.is_change())
            .count()
            + agents
    }

    /// Hosts whose agent container is made or replaced (and so needs credentials).
    pub fn agents_to_deploy(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| {
                matches!(
                    h.agent,
                    Some((AgentAction::Create | AgentAction::Roll { .. }, _))
                )
            })
            .count()
    }

    pub fn to_json(&self, fleet: &str) -> serde_json::Value {
        serde_json::json!({
            "fleet": fleet,
            "changes": self.changes(),
            "hosts": self.hosts.iter().map(|h| serde_json::json!({
                "host": h.host.name(),
                "actions": h.actions,
                "agent": h.agent.as_ref().map(|(a, _)| a),
            })).collect::<Vec<_>>(),
            "unreachable": self.unreachable,
        })
    }
}

/// Connects to every host and plans it. A host whose engine cannot be reached is set
/// aside as unreachable; any other host that cannot be planned fails the whole plan
/// (all such errors are returned), as does a fleet where no host could be reached.
pub async fn plan_fleet(
    spec: &FleetSpec,
    prune: bool,
    observe: Observe,
) -> Result<FleetPlan, Vec<FleetError>> {
    let desired = desired(spec).map_err(|e| vec![FleetError::from(e)])?;
    let planned = join_all(spec.hosts.iter().map(|host| {
        let desired = &desired;
        async move {
            let connected = Host::connect(host).await?;
            let Observation {
                managed: observed,
                agents,
                others,
            } = connected.observe(observe).await?;
            let mine: Vec<Workload> = desired
                .iter()
                .filter(|d| d.spec.host == host.name)
                .map(|d| d.container.clone())
                .collect();
            let actions = plan::plan_host(&spec.fleet, host, &mine, &observed, &others, prune)?;
            let claims = plan::agent::claims_to_read(host, &actions);
            let desired_agent = DesiredAgent::new(&spec.fleet, host, claims);
            let agent =
                plan::agent::plan_agent(&spec.fleet, &host.name, desired_agent.as_ref(), &agents)
                    .map(|a| (a, desired_agent));
            Ok::<_, FleetError>(HostPlan {
                host: connected,
                actions,
                agent,
            })
        }
    }))
    .await;
    let (mut hosts, mut errors, mut unreachable) = (Vec::new(), Vec::new(), Vec::new());
    for (p, host) in planned.into_iter().zip(&spec.hosts) {
        match p {
            Ok(h) => hosts.push(h),
            Err(FleetError::Backend(e)) if e.is_unreachable() => unreachable.push((
                UnreachableHost {
                    host: host.name.clone(),
                    reason: crate::error_chain(&e),
                    tenants: desired
                        .iter()
                        .filter(|d| d.spec.host == host.name)
                        .map(|d| d.spec.id.clone())
                        .collect(),
                },
                e,
            )),
            Err(e) => errors.push(e),
        }
    }
    if hosts.is_empty() && !unreachable.is_empty() {
        errors.extend(unreachable.into_iter().map(|(_, e)| FleetError::Backend(e)));
        return Err(errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(FleetPlan {
        hosts,
        unreachable: unreachable.into_iter().map(|(u, _)| u).collect(),
        desired,
    })
}

/// Every host at once: its agent first when none runs yet (verification goes through
/// it), then its tenants, then an agent that changed is rolled.
pub async fn apply_fleet(
    plan: &FleetPlan,
    opts: &ExecuteOptions,
    progress: &Progress,
    store: Option<&Store>,
) -> (Vec<Outcome>, Vec<AgentOutcome>) {
    let failures = AtomicUsize::new(0);
    let per_host = join_all(
        plan.hosts
            .iter()
            .map(|h| apply_host(h, opts, &failures, progress, store)),
    )
    .await;
    let mut outcomes = Vec::new();
    let mut agents = Vec::new();
    for (o, a) in per_host {
        outcomes.extend(o);
        agents.extend(a);
    }
    (outcomes, agents)
}

/// What `apply` did to a host's agent container.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentOutcome {
    pub host: String,
    pub action: &'static str,
    pub ok: bool,
    pub detail: String,
}

async fn apply_host(
    h: &HostPlan,
    opts: &ExecuteOptions,
    failures: &AtomicUsize,
    progress: &Progress,
    store: Option<&Store>,
) -> (Vec<Outcome>, Option<AgentOutcome>) {
    let mut connected = h.host.clone();
    let host = connected.name().to_string();
    let mut agent_outcome = None;
    if let Some((action, desired)) = &h.agent {
        let mut agent_runs = action.serves_before_tenants();
        let first = match (action, desired) {
            (AgentAction::Create, Some(d)) => Some((
                "create",
                deploy_agent(&connected, d, opts, progress, store).await,
            )),
            (AgentAction::Start { container }, _) => Some((
                "start",
                connected
                    .start_agent(container, opts.verify.settle)
                    .await
                    .map_err(AgentError::from),
            )),
            _ => None,
        };
        if let Some((verb, result)) = first {
            agent_runs = result.is_ok();
            agent_outcome = Some(agent_result(&host, verb, result, progress));
        }
        if agent_runs {
            connected.verify_through(desired.as_ref().map(|d| d.name.clone()));
        }
    }
    let outcomes = connected
        .execute(h.actions.clone(), opts, failures, progress)
        .await;
    if let Some((action, desired)) = &h.agent {
        let after = match (action, desired) {
            (AgentAction::Roll { .. }, Some(d)) => Some((
                "roll",
                deploy_agent(&connected, d, opts, progress, store).await,
            )),
            (AgentAction::Remove { container }, _) => Some((
                "remove",
                connected
                    .remove_agent(container)
                    .await
                    .map_err(AgentError::from),
            )),
            _ => None,
        };
        if let Some((verb, result)) = after {
            agent_outcome = Some(agent_result(&host, verb, result, progress));
        }
    }
    (outcomes, agent_outcome)
}

fn agent_result(
    host: &str,
    action: &'static str,
    result: Result<String, AgentError>,
    progress: &Progress,
) -> AgentOutcome {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(e) => (false, crate::error_chain(&e)),
    };
    progress(
        host,
        "agent",
        &format!("{action}: {}", if ok { "ok" } else { "FAILED" }),
    );
    AgentOutcome {
        host: host.to_string(),
        action,
        ok,
        detail,
    }
}

/// Why a host's agent was not made, started or removed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agents need the fleet database (DATABASE_URL) for their credentials")]
    NoDatabase,
    #[error("credentials for host {host}: {source}")]
    Credentials {
        host: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{detail}, but no heartbeat reached the database within {seconds}s{logs}")]
    NoHeartbeat {
        detail: String,
        seconds: u64,
        logs: String,
    },
}

/// New credentials for the host, the container replaced, then its first heartbeat
/// awaited: an agent that cannot reach the database is a failed deployment.
async fn deploy_agent(
    connected: &Host,
    desired: &DesiredAgent,
    opts: &ExecuteOptions,
    progress: &Progress,
    store: Option<&Store>,
) -> Result<String, AgentError> {
    let host = desired.host.as_str();
    let store = store.ok_or(AgentError::NoDatabase)?;
    let say = |msg: &str| progress(host, "agent", msg);
    connected.prepare_agent(desired, &say).await?;
    // Only heartbeats after the old agent is gone count.
    let since = store.now().await?;
    let creds = store
        .agent_credentials(host)
        .await
        .map_err(|source| AgentError::Credentials {
            host: host.to_string(),
            source,
        })?;
    let url = desired.url_with(&creds.role, &creds.password);
    let started = Instant::now();
    let detail = connected
        .deploy_agent(desired, &url, opts.verify.settle)
        .await?;
    loop {
        if store.heartbeat_since(host, since).await.unwrap_or(false) {
            return Ok(format!(
                "{detail}; it reported within {:.1}s of its start",
                started.elapsed().as_secs_f64()
            ));
        }
        if started.elapsed() >= opts.verify.timeout {
            return Err(AgentError::NoHeartbeat {
                detail,
                seconds: opts.verify.timeout.as_secs(),
                logs: connected.agent_warnings(&desired.name).await,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How an apply runs.
pub struct ApplyOptions {
    /// Remove managed containers of the fleet that are not in the spec.
    pub prune: bool,
    /// Plan only.
    pub dry_run: bool,
    pub observe: Observe,
    pub execute: ExecuteOptions,
    /// Who applies, as recorded.
    pub actor: String,
}

/// Where an apply is recorded: the fleet database, and its URL for the session that
/// holds the fleet's apply lock.
pub struct Recorder<'a> {
    pub store: &'a Store,
    pub database_url: &'a str,
    /// The fleet's OpenRouter keys: provisioned under the apply lock, offboarded
    /// with `--prune`.
    pub keyring: &'a Keyring,
}

/// Told what happens as it happens: the plan once made (with the run's id when
/// recorded), then each step of each tenant.
pub struct Hooks<'a> {
    pub planned: &'a (dyn Fn(&FleetSpec, &FleetPlan, Option<i64>) + Sync),
    pub step: &'a Progress,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Some hosts could not be observed or planned; nothing was changed.
    #[error("{} host(s) could not be planned; nothing was changed", .0.len())]
    Plan(Vec<FleetError>),
    /// The apply could not be recorded before it began; nothing was changed.
    #[error("the apply cannot be recorded; nothing was changed: {0}")]
    Record(#[source] StoreError),
    /// A tenant's key could not be provisioned; no container was changed (keys
    /// made before the failure are recorded and used by the next apply).
    #[error("OpenRouter keys: {0}; no container was changed")]
    Keys(#[source] KeyError),
    #[error("{0} host(s) need an agent deployed, which needs the fleet database (DATABASE_URL or --database-url) to make their credentials")]
    AgentsNeedDatabase(usize),
    #[error("{} tenant(s) have `provision: true`, which needs the fleet database (DATABASE_URL or --database-url) to keep their keys", .0)]
    KeysNeedDatabase(usize),
    /// The containers were changed but the results could not be recorded.
    #[error("recording apply run #{run_id}: {source}")]
    Finish {
        run_id: i64,
        outcomes: Vec<Outcome>,
        #[source]
        source: StoreError,
    },
}

pub struct ApplyReport {
    pub plan: FleetPlan,
    /// Sorted by host, then tenant. Empty for a dry run.
    pub outcomes: Vec<Outcome>,
    pub run_id: Option<i64>,
    /// The run's recorded status (`ok`, `partial`, …).
    pub recorded: Option<&'static str>,
    pub elapsed: Duration,
    pub dry_run: bool,
    /// What happened to OpenRouter keys: created, limits changed, offboarded.
    pub key_events: Vec<KeyEvent>,
    /// What happened to hosts' agent containers.
    pub agents: Vec<AgentOutcome>,
}

impl ApplyReport {
    /// Whether every tenant and agent ended ok.
    pub fn all_ok(&self) -> bool {
        self.outcomes.iter().all(|o| o.status == Status::Ok) && self.agents.iter().all(|a| a.ok)
    }
}

/// The fleet's apply lock, in a migrated database: one apply at a time.
async fn lock(r: &Recorder<'_>, fleet: &str) -> Result<crate::store::ApplyLock, ApplyError> {
    r.store.migrate().await.map_err(ApplyError::Record)?;
    r.store
        .lock_fleet(r.database_url, fleet)
        .await
        .map_err(ApplyError::Record)
}

/// The run recorded before anything changes: who, the spec, the options, the plan.
async fn begin_run(
    r: &Recorder<'_>,
    spec: &FleetSpec,
    opts: &ApplyOptions,
    plan: &FleetPlan,
) -> Result<i64, ApplyError> {
    let e = &opts.execute;
    let options = serde_json::json!({
        "prune": opts.prune, "purge_data": e.purge_data, "parallel": e.parallel,
        "max_failures": e.max_failures, "settle_ms": e.verify.settle.as_millis() as u64,
        "verify_timeout_ms": e.verify.timeout.as_millis() as u64,
    });
    r.store
        .begin_run(
            spec,
            &opts.actor,
            &spec.source_sha256,
            options,
            plan.to_json(&spec.fleet),
        )
        .await
        .map_err(ApplyError::Record)
}

impl UnreachableHost {
    /// Each of its tenants, reported unreachable.
    fn outcomes(&self) -> impl Iterator<Item = Outcome> + '_ {
        self.tenants.iter().map(|t| Outcome {
            host: self.host.clone(),
            tenant: t.clone(),
            action: crate::plan::Verb::Observe,
            status: Status::Unreachable,
            detail: self.reason.clone(),
            container: None,
            duration_ms: 0,
        })
    }
}

/// lock → plan → record the plan → execute → record the results. With a recorder,
/// an apply that cannot be recorded does not start; the fleet's apply lock is held
/// throughout.
pub async fn run(
    spec: &FleetSpec,
    opts: &ApplyOptions,
    recorder: Option<&Recorder<'_>>,
    hooks: &Hooks<'_>,
) -> Result<ApplyReport, ApplyError> {
    let lock = match recorder {
        Some(r) => Some(lock(r, &spec.fleet).await?),
        None => None,
    };
    // Keys are made under the lock: two applies never both create one.
    let mut prepared = spec.clone();
    let mut key_events =
        Keyring::prepare_if_any(recorder.map(|r| r.keyring), &mut prepared, opts.dry_run)
            .await
            .map_err(|e| match e {
                KeyError::NeedDatabase(n) => ApplyError::KeysNeedDatabase(n),
                e => ApplyError::Keys(e),
            })?;
    let spec = &prepared;
    let plan = plan_fleet(spec, opts.prune, opts.observe)
        .await
        .map_err(ApplyError::Plan)?;
    if recorder.is_none() && !opts.dry_run && plan.agents_to_deploy() > 0 {
        return Err(ApplyError::AgentsNeedDatabase(plan.agents_to_deploy()));
    }
    if opts.dry_run {
        (hooks.planned)(spec, &plan, None);
        return Ok(ApplyReport {
            plan,
            outcomes: Vec::new(),
            run_id: None,
            recorded: None,
            elapsed: Duration::ZERO,
            dry_run: true,
            key_events,
            agents: Vec::new(),
        });
    }
    let run_id = match recorder {
        Some(r) => Some(begin_run(r, spec, opts, &plan).await?),
        None => None,
    };
    (hooks.planned)(spec, &plan, run_id);
    let started = Instant::now();
    let (mut outcomes, agents) =
        apply_fleet(&plan, &opts.execute, hooks.step, recorder.map(|r| r.store)).await;
    outcomes.extend(plan.unreachable.iter().flat_map(UnreachableHost::outcomes));
    outcomes.sort_by(|a, b| (&a.host, &a.tenant).cmp(&(&b.host, &b.tenant)));
    // A removed tenant may still run on a host that could not be seen: its key is
    // offboarded by the first apply that sees every host.
    if let (Some(r), true, true) = (recorder, opts.prune, plan.unreachable.is_empty()) {
        key_events.extend(r.keyring.offboard(spec, opts.execute.purge_data).await);
    }
    let recorded = match (recorder, run_id) {
        (Some(r), Some(id)) => {
            let pairs: Vec<(&TenantSpec, &Workload)> = plan
                .desired
                .iter()
                .map(|d| (&d.spec, &d.container))
                .collect();
            match r.store.finish_run(id, spec, &pairs, &outcomes).await {
                Ok(status) => Some(status),
                Err(source) => {
                    return Err(ApplyError::Finish {
                        run_id: id,
                        outcomes,
                        source,
                    })
                }
            }
        }
        _ => None,
    };
    drop(lock);
    Ok(ApplyReport {
        plan,
        outcomes,
        run_id,
        recorded,
        elapsed: started.elapsed(),
        dry_run: false,
        key_events,
        agents,
    })
}
