//! A tenant's objects rendered from its `plan::Workload`, and a StatefulSet read back
//! into a `plan::Runtime` (so drift is the plan's one comparison). Only fields that
//! Kubernetes 1.20 knows are set.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction,
    HostPathVolumeSource, Lifecycle, LifecycleHandler, Namespace, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::plan::{
    Confinement, DataClaim, Resources, Restart, Runtime, Workload, APP_PORT, DATA_MOUNT,
    LABEL_FLEET, LABEL_HOST, LABEL_MANAGED, LABEL_SPEC_HASH, LABEL_TENANT,
};

/// The one container of a tenant's pod.
pub const CONTAINER: &str = "app";
/// The label a StatefulSet puts on each pod: the revision of its template.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// How long a deleted tenant pod goes on serving while its endpoint is removed (the
/// `preStop` hook sleeps; an image without `/bin/sleep` stops at once).
pub const DRAIN_SECONDS: i64 = 5;
/// Marks a surge pod (a new revision beside the running pod during a switch).
pub const LABEL_SURGE: &str = "mai-fleet.surge";
/// Marks the pods of the fleet's agents (the NetworkPolicy lets them in).
pub const AGENT_COMPONENT: &str = "agent";

/// Labels every object of a tenant carries: the fleet's, the spec hash, and the
/// `app.kubernetes.io/*` set.
pub fn labels(w: &Workload) -> BTreeMap<String, String> {
    let mut l = w.labels.clone();
    l.insert("app.kubernetes.io/name".into(), "mai".into());
    l.insert("app.kubernetes.io/instance".into(), w.name.clone());
    l.insert("app.kubernetes.io/component".into(), "tenant".into());
    l.insert("app.kubernetes.io/managed-by".into(), "mai-fleet".into());
    l
}

