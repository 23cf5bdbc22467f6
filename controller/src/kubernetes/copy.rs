//! A tenant's data directory out of and into its node: the node's disk is reached by
//! a short-lived pod of the agent image on that node (`agent hold`), the tenant's
//! `hostPath` mounted (read-only to copy out), and `agent archive` / `agent unpack`
//! run in it through `pods/exec`, their tar streams on stdout and stdin. Exec, not
//! the pod's own output: a container's stdout is kept in the node's logs, and a
//! tenant's data must not be.
//!
//! A pod cannot be paused, so the store is not frozen: `agent archive` makes SQLite's
//! online backup of it on the node (one moment while the app writes), with empty
//! journals beside it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, HostPathVolumeSource, Pod, PodSpec,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{AttachParams, DeleteParams, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exec::exit_code;
use super::{Cluster, KubeError};
use crate::spec::BackupLimits;
use mai_fleet_core::contract::DATA_MOUNT;

/// Where the helper pod mounts the tenant's directory.
const MOUNT: &str = "/data";
/// How long the helper pod may take to start (the image is on the node: the agent's).
const START_WITHIN: Duration = Duration::from_secs(120);
/// Most of the helper's stderr kept for a failure's message.
const STDERR_MAX: usize = 4096;

/// Which way the data goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Out,
    In { strip: usize },
}

