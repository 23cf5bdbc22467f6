//! `--purge-data` on a Kubernetes host: the node's disk, or the tenant's claim, is
//! reached by a pod of the agent image on that node (`agent purge`, which follows no
//! link), waited for, and removed; then the claim is deleted.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, HostPathVolumeSource, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, Pod, SecurityContext, Volume, VolumeMount,
};
use kube::api::DeleteParams;

use super::{Cluster, KubeError};
use crate::plan::claim_name;

const WITHIN: Duration = Duration::from_secs(120);

/// The claim fleet `fleet`'s tenant `tenant` of this host keeps its data on, if
/// there is one (a host with a storage class): what prune keeps and purge deletes.
pub async fn claim_of(
    cluster: &Cluster,
    fleet: &str,
    tenant: &str,
) -> Result<Option<String>, KubeError> {
    let name = claim_name(tenant);
    let found = cluster
        .call(
            "read the claim",
            cluster.api::<PersistentVolumeClaim>().get_opt(&name),
        )
        .await?;
    let ours = found.is_some_and(|c| {
        super::objects::is_claim_of(&c.metadata, fleet, &cluster.host.name, tenant)
    });
    Ok(ours.then_some(name))
}

/// Deletes `<data_root>/<tenant>` on the host's node, and the tenant's claim with
/// what is in it; says what was done.
pub async fn purge(
    cluster: &Cluster,
    image: &str,
    fleet: &str,
    tenant: &str,
) -> Result<String, KubeError> {
    let on_node = run(cluster, purge_pod(cluster, image, tenant, None)).await?;
    let Some(claim) = claim_of(cluster, fleet, tenant).await? else {
        return Ok(on_node);
    };
    // Emptied first: a claim's volume may be kept after the claim (a class whose
    // reclaim policy is Retain), and the data must not be.
    let emptied = run(cluster, purge_pod(cluster, image, tenant, Some(&claim))).await?;
    // Gone once no pod mounts it (the agent lets it go when it is rolled next).
    cluster
        .delete::<PersistentVolumeClaim>("delete the claim", &claim, &DeleteParams::default())
        .await?;
    Ok(format!("{on_node}; {emptied}; claim {claim} deleted"))
}

/// Runs one purge pod to its end and removes it; says what the pod said.
async fn run(cluster: &Cluster, pod: Pod) -> Result<String, KubeError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api = cluster.api::<Pod>();
    let dp = DeleteParams::default();
    // A pod left by an interrupted purge goes first.
    cluster
        .delete::<Pod>("remove an earlier purge", &name, &dp)
        .await?;
    super::copy::create(cluster, &pod).await?;
    let started = Instant::now();
    let outcome = loop {
        let p = cluster.call("read the purge", api.get(&name)).await?;
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        match phase.as_str() {
            "Succeeded" | "Failed" => break phase,
            _ if started.elapsed() >= WITHIN => break "did not finish".to_string(),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let log = cluster
        .call(
            "read the purge's log",
            api.logs(&name, &kube::api::LogParams::default()),
        )
        .await
        .unwrap_or_default();
    let said = crate::quote::Masker::default()
        .last_lines(&log, 2)
        .join(" | ");
    cluster
        .delete::<Pod>("remove the purge", &name, &dp)
        .await?;
    if outcome == "Succeeded" {
        Ok(said)
    } else {
        Err(KubeError::Purge {
            host: cluster.host.name.clone(),
            why: format!("{outcome}: {said}"),
        })
    }
}

/// One pod on the node running `agent purge` once: `data_root` mounted, or the
/// tenant's `claim` mounted as `/purge/<tenant>` and emptied.
fn purge_pod(cluster: &Cluster, image: &str, tenant: &str, claim: Option<&str>) -> Pod {
    let (name, root, volume) = match claim {
        None => (
            format!("mai-purge-{tenant}"),
            cluster.host.data_root.clone(),
            Volume {
                name: "data".into(),
                host_path: Some(HostPathVolumeSource {
                    path: cluster.host.data_root.clone(),
                    type_: Some("Directory".into()),
                }),
                ..Volume::default()
            },
        ),
        Some(c) => (
            format!("mai-purge-{tenant}-claim"),
            "/purge".to_string(),
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: c.to_string(),
                    read_only: None,
                }),
                ..Volume::default()
            },
        ),
    };
    let mut args: Vec<String> = ["purge", "--data-root", &root, "--tenant", tenant]
        .map(String::from)
        .to_vec();
    let mount_path = match claim {
        None => root.clone(),
        Some(_) => {
            args.push("--keep-directory".into());
            format!("{root}/{tenant}")
        }
    };
    let container = Container {
        name: "purge".into(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            // Files of any user of the tenant's image are deleted.
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["DAC_OVERRIDE".into(), "FOWNER".into()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path,
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    super::copy::node_pod(cluster, &name, container, vec![volume])
}
