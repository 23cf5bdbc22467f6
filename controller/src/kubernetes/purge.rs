//! `--purge-data` on a Kubernetes host: the node's disk is reached by a pod of the
//! agent image on that node (`agent purge`, which follows no link), waited for, and
//! removed.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, HostPathVolumeSource, Pod, SecurityContext, Volume, VolumeMount,
};
use kube::api::DeleteParams;

use super::{Cluster, KubeError};

const WITHIN: Duration = Duration::from_secs(120);

/// Deletes `<data_root>/<tenant>` on the host's node; says what was done.
pub async fn purge(cluster: &Cluster, image: &str, tenant: &str) -> Result<String, KubeError> {
    let name = format!("mai-purge-{tenant}");
    let pod = purge_pod(cluster, &name, image, tenant);
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

/// One pod on the node, `data_root` mounted, running `agent purge` once.
fn purge_pod(cluster: &Cluster, name: &str, image: &str, tenant: &str) -> Pod {
    let root = cluster.host.data_root.clone();
    let container = Container {
        name: "purge".into(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(
            ["purge", "--data-root", &root, "--tenant", tenant]
                .map(String::from)
                .to_vec(),
        ),
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
            mount_path: root.clone(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let volume = Volume {
        name: "data".into(),
        host_path: Some(HostPathVolumeSource {
            path: root,
            type_: Some("Directory".into()),
        }),
        ..Volume::default()
    };
    super::copy::node_pod(cluster, name, container, vec![volume])
}
