//! The Docker backend: observes a host's managed containers and executes planned
//! actions on it, verifying every launched tenant and rolling back one that fails.

mod health;
mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::plan::{Action, DesiredContainer, Observed, APP_PORT, DATA_MOUNT, LABEL_MANAGED};
use crate::spec::HostSpec;

pub use verify::VerifyOptions;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("host {host}: {url} is not supported yet: {reason}")]
    UnsupportedEndpoint {
        host: String,
        url: String,
        reason: String,
    },
    #[error("host {host}: cannot reach the Docker engine at {url}: {source}")]
    Connect {
        host: String,
        url: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("host {host}: {what}: {source}")]
    Api {
        host: String,
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
}

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
                });
            } else {
                others.push(name);
            }
        }
        Ok((managed, others))
    }
}

/// What happened to one tenant in an apply.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub host: String,
    pub tenant: String,
    pub action: &'static str,
    pub status: Status,
    pub detail: String,
    pub container: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Done (or nothing to do) and verified where something was launched.
    Ok,
    /// Verification failed; the previous container serves again.
    RolledBack,
    /// Failed with nothing to roll back to, or the rollback itself failed.
    Failed,
    /// Not attempted: the failure budget (`--max-failures`) was spent.
    Skipped,
}

/// Receives progress lines as they happen (host, tenant, message).
pub type Progress = dyn Fn(&str, &str, &str) + Send + Sync;

pub struct ExecuteOptions {
    pub parallel: usize,
    pub verify: VerifyOptions,
    pub stop_timeout_s: i32,
    pub purge_data: bool,
    /// Stop starting rollouts once this many tenants failed, fleet-wide.
    pub max_failures: Option<usize>,
}

/// Executes a host's actions: tenants in parallel up to `parallel`, each tenant's own
/// actions in order.
pub async fn execute(
    engine: &Engine,
    actions: Vec<Action>,
    opts: &ExecuteOptions,
    failures: &AtomicUsize,
    progress: &Progress,
) -> Vec<Outcome> {
    let images = ensure_images(engine, &actions, progress).await;
    let images = &images;
    let mut by_tenant: Vec<(String, Vec<Action>)> = Vec::new();
    for a in actions {
        match by_tenant.iter_mut().find(|(t, _)| t == a.tenant()) {
            Some((_, list)) => list.push(a),
            None => by_tenant.push((a.tenant().to_string(), vec![a])),
        }
    }
    futures_util::stream::iter(by_tenant)
        .map(|(_, actions)| execute_tenant(engine, actions, opts, images, failures, progress))
        .buffer_unordered(opts.parallel.max(1))
        .flat_map(futures_util::stream::iter)
        .collect()
        .await
}

/// Whether each image a rollout needs is on the host: checked (and pulled if missing)
/// once per host, not once per tenant.
type Images = HashMap<String, Result<(), String>>;

async fn ensure_images(engine: &Engine, actions: &[Action], progress: &Progress) -> Images {
    let mut images = Images::new();
    for a in actions {
        let image = match a {
            Action::Create { desired, .. } | Action::Update { desired, .. } => &desired.image,
            _ => continue,
        };
        if !images.contains_key(image) {
            let say = |msg: &str| progress(&engine.host.name, "-", msg);
            images.insert(image.clone(), ensure_image(engine, image, &say).await);
        }
    }
    images
}

