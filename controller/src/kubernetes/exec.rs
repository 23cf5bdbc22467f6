//! `exec` in a tenant's pod: the command run through the API's `pods/exec` (a
//! websocket), its stdout and stderr handed over as they come, its exit code read
//! from the status Kubernetes ends the stream with.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

use super::rollout::pod_name;
use super::{Cluster, KubeError};

/// Reads one output stream to its end, chunk by chunk, into `out` via `tx`.
async fn pump(
    mut r: impl tokio::io::AsyncRead + Unpin,
    is_err: bool,
    tx: tokio::sync::mpsc::Sender<(bool, String)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0
            || tx
                .send((is_err, String::from_utf8_lossy(&buf[..n]).into_owned()))
                .await
                .is_err()
        {
            break;
        }
    }
}

/// The exit code in the status that ends an exec: 0 for Success, the
/// `ExitCode` cause of a NonZeroExitCode failure, -1 when Kubernetes gives none.
pub fn exit_code(status: Option<&Status>) -> i64 {
    let Some(s) = status else { return -1 };
    if s.status.as_deref() == Some("Success") {
        return 0;
    }
    s.details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(-1)
}

pub async fn exec(
    cluster: &Cluster,
    set: &str,
    command: &[String],
    out: &mut (dyn FnMut(bool, &str) + Send),
) -> Result<i64, KubeError> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(cluster.streams.clone(), cluster.namespace());
    let params = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut attached = cluster
        .call(
            "start the exec",
            pods.exec(&pod_name(set), command.to_vec(), &params),
        )
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    if let Some(o) = attached.stdout() {
        tokio::spawn(pump(o, false, tx.clone()));
    }
    if let Some(e) = attached.stderr() {
        tokio::spawn(pump(e, true, tx.clone()));
    }
    drop(tx);
    let status = attached.take_status();
    while let Some((is_err, text)) = rx.recv().await {
        out(is_err, &text);
    }
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    Ok(exit_code(status.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn exit_codes_come_from_the_status() {
        let ok = Status {
            status: Some("Success".into()),
            ..Default::default()
        };
        let failed = Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("3".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            (
                exit_code(Some(&ok)),
                exit_code(Some(&failed)),
                exit_code(None)
            ),
            (0, 3, -1)
        );
    }
}
