//! A Kubernetes host's actions: a tenant's objects applied and its pod verified (Ready,
//! and `GET /health/usage-tracking` initialized through the API's pod proxy); a
//! failed update rolled back to the previous template and Secret, the pod stuck on
//! the bad template replaced (a StatefulSet does not replace a pod that never
//! became Ready by itself).

use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DeleteParams;

use super::objects::{self, REVISION_LABEL};
use super::{said, Cluster, KubeError};
use crate::execution::{
    read_health, schedule, Done, ExecuteOptions, Health, Launcher, Outcome, Progress, Status,
    Unverified, VerifyOptions, HEALTH_PATH,
};
use crate::plan::{
    Action, Observed, Workload, APP_PORT, DATA_MOUNT, LABEL_FLEET, LABEL_HOST, LABEL_TENANT,
};

/// Waiting reasons of a container that will not get better by waiting.
pub(super) const HOPELESS: [&str; 6] = [
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

pub async fn execute(
    cluster: &Cluster,
    actions: Vec<Action>,
    opts: &ExecuteOptions,
    failures: &AtomicUsize,
    progress: &Progress,
) -> Vec<Outcome> {
    let fleet = actions.iter().find_map(|a| match a {
        Action::Create { desired, .. } | Action::Update { desired, .. } => {
            desired.labels.get(crate::plan::LABEL_FLEET).cloned()
        }
        _ => None,
    });
    // The namespace and the fleet's NetworkPolicy, once per host, before any tenant.
    let ready = match fleet {
        Some(fleet) => prepare(cluster, &fleet).await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let launcher = KubeLauncher {
        cluster,
        opts,
        ready,
    };
    schedule(
        &cluster.host.name,
        actions,
        opts,
        failures,
        progress,
        &launcher,
    )
    .await
}

/// The namespace and the fleet's NetworkPolicy in it.
pub(super) async fn prepare(cluster: &Cluster, fleet: &str) -> Result<(), KubeError> {
    cluster.ensure_namespace(fleet).await?;
    let network = crate::plan::network_name(fleet);
    let policy = objects::network_policy(fleet, &network, cluster.namespace());
    cluster.apply::<NetworkPolicy>(&network, &policy).await?;
    Ok(())
}

struct KubeLauncher<'a> {
    cluster: &'a Cluster,
    opts: &'a ExecuteOptions,
    ready: Result<(), String>,
}

impl Launcher for KubeLauncher<'_> {
    fn run<'a>(&'a self, action: Action, say: &'a (dyn Fn(&str) + Sync)) -> BoxFuture<'a, Done> {
        Box::pin(async move {
            if let (Err(e), true) = (&self.ready, action.is_change()) {
                return (Status::Failed, e.clone(), None);
            }
            run_action(self.cluster, action, self.opts, say).await
        })
    }
}

async fn run_action(
    cluster: &Cluster,
    action: Action,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    match action {
        Action::Unchanged { current, .. } => (
            Status::Ok,
            "running, spec unchanged".into(),
            Some(current.name),
        ),
        Action::Orphan { container, .. } => (
            Status::Ok,
            format!(
                "{} is not in the spec; kept (use --prune to remove it)",
                container.name
            ),
            Some(container.name),
        ),
        Action::Blocked { reason, .. } => (Status::Failed, reason, None),
        Action::RemoveLeftover { container, .. } => match remove(cluster, &container.name).await {
            Ok(()) => (
                Status::Ok,
                format!("removed leftover {}", container.name),
                None,
            ),
            Err(e) => (Status::Failed, e.to_string(), None),
        },
        Action::Remove { container, tenant } => match remove(cluster, &container.name).await {
            Ok(()) => {
                let dir = format!("{}/{tenant}", cluster.host.data_root);
                let node = &cluster.node.node;
                let data = if !opts.purge_data {
                    match super::purge::claim_of(cluster, container.fleet(), &tenant).await {
                        Ok(Some(claim)) => format!("; data kept in claim {claim}"),
                        _ => format!("; data kept in {dir} on node {node}"),
                    }
                } else {
                    match super::purge::purge(
                        cluster,
                        &helper_image(cluster),
                        container.fleet(),
                        &tenant,
                    )
                    .await
                    {
                        Ok(said) => format!("; data purged on node {node} ({said})"),
                        Err(e) => format!("; data NOT purged: {e}"),
                    }
                };
                (
                    Status::Ok,
                    format!("removed {}{data}", container.name),
                    None,
                )
            }
            Err(e) => (Status::Failed, e.to_string(), None),
        },
        Action::Start { current, .. } => start(cluster, &current, opts, say).await,
        Action::Create { desired, .. } => create(cluster, &desired, opts, say).await,
        Action::Update {
            desired, previous, ..
        } if opts.surge => super::surge::update(cluster, &desired, &previous, opts, say).await,
        Action::Update {
            desired, previous, ..
        } => update(cluster, &desired, &previous, opts, say).await,
    }
}

