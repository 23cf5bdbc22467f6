//! Source: the fleet's tenant containers on this host's engine, found by their labels.

use std::path::PathBuf;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use mai_fleet_core::contract::{labels, DATA_MOUNT, ORG_ENV, REQUIRED_ENV};

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
#[error("docker: {what}: {source}")]
pub struct DiscoverError {
    what: String,
    #[source]
    source: bollard::errors::Error,
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
        .map_err(|source| DiscoverError {
            what: "list containers".into(),
            source,
        })?;
    let inspected = futures_util::stream::iter(list.into_iter().filter_map(|c| c.id))
        .map(|id| async move {
            docker
                .inspect_container(&id, None)
                .await
                .map_err(|source| DiscoverError {
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
