//! One Docker engine: how it is reached, what it runs (observed in one API call), and
//! the container primitives the rollout is made of.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};

use super::ssh::{SshError, SshTunnel};
use super::{DockerError, LaunchError, ICC};
use crate::plan::agent::{is_agent_of, LABEL_AGENT_OF};
use crate::plan::{
    Confinement, Observed, Resources, Restart, Runtime, Workload, APP_PORT, LABEL_MANAGED,
};
use crate::spec::{DockerEndpoint, HostSpec};

/// What one `observe` saw.
pub struct Observation {
    pub managed: Vec<Observed>,
    /// Containers labelled as a host's agent (also among `others`, by name).
    pub agents: Vec<Observed>,
    pub others: Vec<String>,
}

/// A connected engine and what the controller needs to reach its tenants.
#[derive(Clone)]
pub struct Engine {
    pub host: HostSpec,
    pub docker: Docker,
    /// Where published tenant ports answer when the controller can reach them:
    /// loopback for a local socket, else the engine's host name.
    pub tenant_address: String,
    /// Whether `data_root` is on this machine (unix socket), so the controller can
    /// prepare and purge data directories itself.
    pub local: bool,
    /// The host's agent container, when one runs: launch verification asks tenants'
    /// health through it (the controller may not reach their ports).
    pub probe_via: Option<String>,
    /// The `ssh` forward of an `ssh://` engine, shared by every clone: one
    /// connection for the whole apply, closed with the last clone.
    _tunnel: Option<Arc<SshTunnel>>,
}

const API_TIMEOUT_S: u64 = 120;