/// The agent image (the host's, else the default): it carries `agent purge`,
/// `archive` and `unpack`, and it is on the node.
pub(super) fn helper_image(cluster: &Cluster) -> String {
    match &cluster.host.agent {
        crate::spec::HostAgent::Deployed(a) => a.image.clone(),
        crate::spec::HostAgent::External => crate::spec::default_agent_image(),
    }
}

/// The tenant's objects as `w` wants them, with `replicas` pods.
async fn apply_tenant(cluster: &Cluster, w: &Workload, replicas: i32) -> Result<(), KubeError> {
    let ns = cluster.namespace();
    if let Some(c) = objects::claim_of(w, ns) {
        make_claim(cluster, &c).await?;
    }
    cluster.apply(&w.name, &objects::secret(w, ns)).await?;
    cluster.apply(&w.name, &objects::service(w, ns)).await?;
    let set = objects::stateful_set(w, ns, &cluster.node.node, replicas);
    cluster.apply(&w.name, &set).await?;
    Ok(())
}

/// Makes a tenant's claim unless it is there: an existing claim of this fleet's
/// tenant is left as it is (a class never changes; a size grows only by hand, where
/// the class allows), one of anybody else's is refused.
pub(super) async fn make_claim(
    cluster: &Cluster,
    claim: &PersistentVolumeClaim,
) -> Result<(), KubeError> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let found = cluster
        .call(
            "read the claim",
            cluster.api::<PersistentVolumeClaim>().get_opt(&name),
        )
        .await?;
    let Some(found) = found else {
        return cluster.apply(&name, claim).await.map(|_| ());
    };
    let label = |k: &str| {
        claim
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .map_or("", String::as_str)
    };
    let tenant = label(LABEL_TENANT);
    if objects::is_claim_of(
        &found.metadata,
        label(LABEL_FLEET),
        label(LABEL_HOST),
        tenant,
    ) {
        Ok(())
    } else {
        Err(KubeError::ForeignClaim {
            host: cluster.host.name.clone(),
            name,
            tenant: tenant.to_string(),
        })
    }
}

/// An update that would leave the tenant's data behind (another directory, a claim
/// instead of a directory, or back): refused, nothing changed.
pub(super) fn data_moves(cluster: &Cluster, d: &Workload, kept: &Kept) -> Option<Done> {
    let from = data_source(&kept.set).filter(|f| *f != d.mount_source())?;
    let e = KubeError::DataMoves {
        host: cluster.host.name.clone(),
        tenant: d.tenant.clone(),
        from,
        to: d.mount_source(),
    };
    Some((Status::Failed, format!("{e}; nothing changed"), None))
}

/// Where a StatefulSet's pod finds its data, in the plan's words (a path on the
/// node, or `claim <name>`); `None` when it mounts none.
fn data_source(set: &StatefulSet) -> Option<String> {
    let rt = objects::runtime(set, None, Vec::new(), String::new());
    rt.mounts.iter().find_map(|m| {
        m.strip_suffix(&format!(":{DATA_MOUNT}"))
            .map(str::to_string)
    })
}

async fn create(
    cluster: &Cluster,
    d: &Workload,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    say("applying");
    if let Err(e) = apply_tenant(cluster, d, 1).await {
        let _ = remove(cluster, &d.name).await;
        return (Status::Failed, format!("{e}; objects removed"), None);
    }
    say("verifying");
    match verify(cluster, &d.name, &opts.verify, Some(d)).await {
        Ok(v) => (Status::Ok, v, Some(d.name.clone())),
        Err(e) => {
            let _ = remove(cluster, &d.name).await;
            (
                Status::Failed,
                format!("{e}; new objects removed, nothing to roll back to"),
                None,
            )
        }
    }
}

