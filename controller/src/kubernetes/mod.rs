//! The Kubernetes backend: a host of the spec is one node of a cluster. Each tenant
//! is a Secret, a StatefulSet of one replica pinned to the node, a Service, and the
//! fleet's NetworkPolicy, all server-side applied with field manager `mai-fleet`
//! (docs/kubernetes.md). Only [`crate::backend`] names this module.

pub mod agent;
mod copy;
mod exec;
mod objects;
mod purge;
mod rollout;
mod surge;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::plan::{network_name, Observed, RunState, LABEL_FLEET, LABEL_MANAGED};
use crate::spec::{HostSpec, KubernetesHost};

pub use copy::{copy_in, copy_out};
pub use rollout::{delete_pod, execute, last_logs, output, scale, stop, verify};

/// Server-side apply's field manager: what this controller owns in each object.
pub const FIELD_MANAGER: &str = "mai-fleet";

/// How long one call to the API may take before the cluster counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{host}: kubeconfig {path}: {source}")]
    Config {
        host: String,
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("{host}: no kubeconfig: set `kubeconfig:` on the host, $KUBECONFIG, or write ~/.kube/config")]
    NoConfig { host: String },
    #[error("{host}: the Kubernetes API cannot be reached: {source}")]
    Unreachable {
        host: String,
        #[source]
        source: kube::Error,
    },
    #[error("{host}: the Kubernetes API did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { host: String },
    /// Wrong or expired credentials: as unreachable as a server that is down.
    #[error("{host}: the Kubernetes API refused the credentials: {message}")]
    Credentials { host: String, message: String },
    #[error("{at}: {host}: node `{node}` is not in the cluster (kubectl get nodes lists them)")]
    NoNode {
        host: String,
        node: String,
        at: String,
    },
    #[error("{at}: {host}: namespace `{namespace}` belongs to fleet `{owner}`; name another with `namespace:`")]
    ForeignNamespace {
        host: String,
        namespace: String,
        owner: String,
        at: String,
    },
    #[error("{host}: {what}: {}", said(source))]
    Api {
        host: String,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{host}: a Deployment named {name} is in the namespace but is not this fleet's agent of this host; apply never removes an object it does not own: rename or remove it")]
    NotOurs { host: String, name: String },
    #[error("{host}: a PersistentVolumeClaim named {name} is in the namespace but is not this fleet's claim of tenant {tenant}; apply never takes over an object it does not own: rename or remove it")]
    ForeignClaim {
        host: String,
        name: String,
        tenant: String,
    },
    #[error("{host}: {tenant}'s data is in {from}; apply does not move a tenant's data to {to}: `backup` it, remove it with `apply --prune`, apply it again and `restore` the backup")]
    DataMoves {
        host: String,
        tenant: String,
        from: String,
        to: String,
    },
    #[error("{host}: {what} after {seconds}s")]
    Stuck {
        host: String,
        what: String,
        seconds: u64,
    },
    #[error("{host}: the agent is not running: {why}")]
    AgentNotRunning { host: String, why: String },
    #[error("{host}: copying the tenant's data on the node: {why}")]
    Copy { host: String, why: String },
    #[error("{host}: purging the tenant's data on the node: {why}")]
    Purge { host: String, why: String },
    #[error("{host}: reading the pod's log: {message}")]
    Log { host: String, message: String },
    #[error(
        "{host}: Kubernetes cannot pause a pod (`stop` scales it to 0; a backup needs no pause)"
    )]
    NoPause { host: String },
}

impl KubeError {
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            KubeError::Unreachable { .. }
                | KubeError::Timeout { .. }
                | KubeError::Credentials { .. }
        )
    }
}

/// One Kubernetes host of the spec, connected.
#[derive(Clone)]
pub struct Cluster {
    pub host: HostSpec,
    pub node: Box<KubernetesHost>,
    client: Client,
    /// For streams that may be quiet for long (`logs -f`): no read timeout.
    streams: Client,
}

/// What one observation of a host's namespace saw.
pub struct Observation {
    pub managed: Vec<Observed>,
    /// The hosts' agents in the namespace.
    pub agents: Vec<Observed>,
    /// Names of StatefulSets this controller does not manage (name clashes).
    pub others: Vec<String>,
}

