//! `--purge-data` on a Kubernetes host: the node's disk is reached by a pod of the
//! agent image on that node (`agent purge`, which follows no link), waited for, and
//! removed.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, HostPathVolumeSource, Pod, PodSpec, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
    let started = Instant::now();
    loop {
        match cluster
            .call("start the purge", api.create(&Default::default(), &pod))
            .await
        {
            Ok(_) => break,
            // The earlier one is still going away.
            Err(KubeError::Api {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 409 && started.elapsed() < WITHIN => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
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
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(cluster.namespace().to_string()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "mai-fleet".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(cluster.node.node.clone()),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "data".into(),
                host_path: Some(HostPathVolumeSource {
                    path: root,
                    type_: Some("Directory".into()),
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}