/// What selects a tenant's pod: never changes (a StatefulSet's selector is
/// immutable), so it holds no hash.
fn selector(w: &Workload) -> BTreeMap<String, String> {
    [LABEL_FLEET, LABEL_TENANT]
        .iter()
        .filter_map(|k| w.labels.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

fn meta(w: &Workload, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(w.name.clone()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels(w)),
        ..ObjectMeta::default()
    }
}

/// The namespace a fleet makes, labelled as its own.
pub fn namespace(name: &str, fleet: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_FLEET.to_string(), fleet.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The key and every `${env:}`/`${file:}` value: the pod reads them by reference.
pub fn secret(w: &Workload, namespace: &str) -> Secret {
    let data = w
        .env
        .iter()
        .filter(|(k, _)| w.secret_env.contains(*k))
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    Secret {
        metadata: meta(w, namespace),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

pub fn service(w: &Workload, namespace: &str) -> Service {
    Service {
        metadata: meta(w, namespace),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(w)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(w.port),
                target_port: Some(IntOrString::Int(i32::from(APP_PORT))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn env(w: &Workload) -> Vec<EnvVar> {
    w.env
        .iter()
        .map(|(name, value)| {
            if w.secret_env.contains(name) {
                EnvVar {
                    name: name.clone(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: w.name.clone(),
                            key: name.clone(),
                            optional: Some(false),
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                }
            } else {
                EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    ..EnvVar::default()
                }
            }
        })
        .collect()
}

fn quantities(r: &Resources) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("memory".to_string(), Quantity(r.memory_bytes.to_string())),
        (
            "cpu".to_string(),
            Quantity(format!("{}m", r.nano_cpus / 1_000_000)),
        ),
    ])
}

/// One replica pinned to `node`, the data directory from the node's disk, requests
/// equal to limits, the Docker tenants' confinement as a security context.
pub fn stateful_set(w: &Workload, namespace: &str, node: &str, replicas: i32) -> StatefulSet {
    let mut pod_labels = selector(w);
    pod_labels.insert(LABEL_MANAGED.into(), "true".into());
    if let Some(h) = w.labels.get(LABEL_HOST) {
        pod_labels.insert(LABEL_HOST.into(), h.clone());
    }
    pod_labels.insert("app.kubernetes.io/component".into(), "tenant".into());
    // The hash in the template: a change of a secret alone (a key rotation) still
    // rolls the pod, which reads secrets only when it starts.
    let annotations = BTreeMap::from([(LABEL_SPEC_HASH.to_string(), w.hash_label().to_string())]);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(w.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        env: Some(env(w)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(APP_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&w.resources)),
            limits: Some(quantities(&w.resources)),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(!w.confinement.no_new_privileges),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(w.confinement.cap_drop.clone()),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        // In the Service's endpoints only once it listens; and still serving for
        // `DRAIN_SECONDS` after it is deleted, while its endpoint goes away (a pod
        // that stopped at once would fail the requests routed to it meanwhile).
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(APP_PORT)),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["/bin/sleep".into(), DRAIN_SECONDS.to_string()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_MOUNT.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    StatefulSet {
        metadata: meta(w, namespace),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(w.name.clone()),
            selector: LabelSelector {
                match_labels: Some(selector(w)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    restart_policy: Some("Always".into()),
                    termination_grace_period_seconds: Some(DRAIN_SECONDS + 10),
                    containers: vec![container],
                    volumes: Some(vec![data_volume(w)]),
                    ..pinned(node, w.claim.is_some())
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The tenant's data: its directory on the node, or its claim.
fn data_volume(w: &Workload) -> Volume {
    match &w.claim {
        Some(c) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.name.clone(),
                read_only: None,
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "data".into(),
            host_path: Some(HostPathVolumeSource {
                path: w.data_dir.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        },
    }
}

/// A pod spec on `node`: named outright (the kubelet takes it, no scheduler), or,
/// for a pod with claims, required by affinity, so that the scheduler binds a claim
/// that waits for its first consumer (`WaitForFirstConsumer`) to a volume there;
/// a pod named to a node outright leaves such a claim unbound.
pub fn pinned(node: &str, claims: bool) -> PodSpec {
    if !claims {
        return PodSpec {
            node_name: Some(node.to_string()),
            ..PodSpec::default()
        };
    }
    PodSpec {
        affinity: Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![node.to_string()]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        }),
        ..PodSpec::default()
    }
}

/// A tenant's claim: made once, before anything mounts it, and never changed after
/// (a claim's class cannot change, and its size only grows where the class allows).
/// Its labels hold no spec hash, so the tenant's rollout and its agent render the
/// same object.
pub fn claim(
    fleet: &str,
    host: &str,
    tenant: &str,
    c: &DataClaim,
    namespace: &str,
) -> PersistentVolumeClaim {
    let labels = BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_TENANT.to_string(), tenant.to_string()),
        (LABEL_HOST.to_string(), host.to_string()),
        (LABEL_FLEET.to_string(), fleet.to_string()),
        ("app.kubernetes.io/name".into(), "mai".into()),
        ("app.kubernetes.io/instance".into(), c.name.clone()),
        ("app.kubernetes.io/component".into(), "data".into()),
        ("app.kubernetes.io/managed-by".into(), "mai-fleet".into()),
    ]);
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(c.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(c.class.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(c.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Whether a claim found in the namespace is the one this fleet made for `tenant` of
/// `host` (its labels as [`claim`] writes them): the only one apply, prune and purge
/// ever touch.
pub fn is_claim_of(found: &ObjectMeta, fleet: &str, host: &str, tenant: &str) -> bool {
    let label = |k: &str| {
        found
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .map(String::as_str)
    };
    label(LABEL_MANAGED) == Some("true")
        && label(LABEL_FLEET) == Some(fleet)
        && label(LABEL_HOST) == Some(host)
        && label(LABEL_TENANT) == Some(tenant)
}

/// The claim of `w`, when its host keeps tenants' data on claims.
pub fn claim_of(w: &Workload, namespace: &str) -> Option<PersistentVolumeClaim> {
    let c = w.claim.as_ref()?;
    Some(claim(
        w.labels.get(LABEL_FLEET).map_or("", String::as_str),
        w.labels.get(LABEL_HOST).map_or("", String::as_str),
        &w.tenant,
        c,
        namespace,
    ))
}

/// A pod of `w`'s template beside the StatefulSet's own (`set`, as the server holds
/// it): selected by the tenant's Service and confined by the NetworkPolicy, but not
/// marked managed (the node's agent reads the store once, through the StatefulSet),
/// and owned by the StatefulSet, so that deleting the tenant deletes a leftover.
pub fn surge_pod(w: &Workload, namespace: &str, node: &str, set: &StatefulSet) -> Pod {
    let template = stateful_set(w, namespace, node, 1)
        .spec
        .map(|s| s.template)
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    if let Some(l) = meta.labels.as_mut() {
        l.remove(LABEL_MANAGED);
        l.remove(LABEL_HOST);
        l.insert(LABEL_SURGE.into(), "true".into());
    }
    meta.name = Some(surge_name(&w.name));
    meta.namespace = Some(namespace.to_string());
    meta.owner_references = set.metadata.uid.clone().map(|uid| {
        vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: w.name.clone(),
            uid,
            // Not the controller: the StatefulSet never adopts or counts it.
            controller: Some(false),
            block_owner_deletion: Some(false),
        }]
    });
    Pod {
        metadata: meta,
        spec: template.spec,
        ..Pod::default()
    }
}

/// The surge pod's name: no ordinal, so no StatefulSet takes it for one of its own.
pub fn surge_name(set: &str) -> String {
    format!("{set}-surge")
}

/// The fleet's NetworkPolicy in a namespace (Docker: the fleet's bridge network with
/// inter-container traffic off): a tenant's pod lets in only the fleet's agents and
/// the cluster's ingress controller, and reaches out only to DNS and HTTPS.
pub fn network_policy(fleet: &str, network: &str, namespace: &str) -> NetworkPolicy {
    let tenants = BTreeMap::from([
        (LABEL_FLEET.to_string(), fleet.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "tenant".to_string(),
        ),
    ]);
    let agents = BTreeMap::from([
        (LABEL_FLEET.to_string(), fleet.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            AGENT_COMPONENT.to_string(),
        ),
    ]);
    let port = |p: i32, proto: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some(proto.into()),
        ..NetworkPolicyPort::default()
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(network.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_FLEET.to_string(), fleet.to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "mai-fleet".to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(tenants),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(agents),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    },
                    // The ingress controller, wherever the cluster runs it.
                    NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "mai-fleet.ingress".to_string(),
                                "true".to_string(),
                            )])),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    },
                ]),
                ports: Some(vec![port(i32::from(APP_PORT), "TCP")]),
            }]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
                    ..NetworkPolicyEgressRule::default()
                },
                NetworkPolicyEgressRule {
                    ports: Some(vec![port(443, "TCP")]),
                    ..NetworkPolicyEgressRule::default()
                },
            ]),
        }),
    }
}