impl Cluster {
    /// Reads the kubeconfig, and asks the API for the host's node within
    /// [`CALL_TIMEOUT`]: a cluster that cannot be reached, or refuses the
    /// credentials, is an error for which [`KubeError::is_unreachable`] holds.
    pub async fn connect(host: &HostSpec, node: &KubernetesHost) -> Result<Self, KubeError> {
        let name = host.name.clone();
        let path = match &node.kubeconfig {
            Some(p) => p.clone(),
            None => match std::env::var_os("KUBECONFIG") {
                Some(p) if !p.is_empty() => p.into(),
                _ => match std::env::var_os("HOME") {
                    Some(home) => std::path::Path::new(&home).join(".kube/config"),
                    None => return Err(KubeError::NoConfig { host: name }),
                },
            },
        };
        let config_err = |source| KubeError::Config {
            host: name.clone(),
            path: path.display().to_string(),
            source,
        };
        let kubeconfig = Kubeconfig::read_from(&path).map_err(config_err)?;
        let options = KubeConfigOptions {
            context: node.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(config_err)?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.write_timeout = Some(CALL_TIMEOUT);
        let unreachable = |source| KubeError::Unreachable {
            host: name.clone(),
            source,
        };
        let streams = Client::try_from(config.clone()).map_err(unreachable)?;
        config.read_timeout = Some(CALL_TIMEOUT);
        let client = Client::try_from(config).map_err(unreachable)?;
        let cluster = Self {
            host: host.clone(),
            node: Box::new(node.clone()),
            client,
            streams,
        };
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        match cluster
            .call("read the node", nodes.get_opt(&node.node))
            .await?
        {
            Some(_) => Ok(cluster),
            None => Err(KubeError::NoNode {
                host: name,
                node: node.node.clone(),
                at: node.at.node.clone(),
            }),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.node.namespace
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), self.namespace())
    }

