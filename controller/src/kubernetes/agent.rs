//! A Kubernetes host's agent: a Deployment of one pod pinned to the node, on the
//! node's network (it reaches the database as the node does), the tenants' data
//! read-only from the node's `data_root`, the host's database URL and CA from a
//! Secret mounted as files (never in its environment). Its service account may list
//! the namespace's pods and StatefulSets and nothing else: no Secret, no exec, no other namespace.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, HostPathVolumeSource, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Secret,
    SecretVolumeSource, SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams};

use super::objects::AGENT_COMPONENT;
use super::{Cluster, KubeError};
use crate::plan::agent::{
    is_agent_of, DesiredAgent, CA_PATH, DATABASE_URL_PATH, LABEL_AGENT_OF, SPOOL_PATH,
};
use crate::plan::{DataClaim, Observed, LABEL_FLEET};
use crate::spec::ClaimStorage;
use mai_fleet_core::contract::claim_dir;

/// The Role every agent of the namespace is bound to.
pub const AGENT_ROLE: &str = "mai-fleet-agent";

/// How long the old agent may take to go before a new one is made.
const GONE_WITHIN: Duration = Duration::from_secs(60);

/// The agents found in the namespace (Deployments labelled as some host's agent).
pub async fn observe(cluster: &Cluster) -> Result<Vec<Observed>, KubeError> {
    let lp = ListParams::default().labels(LABEL_AGENT_OF);
    let list = cluster
        .call("list the agents", cluster.api::<Deployment>().list(&lp))
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|d| {
            let name = d.metadata.name.clone().unwrap_or_default();
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let image = d
                .spec
                .as_ref()
                .map(|s| super::image_of(&s.template))
                .unwrap_or_default();
            super::observed(
                name,
                image,
                replicas,
                d.metadata.labels.unwrap_or_default(),
                None,
            )
        })
        .collect())
}

