//! A host's agent container, kept by `apply`: made from the agent image with the
//! engine's socket and the tenants' data read-only, the host's database URL and the
//! database's CA copied in as files (never in its environment), restart always. Also
//! the way in for verification when the controller cannot reach a tenant's port: the
//! agent runs on the host, so `agent probe` inside it reaches the port there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, StartContainerOptions, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::engine::{ensure_image, remove, Engine};
use super::health::HealthError;
use super::LaunchError;
use crate::plan::agent::{
    is_agent_of, DesiredAgent, CA_PATH, DATABASE_URL_PATH, LABEL_AGENT_OF, SOCKET_PATH, SPOOL_PATH,
};
use crate::plan::LABEL_FLEET;

/// Makes sure the agent image is on the host and no agent container is left: the
/// old one goes before the new one is made (its password is being rotated, and
/// nothing it reports after this point may pass for the new one's).
pub async fn prepare(
    engine: &Engine,
    desired: &DesiredAgent,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), LaunchError> {
    ensure_image(engine, &desired.image, say).await?;
    if let Ok(old) = engine.docker.inspect_container(&desired.name, None).await {
        // Only this fleet's agent of this host is removed: a container of anyone
        // else's under that name stays, and the deployment stops here.
        let labels = old.config.and_then(|c| c.labels).unwrap_or_default();
        let fleet = desired.labels.get(LABEL_FLEET).map_or("", String::as_str);
        if !is_agent_of(&labels, fleet, &desired.host) {
            return Err(LaunchError::NotOurs {
                name: desired.name.clone(),
                agent_of: labels.get(LABEL_AGENT_OF).map(|v| crate::bounded(v, 80)),
                fleet: labels.get(LABEL_FLEET).map(|v| crate::bounded(v, 80)),
            });
        }
        if let Some(id) = old.id {
            remove(engine, &id).await?;
        }
    }
    Ok(())
}

/// Makes the host's agent (after [`prepare`]) with this database URL, starts it and
/// watches it for `settle`.
pub async fn deploy(
    engine: &Engine,
    desired: &DesiredAgent,
    database_url: &str,
    settle: Duration,
) -> Result<String, LaunchError> {
    let id = create(engine, desired).await?;
    let started = async {
        upload_files(engine, &id, desired, database_url).await?;
        engine
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .map_err(engine.api_err("start the agent"))?;
        watch(engine, &id, settle).await
    };
    match started.await {
        Ok(()) => Ok(format!("{} runs {}", desired.name, desired.image)),
        Err(e) => Err(LaunchError::Failed {
            name: format!("agent {}", desired.name),
            source: Box::new(e),
            logs: super::last_logs(engine, &id, None).await,
        }),
    }
}

pub async fn start(
    engine: &Engine,
    container: &str,
    settle: Duration,
) -> Result<String, LaunchError> {
    engine
        .docker
        .start_container(container, None::<StartContainerOptions>)
        .await
        .map_err(engine.api_err(format!("start {container}")))?;
    watch(engine, container, settle).await?;
    Ok(format!("{container} started"))
}

pub async fn remove_agent(engine: &Engine, container: &str) -> Result<String, LaunchError> {
    remove(engine, container).await?;
    Ok(format!("{container} removed"))
}