/// Applies `d` over `previous`, keeping what it ran (template and Secret) until the
/// new pod is verified, and putting it back when it is not.
async fn update(
    cluster: &Cluster,
    d: &Workload,
    previous: &Observed,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    // A surge pod an interrupted switch left would serve the old revision beside the
    // new one, on the same store.
    if let Err(e) = super::surge::remove(cluster, &objects::surge_name(&previous.name)).await {
        return (Status::Failed, format!("{e}; nothing changed"), None);
    }
    match kept(cluster, &previous.name).await {
        Ok(k) => update_from(cluster, d, previous, &k, opts, say).await,
        Err(e) => (Status::Failed, format!("{e}; nothing changed"), None),
    }
}

/// What a tenant runs before an update: its StatefulSet and its Secret, to put back.
pub(super) struct Kept {
    pub set: StatefulSet,
    pub secret: Option<Secret>,
}

pub(super) async fn kept(cluster: &Cluster, name: &str) -> Result<Kept, KubeError> {
    let set = cluster
        .call(
            "read the StatefulSet",
            cluster.api::<StatefulSet>().get(name),
        )
        .await?;
    let secret = cluster
        .call("read the Secret", cluster.api::<Secret>().get_opt(name))
        .await?;
    Ok(Kept { set, secret })
}

/// [`update`] with what ran before read already.
pub(super) async fn update_from(
    cluster: &Cluster,
    d: &Workload,
    previous: &Observed,
    kept: &Kept,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    if let Some(refused) = data_moves(cluster, d, kept) {
        return refused;
    }
    say("applying");
    let failure = match apply_tenant(cluster, d, 1).await {
        Ok(()) => {
            say("verifying");
            match verify(cluster, &d.name, &opts.verify, Some(d)).await {
                Ok(v) => return (Status::Ok, v, Some(d.name.clone())),
                Err(e) => e.0,
            }
        }
        Err(e) => e.to_string(),
    };
    say(&format!("verification failed, rolling back: {failure}"));
    match roll_back(cluster, &kept.set, kept.secret.as_ref(), opts).await {
        Ok(how) => (
            Status::RolledBack,
            format!("{failure}; rolled back to the previous template ({how})"),
            Some(previous.name.clone()),
        ),
        Err(e) => (
            Status::Failed,
            format!("{failure}; ROLLBACK FAILED: {e}"),
            None,
        ),
    }
}

