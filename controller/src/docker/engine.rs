//! One Docker engine: how it is reached, what it runs (observed in one API call), and
//! the container primitives the rollout is made of.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};

use super::DockerError;
use crate::plan::{DesiredContainer, Observed, Runtime, APP_PORT, LABEL_MANAGED};
use crate::spec::HostSpec;

/// A connected engine and what the controller needs to reach its tenants.
#[derive(Clone)]
pub struct Engine {
    pub host: HostSpec,
    pub docker: Docker,
    /// Where published tenant ports answer: loopback for a local socket, else the
    /// engine's host name.
    pub tenant_address: String,
    /// Whether `data_root` is on this machine (unix socket), so the controller can
    /// prepare and purge data directories itself.
    pub local: bool,
}

const API_TIMEOUT_S: u64 = 120;

impl Engine {
    pub async fn connect(host: &HostSpec) -> Result<Self, DockerError> {
        let url = host.docker.as_str();
        let connect_err = |source| DockerError::Connect {
            host: host.name.clone(),
            url: url.to_string(),
            source,
        };
        let (docker, tenant_address, local) = if let Some(path) = url.strip_prefix("unix://") {
            let d = Docker::connect_with_unix(path, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                .map_err(connect_err)?;
            (d, "127.0.0.1".to_string(), true)
        } else if let Some(addr) = url.strip_prefix("tcp://") {
            let d = match &host.tls {
                Some(tls) => Docker::connect_with_ssl(
                    url,
                    &tls.key,
                    &tls.cert,
                    &tls.ca,
                    API_TIMEOUT_S,
                    bollard::API_DEFAULT_VERSION,
                ),
                None => Docker::connect_with_http(url, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION),
            }
            .map_err(connect_err)?;
            let name = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
            (d, name, false)
        } else {
            return Err(DockerError::UnsupportedEndpoint {
                host: host.name.clone(),
                url: url.to_string(),
                reason: "ssh:// engines are not built in this version; use unix:// or tcp://"
                    .into(),
            });
        };
        // Engines older than bollard's API version (20.10 speaks 1.41) need this.
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        Ok(Self {
            host: host.clone(),
            docker,
            tenant_address,
            local,
        })
    }

    fn api_err(
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

    /// Every managed container on the engine (all hosts' and fleets', running or not)
    /// and the names of the other containers, in one API call.
    pub async fn observe(&self) -> Result<(Vec<Observed>, Vec<String>), DockerError> {
        let options = ListContainersOptionsBuilder::new().all(true).build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(self.api_err("list containers"))?;
        let mut managed = Vec::new();
        let mut others = Vec::new();
        for c in list {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let labels = c.labels.unwrap_or_default();
            if labels.get(LABEL_MANAGED).map(String::as_str) == Some("true") {
                managed.push(Observed {
                    id: c.id.unwrap_or_default(),
                    name,
                    image: c.image.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    labels,
                    runtime: None,
                });
            } else {
                others.push(name);
            }
        }
        Ok((managed, others))
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
            .buffer_unordered(16)
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
            .buffer_unordered(8)
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
    d: &DesiredContainer,
    name: &str,
) -> Result<String, String> {
    // The seeds' incident was a container started without its key: it served and
    // recorded nothing. No path (a plan's placeholder, a key not yet provisioned)
    // may create one.
    let key = d.env.get("OPENROUTER_API_KEY").map_or("", String::as_str);
    if crate::spec::check_openrouter_key(key).is_err() {
        return Err(
            "refused: the container would start without a valid OPENROUTER_API_KEY and track nothing"
                .into(),
        );
    }
    ensure_network(engine, d).await?;
    let port_key = format!("{APP_PORT}/tcp");
    let host_config = HostConfig {
        binds: Some(vec![d.mount()]),
        port_bindings: Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(d.publish_address.clone()),
                host_port: Some(d.host_port.to_string()),
            }]),
        )])),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        memory: Some(d.memory_bytes),
        nano_cpus: Some(d.nano_cpus),
        pids_limit: Some(d.pids_limit),
        cap_drop: Some(d.cap_drop.iter().map(|c| c.to_string()).collect()),
        security_opt: Some(d.security_opt.iter().map(|c| c.to_string()).collect()),
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
        .map_err(|e| format!("create failed: {e}"))
}

/// The fleet's bridge network, made once per engine, with inter-container traffic
/// off (`enable_icc=false`): tenants reach the internet, not each other.
pub(super) async fn ensure_network(engine: &Engine, d: &DesiredContainer) -> Result<(), String> {
    // Docker lets two networks share a name (and then refuses to attach to either):
    // tenants, and host entries on one engine, are rolled out in parallel, so the
    // check and the creation happen one at a time.
    static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = MAKING.lock().await;
    let exists = || async {
        engine
            .docker
            .inspect_network(
                &d.network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .is_ok()
    };
    if exists().await {
        return Ok(());
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
        options: Some(HashMap::from([(
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        )])),
        ..Default::default()
    };
    match engine.docker.create_network(request).await {
        Ok(_) => Ok(()),
        // Made meanwhile by a concurrent apply: fine.
        Err(_) if exists().await => Ok(()),
        Err(e) => Err(format!("network {} could not be made: {e}", d.network)),
    }
}

pub(super) async fn ensure_image(
    engine: &Engine,
    image: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    if engine.docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    say(&format!("pulling {image}"));
    let options = CreateImageOptionsBuilder::new().from_image(image).build();
    engine
        .docker
        .create_image(Some(options), None, None)
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "image {image} is not on host {} and pulling it failed: {e}",
                engine.host.name
            )
        })
}

pub(super) async fn rename(engine: &Engine, id: &str, name: &str) -> Result<(), String> {
    let options = RenameContainerOptionsBuilder::new().name(name).build();
    engine
        .docker
        .rename_container(id, options)
        .await
        .map_err(|e| format!("rename to {name} failed: {e}"))
}

pub(super) async fn remove(engine: &Engine, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    engine
        .docker
        .remove_container(id, Some(options))
        .await
        .map_err(engine.api_err(format!("remove container {}", &id[..12.min(id.len())])))
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
    Runtime {
        image: config.image.unwrap_or_default(),
        env,
        binds: host.binds.unwrap_or_default(),
        memory_bytes: host.memory.unwrap_or(0),
        nano_cpus: host.nano_cpus.unwrap_or(0),
        pids_limit: host.pids_limit.unwrap_or(0),
        ports,
        restart_policy: host
            .restart_policy
            .and_then(|r| r.name)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        cap_drop: host.cap_drop.unwrap_or_default(),
        security_opt: host.security_opt.unwrap_or_default(),
        network: host.network_mode.unwrap_or_default(),
        labels: config
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("mai-fleet."))
            .collect(),
    }
}