/// What a StatefulSet runs, in the plan's terms: secret references resolved from
/// `secret` (the tenant's Secret as the server holds it), the data mount as
/// `source:target`, the Service's ports as `:port`, `network` when the fleet's
/// NetworkPolicy exists in the namespace.
pub fn runtime(
    set: &StatefulSet,
    secret: Option<&Secret>,
    service_ports: Vec<String>,
    network: String,
) -> Runtime {
    let spec = set.spec.as_ref();
    let pod = spec.and_then(|s| s.template.spec.as_ref());
    let container = pod.and_then(|p| p.containers.iter().find(|c| c.name == CONTAINER));
    let env = container.map(|c| env_of(c, secret)).unwrap_or_default();
    let volumes = pod.and_then(|p| p.volumes.as_ref());
    let mounts = container
        .and_then(|c| c.volume_mounts.as_ref())
        .into_iter()
        .flatten()
        .map(|m| {
            let source = volumes
                .and_then(|v| v.iter().find(|v| v.name == m.name))
                .map(|v| match (&v.host_path, &v.persistent_volume_claim) {
                    (Some(h), _) => h.path.clone(),
                    (None, Some(c)) => format!("claim {}", c.claim_name),
                    (None, None) => format!("volume {}", v.name),
                })
                .unwrap_or_default();
            format!("{source}:{}", m.mount_path)
        })
        .collect();
    let limits = container
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let quantity = |name: &str| limits.and_then(|l| l.get(name)).map(|q| q.0.as_str());
    let resources = Resources {
        memory_bytes: quantity("memory").and_then(bytes_of).unwrap_or(0),
        nano_cpus: quantity("cpu").and_then(nano_cpus_of).unwrap_or(0),
        pids_limit: 0,
    };
    let sc = container.and_then(|c| c.security_context.as_ref());
    let mut other_security = Vec::new();
    match sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str())
    {
        Some("RuntimeDefault") => {}
        Some(other) => other_security.push(format!("seccomp={}", other.to_lowercase())),
        None => other_security.push("seccomp=unset".into()),
    }
    if sc.and_then(|s| s.privileged) == Some(true) {
        other_security.push("privileged".into());
    }
    let restart = match pod.and_then(|p| p.restart_policy.as_deref()) {
        Some("Always") | None => Restart::UnlessStopped,
        Some("OnFailure") => Restart::OnFailure,
        Some("Never") => Restart::Never,
        Some(other) => Restart::Other(other.to_string()),
    };
    let labels = set
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("mai-fleet."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Runtime {
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        env,
        mounts,
        resources,
        ports: service_ports,
        confinement: Confinement {
            cap_drop: sc
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.drop.clone())
                .unwrap_or_default(),
            no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
            other_security,
            restart,
        },
        network,
        labels,
    }
}

