//! The seam between the use cases and the backends. A [`Host`] is one host of the
//! spec, connected: it observes its tenants (in the plan's terms), executes a host's
//! planned actions with verification and rollback, keeps the host's agent, and serves
//! the day-2 verbs. `apply`, `ops` and `keys` hold a `Host` and never a backend's own
//! types; only this module names [`crate::docker`] (CI checks it: `docs/architecture.md`).
//!
//! The Kubernetes backend ([`crate::kubernetes`]) is the second variant, matched here
//! and nowhere else.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::docker::{self, DockerError, Engine, LaunchError};
use crate::execution::{
    ExecuteOptions, LogsRequest, Outcome, Output, Progress, Unverified, VerifyOptions,
};
use crate::kubernetes::{self, Cluster, KubeError};
use crate::plan::agent::DesiredAgent;
use crate::plan::{Action, Observed, Workload};
use crate::spec::HostSpec;

/// A backend's failure, with its causes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    DockerLaunch(#[from] LaunchError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

impl BackendError {
    /// The host could not be reached (connection refused, timed out, host key
    /// refused): its tenants are reported `unreachable` and the other hosts go on.
    pub fn is_unreachable(&self) -> bool {
        let docker = match self {
            BackendError::Docker(e) | BackendError::DockerLaunch(LaunchError::Engine(e)) => e,
            BackendError::DockerLaunch(_) => return false,
            BackendError::Kube(e) => return e.is_unreachable(),
        };
        matches!(
            docker,
            DockerError::Unreachable { .. }
                | DockerError::Connect { .. }
                | DockerError::HostKey { .. }
        )
    }
}

/// How much of each workload a plan looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Observe {
    /// Labels and what each workload runs (drift is an update).
    #[default]
    Full,
    /// Labels only: one API call a host, blind to workloads changed by hand.
    LabelsOnly,
}

/// What one observation of a host saw.
pub struct Observation {
    /// Every managed workload on the host's backend (all hosts' and fleets').
    pub managed: Vec<Observed>,
    /// The agents found there.
    pub agents: Vec<Observed>,
    /// Names of everything else (to detect name clashes).
    pub others: Vec<String>,
}

/// What `apply` would send to `host`'s backend for `spec`, secrets redacted: the
/// Kubernetes objects of a Kubernetes host; nothing for a Docker host (its containers
/// are shown by `plan`).
pub fn render(spec: &crate::spec::FleetSpec, host: &HostSpec) -> Vec<serde_json::Value> {
    let tenants: Vec<_> = spec
        .tenants
        .iter()
        .filter(|t| t.host == host.name)
        .collect();
    kubernetes::render(&spec.fleet, host, &tenants)
}

/// One host of the spec, connected to its backend.
#[derive(Clone)]
pub enum Host {
    Docker(Engine),
    Kubernetes(Cluster),
}

impl Host {
    /// Connects within the backend's timeout; an unreachable host is an error for
    /// which [`BackendError::is_unreachable`] holds.
    pub async fn connect(spec: &HostSpec) -> Result<Self, BackendError> {
        match &spec.kubernetes {
            Some(k) => Ok(Host::Kubernetes(Cluster::connect(spec, k).await?)),
            None => Ok(Host::Docker(Engine::connect(spec).await?)),
        }
    }

    pub fn spec(&self) -> &HostSpec {
        match self {
            Host::Docker(e) => &e.host,
            Host::Kubernetes(c) => &c.host,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec().name
    }

    /// What a tenant runs as on this host, for people: `container`, `StatefulSet`.
    pub fn workload_noun(&self) -> &'static str {
        match self {
            Host::Docker(_) => "container",
            Host::Kubernetes(_) => "StatefulSet",
        }
    }

    /// Whether the host's `data_root` is on this machine, so the controller reaches
    /// tenants' data directories itself (else through the backend).
    pub fn is_local(&self) -> bool {
        match self {
            Host::Docker(e) => e.local,
            // The node's disk is the node's, wherever it is.
            Host::Kubernetes(_) => false,
        }
    }

