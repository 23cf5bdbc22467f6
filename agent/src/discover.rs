//! Source: the fleet's tenants on this host, found by their labels: the containers of
//! its Docker engine, or the pods of its Kubernetes node in the fleet's namespace.

use std::path::PathBuf;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use mai_fleet_core::contract::{claim_dir, labels, DATA_MOUNT, ORG_ENV, REQUIRED_ENV};

/// What the agent needs of one tenant container. Holds no secret: env values are
/// read only for `OPENROUTER_EXTERNAL_USER`, an id, never for the key.
#[derive(Debug, Clone)]
pub struct TenantContainer {
    pub tenant: String,
    pub container: String,
    pub state: String,
    pub restart_count: i64,
    pub started_at: Option<String>,
    pub spec_hash: String,
    /// Required variables absent or empty in the container's environment.
    pub env_missing: Vec<String>,
    pub org_id: Option<String>,
    /// The host path mounted at the app's data directory (bind or named volume).
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("docker: {what}: {source}")]
    Docker {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("kubernetes: list the pods of namespace {namespace}: {source}")]
    Kubernetes {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// Where this host's tenants run.
pub enum Source {
    Docker(Docker),
    /// The pods of `namespace` (on this node: the host label says which are ours).
    Kubernetes {
        client: kube::Client,
        namespace: String,
    },
}

impl Source {
    pub async fn tenants(&self, host: &str) -> Result<Vec<TenantContainer>, DiscoverError> {
        match self {
            Source::Docker(docker) => tenant_containers(docker, host).await,
            Source::Kubernetes { client, namespace } => tenant_pods(client, namespace, host).await,
        }
    }
}

/// The tenants' pods: what the pod spec says (env present or read from a Secret, the
/// data directory's `hostPath` or claim) and what its status says. A tenant's StatefulSet with
/// no pod (stopped: no replica) is a tenant too, `exited`, so that what its store
/// recorded before it stopped is still shipped.
pub async fn tenant_pods(
    client: &kube::Client,
    namespace: &str,
    host: &str,
) -> Result<Vec<TenantContainer>, DiscoverError> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Pod;
    let selector = format!("{}=true,{}={host}", labels::MANAGED, labels::HOST);
    let lp = kube::api::ListParams::default().labels(&selector);
    let err = |source| DiscoverError::Kubernetes {
        namespace: namespace.to_string(),
        source,
    };
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let sets: kube::Api<StatefulSet> = kube::Api::namespaced(client.clone(), namespace);
    let pods = pods.list(&lp).await.map_err(err)?;
    let sets = sets.list(&lp).await.map_err(err)?;
    let mut tenants: Vec<TenantContainer> = pods
        .items
        .iter()
        .map(|p| {
            let status = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first());
            tenant_of(&p.metadata, p.spec.as_ref(), status, &p.metadata)
        })
        .collect();
    for set in &sets.items {
        let template = set.spec.as_ref().map(|s| &s.template);
        let meta = template
            .and_then(|t| t.metadata.clone())
            .unwrap_or_default();
        let t = tenant_of(
            &meta,
            template.and_then(|t| t.spec.as_ref()),
            None,
            &set.metadata,
        );
        if !t.tenant.is_empty() && !tenants.iter().any(|p| p.tenant == t.tenant) {
            tenants.push(t);
        }
    }
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant).then(a.container.cmp(&b.container)));
    Ok(tenants)
}

