//! An update without a gap (a key rotation): a single-replica StatefulSet deletes its
//! pod before it makes the new one, so the new revision is first started beside the
//! running pod, on the same node and store, as a pod the tenant's Service also
//! selects; only once it is verified does the StatefulSet replace its own pod, and
//! the surge pod goes once the replacement is verified. Pods leave the Service's
//! endpoints before they stop (the template's `preStop` drain), so every request
//! finds a pod that serves.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::objects;
use super::rollout::{self, Kept, Watch};
use super::{Cluster, KubeError};
use crate::execution::{Done, ExecuteOptions, Status};
use crate::plan::{Observed, Workload};

/// Room for a deleted pod's drain, grace period and the kubelet's teardown (9-15 s
/// on an idle 2-core node, much longer on a loaded one): as `stop` allows.
const GONE_WITHIN: Duration = Duration::from_secs(objects::DRAIN_SECONDS as u64 + 60);

/// Applies `d` over `previous` through a surge pod; an update with nothing serving
/// (no Ready pod) has no gap to cover and is a plain update.
pub(super) async fn update(
    cluster: &Cluster,
    d: &Workload,
    previous: &Observed,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    let kept = match rollout::kept(cluster, &previous.name).await {
        Ok(k) => k,
        Err(e) => return (Status::Failed, format!("{e}; nothing changed"), None),
    };
    // Before a surge pod mounts the new place.
    if let Some(refused) = rollout::data_moves(cluster, d, &kept) {
        return refused;
    }
    if !serving(cluster, &previous.name).await {
        return rollout::update_from(cluster, d, previous, &kept, opts, say).await;
    }
    let surge = objects::surge_name(&d.name);
    if let Err(e) = remove(cluster, &surge).await {
        return (Status::Failed, format!("{e}; nothing changed"), None);
    }
    say("starting the new revision beside the running pod");
    if let Err(why) = start(cluster, d, &kept, opts).await {
        let back = put_back(cluster, &d.name, &surge, &kept).await;
        return (
            Status::RolledBack,
            format!("the new revision did not serve beside the running pod: {why}; the running pod was left as it was{back}"),
            Some(previous.name.clone()),
        );
    }
    say("switching: the StatefulSet replaces its pod while the surge pod serves");
    let (status, detail, container) =
        rollout::update_from(cluster, d, previous, &kept, opts, say).await;
    let gone = match remove(cluster, &surge).await {
        Ok(()) => "; switched with no gap (a surge pod served meanwhile, now removed)".into(),
        Err(e) => format!("; the surge pod {surge} is left: {e}"),
    };
    (status, format!("{detail}{gone}"), container)
}

/// The StatefulSet's pod is there, Ready and not going away.
async fn serving(cluster: &Cluster, set: &str) -> bool {
    let pod = cluster
        .call(
            "read the pod",
            cluster.api::<Pod>().get_opt(&rollout::pod_name(set)),
        )
        .await;
    matches!(pod, Ok(Some(p)) if p.metadata.deletion_timestamp.is_none() && rollout::pod_ready(&p))
}

/// The new Secret (the surge pod reads it) and the surge pod, verified as a launch is.
async fn start(
    cluster: &Cluster,
    d: &Workload,
    kept: &Kept,
    opts: &ExecuteOptions,
) -> Result<String, String> {
    let ns = cluster.namespace();
    cluster
        .apply(&d.name, &objects::secret(d, ns))
        .await
        .map_err(|e| e.to_string())?;
    let pod = objects::surge_pod(d, ns, &cluster.node.node, &kept.set);
    super::copy::create(cluster, &pod)
        .await
        .map_err(|e| e.to_string())?;
    let surge = objects::surge_name(&d.name);
    rollout::watch(cluster, Watch::Pod(&surge), &opts.verify, Some(d))
        .await
        .map_err(|e| e.0)
}

/// After a surge pod that did not serve: it goes, and the Secret is put back (the
/// running pod read its own when it started and never saw the new one).
async fn put_back(cluster: &Cluster, set: &str, surge: &str, kept: &Kept) -> String {
    let mut said = String::new();
    if let Err(e) = remove(cluster, surge).await {
        said.push_str(&format!("; the surge pod is left: {e}"));
    }
    if let Err(e) = rollout::put_back_secret(cluster, set, kept.secret.as_ref()).await {
        said.push_str(&format!("; the previous Secret could NOT be put back: {e}"));
    }
    said
}

/// Deletes a surge pod (drained like any tenant pod) and waits until it is gone.
pub(super) async fn remove(cluster: &Cluster, surge: &str) -> Result<(), KubeError> {
    cluster
        .delete_pod_until_gone("delete the surge pod", surge, GONE_WITHIN)
        .await
}
