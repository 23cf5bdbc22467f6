//! Plan and apply a whole fleet: every host observed and planned in parallel, then
//! executed in parallel, host by host independent.

use std::sync::atomic::AtomicUsize;

use futures_util::future::join_all;

use crate::docker::{self, DockerError, Engine, ExecuteOptions, Outcome, Progress};
use crate::plan::{self, Action, DesiredContainer, PlanError};
use crate::spec::FleetSpec;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

pub struct HostPlan {
    pub engine: Engine,
    pub actions: Vec<Action>,
}

pub struct FleetPlan {
    pub hosts: Vec<HostPlan>,
    /// One per tenant of the spec, in spec order.
    pub desired: Vec<DesiredContainer>,
}

impl FleetPlan {
    pub fn changes(&self) -> usize {
        self.hosts
            .iter()
            .flat_map(|h| &h.actions)
            .filter(|a| a.is_change())
            .count()
    }

    pub fn to_json(&self, fleet: &str) -> serde_json::Value {
        serde_json::json!({
            "fleet": fleet,
            "changes": self.changes(),
            "hosts": self.hosts.iter().map(|h| serde_json::json!({
                "host": h.engine.host.name,
                "actions": h.actions,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Connects to every host and plans it; any host that cannot be planned fails the
/// whole plan (all such errors are returned), so that nothing is half-applied.
pub async fn plan_fleet(spec: &FleetSpec, prune: bool) -> Result<FleetPlan, Vec<FleetError>> {
    let desired: Vec<DesiredContainer> = spec
        .tenants
        .iter()
        .filter_map(|t| {
            let host = spec.hosts.iter().find(|h| h.name == t.host)?;
            Some(DesiredContainer::new(&spec.fleet, host, t))
        })
        .collect();
    let planned = join_all(spec.hosts.iter().map(|host| {
        let desired = &desired;
        async move {
            let engine = Engine::connect(host).await?;
            let (observed, others) = engine.observe().await?;
            let mine: Vec<DesiredContainer> = spec
                .tenants
                .iter()
                .zip(desired)
                .filter(|(t, _)| t.host == host.name)
                .map(|(_, d)| d.clone())
                .collect();
            let actions = plan::plan_host(&spec.fleet, host, &mine, &observed, &others, prune)?;
            Ok::<_, FleetError>(HostPlan { engine, actions })
        }
    }))
    .await;
    let (mut hosts, mut errors) = (Vec::new(), Vec::new());
    for p in planned {
        match p {
            Ok(h) => hosts.push(h),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(FleetPlan { hosts, desired })
    } else {
        Err(errors)
    }
}

pub async fn apply_fleet(
    plan: &FleetPlan,
    opts: &ExecuteOptions,
    progress: &Progress,
) -> Vec<Outcome> {
    let failures = AtomicUsize::new(0);
    let per_host = join_all(
        plan.hosts
            .iter()
            .map(|h| docker::execute(&h.engine, h.actions.clone(), opts, &failures, progress)),
    )
    .await;
    per_host.into_iter().flatten().collect()
}