    /// The host's workloads, with what each runs when `depth` is [`Observe::Full`].
    pub async fn observe(&self, depth: Observe) -> Result<Observation, BackendError> {
        match self {
            Host::Docker(e) => {
                let docker::Observation {
                    mut managed,
                    agents,
                    others,
                } = e.observe().await?;
                if depth == Observe::Full {
                    e.inspect_runtimes(&mut managed, &e.host.name).await?;
                }
                Ok(Observation {
                    managed,
                    agents,
                    others,
                })
            }
            Host::Kubernetes(c) => {
                let found = c.observe(depth == Observe::Full).await?;
                Ok(Observation {
                    managed: found.managed,
                    agents: found.agents,
                    others: found.others,
                })
            }
        }
    }

    /// Launch verification goes through `agent` (this host's agent, running), or
    /// straight to the tenant when `None`.
    pub fn verify_through(&mut self, agent: Option<String>) {
        match self {
            Host::Docker(e) => e.probe_via = agent,
            // Verified through the API's pod proxy.
            Host::Kubernetes(_) => {}
        }
    }

    /// Verification through this fleet's agent of the host when `agents` (as
    /// observed) has one running.
    pub fn use_running_agent(&mut self, fleet: &str, agents: &[Observed]) {
        match self {
            Host::Docker(e) => e.use_running_agent(fleet, agents),
            Host::Kubernetes(_) => {}
        }
    }

    /// Executes a host's actions: tenants in parallel up to `opts.parallel`, each
    /// launch verified, a failed update rolled back, the fleet-wide failure budget.
    pub async fn execute(
        &self,
        actions: Vec<Action>,
        opts: &ExecuteOptions,
        failures: &AtomicUsize,
        progress: &Progress,
    ) -> Vec<Outcome> {
        match self {
            Host::Docker(e) => docker::execute(e, actions, opts, failures, progress).await,
            Host::Kubernetes(c) => kubernetes::execute(c, actions, opts, failures, progress).await,
        }
    }

    /// Verifies a running workload as a launch is verified: `Ok` says how, `Err` why
    /// not with its last log lines (masked for `desired`'s secrets).
    pub async fn verify(
        &self,
        id: &str,
        desired: &Workload,
        opts: &VerifyOptions,
    ) -> Result<String, Unverified> {
        match self {
            Host::Docker(e) => docker::verify(e, id, Some(desired.port), opts, Some(desired)).await,
            Host::Kubernetes(c) => kubernetes::verify(c, id, opts, Some(desired)).await,
        }
    }

    // The day-2 verbs on one workload.

    pub fn output(
        &self,
        id: &str,
        req: &LogsRequest,
    ) -> impl Stream<Item = Result<Output, BackendError>> + use<> {
        use futures_util::StreamExt;
        match self {
            Host::Docker(e) => e
                .output(id, req)
                .map(|r| r.map_err(BackendError::from))
                .left_stream(),
            Host::Kubernetes(c) => kubernetes::output(c, id, req)
                .map(|r| r.map_err(BackendError::from))
                .right_stream(),
        }
    }

    pub async fn restart(&self, id: &str, stop_timeout_s: i32) -> Result<(), BackendError> {
        match self {
            Host::Docker(e) => Ok(e.restart(id, stop_timeout_s).await?),
            // The StatefulSet makes its pod anew.
            Host::Kubernetes(c) => Ok(kubernetes::delete_pod(c, id).await?),
        }
    }

    pub async fn stop(&self, id: &str, stop_timeout_s: i32) -> Result<(), BackendError> {
        match self {
            Host::Docker(e) => Ok(e.stop(id, stop_timeout_s).await?),
            Host::Kubernetes(c) => {
                let within = Duration::from_secs(stop_timeout_s.max(0) as u64 + 60);
                Ok(kubernetes::stop(c, id, within).await?)
            }
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), BackendError> {
        match self {
            Host::Docker(e) => Ok(e.start(id).await?),
            Host::Kubernetes(c) => Ok(kubernetes::scale(c, id, 1).await?),
        }
    }

    pub async fn pause(&self, id: &str) -> Result<(), BackendError> {
        match self {
            Host::Docker(e) => Ok(e.pause(id).await?),
            Host::Kubernetes(c) => Err(c.no_pause().into()),
        }
    }

    pub async fn unpause(&self, id: &str) -> Result<(), BackendError> {
        match self {
            Host::Docker(e) => Ok(e.unpause(id).await?),
            Host::Kubernetes(c) => Err(c.no_pause().into()),
        }
    }

    /// Runs `command` in the workload; its output goes to `out` (stderr flagged).
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        out: &mut (dyn FnMut(bool, &str) + Send),
    ) -> Result<i64, BackendError> {
        match self {
            Host::Docker(e) => Ok(e.exec(id, command, out).await?),
            Host::Kubernetes(c) => Ok(c.exec(id, command, out).await?),
        }
    }