/// No agent of this host left: the old one goes (and its pod with it) before the new
/// one is made; its password is being rotated. A Deployment of that name that is not
/// this fleet's agent of this host stops the deployment.
pub async fn prepare(cluster: &Cluster, desired: &DesiredAgent) -> Result<(), KubeError> {
    let api = cluster.api::<Deployment>();
    let Some(old) = cluster
        .call("read the agent", api.get_opt(&desired.name))
        .await?
    else {
        return Ok(());
    };
    let labels: std::collections::HashMap<String, String> = old
        .metadata
        .labels
        .unwrap_or_default()
        .into_iter()
        .collect();
    let fleet = fleet_of(desired);
    if !is_agent_of(&labels, fleet, &desired.host) {
        return Err(KubeError::NotOurs {
            host: cluster.host.name.clone(),
            name: desired.name.clone(),
        });
    }
    cluster
        .call(
            "remove the old agent",
            api.delete(&desired.name, &DeleteParams::foreground()),
        )
        .await?;
    let since = Instant::now();
    let mut nudged = std::collections::BTreeSet::new();
    loop {
        let left = cluster
            .call("read the agent", api.get_opt(&desired.name))
            .await?;
        let pods = agent_pods(cluster, &desired.host).await?;
        if left.is_none() && pods.is_empty() {
            return Ok(());
        }
        // A pod whose deletion the kubelet missed holds the Deployment (foreground).
        for p in &pods {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if !nudged.contains(&uid) && cluster.nudge_if_missed(p).await {
                nudged.insert(uid);
            }
        }
        if since.elapsed() >= GONE_WITHIN {
            return Err(KubeError::Stuck {
                host: cluster.host.name.clone(),
                what: format!("the old agent {} is still there", desired.name),
                seconds: GONE_WITHIN.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Makes the agent with this database URL and watches its pod for `settle`.
pub async fn deploy(
    cluster: &Cluster,
    d: &DesiredAgent,
    database_url: &str,
    settle: Duration,
) -> Result<String, KubeError> {
    // The agent may be the host's first object (it is made before the tenants).
    super::rollout::prepare(cluster, fleet_of(d)).await?;
    let o = objects(
        cluster.namespace(),
        &cluster.node.node,
        d,
        database_url,
        cluster.node.storage.as_ref(),
    );
    // The tenants' claims it mounts: made here when the agent comes first.
    for claim in &o.claims {
        super::rollout::make_claim(cluster, claim).await?;
    }
    cluster.apply(&d.name, &o.account).await?;
    cluster.apply(AGENT_ROLE, &o.role).await?;
    cluster.apply(&d.name, &o.binding).await?;
    cluster.apply(&d.name, &o.secret).await?;
    cluster.apply(&d.name, &o.deployment).await?;
    watch(cluster, &d.host, settle).await?;
    Ok(format!(
        "{} runs {} on node {}",
        d.name, d.image, cluster.node.node
    ))
}

/// Everything a host's agent is made of.
pub struct AgentObjects {
    pub account: ServiceAccount,
    pub role: Role,
    pub binding: RoleBinding,
    pub secret: Secret,
    pub deployment: Deployment,
    /// The tenants' claims the agent mounts.
    pub claims: Vec<PersistentVolumeClaim>,
}

/// `storage`: the host's, for the claims the agent may be the first to mount (one
/// made already is left as it is).
pub fn objects(
    ns: &str,
    node: &str,
    d: &DesiredAgent,
    database_url: &str,
    storage: Option<&ClaimStorage>,
) -> AgentObjects {
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(d.labels.clone()),
        ..ObjectMeta::default()
    };
    let mut data = BTreeMap::from([(
        "database-url".to_string(),
        ByteString(database_url.as_bytes().to_vec()),
    )]);
    if let Some(ca) = &d.ca_pem {
        data.insert("db-ca.pem".into(), ByteString(ca.as_bytes().to_vec()));
    }
    AgentObjects {
        account: ServiceAccount {
            metadata: meta(&d.name),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        role: role(ns),
        binding: RoleBinding {
            metadata: meta(&d.name),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: AGENT_ROLE.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: d.name.clone(),
                namespace: Some(ns.to_string()),
                ..Subject::default()
            }]),
        },
        secret: Secret {
            metadata: meta(&d.name),
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Secret::default()
        },
        deployment: deployment(ns, node, d),
        claims: storage
            .map(|s| {
                claims_of(d)
                    .iter()
                    .map(|(tenant, name)| {
                        let c = DataClaim {
                            name: name.clone(),
                            class: s.class.clone(),
                            size: s.size.clone(),
                        };
                        super::objects::claim(fleet_of(d), &d.host, tenant, &c, ns)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn fleet_of(d: &DesiredAgent) -> &str {
    d.labels.get(LABEL_FLEET).map_or("", String::as_str)
}

/// Pods and StatefulSets: list them, read them; nothing else.
fn role(namespace: &str) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(AGENT_ROLE.into()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "mai-fleet".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs: vec!["get".into(), "list".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec!["apps".into()]),
                resources: Some(vec!["statefulsets".into()]),
                verbs: vec!["get".into(), "list".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

fn deployment(ns: &str, node: &str, d: &DesiredAgent) -> Deployment {
    let selector = BTreeMap::from([
        (LABEL_AGENT_OF.to_string(), d.host.clone()),
        (
            LABEL_FLEET.to_string(),
            d.labels.get(LABEL_FLEET).cloned().unwrap_or_default(),
        ),
    ]);
    let mut pod_labels = selector.clone();
    pod_labels.insert("app.kubernetes.io/component".into(), AGENT_COMPONENT.into());
    Deployment {
        metadata: ObjectMeta {
            name: Some(d.name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(d.labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // One agent a host at a time: two would ship the same rows.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(d.name.clone()),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    // The node's network: the database as the node reaches it.
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    containers: vec![agent_container(ns, d)],
                    volumes: Some(agent_volumes(d)),
                    ..super::objects::pinned(node, !claims_of(d).is_empty())
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn dir_of(p: &str) -> String {
    std::path::Path::new(p)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

fn file_of(p: &str) -> String {
    std::path::Path::new(p)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The agent's container: its command line, the namespace it reads, where the node
/// reaches the API server (when the spec says), its files read-only, its spool.
fn agent_container(ns: &str, d: &DesiredAgent) -> Container {
    let mut env = vec![EnvVar {
        name: "MAI_FLEET_KUBERNETES_NAMESPACE".into(),
        value: Some(ns.to_string()),
        ..EnvVar::default()
    }];
    // Where the node reaches the API server, when the cluster's Service is not the way.
    if let Some((host, port)) = d
        .kubernetes
        .as_ref()
        .and_then(|k| k.api_server.as_deref())
        .and_then(|u| {
            u.trim_start_matches("https://")
                .trim_end_matches('/')
                .rsplit_once(':')
        })
    {
        for (name, value) in [
            ("KUBERNETES_SERVICE_HOST", host),
            ("KUBERNETES_SERVICE_PORT", port),
        ] {
            env.push(EnvVar {
                name: name.into(),
                value: Some(value.to_string()),
                ..EnvVar::default()
            });
        }
    }
    let mount = |name: &str, at: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: at.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let limits = BTreeMap::from([("memory".to_string(), Quantity("256Mi".into()))]);
    Container {
        name: "agent".into(),
        image: Some(d.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(d.args()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            limits: Some(limits.clone()),
            requests: Some(limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            // Stores may belong to any user of the tenant's image.
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["DAC_READ_SEARCH".into()]),
            }),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            [
                mount("database-url", &dir_of(DATABASE_URL_PATH), true),
                mount("db-ca-pem", &dir_of(CA_PATH), true),
                mount("data", &d.data_root, true),
                mount("spool", SPOOL_PATH, false),
            ]
            .into_iter()
            .chain(claims_of(d).iter().enumerate().map(|(i, (_, c))| {
                let at = claim_dir(c).map(|p| p.display().to_string());
                mount(&claim_volume(i), &at.unwrap_or_default(), true)
            }))
            .collect(),
        ),
        ..Container::default()
    }
}

/// The database URL and CA (owner-only files from the agent's Secret), the node's
/// `data_root`, the spool on the node.
fn agent_volumes(d: &DesiredAgent) -> Vec<Volume> {
    let secret_file = |key: &str, path: &str| Volume {
        name: key.replace('.', "-"),
        secret: Some(SecretVolumeSource {
            secret_name: Some(d.name.clone()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                mode: Some(0o400),
            }]),
            default_mode: Some(0o400),
            optional: Some(key != "database-url"),
        }),
        ..Volume::default()
    };
    let host_path = |name: &str, path: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some("DirectoryOrCreate".into()),
        }),
        ..Volume::default()
    };
    let claims = claims_of(d).iter().enumerate().map(|(i, (_, c))| Volume {
        name: claim_volume(i),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: c.clone(),
            read_only: Some(true),
        }),
        ..Volume::default()
    });
    [
        secret_file("database-url", &file_of(DATABASE_URL_PATH)),
        secret_file("db-ca.pem", &file_of(CA_PATH)),
        host_path("data", &d.data_root),
        host_path("spool", &format!("/var/lib/mai-fleet/spool/{}", d.host)),
    ]
    .into_iter()
    .chain(claims)
    .collect()
}

/// The pod's name for its `i`th claim (a claim's own name could be any of the
/// others': `data`, `spool`).
fn claim_volume(i: usize) -> String {
    format!("claim-{i}")
}

/// The host's tenants' claims, `(tenant id, claim)`.
fn claims_of(d: &DesiredAgent) -> &[(String, String)] {
    d.kubernetes.as_ref().map_or(&[], |k| k.claims.as_slice())
}

async fn agent_pods(cluster: &Cluster, host: &str) -> Result<Vec<Pod>, KubeError> {
    let lp = ListParams::default().labels(&format!("{LABEL_AGENT_OF}={host}"));
    Ok(cluster
        .call("list the agent's pods", cluster.api::<Pod>().list(&lp))
        .await?
        .items)
}

/// The agent's pod runs, and does not restart, for `settle`.
async fn watch(cluster: &Cluster, host: &str, settle: Duration) -> Result<(), KubeError> {
    let started = Instant::now();
    let mut running_since: Option<Instant> = None;
    let mut base: Option<i32> = None;
    let limit = settle + Duration::from_secs(60);
    loop {
        let pods = agent_pods(cluster, host).await?;
        let status = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref())
            .filter_map(|s| s.container_statuses.as_ref())
            .flatten()
            .next();
        match status {
            Some(s) if s.state.as_ref().is_some_and(|st| st.running.is_some()) => {
                let restarts = s.restart_count;
                if restarts > *base.get_or_insert(restarts) {
                    return Err(KubeError::AgentNotRunning {
                        host: cluster.host.name.clone(),
                        why: format!("restarting ({restarts} restarts)"),
                    });
                }
                if running_since.get_or_insert_with(Instant::now).elapsed() >= settle {
                    return Ok(());
                }
            }
            Some(s) => {
                running_since = None;
                let waiting = s.state.as_ref().and_then(|st| st.waiting.as_ref());
                if let Some(reason) = waiting.and_then(|w| w.reason.as_deref()) {
                    if super::rollout::HOPELESS.contains(&reason) {
                        return Err(KubeError::AgentNotRunning {
                            host: cluster.host.name.clone(),
                            why: reason.to_string(),
                        });
                    }
                }
            }
            None => running_since = None,
        }
        if started.elapsed() >= limit {
            return Err(KubeError::AgentNotRunning {
                host: cluster.host.name.clone(),
                why: format!("not running within {}s", limit.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn start(
    cluster: &Cluster,
    name: &str,
    host: &str,
    settle: Duration,
) -> Result<String, KubeError> {
    let patch = serde_json::json!({ "spec": { "replicas": 1 } });
    cluster
        .merge::<Deployment>("start the agent", name, patch)
        .await?;
    watch(cluster, host, settle).await?;
    Ok(format!("{name} started"))
}

/// The agent's Deployment and what only it used (its Secret, service account and
/// binding); the namespace's Role stays for the other hosts' agents.
pub async fn remove(cluster: &Cluster, name: &str) -> Result<String, KubeError> {
    let dp = DeleteParams::default();
    cluster
        .delete::<Deployment>("remove the agent", name, &dp)
        .await?;
    cluster
        .delete::<Secret>("remove the agent's Secret", name, &dp)
        .await?;
    cluster
        .delete::<RoleBinding>("remove the agent's binding", name, &dp)
        .await?;
    cluster
        .delete::<ServiceAccount>("remove the agent's account", name, &dp)
        .await?;
    Ok(format!("{name} removed"))
}

/// The agent's last warnings (why it cannot ship), as a suffix for a failure.
pub async fn last_warnings(cluster: &Cluster, host: &str) -> String {
    let Ok(pods) = agent_pods(cluster, host).await else {
        return String::new();
    };
    let Some(name) = pods.first().and_then(|p| p.metadata.name.clone()) else {
        return String::new();
    };
    let params = kube::api::LogParams {
        tail_lines: Some(200),
        limit_bytes: Some(128 << 10),
        ..kube::api::LogParams::default()
    };
    let log = cluster
        .call(
            "read the agent's log",
            cluster.api::<Pod>().logs(&name, &params),
        )
        .await
        .unwrap_or_default();
    crate::quote::agent_warnings(&log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_of(d: Deployment) -> PodSpec {
        d.spec.and_then(|s| s.template.spec).expect("pod")
    }

    /// On a host with a storage class the agent mounts each tenant's claim read-only
    /// where its discovery looks, under a volume name no claim's own name can clash
    /// with, is placed by affinity (so that its claims bind on the node), and makes
    /// the claims it may be the first to mount.
    #[test]
    fn an_agent_on_claims_mounts_each_read_only_where_discovery_looks() {
        let spec = crate::spec::load_str(
            std::path::Path::new("t.yaml"),
            "version: 1\nfleet: f\nagents: { database_url: \"postgres://127.0.0.1:5432/f\" }\nhosts:\n  - name: k1\n    kubernetes: { node: n1, storage: { class: local-path } }\n    data_root: /srv/mai\ntenants: []\n",
            &std::collections::HashMap::new(),
        )
        .expect("valid");
        let host = &spec.hosts[0];
        let claims = vec![
            ("acme".to_string(), "mai-acme-data".to_string()),
            ("beta".to_string(), "data".to_string()),
        ];
        let d = DesiredAgent::new("f", host, claims).expect("an agent");
        let storage = host.kubernetes.as_ref().and_then(|k| k.storage.as_ref());
        let o = objects("mai-f", "n1", &d, "postgres://x", storage);
        let pod = pod_of(o.deployment);
        assert_eq!(pod.node_name, None);
        assert!(pod.affinity.is_some());
        let volumes = pod.volumes.expect("volumes");
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        let unique: std::collections::BTreeSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
        for claim in ["mai-acme-data", "data"] {
            let v = volumes
                .iter()
                .find(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim && c.read_only == Some(true))
                })
                .expect("the claim's volume");
            let m = mounts.iter().find(|m| m.name == v.name).expect("mounted");
            let at = claim_dir(claim).expect("a claim's dir");
            assert_eq!(m.mount_path, at.display().to_string());
            assert_eq!(m.read_only, Some(true));
        }
        let made: Vec<String> = o
            .claims
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        assert_eq!(made, ["mai-acme-data", "data"]);
        // Without a storage class, nothing of it.
        let plain = DesiredAgent::new("f", host, Vec::new()).expect("an agent");
        let o = objects("mai-f", "n1", &plain, "postgres://x", None);
        let pod = pod_of(o.deployment);
        assert_eq!(pod.node_name.as_deref(), Some("n1"));
        assert!(o.claims.is_empty());
    }
}