/// A container's environment with each reference into the tenant's Secret resolved
/// (a reference to anything else is never what the spec wants).
fn env_of(container: &Container, secret: Option<&Secret>) -> BTreeMap<String, String> {
    let secret_data = secret.and_then(|s| s.data.as_ref());
    let secret_name = secret.and_then(|s| s.metadata.name.as_deref());
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (_, Some(from)) => match &from.secret_key_ref {
                    Some(r) if Some(r.name.as_str()) == secret_name => secret_data
                        .and_then(|d| d.get(&r.key))
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .unwrap_or_default(),
                    _ => "(from another source)".to_string(),
                },
                (Some(v), None) => v.clone(),
                (None, None) => String::new(),
            };
            (e.name.clone(), value)
        })
        .collect()
}

/// A memory quantity in bytes (`2147483648`, `2Gi`, `512M`, `1e9`).
pub fn bytes_of(q: &str) -> Option<i64> {
    const SUFFIXES: [(&str, i64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<i64>().ok()?.checked_mul(factor);
        }
    }
    if let Some((m, e)) = q.split_once(['e', 'E']) {
        return m
            .parse::<i64>()
            .ok()?
            .checked_mul(10i64.checked_pow(e.parse().ok()?)?);
    }
    q.parse().ok()
}

/// A CPU quantity in billionths (`1`, `500m`, `0.5`).
pub fn nano_cpus_of(q: &str) -> Option<i64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<i64>().ok()?.checked_mul(1_000_000);
    }
    let d: rust_decimal::Decimal = q.parse().ok()?;
    (d * rust_decimal::Decimal::from(1_000_000_000u64))
        .trunc()
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::changes;

    fn workload() -> Workload {
        workload_on("{ node: n1 }")
    }

    fn workload_on(kubernetes: &str) -> Workload {
        let spec = crate::spec::load_str(
            std::path::Path::new("t.yaml"),
            &format!("version: 1\nfleet: f\nhosts:\n  - name: k1\n    kubernetes: {kubernetes}\n    data_root: /srv/mai\ntenants:\n  - id: acme\n    name: Acme\n    org_id: acme_1\n    host: k1\n    image: mai/app:1\n    openrouter: {{ api_key: \"${{env:K}}\" }}\n    port: 3001\n"),
            &std::collections::HashMap::from([(
                "K".to_string(),
                format!("sk-or-v1-{}", "a".repeat(64)),
            )]),
        )
        .expect("valid");
        Workload::new("f", &spec.hosts[0], &spec.tenants[0])
    }

    #[test]
    fn a_rendered_tenant_reads_back_as_itself_and_keeps_its_key_out_of_the_pod() {
        let w = workload();
        let set = stateful_set(&w, "mai-f", "n1", 1);
        let secret = secret(&w, "mai-f");
        let rt = runtime(&set, Some(&secret), vec![":3001".into()], w.network.clone());
        assert_eq!(changes(&w, &rt), vec![], "{rt:?}");
        let text = serde_json::to_string(&set).expect("json");
        assert!(!text.contains("sk-or-v1"), "the key is in the StatefulSet");
        assert!(text.contains("secretKeyRef"));
        assert_eq!(w.resources.pids_limit, 0);
    }

    /// A host with a storage class: the tenant's data on a claim of its own, the pod
    /// placed by affinity (so that a claim waiting for its first consumer is bound on
    /// the node), and read back as itself.
    #[test]
    fn a_tenant_on_a_storage_class_mounts_its_own_claim_and_reads_back_as_itself() {
        let w = workload_on("{ node: n1, storage: { class: local-path, size: 5Gi } }");
        let set = stateful_set(&w, "mai-f", "n1", 1);
        let rt = runtime(
            &set,
            Some(&secret(&w, "mai-f")),
            vec![":3001".into()],
            w.network.clone(),
        );
        assert_eq!(changes(&w, &rt), vec![], "{rt:?}");
        assert_eq!(rt.mounts, vec![format!("claim mai-acme-data:{DATA_MOUNT}")]);
        let pod = set.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.node_name, None, "a named node leaves the claim unbound");
        let terms = pod
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("required node affinity")
            .node_selector_terms;
        let field = &terms[0].match_fields.clone().expect("fields")[0];
        assert_eq!(
            (field.key.as_str(), field.values.clone()),
            ("metadata.name", Some(vec!["n1".to_string()]))
        );
        let volume = &pod.volumes.expect("volumes")[0];
        assert!(volume.host_path.is_none());
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("mai-acme-data")
        );
        let claim = claim_of(&w, "mai-f").expect("a claim");
        let spec = claim.spec.expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(
            spec.resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").cloned()),
            Some(Quantity("5Gi".into()))
        );
        let labels = claim.metadata.labels.expect("labels");
        assert_eq!(labels.get(LABEL_TENANT).map(String::as_str), Some("acme"));
        assert!(
            !labels.contains_key(LABEL_SPEC_HASH),
            "a key rotation would touch it"
        );
        // The same tenant on the node's disk: another mount, another hash.
        let plain = workload();
        assert_ne!(plain.hash_label(), w.hash_label());
        assert!(claim_of(&plain, "mai-f").is_none());
    }

    /// The surge pod is picked by the tenant's Service and confined by the fleet's
    /// NetworkPolicy, yet no StatefulSet adopts it and no agent counts it twice.
    #[test]
    fn a_surge_pod_is_served_and_confined_but_neither_adopted_nor_read_by_the_agent() {
        let w = workload();
        let mut set = stateful_set(&w, "mai-f", "n1", 1);
        set.metadata.uid = Some("uid-1".into());
        let pod = surge_pod(&w, "mai-f", "n1", &set);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let selects =
            |want: &BTreeMap<String, String>| want.iter().all(|(k, v)| labels.get(k) == Some(v));
        let service = service(&w, "mai-f");
        assert!(selects(
            &service.spec.and_then(|s| s.selector).expect("selector")
        ));
        let policy = network_policy("f", &w.network, "mai-f");
        let confined = policy
            .spec
            .and_then(|s| s.pod_selector)
            .and_then(|s| s.match_labels);
        assert!(selects(&confined.expect("policy selector")));
        assert!(
            !labels.contains_key(LABEL_MANAGED),
            "the agent would read it"
        );
        assert!(!labels.contains_key(LABEL_HOST), "the agent would read it");
        assert_eq!(labels.get(LABEL_SURGE).map(String::as_str), Some("true"));
        // A StatefulSet's pods are named `<set>-<ordinal>`; any other is not its own.
        let name = pod.metadata.name.clone().expect("name");
        let ordinal = name.rsplit('-').next().unwrap_or_default();
        assert!(ordinal.parse::<u32>().is_err(), "{name}");
        let owner = &pod.metadata.owner_references.clone().expect("owner")[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(false))
        );
        // The same pod as the StatefulSet would make: node, store, key reference, drain.
        let spec = pod.spec.expect("spec");
        let template = set.spec.and_then(|s| s.template.spec).expect("template");
        assert_eq!(spec, template);
        let c = &spec.containers[0];
        assert!(c.readiness_probe.is_some());
        let drain = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
        assert_eq!(
            drain
                .and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone()),
            Some(vec!["/bin/sleep".to_string(), DRAIN_SECONDS.to_string()])
        );
        assert!(spec.termination_grace_period_seconds > Some(DRAIN_SECONDS));
    }

    #[test]
    fn a_variable_removed_by_hand_and_seccomp_off_are_drift() {
        let w = workload();
        let mut set = stateful_set(&w, "mai-f", "n1", 1);
        let pod = set
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .expect("pod");
        let c = &mut pod.containers[0];
        c.env
            .as_mut()
            .expect("env")
            .retain(|e| e.name != "OPENROUTER_EXTERNAL_USER");
        c.security_context.as_mut().expect("sc").seccomp_profile = None;
        let rt = runtime(
            &set,
            Some(&secret(&w, "mai-f")),
            vec![":3001".into()],
            w.network.clone(),
        );
        let words: Vec<String> = changes(&w, &rt).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            words,
            vec![
                "env OPENROUTER_EXTERNAL_USER added (acme_1)".to_string(),
                "security_opt no-new-privileges,seccomp=unset -> no-new-privileges".to_string()
            ]
        );
    }

    #[test]
    fn quantities_are_read_as_the_server_writes_them() {
        assert_eq!(bytes_of("2Gi"), Some(2 << 30));
        assert_eq!(bytes_of("2147483648"), Some(2 << 30));
        assert_eq!(bytes_of("1e3"), Some(1000));
        assert_eq!(nano_cpus_of("1"), Some(1_000_000_000));
        assert_eq!(nano_cpus_of("500m"), Some(500_000_000));
        assert_eq!(nano_cpus_of("0.25"), Some(250_000_000));
    }
}