/// Puts back the Secret and the pod template `old` had, replaces the pod stuck on the
/// new template, and verifies the previous one serves again.
async fn roll_back(
    cluster: &Cluster,
    old: &StatefulSet,
    old_secret: Option<&Secret>,
    opts: &ExecuteOptions,
) -> Result<String, String> {
    let name = old.metadata.name.clone().unwrap_or_default();
    put_back_secret(cluster, &name, old_secret)
        .await
        .map_err(|e| e.to_string())?;
    let spec = old.spec.clone().unwrap_or_default();
    let restored = StatefulSet {
        metadata: ObjectMeta {
            name: old.metadata.name.clone(),
            namespace: old.metadata.namespace.clone(),
            labels: old.metadata.labels.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: spec.replicas,
            selector: spec.selector,
            service_name: spec.service_name,
            template: spec.template,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    cluster
        .apply(&name, &restored)
        .await
        .map_err(|e| e.to_string())?;
    delete_pod(cluster, &name)
        .await
        .map_err(|e| e.to_string())?;
    verify(cluster, &name, &opts.verify, None)
        .await
        .map_err(|e| format!("the previous template does not serve either: {e}"))
}

/// The tenant's Secret as it was (keys, env values, labels).
pub(super) async fn put_back_secret(
    cluster: &Cluster,
    name: &str,
    old: Option<&Secret>,
) -> Result<(), KubeError> {
    let Some(s) = old else { return Ok(()) };
    let restored = Secret {
        metadata: ObjectMeta {
            name: s.metadata.name.clone(),
            namespace: s.metadata.namespace.clone(),
            labels: s.metadata.labels.clone(),
            ..ObjectMeta::default()
        },
        data: s.data.clone(),
        type_: s.type_.clone(),
        ..Secret::default()
    };
    cluster.apply(name, &restored).await.map(|_| ())
}

async fn start(
    cluster: &Cluster,
    current: &Observed,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    say("starting");
    if let Err(e) = scale(cluster, &current.name, 1).await {
        return (Status::Failed, format!("start failed: {e}"), None);
    }
    match verify(cluster, &current.name, &opts.verify, None).await {
        Ok(v) => (Status::Ok, v, Some(current.name.clone())),
        Err(e) => (Status::Failed, e.to_string(), Some(current.name.clone())),
    }
}

/// Sets a StatefulSet's replicas (a merge patch: the template is left as it is).
pub async fn scale(cluster: &Cluster, name: &str, replicas: i32) -> Result<(), KubeError> {
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    cluster
        .merge::<StatefulSet>("scale the StatefulSet", name, patch)
        .await
}

/// Scales the tenant to no pod and waits until its pod is gone (its grace period
/// and `within`): what a restore needs before it writes the tenant's directory. A
/// surge pod an interrupted switch left goes too: it writes the same store.
pub async fn stop(cluster: &Cluster, name: &str, within: Duration) -> Result<(), KubeError> {
    scale(cluster, name, 0).await?;
    super::surge::remove(cluster, &objects::surge_name(name)).await?;
    cluster.pod_gone(&pod_name(name), within).await
}

/// Deletes a tenant's objects (its data stays on the node).
async fn remove(cluster: &Cluster, name: &str) -> Result<(), KubeError> {
    let dp = DeleteParams::default();
    // A surge pod an interrupted switch left (the StatefulSet's garbage would take it
    // too, later; a purge after this must find no pod on the directory).
    super::surge::remove(cluster, &objects::surge_name(name)).await?;
    cluster
        .delete::<StatefulSet>("delete the StatefulSet", name, &dp)
        .await?;
    cluster
        .delete::<Service>("delete the Service", name, &dp)
        .await?;
    cluster
        .delete::<Secret>("delete the Secret", name, &dp)
        .await
}

/// The StatefulSet's one pod.
pub fn pod_name(set: &str) -> String {
    format!("{set}-0")
}

pub async fn delete_pod(cluster: &Cluster, set: &str) -> Result<(), KubeError> {
    cluster
        .delete::<Pod>("delete the pod", &pod_name(set), &DeleteParams::default())
        .await
}

/// The pod of the StatefulSet's current template is Ready, has not restarted for
/// `settle`, and its tenant says tracking is initialized (asked through the API's pod
/// proxy). `Ok` says how; `Err` why not, with the pod's last log lines (masked).
pub async fn verify(
    cluster: &Cluster,
    set: &str,
    opts: &VerifyOptions,
    desired: Option<&Workload>,
) -> Result<String, Unverified> {
    watch(cluster, Watch::Set(set), opts, desired).await
}

/// The pod a verification watches.
#[derive(Clone, Copy)]
pub(super) enum Watch<'a> {
    /// The StatefulSet's pod of its current template.
    Set(&'a str),
    /// One pod by name (a surge pod, which no StatefulSet owns).
    Pod(&'a str),
}

impl Watch<'_> {
    fn pod(self) -> String {
        match self {
            Watch::Set(set) => pod_name(set),
            Watch::Pod(pod) => pod.to_string(),
        }
    }
}

/// [`verify`] of the pod `which` names.
pub(super) async fn watch(
    cluster: &Cluster,
    which: Watch<'_>,
    opts: &VerifyOptions,
    desired: Option<&Workload>,
) -> Result<String, Unverified> {
    let started = Instant::now();
    let pod = which.pod();
    let mut baseline: Option<(String, i32)> = None;
    let mut ready_since: Option<Instant> = None;
    let mut last_problem = String::from("no pod yet");
    let poll = opts.poll.max(Duration::from_millis(250));
    loop {
        match pod_state(cluster, which).await {
            Ok(PodState::Current {
                uid,
                restarts,
                ready,
                waiting,
            }) => {
                let base = baseline.get_or_insert((uid.clone(), restarts));
                if base.0 != uid {
                    // Another pod of the same template (deleted and made anew).
                    *base = (uid, restarts);
                    ready_since = None;
                } else if restarts > base.1 {
                    let logs = pod_logs(cluster, &pod, desired).await;
                    return Err(format!("restarting (restart count {restarts}){logs}").into());
                }
                if let Some((reason, message)) = waiting {
                    if HOPELESS.contains(&reason.as_str()) {
                        let logs = pod_logs(cluster, &pod, desired).await;
                        let message = crate::quote::Masker::new(desired).line(&message, 200);
                        return Err(format!("{reason}: {message}{logs}").into());
                    }
                    last_problem = format!("waiting: {reason}");
                }
                if ready {
                    let since = *ready_since.get_or_insert_with(Instant::now);
                    let settled = since.elapsed() >= opts.settle;
                    match probe(cluster, &pod).await {
                        Ok(Health::Active) if settled => {
                            return Ok(format!(
                                "verified in {:.1}s: pod ready, usage tracking initialized",
                                started.elapsed().as_secs_f64()
                            ))
                        }
                        Ok(Health::NoEndpoint) if settled => {
                            return Ok(format!(
                                "verified in {:.1}s: pod ready (image serves no {HEALTH_PATH})",
                                started.elapsed().as_secs_f64()
                            ))
                        }
                        Ok(Health::Inactive(status)) if settled => {
                            let logs = pod_logs(cluster, &pod, desired).await;
                            let status = crate::quote::Masker::new(desired).line(&status, 100);
                            return Err(format!(
                                "{HEALTH_PATH} says usage tracking is not initialized (status: {status}){logs}"
                            )
                            .into());
                        }
                        Ok(_) => {}
                        Err(Probe::Refused(why)) => return Err(why.into()),
                        Err(Probe::Retry(e)) => last_problem = e,
                    }
                } else {
                    ready_since = None;
                }
            }
            Ok(PodState::Waiting(why)) => last_problem = why,
            Err(e) => last_problem = e.to_string(),
        }
        if started.elapsed() >= opts.timeout {
            let logs = pod_logs(cluster, &pod, desired).await;
            return Err(format!(
                "not verified within {}s: {last_problem}{logs}",
                opts.timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(poll).await;
    }
}

enum PodState {
    /// The pod runs the StatefulSet's current template.
    Current {
        uid: String,
        restarts: i32,
        ready: bool,
        /// The container's waiting reason and message.
        waiting: Option<(String, String)>,
    },
    /// No pod of the current template yet, and why.
    Waiting(String),
}

async fn pod_state(cluster: &Cluster, which: Watch<'_>) -> Result<PodState, KubeError> {
    let set = match which {
        Watch::Set(set) => set,
        Watch::Pod(pod) => {
            return Ok(
                match cluster
                    .call("read the pod", cluster.api::<Pod>().get_opt(pod))
                    .await?
                {
                    None => PodState::Waiting("no pod yet".into()),
                    Some(p) if p.metadata.deletion_timestamp.is_some() => {
                        PodState::Waiting("the pod is being deleted".into())
                    }
                    Some(p) => current(&p),
                },
            )
        }
    };
    let pod = &which.pod();
    let s = cluster
        .call(
            "read the StatefulSet",
            cluster.api::<StatefulSet>().get(set),
        )
        .await?;
    let status = s.status.unwrap_or_default();
    if status.observed_generation < s.metadata.generation {
        return Ok(PodState::Waiting(
            "the StatefulSet has not seen its change yet".into(),
        ));
    }
    let revision = status.update_revision.unwrap_or_default();
    let Some(p) = cluster
        .call("read the pod", cluster.api::<Pod>().get_opt(pod))
        .await?
    else {
        return Ok(PodState::Waiting("no pod yet".into()));
    };
    let pod_revision = p
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .cloned()
        .unwrap_or_default();
    if pod_revision != revision || p.metadata.deletion_timestamp.is_some() {
        // The pod of the old template: replaced by the StatefulSet unless it never
        // became Ready, which a StatefulSet waits on forever.
        let ready = pod_ready(&p);
        if !ready {
            let _ = delete_pod(cluster, set).await;
        }
        return Ok(PodState::Waiting(
            "the pod of the previous template is being replaced".into(),
        ));
    }
    Ok(current(&p))
}

/// A pod of the template wanted, as it is.
fn current(p: &Pod) -> PodState {
    let container = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == objects::CONTAINER));
    let waiting = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .map(|w| {
            (
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default(),
            )
        });
    PodState::Current {
        uid: p.metadata.uid.clone().unwrap_or_default(),
        restarts: container.map_or(0, |c| c.restart_count),
        ready: pod_ready(p),
        waiting,
    }
}

pub(super) fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a probe had no answer.
enum Probe {
    /// Worth asking again until the deadline (the app may be starting).
    Retry(String),
    /// The API server refuses the controller the pod proxy: asking again will not
    /// help.
    Refused(String),
}

/// The tenant's health answer through the API's pod proxy: no path to the pod's
/// network is assumed.
async fn probe(cluster: &Cluster, pod: &str) -> Result<Health, Probe> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{pod}:{APP_PORT}/proxy{HEALTH_PATH}",
        cluster.namespace()
    );
    let request = hyper::Request::get(&path)
        .body(kube::client::Body::empty())
        .map_err(|e| Probe::Retry(e.to_string()))?;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let response = cluster.client.send(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect_bytes().await?;
        Ok::<_, kube::Error>((status, body))
    })
    .await
    .map_err(|_| Probe::Retry(format!("{HEALTH_PATH} did not answer within 5s")))?
    .map_err(|e| Probe::Retry(format!("{HEALTH_PATH} through the pod proxy: {e}")))?;
    let (status, body) = answer;
    // At most 64 KiB of a tenant's answer is read as text.
    let body = String::from_utf8_lossy(&body[..body.len().min(64 << 10)]).into_owned();
    if status == 403 {
        // The API server's own refusal is a Status object; a tenant's 403 is not.
        if let Ok(s) = serde_json::from_str::<kube::core::Status>(&body) {
            if s.reason == "Forbidden" {
                return Err(Probe::Refused(format!(
                    "the API server refuses the pod proxy (pods/proxy): {}",
                    crate::bounded(&s.message, 300)
                )));
            }
        }
    }
    read_health(status, &body).map_err(|e| Probe::Retry(e.to_string()))
}