    /// One API call, bounded by [`CALL_TIMEOUT`], its failure named.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, KubeError> {
        let host = self.host.name.clone();
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Err(_) => Err(KubeError::Timeout { host }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(host, what, e)),
        }
    }

    /// Server-side apply of `object` (forced: a field another manager took is taken
    /// back, as a plan said it would be).
    async fn apply<K>(&self, name: &str, object: &K) -> Result<K, KubeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let api = self.api::<K>();
        let what = format!("apply {} {name}", K::kind(&Default::default()));
        self.call(&what, api.patch(name, &params, &Patch::Apply(object)))
            .await
    }

    /// Deletes one object; one that is not there is as good as deleted.
    async fn delete<K>(&self, what: &str, name: &str, dp: &DeleteParams) -> Result<(), KubeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self.call(what, self.api::<K>().delete(name, dp)).await {
            Ok(_) => Ok(()),
            Err(KubeError::Api {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A JSON merge patch of one object (replicas, leaving the rest as it is).
    async fn merge<K>(
        &self,
        what: &str,
        name: &str,
        patch: serde_json::Value,
    ) -> Result<(), KubeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let params = PatchParams::default();
        self.call(
            what,
            self.api::<K>().patch(name, &params, &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    /// The namespace, made and labelled as the fleet's when missing; one another
    /// fleet labelled as its own is refused.
    async fn ensure_namespace(&self, fleet: &str) -> Result<(), KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = self.namespace();
        let found = self.call("read the namespace", api.get_opt(ns)).await?;
        match found {
            Some(n) => {
                let owner = n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_FLEET))
                    .cloned();
                match owner {
                    Some(owner) if owner != fleet => Err(KubeError::ForeignNamespace {
                        host: self.host.name.clone(),
                        namespace: ns.to_string(),
                        owner,
                        at: self.node.at.namespace.clone(),
                    }),
                    _ => Ok(()),
                }
            }
            None => {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                let object = objects::namespace(ns, fleet);
                self.call(
                    "make the namespace",
                    api.patch(ns, &params, &Patch::Apply(&object)),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// The fleet's tenants in the namespace: every managed StatefulSet (all hosts'
    /// and fleets'), what each runs when `full` (its Secret resolved, its Service's
    /// ports, the fleet's NetworkPolicy).
    pub async fn observe(&self, full: bool) -> Result<Observation, KubeError> {
        let sets = self
            .call(
                "list StatefulSets",
                self.api::<StatefulSet>().list(&ListParams::default()),
            )
            .await?;
        let (secrets, services, policies) = if full {
            let managed = ListParams::default().labels(&format!("{LABEL_MANAGED}=true"));
            let secrets = self
                .call("list Secrets", self.api::<Secret>().list(&managed))
                .await?;
            let services = self
                .call("list Services", self.api::<Service>().list(&managed))
                .await?;
            let policies = self
                .call(
                    "list NetworkPolicies",
                    self.api::<NetworkPolicy>().list(&managed),
                )
                .await?;
            (secrets.items, services.items, policies.items)
        } else {
            Default::default()
        };
        let mut managed = Vec::new();
        let mut others = Vec::new();
        for set in sets.items {
            let name = set.metadata.name.clone().unwrap_or_default();
            let labels = set.metadata.labels.clone().unwrap_or_default();
            if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
                others.push(name);
                continue;
            }
            let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let image = set
                .spec
                .as_ref()
                .map(|s| image_of(&s.template))
                .unwrap_or_default();
            let runtime = full.then(|| {
                let named = |n: &Option<String>| n.as_deref() == Some(name.as_str());
                let secret = secrets.iter().find(|s| named(&s.metadata.name));
                let ports = services
                    .iter()
                    .filter(|s| named(&s.metadata.name))
                    .flat_map(|s| s.spec.iter().flat_map(|sp| sp.ports.iter().flatten()))
                    .map(|p| format!(":{}", p.port))
                    .collect();
                let fleet = labels.get(LABEL_FLEET).cloned().unwrap_or_default();
                let network = network_name(&fleet);
                let network = if policies
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(network.as_str()))
                {
                    network
                } else {
                    String::new()
                };
                objects::runtime(&set, secret, ports, network)
            });
            managed.push(observed(name, image, replicas, labels, runtime));
        }
        let agents = agent::observe(self).await?;
        Ok(Observation {
            managed,
            agents,
            others,
        })
    }

    /// Runs `command` in the tenant's pod (`set`: its StatefulSet); its exit code.
    pub async fn exec(
        &self,
        set: &str,
        command: &[String],
        out: &mut (dyn FnMut(bool, &str) + Send),
    ) -> Result<i64, KubeError> {
        exec::exec(self, set, command, out).await
    }

    /// Waits until the pod `name` is gone (deleted, or scaled away), up to `within`.
    /// A pod still there past its grace period is deleted once more, with a grace
    /// period of 1 s, by its uid (see [`missed_deletion`]).
    async fn pod_gone(&self, name: &str, within: Duration) -> Result<(), KubeError> {
        let started = std::time::Instant::now();
        let mut nudged = false;
        loop {
            let found = self
                .call("read the pod", self.api::<Pod>().get_opt(name))
                .await?;
            match found {
                None => return Ok(()),
                Some(_) if started.elapsed() >= within => {
                    return Err(KubeError::Stuck {
                        host: self.host.name.clone(),
                        what: format!("pod {name} is still there"),
                        seconds: within.as_secs(),
                    })
                }
                Some(p) => {
                    if !nudged {
                        nudged = self.nudge_if_missed(&p).await;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
            }
        }
    }

    /// Deletes `p` once more with a grace period of 1 s, by its uid, when the kubelet
    /// missed its deletion ([`missed_deletion`]); says whether it did.
    async fn nudge_if_missed(&self, p: &Pod) -> bool {
        if !missed_deletion(p, chrono::Utc::now().timestamp()) {
            return false;
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(1),
            preconditions: Some(kube::api::Preconditions {
                uid: p.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let name = p.metadata.name.as_deref().unwrap_or_default();
        // The pod may be going meanwhile: a refusal changes nothing.
        let _ = self.api::<Pod>().delete(name, &dp).await;
        true
    }

    /// Deletes a pod of the fleet's (a copy's, a surge) and waits until it is gone.
    async fn delete_pod_until_gone(
        &self,
        what: &str,
        name: &str,
        within: Duration,
    ) -> Result<(), KubeError> {
        self.delete::<Pod>(what, name, &DeleteParams::default())
            .await?;
        self.pod_gone(name, within).await
    }

    pub fn no_pause(&self) -> KubeError {
        KubeError::NoPause {
            host: self.host.name.clone(),
        }
    }
}

/// Whether the node's kubelet missed a pod's deletion: its grace period ended (the
/// deletion timestamp is that deadline) more than 2 s before `now` (Unix seconds)
/// and the pod is still there. A kubelet of Kubernetes 1.20 can miss a deletion that
/// comes while the pod's container is starting, and then stops the pod only at its
/// next full sync, a minute or more later (seen on the test cluster: 74-89 s instead
/// of 15-19 s). A second deletion with a shorter grace period reaches it; the
/// kubelet still stops the container before the pod goes.
fn missed_deletion(p: &Pod, now: i64) -> bool {
    p.metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|deadline| now > deadline.0.as_second() + 2)
}

/// A workload (a tenant's StatefulSet, an agent's Deployment) as the plan sees it:
/// named by its object's name, running while it asks for a replica.
fn observed(
    name: String,
    image: String,
    replicas: i32,
    labels: std::collections::BTreeMap<String, String>,
    runtime: Option<crate::plan::Runtime>,
) -> Observed {
    Observed {
        id: name.clone(),
        name,
        image,
        state: if replicas > 0 {
            RunState::Running
        } else {
            RunState::Exited
        },
        labels: labels.into_iter().collect(),
        runtime,
    }
}

/// The image of a pod template's first container.
fn image_of(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// What the API said, without the Debug dump `kube::Error` adds to its message.
fn said(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

/// A failed call named: what cannot reach the API, or is refused by it for its
/// credentials, makes the host unreachable.
fn classify(host: String, what: &str, e: kube::Error) -> KubeError {
    match e {
        kube::Error::Api(status)
            if status.code == 401 || status.code == 403 && what == "read the node" =>
        {
            KubeError::Credentials {
                host,
                message: format!("{} {}", status.code, status.message),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::Auth(_) => {
            KubeError::Unreachable { host, source: e }
        }
        _ => KubeError::Api {
            host,
            what: what.to_string(),
            source: e,
        },
    }
}

/// Every object `apply` sends to a Kubernetes host, in the order it sends them,
/// each secret value replaced by `(redacted)`: for review, `kubectl diff` and schema
/// checks. Pure: no cluster is asked.
pub fn render(
    fleet: &str,
    host: &HostSpec,
    tenants: &[&crate::spec::TenantSpec],
) -> Vec<serde_json::Value> {
    const REDACTED: &str = "(redacted)";
    let Some(k) = &host.kubernetes else {
        return Vec::new();
    };
    let ns = k.namespace.as_str();
    let network = network_name(fleet);
    let mut out = Vec::new();
    let mut push = |v: Result<serde_json::Value, serde_json::Error>| {
        if let Ok(v) = v {
            out.push(v);
        }
    };
    push(serde_json::to_value(objects::namespace(ns, fleet)));
    push(serde_json::to_value(objects::network_policy(
        fleet, &network, ns,
    )));
    let claims = tenants
        .iter()
        .filter_map(|t| crate::plan::data_claim(host, &t.id).map(|c| (t.id.clone(), c.name)))
        .collect();
    if let Some(d) = crate::plan::agent::DesiredAgent::new(fleet, host, claims) {
        let o = agent::objects(ns, &k.node, &d, REDACTED, None);
        push(serde_json::to_value(o.account));
        push(serde_json::to_value(o.role));
        push(serde_json::to_value(o.binding));
        push(serde_json::to_value(o.secret));
        push(serde_json::to_value(o.deployment));
    }
    for t in tenants {
        let mut w = crate::plan::Workload::new(fleet, host, t);
        w.env.insert("OPENROUTER_API_KEY".into(), REDACTED.into());
        for name in w.secret_env.clone() {
            if let Some(v) = w.env.get_mut(&name) {
                *v = REDACTED.into();
            }
        }
        push(serde_json::to_value(objects::secret(&w, ns)));
        if let Some(c) = objects::claim_of(&w, ns) {
            push(serde_json::to_value(c));
        }
        push(serde_json::to_value(objects::service(&w, ns)));
        push(serde_json::to_value(objects::stateful_set(
            &w, ns, &k.node, 1,
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::missed_deletion;

    /// A pod is nudged only once its grace period has ended without it going: never
    /// while it may still be draining, never when it is not being deleted.
    #[test]
    fn a_deletion_counts_as_missed_only_past_the_grace_period() {
        let deadline = 1_800_000_000;
        let mut p = Pod::default();
        assert!(!missed_deletion(&p, deadline + 60), "not being deleted");
        p.metadata.deletion_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(deadline).expect("time"),
        ));
        assert!(!missed_deletion(&p, deadline - 10), "still draining");
        assert!(!missed_deletion(&p, deadline + 2), "just at its deadline");
        assert!(missed_deletion(&p, deadline + 3));
    }
}