/// How long connecting to an engine may take before its host counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Engine {
    /// Connects and asks the engine its API version, within `CONNECT_TIMEOUT`
    /// (`MAI_FLEET_CONNECT_TIMEOUT` overrides it, e.g. `3s`).
    pub async fn connect(host: &HostSpec) -> Result<Self, DockerError> {
        let timeout = crate::env::raw("MAI_FLEET_CONNECT_TIMEOUT")
            .and_then(|v| mai_fleet_core::duration::parse(&v).ok())
            .unwrap_or(CONNECT_TIMEOUT);
        match tokio::time::timeout(timeout, Self::connect_inner(host, timeout)).await {
            Ok(result) => result,
            Err(_) => Err(DockerError::Unreachable {
                host: host.name.clone(),
                url: host.docker.clone(),
                reason: format!("no answer within {}s", timeout.as_secs()),
            }),
        }
    }

    async fn connect_inner(host: &HostSpec, timeout: Duration) -> Result<Self, DockerError> {
        let url = host.docker.as_str();
        let connect_err = |source| DockerError::Connect {
            host: host.name.clone(),
            url: url.to_string(),
            source,
        };
        let mut tunnel = None;
        let endpoint =
            DockerEndpoint::parse(url).map_err(|reason| DockerError::UnsupportedEndpoint {
                host: host.name.clone(),
                url: url.to_string(),
                reason: reason.to_string(),
            })?;
        let (docker, tenant_address, local) = match &endpoint {
            DockerEndpoint::Unix(path) => {
                let d =
                    Docker::connect_with_unix(path, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                        .map_err(connect_err)?;
                (d, "127.0.0.1".to_string(), true)
            }
            DockerEndpoint::Tcp(addr) => {
                let d = match &host.tls {
                    Some(tls) => super::transport::connect_tls(addr, tls, API_TIMEOUT_S).map_err(
                        |source| DockerError::Transport {
                            host: host.name.clone(),
                            url: url.to_string(),
                            source: Box::new(source),
                        },
                    )?,
                    None => {
                        Docker::connect_with_http(url, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                            .map_err(connect_err)?
                    }
                };
                let name = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .to_string();
                (d, name, false)
            }
            DockerEndpoint::Ssh(target) => {
                let t =
                    super::ssh::open(target, &host.ssh, timeout)
                        .await
                        .map_err(|e| match e {
                            SshError::UnknownHostKey { .. } | SshError::ChangedHostKey { .. } => {
                                DockerError::HostKey {
                                    host: host.name.clone(),
                                    source: e,
                                }
                            }
                            other => DockerError::Unreachable {
                                host: host.name.clone(),
                                url: url.to_string(),
                                reason: other.to_string(),
                            },
                        })?;
                let d = super::transport::connect_unix_pooled(&t.socket, API_TIMEOUT_S).map_err(
                    |source| DockerError::Transport {
                        host: host.name.clone(),
                        url: url.to_string(),
                        source: Box::new(source),
                    },
                )?;
                tunnel = Some(Arc::new(t));
                (d, target.host.clone(), false)
            }
        };
        // Engines older than bollard's API version (20.10 speaks 1.41) need this.
        let docker = match docker.negotiate_version().await {
            Ok(d) => d,
            Err(source) => {
                // A refused client certificate surfaces as a bare "connection was
                // not ready" when the engine's alert races the pooled request: asked
                // again on a connection of its own, TLS says why.
                if let (DockerEndpoint::Tcp(addr), Some(tls)) = (&endpoint, &host.tls) {
                    if let Some(reason) = super::transport::tls_refusal(addr, tls, timeout).await {
                        return Err(DockerError::Unreachable {
                            host: host.name.clone(),
                            url: url.to_string(),
                            reason: format!("TLS: {reason}"),
                        });
                    }
                }
                return Err(connect_err(source));
            }
        };
        Ok(Self {
            host: host.clone(),
            docker,
            tenant_address,
            local,
            probe_via: None,
            _tunnel: tunnel,
        })
    }

    /// Launch verification goes through this host's agent when one of `agents` (as
    /// observed) is `fleet`'s agent of it and runs.
    pub fn use_running_agent(&mut self, fleet: &str, agents: &[Observed]) {
        self.probe_via = agents
            .iter()
            .find(|a| {
                is_agent_of(&a.labels, fleet, &self.host.name)
                    && a.state == crate::plan::RunState::Running
            })
            .map(|a| a.name.clone());
    }

    /// Inspections in flight at once. Over a network each new connection costs a TLS
    /// or SSH handshake, and a few kept-alive connections finish sooner than many new
    /// ones (20 inspections over tcp+TLS: see docs/apply.md).
    fn inspect_parallelism(&self) -> usize {
        if self.local {
            16
        } else {
            crate::env::raw("MAI_FLEET_REMOTE_PARALLEL")
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(4)
        }
    }

    pub(super) fn api_err(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(bollard::errors::Error) -> DockerError + '_ {
        let what = what.into();
        move |source| DockerError::Api {
            host: self.host.name.clone(),
            what,
            source,
        }
    }

    /// Every managed container on the engine (all hosts' and fleets', running or not),
    /// the agent containers, and the names of the other containers, in one API call.
    pub async fn observe(&self) -> Result<Observation, DockerError> {
        let options = ListContainersOptionsBuilder::new().all(true).build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(self.api_err("list containers"))?;
        let mut managed = Vec::new();
        let mut agents = Vec::new();
        let mut others = Vec::new();
        for c in list {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let labels = c.labels.unwrap_or_default();
            let managed_tenant = labels.get(LABEL_MANAGED).map(String::as_str) == Some("true");
            let agent = labels.contains_key(LABEL_AGENT_OF);
            if managed_tenant || agent {
                let list = if managed_tenant {
                    &mut managed
                } else {
                    others.push(name.clone());
                    &mut agents
                };
                list.push(Observed {
                    id: c.id.unwrap_or_default(),
                    name,
                    image: c.image.unwrap_or_default(),
                    state: crate::plan::RunState::parse(
                        &c.state.map(|s| s.to_string()).unwrap_or_default(),
                    ),
                    labels,
                    runtime: None,
                });
            } else {
                others.push(name);
            }
        }
        Ok(Observation {
            managed,
            agents,
            others,
        })
    }

    /// Fills in what each container of `host` runs (the containers a plan of that
    /// host compares with the spec): inspected 16 at a time, each image once. A
    /// container gone in between keeps no runtime, and is planned by its labels.
    pub async fn inspect_runtimes(
        &self,
        observed: &mut [Observed],
        host: &str,
    ) -> Result<(), DockerError> {
        let wanted: Vec<(usize, String)> = observed
            .iter()
            .enumerate()
            .filter(|(_, o)| o.host() == host)
            .map(|(i, o)| (i, o.id.clone()))
            .collect();
        let inspected: Vec<_> = futures_util::stream::iter(wanted)
            .map(|(i, id)| async move { (i, self.docker.inspect_container(&id, None).await) })
            .buffer_unordered(self.inspect_parallelism())
            .collect()
            .await;
        let mut found = Vec::new();
        for (i, result) in inspected {
            match result {
                Ok(info) => found.push((i, info)),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(self.api_err("inspect a container")(e)),
            }
        }
        let mut images: Vec<String> = found.iter().filter_map(|(_, c)| c.image.clone()).collect();
        images.sort();
        images.dedup();
        let image_env: HashMap<String, Vec<String>> = futures_util::stream::iter(images)
            .map(|image| async move {
                let env = self
                    .docker
                    .inspect_image(&image)
                    .await
                    .ok()
                    .and_then(|i| i.config)
                    .and_then(|c| c.env)
                    .unwrap_or_default();
                (image, env)
            })
            .buffer_unordered(self.inspect_parallelism().min(8))
            .collect()
            .await;
        for (i, info) in found {
            let own = info
                .image
                .as_ref()
                .and_then(|image| image_env.get(image))
                .cloned()
                .unwrap_or_default();
            observed[i].runtime = Some(runtime_of(info, &own));
        }
        Ok(())
    }
}

pub(super) async fn create_container(
    engine: &Engine,
    d: &Workload,
    name: &str,
) -> Result<String, LaunchError> {
    // No path (a plan's placeholder, a key not yet provisioned) may create a tenant
    // without its key.
    let key = d.env.get("OPENROUTER_API_KEY").map_or("", String::as_str);
    if crate::spec::check_openrouter_key(key).is_err() {
        return Err(LaunchError::NoKey);
    }
    ensure_network(engine, d).await?;
    let port_key = format!("{APP_PORT}/tcp");
    let host_config = HostConfig {
        binds: Some(vec![d.mount()]),
        port_bindings: Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(d.publish_address.clone()),
                host_port: Some(d.port.to_string()),
            }]),
        )])),
        restart_policy: Some(RestartPolicy {
            name: Some(restart_policy(&d.confinement.restart)),
            maximum_retry_count: None,
        }),
        memory: Some(d.resources.memory_bytes),
        nano_cpus: Some(d.resources.nano_cpus),
        pids_limit: Some(d.resources.pids_limit),
        cap_drop: Some(d.confinement.cap_drop.clone()),
        security_opt: Some(d.confinement.security_words()),
        network_mode: Some(d.network.clone()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(d.image.clone()),
        env: Some(d.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(d.labels.clone().into_iter().collect()),
        exposed_ports: Some(vec![port_key]),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    engine
        .docker
        .create_container(Some(options), body)
        .await
        .map(|r| r.id)
        .map_err(|e| engine.api_err("create the container")(e).into())
}

/// The fleet's bridge network, made once per engine, with inter-container traffic
/// off (`enable_icc=false`): tenants reach the internet, not each other.
pub(super) async fn ensure_network(engine: &Engine, d: &Workload) -> Result<(), LaunchError> {
    // Docker lets two networks share a name (and then refuses to attach to either):
    // tenants, and host entries on one engine, are rolled out in parallel, so the
    // check and the creation happen one at a time.
    static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = MAKING.lock().await;
    // A network made by anyone else under the fleet's name is used only if it keeps
    // tenants apart as the fleet's own would.
    let found = || async {
        engine
            .docker
            .inspect_network(
                &d.network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .ok()
            .map(|n| {
                let icc = n
                    .options
                    .as_ref()
                    .and_then(|o| o.get(ICC))
                    .map(String::as_str);
                if n.driver.as_deref() == Some("bridge") && icc == Some("false") {
                    Ok(())
                } else {
                    Err(LaunchError::SharedNetwork {
                        network: d.network.clone(),
                        driver: n.driver.as_deref().unwrap_or("?").to_string(),
                        icc: icc.unwrap_or("unset").to_string(),
                    })
                }
            })
    };
    let exists = || async { found().await.is_some() };
    if let Some(checked) = found().await {
        return checked;
    }
    let labels: HashMap<String, String> = d
        .labels
        .iter()
        .filter(|(k, _)| [LABEL_MANAGED, crate::plan::LABEL_FLEET].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let request = bollard::models::NetworkCreateRequest {
        name: d.network.clone(),
        driver: Some("bridge".into()),
        labels: Some(labels),
        options: Some(HashMap::from([(ICC.to_string(), "false".to_string())])),
        ..Default::default()
    };
    match engine.docker.create_network(request).await {
        Ok(_) => Ok(()),
        // Made meanwhile by a concurrent apply: fine if it is as ours.
        Err(_) if exists().await => found().await.unwrap_or(Ok(())),
        Err(source) => Err(LaunchError::Network {
            network: d.network.clone(),
            source,
        }),
    }
}

/// Makes sure `image` is on the engine: there already, else sent from this machine's
/// own engine when it has it (an image load through the API: no registry needed),
/// else pulled.
pub(super) async fn ensure_image(
    engine: &Engine,
    image: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), LaunchError> {
    if engine.docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    if let Some(source) = image_source(engine).await {
        if source.inspect_image(image).await.is_ok() {
            say(&format!("sending {image} from this machine"));
            return send_image(&source, engine, image).await;
        }
    }
    say(&format!("pulling {image}"));
    let options = CreateImageOptionsBuilder::new().from_image(image).build();
    engine
        .docker
        .create_image(Some(options), None, None)
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ())
        .map_err(|source| LaunchError::Pull {
            image: image.to_string(),
            host: engine.host.name.clone(),
            source,
        })
}

/// This machine's engine (`MAI_FLEET_IMAGE_SOURCE`, else the default socket), when it
/// answers and is not the target itself.
async fn image_source(target: &Engine) -> Option<Docker> {
    let url = crate::env::raw("MAI_FLEET_IMAGE_SOURCE")
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    if url == target.host.docker {
        return None;
    }
    let DockerEndpoint::Unix(path) = DockerEndpoint::parse(&url).ok()? else {
        return None;
    };
    if !std::path::Path::new(&path).exists() {
        return None;
    }
    let docker =
        Docker::connect_with_unix(&path, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION).ok()?;
    docker.negotiate_version().await.ok()
}

/// `docker save | docker load`, streamed from one engine to the other.
async fn send_image(source: &Docker, target: &Engine, image: &str) -> Result<(), LaunchError> {
    let (image, host) = (image.to_string(), target.host.name.clone());
    let tar = source.export_image(&image);
    let options = bollard::query_parameters::ImportImageOptionsBuilder::new()
        .quiet(true)
        .build();
    let progress: Vec<_> = target
        .docker
        .import_image_stream(options, tar, None)
        .try_collect()
        .await
        .map_err(|source| LaunchError::Send {
            image: image.clone(),
            host: host.clone(),
            source,
        })?;
    if let Some(err) = progress.iter().find_map(|p| p.error_detail.as_ref()) {
        return Err(LaunchError::ImageRefused {
            message: crate::bounded(&err.message.clone().unwrap_or_default(), 500),
            image,
            host,
        });
    }
    if target.docker.inspect_image(&image).await.is_err() {
        return Err(LaunchError::ImageMissing { image, host });
    }
    Ok(())
}

pub(super) async fn rename(engine: &Engine, id: &str, name: &str) -> Result<(), DockerError> {
    let options = RenameContainerOptionsBuilder::new().name(name).build();
    engine
        .docker
        .rename_container(id, options)
        .await
        .map_err(engine.api_err(format!("rename to {name}")))
}

pub(super) async fn remove(engine: &Engine, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    engine
        .docker
        .remove_container(id, Some(options))
        .await
        .map_err(engine.api_err(format!("remove container {}", &id[..12.min(id.len())])))
}

/// Docker's word for a restart policy.
fn restart_policy(restart: &Restart) -> RestartPolicyNameEnum {
    match restart {
        Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Restart::Never | Restart::Other(_) => RestartPolicyNameEnum::NO,
    }
}

/// A container's inspection as the plan compares it. Variables its image sets, with
/// the image's value, are the image's, not the spec's: left out.
fn runtime_of(info: bollard::models::ContainerInspectResponse, image_env: &[String]) -> Runtime {
    let config = info.config.unwrap_or_default();
    let host = info.host_config.unwrap_or_default();
    let env = config
        .env
        .unwrap_or_default()
        .into_iter()
        .filter(|kv| !image_env.contains(kv))
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let ports = host
        .port_bindings
        .and_then(|p| p.get(&format!("{APP_PORT}/tcp")).cloned().flatten())
        .unwrap_or_default()
        .into_iter()
        .map(|b| {
            format!(
                "{}:{}",
                b.host_ip.unwrap_or_default(),
                b.host_port.unwrap_or_default()
            )
        })
        .collect();
    let (no_new_privileges, other_security): (Vec<String>, Vec<String>) = host
        .security_opt
        .unwrap_or_default()
        .into_iter()
        .partition(|o| o == "no-new-privileges" || o == "no-new-privileges:true");
    Runtime {
        image: config.image.unwrap_or_default(),
        env,
        mounts: host.binds.unwrap_or_default(),
        resources: Resources {
            memory_bytes: host.memory.unwrap_or(0),
            nano_cpus: host.nano_cpus.unwrap_or(0),
            pids_limit: host.pids_limit.unwrap_or(0),
        },
        ports,
        confinement: Confinement {
            cap_drop: host.cap_drop.unwrap_or_default(),
            no_new_privileges: !no_new_privileges.is_empty(),
            other_security,
            restart: Restart::parse(
                &host
                    .restart_policy
                    .and_then(|r| r.name)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            ),
        },
        network: host.network_mode.unwrap_or_default(),
        labels: config
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("mai-fleet."))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerInspectResponse};

    /// Docker's words come back as the plan's terms, and a confinement weakened by
    /// hand (seccomp off, a restart policy changed) is drift the plan names.
    #[test]
    fn an_inspection_is_read_into_the_plans_terms() {
        let info = ContainerInspectResponse {
            config: Some(ContainerConfig {
                image: Some("mai/app:1".into()),
                env: Some(vec!["A=1".into(), "PATH=/bin".into()]),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                binds: Some(vec!["/srv/aa/data:/app/backend/data".into()]),
                memory: Some(1 << 30),
                nano_cpus: Some(500_000_000),
                pids_limit: Some(512),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec![
                    "no-new-privileges:true".into(),
                    "seccomp=unconfined".into(),
                ]),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                network_mode: Some("mai-f".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = runtime_of(info, &["PATH=/bin".to_string()]);
        assert_eq!(r.env.keys().collect::<Vec<_>>(), ["A"]);
        assert_eq!(r.mounts, ["/srv/aa/data:/app/backend/data"]);
        assert_eq!(r.resources.nano_cpus, 500_000_000);
        assert!(r.confinement.no_new_privileges);
        assert_eq!(r.confinement.other_security, ["seccomp=unconfined"]);
        assert_eq!(r.confinement.restart, Restart::Never);
        let mut want = Confinement::tenant();
        assert_ne!(r.confinement, want);
        want.restart = Restart::Never;
        want.other_security = vec!["seccomp=unconfined".into()];
        assert_eq!(r.confinement, want);
    }
}