/// The pod's last log lines, quoted (every secret of the tenant masked, control
/// characters gone, each line bounded), as a suffix for a failure's detail.
pub async fn last_logs(cluster: &Cluster, set: &str, desired: Option<&Workload>) -> String {
    pod_logs(cluster, &pod_name(set), desired).await
}

async fn pod_logs(cluster: &Cluster, pod: &str, desired: Option<&Workload>) -> String {
    let params = kube::api::LogParams {
        container: Some(objects::CONTAINER.into()),
        tail_lines: Some(8),
        limit_bytes: Some(128 << 10),
        ..kube::api::LogParams::default()
    };
    let text = cluster
        .call(
            "read the pod's log",
            cluster.api::<Pod>().logs(pod, &params),
        )
        .await
        .unwrap_or_default();
    let lines = crate::quote::Masker::new(desired).last_lines(&text, 8);
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last log lines: {}", lines.join(" | "))
    }
}

/// The tenant pod's output as it comes (`follow` keeps reading), in chunks of at most
/// 16 KiB (a tenant may print one line without end).
pub fn output(
    cluster: &Cluster,
    set: &str,
    req: &crate::execution::LogsRequest,
) -> impl futures_util::Stream<Item = Result<crate::execution::Output, KubeError>> + use<> {
    use futures_util::{AsyncReadExt, StreamExt};
    let pods: kube::Api<Pod> = kube::Api::namespaced(cluster.streams.clone(), cluster.namespace());
    let pod = pod_name(set);
    let host = cluster.host.name.clone();
    let params = kube::api::LogParams {
        container: Some(objects::CONTAINER.into()),
        follow: req.follow,
        since_seconds: req
            .since
            .map(|s| (chrono::Utc::now().timestamp() - s).max(1)),
        tail_lines: req.tail.as_deref().and_then(|t| t.parse().ok()),
        ..kube::api::LogParams::default()
    };
    let failed = move |message| KubeError::Log {
        host: host.clone(),
        message,
    };
    futures_util::stream::once(async move { pods.log_stream(&pod, &params).await })
        .map(move |opened| match opened {
            Ok(reader) => futures_util::stream::unfold(Box::pin(reader), |mut r| async move {
                let mut buf = vec![0u8; 16 << 10];
                match r.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => Some((
                        Ok(crate::execution::Output {
                            stderr: false,
                            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        }),
                        r,
                    )),
                    Err(e) => Some((Err(e), r)),
                }
            })
            .map(|r| r.map_err(|e| e.to_string()))
            .left_stream(),
            Err(e) => futures_util::stream::iter([Err(said(&e))]).right_stream(),
        })
        .flatten()
        .map(move |r| r.map_err(&failed))
}