async fn create(engine: &Engine, d: &DesiredAgent) -> Result<String, LaunchError> {
    let host_config = HostConfig {
        // The spool is a named volume: what waits in it outlives the container.
        binds: Some(vec![
            format!("{}:{SOCKET_PATH}:ro", d.host_socket),
            format!("{0}:{0}:ro", d.data_root),
            format!("{}:{SPOOL_PATH}", d.spool_volume),
        ]),
        // The host's network: the agent reaches the database as a service on the host
        // would, and tenant ports bound to the host's loopback.
        network_mode: Some("host".into()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        }),
        cap_drop: Some(vec!["ALL".into()]),
        // Stores may belong to any user of the tenant's image.
        cap_add: Some(vec!["DAC_READ_SEARCH".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        memory: Some(256 << 20),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(d.image.clone()),
        cmd: Some(d.args()),
        env: Some(vec![format!("DOCKER_HOST=unix://{SOCKET_PATH}")]),
        labels: Some(d.labels.clone().into_iter().collect::<HashMap<_, _>>()),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(&d.name).build();
    engine
        .docker
        .create_container(Some(options), body)
        .await
        .map(|r| r.id)
        .map_err(|e| engine.api_err(format!("create {}", d.name))(e).into())
}

/// The URL (owner-only) and the CA, into the created container before it starts.
async fn upload_files(
    engine: &Engine,
    id: &str,
    d: &DesiredAgent,
    database_url: &str,
) -> Result<(), LaunchError> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path.trim_start_matches('/'), data)
    };
    add(DATABASE_URL_PATH, 0o400, database_url.as_bytes()).map_err(LaunchError::Pack)?;
    if let Some(ca) = &d.ca_pem {
        add(CA_PATH, 0o444, ca.as_bytes()).map_err(LaunchError::Pack)?;
    }
    let bytes = tar.into_inner().map_err(LaunchError::Pack)?;
    let options = UploadToContainerOptionsBuilder::new().path("/").build();
    engine
        .docker
        .upload_to_container(id, Some(options), bollard::body_full(bytes.into()))
        .await
        .map_err(|e| engine.api_err("copy the agent's files in")(e).into())
}

/// Running, and not restarting, for `settle`.
async fn watch(engine: &Engine, id: &str, settle: Duration) -> Result<(), LaunchError> {
    let since = Instant::now();
    let mut base = None;
    loop {
        let info = engine
            .docker
            .inspect_container(id, None)
            .await
            .map_err(engine.api_err("inspect the agent"))?;
        let restarts = info.restart_count.unwrap_or(0);
        let state = info.state.unwrap_or_default();
        if state.running != Some(true) || restarts > *base.get_or_insert(restarts) {
            return Err(LaunchError::NotRunning {
                code: state.exit_code.unwrap_or(-1),
                restarts,
            });
        }
        if since.elapsed() >= settle {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The agent's last warnings and errors (its cycles log at info): why it cannot ship.
pub async fn last_warnings(engine: &Engine, container: &str) -> String {
    crate::quote::agent_warnings(&super::verify::log_tail(engine, container, 200).await)
}

/// `agent probe ADDRESS:PORT` inside the agent container: the tenant's health answer
/// as the host sees it. `Err` is a transport problem, worth retrying.
pub async fn probe(
    engine: &Engine,
    agent: &str,
    address: &str,
    port: u16,
    timeout: Duration,
) -> Result<String, HealthError> {
    let exec_err = |source| HealthError::Exec {
        agent: agent.to_string(),
        source,
    };
    let target = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    let wait = format!("{}ms", timeout.as_millis());
    let exec = engine
        .docker
        .create_exec(
            agent,
            CreateExecOptions {
                cmd: Some(vec!["/agent", "probe", &target, "--timeout", &wait]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(exec_err)?;
    let mut out = String::new();
    let mut err = String::new();
    if let StartExecResults::Attached { mut output, .. } = engine
        .docker
        .start_exec(&exec.id, None)
        .await
        .map_err(exec_err)?
    {
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(bollard::container::LogOutput::StdOut { message }) => {
                    out.push_str(&String::from_utf8_lossy(&message))
                }
                Ok(other) => err.push_str(&other.to_string()),
                Err(e) => return Err(exec_err(e)),
            }
            if out.len() as u64 > mai_fleet_core::probe::MAX_RESPONSE {
                break;
            }
        }
    }
    let code = engine
        .docker
        .inspect_exec(&exec.id)
        .await
        .ok()
        .and_then(|i| i.exit_code);
    match code {
        Some(0) => Ok(out),
        _ => Err(HealthError::Agent {
            agent: agent.to_string(),
            said: crate::bounded(err.trim(), 500),
        }),
    }
}