/// One tenant from a pod (or a pod template: `status` `None`, the tenant stopped);
/// `named` names it.
fn tenant_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: Option<&k8s_openapi::api::core::v1::PodSpec>,
    status: Option<&k8s_openapi::api::core::v1::ContainerStatus>,
    named: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> TenantContainer {
    let found = meta.labels.clone().unwrap_or_default();
    let container = spec.and_then(|s| s.containers.first());
    let env = container.and_then(|c| c.env.as_ref());
    // A variable read from a Secret is present (its value is not the agent's to see);
    // a literal one must not be empty.
    let present = |name: &str| {
        env.into_iter().flatten().any(|e| {
            e.name == name
                && (e.value_from.is_some() || e.value.as_deref().is_some_and(|v| !v.is_empty()))
        })
    };
    let env_missing = REQUIRED_ENV
        .iter()
        .filter(|v| !present(v))
        .map(|v| v.to_string())
        .collect();
    let org_id = env
        .into_iter()
        .flatten()
        .find(|e| e.name == ORG_ENV)
        .and_then(|e| e.value.clone())
        .filter(|v| !v.is_empty());
    let data_dir = container
        .and_then(|c| c.volume_mounts.as_ref())
        .into_iter()
        .flatten()
        .find(|m| m.mount_path == DATA_MOUNT)
        .and_then(|m| {
            spec.and_then(|s| s.volumes.as_ref())
                .into_iter()
                .flatten()
                .find(|v| v.name == m.name)
        })
        .and_then(|v| match (&v.host_path, &v.persistent_volume_claim) {
            (Some(h), _) => Some(PathBuf::from(&h.path)),
            // A claim: the agent's own pod mounts it under `CLAIMS_MOUNT`.
            (None, Some(c)) => claim_dir(&c.claim_name),
            (None, None) => None,
        });
    let state = status.and_then(|s| s.state.as_ref());
    let (word, started_at) = match state {
        Some(s) if s.running.is_some() => (
            "running",
            s.running
                .as_ref()
                .and_then(|r| r.started_at.as_ref())
                .map(|t| t.0.to_string()),
        ),
        Some(s) if s.waiting.is_some() => ("restarting", None),
        Some(_) => ("exited", None),
        None if status.is_none() => ("exited", None),
        None => ("created", None),
    };
    TenantContainer {
        tenant: found.get(labels::TENANT).cloned().unwrap_or_default(),
        container: named.name.clone().unwrap_or_default(),
        state: word.to_string(),
        restart_count: status.map_or(0, |s| i64::from(s.restart_count)),
        started_at,
        spec_hash: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::SPEC_HASH))
            .cloned()
            .unwrap_or_default(),
        env_missing,
        org_id,
        data_dir,
    }
}

pub async fn tenant_containers(
    docker: &Docker,
    host: &str,
) -> Result<Vec<TenantContainer>, DiscoverError> {
    let filters = std::collections::HashMap::from([(
        "label",
        vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={host}", labels::HOST),
        ],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|source| DiscoverError::Docker {
            what: "list containers".into(),
            source,
        })?;
    let inspected = futures_util::stream::iter(list.into_iter().filter_map(|c| c.id))
        .map(|id| async move {
            docker
                .inspect_container(&id, None)
                .await
                .map_err(|source| DiscoverError::Docker {
                    what: format!("inspect {}", &id[..12.min(id.len())]),
                    source,
                })
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut tenants = Vec::new();
    for info in inspected {
        let info = info?;
        let config = info.config.unwrap_or_default();
        let found = config.labels.unwrap_or_default();
        let env: Vec<(String, String)> = config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let value = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let env_missing = REQUIRED_ENV
            .iter()
            .filter(|v| value(v).is_none())
            .map(|v| v.to_string())
            .collect();
        let org_id = value(ORG_ENV).map(str::to_string);
        let data_dir = info
            .mounts
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.destination.as_deref() == Some(DATA_MOUNT))
            .and_then(|m| m.source)
            .map(PathBuf::from);
        let state = info.state.unwrap_or_default();
        tenants.push(TenantContainer {
            tenant: found.get(labels::TENANT).cloned().unwrap_or_default(),
            container: info
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            state: state.status.map(|s| s.to_string()).unwrap_or_default(),
            restart_count: info.restart_count.unwrap_or(0),
            started_at: state.started_at,
            spec_hash: found.get(labels::SPEC_HASH).cloned().unwrap_or_default(),
            env_missing,
            org_id,
            data_dir,
        });
    }
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant).then(a.container.cmp(&b.container)));
    Ok(tenants)
}