async fn execute_tenant(
    engine: &Engine,
    actions: Vec<Action>,
    opts: &ExecuteOptions,
    images: &Images,
    failures: &AtomicUsize,
    progress: &Progress,
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
            let say = |msg: &str| progress(&engine.host.name, &tenant, msg);
            run_action(engine, action, opts, images, &say).await
        };
        if matches!(status, Status::Failed | Status::RolledBack) {
            failures.fetch_add(1, Ordering::SeqCst);
        }
        progress(
            &engine.host.name,
            &tenant,
            &format!("{verb}: {} {detail}", status_word(status)),
        );
        outcomes.push(Outcome {
            host: engine.host.name.clone(),
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

pub fn status_word(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::RolledBack => "ROLLED BACK",
        Status::Failed => "FAILED",
        Status::Skipped => "skipped",
    }
}

type Done = (Status, String, Option<String>);

async fn run_action(
    engine: &Engine,
    action: Action,
    opts: &ExecuteOptions,
    images: &Images,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    let image_ok = |image: &str| {
        images
            .get(image)
            .cloned()
            .unwrap_or_else(|| Err(format!("image {image} was not checked")))
    };
    match action {
        Action::Unchanged { current, .. } => (
            Status::Ok,
            "running, spec unchanged".into(),
            Some(current.short_id().to_string()),
        ),
        Action::Orphan { container, .. } => (
            Status::Ok,
            format!(
                "{} is not in the spec; kept (use --prune to remove it)",
                container.name
            ),
            Some(container.short_id().to_string()),
        ),
        Action::Blocked { reason, .. } => (Status::Failed, reason, None),
        Action::RemoveLeftover { container, .. } => match remove(engine, &container.id).await {
            Ok(()) => (
                Status::Ok,
                format!("removed leftover {}", container.name),
                None,
            ),
            Err(e) => (Status::Failed, e.to_string(), None),
        },
        Action::Remove { container, tenant } => {
            let mut detail = match remove(engine, &container.id).await {
                Ok(()) => format!("removed {}", container.name),
                Err(e) => return (Status::Failed, e.to_string(), None),
            };
            detail.push_str(&purge_or_keep_data(engine, &tenant, opts.purge_data));
            (Status::Ok, detail, None)
        }
        Action::Start { current, .. } => {
            say("starting");
            if let Err(e) = engine.docker.start_container(&current.id, None).await {
                return (Status::Failed, format!("start failed: {e}"), None);
            }
            match verify::verify(engine, &current.id, None, &opts.verify, None).await {
                Ok(v) => (Status::Ok, v, Some(current.short_id().to_string())),
                Err(e) => (Status::Failed, e, Some(current.short_id().to_string())),
            }
        }
        Action::Create { desired, .. } => match image_ok(&desired.image) {
            Ok(()) => create(engine, &desired, opts, say).await,
            Err(e) => (Status::Failed, e, None),
        },
        Action::Update {
            desired, previous, ..
        } => match image_ok(&desired.image) {
            Ok(()) => update(engine, &desired, &previous, opts, say).await,
            Err(e) => (
                Status::Failed,
                format!("{e}; {} left as it was", previous.name),
                None,
            ),
        },
    }
}

async fn create(
    engine: &Engine,
    d: &DesiredContainer,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    prepare_data_dir(engine, d);
    say("creating");
    let id = match create_container(engine, d, &d.name).await {
        Ok(id) => id,
        Err(e) => return (Status::Failed, e, None),
    };
    let short = id[..12.min(id.len())].to_string();
    if let Err(e) = engine.docker.start_container(&id, None).await {
        let logs = verify::last_logs(engine, &id, Some(d)).await;
        let _ = remove(engine, &id).await;
        return (
            Status::Failed,
            format!("start failed: {e}{logs}; container removed"),
            None,
        );
    }
    say("verifying");
    match verify::verify(engine, &id, Some(d.host_port), &opts.verify, Some(d)).await {
        Ok(v) => (Status::Ok, v, Some(short)),
        Err(e) => {
            let _ = remove(engine, &id).await;
            (
                Status::Failed,
                format!("{e}; new container removed, nothing to roll back to"),
                None,
            )
        }
    }
}

/// Replaces `previous` by a container of `d`, keeping `previous` (stopped, renamed)
/// until the new one is verified.
async fn update(
    engine: &Engine,
    d: &DesiredContainer,
    previous: &Observed,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    let docker = &engine.docker;
    // An interrupted apply may have left the wanted container renamed away: restore it.
    if previous.spec_hash() == d.hash_label() {
        say("restoring the container an interrupted apply left");
        if let Err(e) = rename(engine, &previous.id, &d.name).await {
            return (Status::Failed, e, None);
        }
        if let Err(e) = docker.start_container(&previous.id, None).await {
            return (Status::Failed, format!("start failed: {e}"), None);
        }
        return match verify::verify(
            engine,
            &previous.id,
            Some(d.host_port),
            &opts.verify,
            Some(d),
        )
        .await
        {
            Ok(v) => (Status::Ok, v, Some(previous.short_id().to_string())),
            Err(e) => (Status::Failed, e, Some(previous.short_id().to_string())),
        };
    }
    prepare_data_dir(engine, d);
    let parked = format!("{}.prev-{}", d.name, previous.short_id());
    say(&format!(
        "stopping {} (kept as {parked} until the new one is verified)",
        previous.name
    ));
    let stop = StopContainerOptionsBuilder::new()
        .t(opts.stop_timeout_s)
        .build();
    // Stopped whatever state the plan saw: after an interrupted apply, Docker may still
    // complete a start the killed controller had sent (stopping a stopped container
    // is a no-op).
    if let Err(e) = docker.stop_container(&previous.id, Some(stop)).await {
        return (
            Status::Failed,
            format!("stop failed: {e}; nothing changed"),
            None,
        );
    }
    if previous.name != parked {
        if let Err(e) = rename(engine, &previous.id, &parked).await {
            let _ = docker.start_container(&previous.id, None).await;
            return (Status::Failed, e, None);
        }
    }
    say("creating");
    let started = match create_container(engine, d, &d.name).await {
        Ok(id) => match docker.start_container(&id, None).await {
            Ok(()) => Ok(id),
            Err(e) => {
                let logs = verify::last_logs(engine, &id, Some(d)).await;
                Err((Some(id), format!("start failed: {e}{logs}")))
            }
        },
        Err(e) => Err((None, e)),
    };
    let failure = match started {
        Ok(id) => {
            say("verifying");
            match verify::verify(engine, &id, Some(d.host_port), &opts.verify, Some(d)).await {
                Ok(v) => {
                    let _ = remove(engine, &previous.id).await;
                    return (Status::Ok, v, Some(id[..12.min(id.len())].to_string()));
                }
                Err(e) => (Some(id), e),
            }
        }
        Err(f) => f,
    };
    let (new_id, reason) = failure;
    say(&format!("verification failed, rolling back: {reason}"));
    if let Some(id) = new_id {
        let _ = remove(engine, &id).await;
    }
    let restored = async {
        rename(engine, &previous.id, &d.name).await?;
        // A tenant is meant to run: the previous container serves again even when an
        // interrupted apply had left it stopped.
        docker
            .start_container(&previous.id, None)
            .await
            .map_err(|e| format!("restart of the previous container failed: {e}"))?;
        Ok::<(), String>(())
    }
    .await;
    match restored {
        Ok(()) => (
            Status::RolledBack,
            format!("{reason}; rolled back to the previous container"),
            Some(previous.short_id().to_string()),
        ),
        Err(e) => (
            Status::Failed,
            format!("{reason}; ROLLBACK FAILED: {e} (previous container is {parked})"),
            None,
        ),
    }
}

async fn create_container(
    engine: &Engine,
    d: &DesiredContainer,
    name: &str,
) -> Result<String, String> {
    ensure_network(engine, d).await?;
    let port_key = format!("{APP_PORT}/tcp");
    let host_config = HostConfig {
        binds: Some(vec![format!("{}:{DATA_MOUNT}", d.data_dir)]),
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
async fn ensure_network(engine: &Engine, d: &DesiredContainer) -> Result<(), String> {
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

async fn ensure_image(
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

async fn rename(engine: &Engine, id: &str, name: &str) -> Result<(), String> {
    let options = RenameContainerOptionsBuilder::new().name(name).build();
    engine
        .docker
        .rename_container(id, options)
        .await
        .map_err(|e| format!("rename to {name} failed: {e}"))
}

async fn remove(engine: &Engine, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    engine
        .docker
        .remove_container(id, Some(options))
        .await
        .map_err(engine.api_err(format!("remove container {}", &id[..12.min(id.len())])))
}

/// Creates `<data_root>/<id>/data` owner-only when the engine is local; on a remote
/// engine Docker creates the bind source itself.
fn prepare_data_dir(engine: &Engine, d: &DesiredContainer) {
    if !engine.local {
        return;
    }
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d.data_dir);
    // The tenant directory holds a client's conversations: owner-only.
    if let Some(parent) = std::path::Path::new(&d.data_dir).parent() {
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
    }
}

fn purge_or_keep_data(engine: &Engine, tenant: &str, purge: bool) -> String {
    // The plan refuses such containers already; a path built from a label is checked
    // once more where it is deleted.
    if crate::spec::check_tenant_id(tenant).is_err() {
        return format!("; data NOT purged: {tenant:?} is not a tenant id");
    }
    let dir = format!("{}/{tenant}", engine.host.data_root);
    if !purge {
        return format!("; data kept in {dir}");
    }
    if !engine.local {
        return format!("; data NOT purged: {dir} is on a remote host (remove it there)");
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => format!("; data purged from {dir}"),
        Err(e) => format!("; data NOT purged from {dir}: {e}"),
    }
}