/// The tenant's data directory (`set`: its StatefulSet) as a tar stream, entries
/// `data/…`. An error item ends the stream when the archive failed on the node.
pub fn copy_out(
    cluster: &Cluster,
    set: &str,
    limits: BackupLimits,
) -> impl Stream<Item = Result<Bytes, KubeError>> + use<> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, KubeError>>(8);
    let (cluster, set) = (cluster.clone(), set.to_string());
    tokio::spawn(async move {
        let copied = with_helper(&cluster, &set, Way::Out, &limits, None, Some(tx.clone())).await;
        if let Err(e) = copied {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// A tar stream from `file` unpacked into the tenant's data directory, `path` as
/// the tenant's container sees it: the data directory (entries below it) or its
/// parent (entries `data/…`, as [`copy_out`] makes them).
pub async fn copy_in(
    cluster: &Cluster,
    set: &str,
    path: &str,
    file: tokio::fs::File,
    limits: BackupLimits,
) -> Result<(), KubeError> {
    let data = std::path::Path::new(DATA_MOUNT);
    let strip = if std::path::Path::new(path) == data {
        0
    } else if Some(std::path::Path::new(path)) == data.parent() {
        1
    } else {
        return Err(copy_failed(
            &cluster.host.name,
            format!("only {DATA_MOUNT} or its parent can be written on a node, not {path}"),
        ));
    };
    with_helper(cluster, set, Way::In { strip }, &limits, Some(file), None).await
}

/// Starts the helper pod for `set` on the node, runs the copy in it, and removes it
/// on every path.
async fn with_helper(
    cluster: &Cluster,
    set: &str,
    way: Way,
    limits: &BackupLimits,
    input: Option<tokio::fs::File>,
    output: Option<tokio::sync::mpsc::Sender<Result<Bytes, KubeError>>>,
) -> Result<(), KubeError> {
    let data = data_volume(cluster, set).await?;
    // A name of its own each time: a pod of the same name just deleted may still
    // run on the node, and an exec by name could reach it (a read-only copy-out's
    // pod taking a restore's unpack was seen).
    let way_word = match way {
        Way::Out => "out",
        Way::In { .. } => "in",
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!("{set}-copy-{way_word}-{stamp:x}");
    let mut pod = helper_pod(cluster, &name, data, way, limits);
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL_COPY_OF.into(), set.to_string());
    // What an interrupted copy of this tenant's left (its deadline ended it).
    let leftovers = cluster
        .call(
            "list earlier copies' pods",
            cluster
                .api::<Pod>()
                .list(&ListParams::default().labels(&format!("{LABEL_COPY_OF}={set}"))),
        )
        .await?;
    for old in leftovers
        .items
        .iter()
        .filter_map(|p| p.metadata.name.as_ref())
    {
        cluster
            .delete::<Pod>(
                "remove an earlier copy's pod",
                old,
                &DeleteParams::default(),
            )
            .await?;
    }
    let result = async {
        create(cluster, &pod).await?;
        wait_running(cluster, &name).await?;
        run(cluster, &name, command(way, limits), input, output).await
    }
    .await;
    let removed = remove(cluster, &name).await;
    result.and(removed)
}

/// Marks a copy's pod with the StatefulSet it copies for.
const LABEL_COPY_OF: &str = "mai-fleet.copy-of";

/// Deletes the helper pod and waits until it is gone: a copy leaves nothing behind,
/// and the next one may take the name.
async fn remove(cluster: &Cluster, name: &str) -> Result<(), KubeError> {
    cluster
        .delete_pod_until_gone("remove the copy's pod", name, START_WITHIN)
        .await
}

/// The tenant's data as its StatefulSet mounts it: a directory on the node (which
/// must exist: a copy makes none) or a claim.
pub(super) async fn data_volume(cluster: &Cluster, set: &str) -> Result<Volume, KubeError> {
    let found = cluster
        .call(
            "read the StatefulSet",
            cluster.api::<StatefulSet>().get(set),
        )
        .await?;
    let volume = found
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .into_iter()
        .flatten()
        .find(|v| v.name == "data");
    match volume {
        Some(Volume {
            host_path: Some(h), ..
        }) => Ok(Volume {
            name: "data".into(),
            host_path: Some(HostPathVolumeSource {
                path: h.path,
                type_: Some("Directory".into()),
            }),
            ..Volume::default()
        }),
        Some(Volume {
            persistent_volume_claim: Some(c),
            ..
        }) => Ok(Volume {
            name: "data".into(),
            persistent_volume_claim: Some(c),
            ..Volume::default()
        }),
        _ => Err(KubeError::Copy {
            host: cluster.host.name.clone(),
            why: format!("StatefulSet {set} mounts no data directory from its node or a claim"),
        }),
    }
}

/// A pod of the fleet's made anew: an earlier one of its name may still be going away.
pub(super) async fn create(cluster: &Cluster, pod: &Pod) -> Result<(), KubeError> {
    let started = Instant::now();
    loop {
        match cluster
            .call(
                "create a pod",
                cluster.api::<Pod>().create(&Default::default(), pod),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(KubeError::Api {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 409 && started.elapsed() < START_WITHIN => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn wait_running(cluster: &Cluster, name: &str) -> Result<(), KubeError> {
    let started = Instant::now();
    loop {
        let pod = cluster
            .call("read the copy's pod", cluster.api::<Pod>().get(name))
            .await?;
        let status = pod.status.unwrap_or_default();
        let waiting = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .find(|r| super::rollout::HOPELESS.contains(&r.as_str()));
        match (status.phase.as_deref(), waiting) {
            (Some("Running"), _) => return Ok(()),
            (Some(phase @ ("Failed" | "Succeeded")), _) => {
                return Err(KubeError::Copy {
                    host: cluster.host.name.clone(),
                    why: format!("the copy's pod {name} ended ({phase}) before the copy"),
                })
            }
            (_, Some(reason)) => {
                return Err(KubeError::Copy {
                    host: cluster.host.name.clone(),
                    why: format!("the copy's pod {name} cannot start: {reason}"),
                })
            }
            _ if started.elapsed() >= START_WITHIN => {
                return Err(KubeError::Stuck {
                    host: cluster.host.name.clone(),
                    what: format!("the copy's pod {name} is not running"),
                    seconds: START_WITHIN.as_secs(),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

fn command(way: Way, limits: &BackupLimits) -> Vec<String> {
    let mut c: Vec<String> = vec!["/agent".into()];
    match way {
        Way::Out => c.extend(["archive".into(), "--dir".into(), MOUNT.into()]),
        Way::In { strip } => c.extend([
            "unpack".into(),
            "--dir".into(),
            MOUNT.into(),
            "--strip".into(),
            strip.to_string(),
        ]),
    }
    c.extend([
        "--max-bytes".into(),
        limits.max_bytes.to_string(),
        "--max-files".into(),
        limits.max_files.to_string(),
    ]);
    c
}

/// Runs `command` in the helper: `input` streamed to its stdin, its stdout to
/// `output` chunk by chunk; its exit code must be 0 (else its stderr says why).
async fn run(
    cluster: &Cluster,
    pod: &str,
    command: Vec<String>,
    input: Option<tokio::fs::File>,
    output: Option<tokio::sync::mpsc::Sender<Result<Bytes, KubeError>>>,
) -> Result<(), KubeError> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(cluster.streams.clone(), cluster.namespace());
    let params = AttachParams::default()
        .stdin(input.is_some())
        .stdout(output.is_some())
        .stderr(true);
    let mut attached = cluster
        .call("start the copy", pods.exec(pod, command, &params))
        .await?;
    let status = attached.take_status();
    let mut stderr = attached.stderr();
    let errors = async move {
        let mut said = Vec::new();
        if let Some(r) = stderr.as_mut() {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                // The last lines say why: keep the end.
                said.extend_from_slice(&buf[..n]);
                if said.len() > STDERR_MAX {
                    said.drain(..said.len() - STDERR_MAX);
                }
            }
        }
        String::from_utf8_lossy(&said).into_owned()
    };
    let stdin = attached.stdin();
    let stdout = attached.stdout();
    let host = cluster.host.name.clone();
    let pumped = async move {
        if let (Some(mut file), Some(mut w)) = (input, stdin) {
            // The archive's end marker ends the unpack: the stream needs no close.
            tokio::io::copy(&mut file, &mut w)
                .await
                .map_err(|e| copy_failed(&host, format!("sending the archive: {e}")))?;
            w.flush()
                .await
                .map_err(|e| copy_failed(&host, format!("sending the archive: {e}")))?;
        }
        if let (Some(tx), Some(mut r)) = (output, stdout) {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = r
                    .read(&mut buf)
                    .await
                    .map_err(|e| copy_failed(&host, format!("reading the archive: {e}")))?;
                if n == 0 {
                    break;
                }
                if tx
                    .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    // The reader stopped (its budget): the pod is removed after.
                    return Err(copy_failed(&host, "the reader stopped".into()));
                }
            }
        }
        Ok(())
    };
    let (pumped, said) = tokio::join!(pumped, errors);
    pumped?;
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    match exit_code(status.as_ref()) {
        0 => Ok(()),
        code => Err(copy_failed(
            &cluster.host.name,
            format!(
                "exit {code}: {}",
                crate::bounded(
                    &crate::quote::Masker::default()
                        .last_lines(&said, 3)
                        .join(" | "),
                    1000
                )
            ),
        )),
    }
}

fn copy_failed(host: &str, why: String) -> KubeError {
    KubeError::Copy {
        host: host.to_string(),
        why,
    }
}

/// One pod on the node, the tenant's data (`data`) mounted at [`MOUNT`] (read-only
/// to copy out), a scratch `/tmp` for the store's copy, waiting for the copy's exec.
fn helper_pod(cluster: &Cluster, name: &str, data: Volume, way: Way, limits: &BackupLimits) -> Pod {
    // Reads any of the tenant's files; writes them as their owner's.
    let add: Vec<String> = match way {
        Way::Out => vec!["DAC_READ_SEARCH".into()],
        Way::In { .. } => vec!["CHOWN".into(), "DAC_OVERRIDE".into(), "FOWNER".into()],
    };
    let hold = limits.time.as_secs() + 60;
    let container = Container {
        name: "copy".into(),
        image: Some(super::rollout::helper_image(cluster)),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["hold".into(), "--for".into(), format!("{hold}s")]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(add),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: MOUNT.into(),
                read_only: Some(way == Way::Out),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "scratch".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let volumes = vec![
        data,
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut pod = node_pod(cluster, name, container, volumes);
    if let Some(spec) = pod.spec.as_mut() {
        // Gone by itself if the controller is.
        spec.active_deadline_seconds = Some(hold as i64);
        spec.termination_grace_period_seconds = Some(0);
    }
    pod
}

/// A pod of the fleet's on the host's node that runs once: no service-account
/// token, no service links, never restarted.
pub(super) fn node_pod(
    cluster: &Cluster,
    name: &str,
    container: Container,
    volumes: Vec<Volume>,
) -> Pod {
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
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}