    /// Whether [`Host::copy_out`] of a running workload needs it paused to be a
    /// consistent copy. Docker's archive API reads files as they are; on Kubernetes
    /// the store comes as SQLite's online backup made on the node (a pod cannot be
    /// paused).
    pub fn copy_needs_pause(&self) -> bool {
        matches!(self, Host::Docker(_))
    }

    /// `path` in the workload as a tar stream (entries named from its last
    /// component), stopped past `limits` on the host where the host can.
    pub fn copy_out(
        &self,
        id: &str,
        path: &str,
        limits: &crate::spec::BackupLimits,
    ) -> impl Stream<Item = Result<Bytes, BackendError>> + use<> {
        use futures_util::StreamExt;
        match self {
            Host::Docker(e) => e
                .copy_out(id, path)
                .map(|r| r.map_err(BackendError::from))
                .left_stream(),
            Host::Kubernetes(c) => {
                // The node's agent archives the tenant's data directory, which is
                // what a Docker host's DATA_MOUNT is.
                kubernetes::copy_out(c, id, *limits)
                    .map(|r| r.map_err(BackendError::from))
                    .right_stream()
            }
        }
    }

    /// A tar stream unpacked at `path` in the workload, streamed from `file`: on
    /// Kubernetes `path` is the data directory or its parent (entries `data/…`).
    pub async fn copy_in(
        &self,
        id: &str,
        path: &str,
        file: tokio::fs::File,
        limits: &crate::spec::BackupLimits,
    ) -> Result<(), BackendError> {
        match self {
            Host::Docker(e) => Ok(e.copy_in(id, path, file).await?),
            Host::Kubernetes(c) => Ok(kubernetes::copy_in(c, id, path, file, *limits).await?),
        }
    }

    /// The workload's last log lines as a suffix for a failure's detail (masked).
    pub async fn last_logs(&self, id: &str, desired: Option<&Workload>) -> String {
        match self {
            Host::Docker(e) => docker::last_logs(e, id, desired).await,
            Host::Kubernetes(c) => kubernetes::last_logs(c, id, desired).await,
        }
    }

    // The host's agent.

    /// The agent's image on the host and no agent left: the old one goes before the
    /// new one is made (its password is being rotated).
    pub async fn prepare_agent(
        &self,
        desired: &DesiredAgent,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<(), BackendError> {
        match self {
            Host::Docker(e) => Ok(docker::agent::prepare(e, desired, say).await?),
            Host::Kubernetes(c) => Ok(kubernetes::agent::prepare(c, desired).await?),
        }
    }

    /// Makes the agent with this database URL, starts it and watches it for `settle`.
    pub async fn deploy_agent(
        &self,
        desired: &DesiredAgent,
        database_url: &str,
        settle: Duration,
    ) -> Result<String, BackendError> {
        match self {
            Host::Docker(e) => Ok(docker::agent::deploy(e, desired, database_url, settle).await?),
            Host::Kubernetes(c) => {
                Ok(kubernetes::agent::deploy(c, desired, database_url, settle).await?)
            }
        }
    }

    pub async fn start_agent(&self, name: &str, settle: Duration) -> Result<String, BackendError> {
        match self {
            Host::Docker(e) => Ok(docker::agent::start(e, name, settle).await?),
            Host::Kubernetes(c) => {
                Ok(kubernetes::agent::start(c, name, &c.host.name, settle).await?)
            }
        }
    }

    pub async fn remove_agent(&self, name: &str) -> Result<String, BackendError> {
        match self {
            Host::Docker(e) => Ok(docker::agent::remove_agent(e, name).await?),
            Host::Kubernetes(c) => Ok(kubernetes::agent::remove(c, name).await?),
        }
    }

    /// The agent's last warnings (why it cannot ship), as a suffix for a failure.
    pub async fn agent_warnings(&self, name: &str) -> String {
        match self {
            Host::Docker(e) => docker::agent::last_warnings(e, name).await,
            Host::Kubernetes(c) => kubernetes::agent::last_warnings(c, &c.host.name).await,
        }
    }
}
