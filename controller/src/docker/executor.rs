//! A host's actions executed: tenants in parallel up to `--parallel`, each tenant's
//! own actions in order, images checked once per host, the fleet-wide failure budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::StreamExt;

use super::data_dir::purge_or_keep_data;
use super::engine::{ensure_image, remove, Engine};
use super::rollout::{self, Done};
use super::{verify, ExecuteOptions, Outcome, Progress, Status};
use crate::plan::Action;

/// Executes a host's actions: tenants in parallel up to `parallel`, each tenant's own
/// actions in order.
pub async fn execute(
    engine: &Engine,
    actions: Vec<Action>,
    opts: &ExecuteOptions,
    failures: &AtomicUsize,
    progress: &Progress,
) -> Vec<Outcome> {
    let images = ensure_images(engine, &actions, progress).await;
    let images = &images;
    let mut by_tenant: Vec<(String, Vec<Action>)> = Vec::new();
    for a in actions {
        match by_tenant.iter_mut().find(|(t, _)| t == a.tenant()) {
            Some((_, list)) => list.push(a),
            None => by_tenant.push((a.tenant().to_string(), vec![a])),
        }
    }
    futures_util::stream::iter(by_tenant)
        .map(|(_, actions)| execute_tenant(engine, actions, opts, images, failures, progress))
        .buffer_unordered(opts.parallel.max(1))
        .flat_map(futures_util::stream::iter)
        .collect()
        .await
}

/// Whether each image a rollout needs is on the host: checked (and pulled if missing)
/// once per host, not once per tenant.
type Images = HashMap<String, Result<(), std::sync::Arc<super::LaunchError>>>;

async fn ensure_images(engine: &Engine, actions: &[Action], progress: &Progress) -> Images {
    let mut images = Images::new();
    for a in actions {
        let image = match a {
            Action::Create { desired, .. } | Action::Update { desired, .. } => &desired.image,
            _ => continue,
        };
        if !images.contains_key(image) {
            let say = |msg: &str| progress(&engine.host.name, "-", msg);
            // Shared by every tenant of the image.
            let ensured = ensure_image(engine, image, &say).await;
            images.insert(image.clone(), ensured.map_err(std::sync::Arc::new));
        }
    }
    images
}

async fn execute_tenant(
    engine: &Engine,
    actions: Vec<Action>,
    opts: &ExecuteOptions,
    images: &Images,
    failures: &AtomicUsize,
    progress: &Progress,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for action in actions {
        let started = Instant::now();
        let tenant = action.tenant().to_string();
        let verb = action.verb();
        let budget_spent = opts
            .max_failures
            .is_some_and(|max| failures.load(Ordering::SeqCst) >= max);
        let (status, detail, container) = if budget_spent && action.is_change() {
            (
                Status::Skipped,
                "failure budget spent (--max-failures); left as it was".to_string(),
                None,
            )
        } else {
            let say = |msg: &str| progress(&engine.host.name, &tenant, msg);
            run_action(engine, action, opts, images, &say).await
        };
        if matches!(status, Status::Failed | Status::RolledBack) {
            failures.fetch_add(1, Ordering::SeqCst);
        }
        progress(
            &engine.host.name,
            &tenant,
            &format!("{verb}: {} {detail}", status.word()),
        );
        outcomes.push(Outcome {
            host: engine.host.name.clone(),
            tenant,
            action: verb,
            status,
            detail,
            container,
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    outcomes
}

async fn run_action(
    engine: &Engine,
    action: Action,
    opts: &ExecuteOptions,
    images: &Images,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    let image_ok = |image: &str| match images.get(image) {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("image {image} was not checked")),
    };
    match action {
        Action::Unchanged { current, .. } => (
            Status::Ok,
            "running, spec unchanged".into(),
            Some(current.short_id().to_string()),
        ),
        Action::Orphan { container, .. } => (
            Status::Ok,
            format!(
                "{} is not in the spec; kept (use --prune to remove it)",
                container.name
            ),
            Some(container.short_id().to_string()),
        ),
        Action::Blocked { reason, .. } => (Status::Failed, reason, None),
        Action::RemoveLeftover { container, .. } => match remove(engine, &container.id).await {
            Ok(()) => (
                Status::Ok,
                format!("removed leftover {}", container.name),
                None,
            ),
            Err(e) => (Status::Failed, e.to_string(), None),
        },
        Action::Remove { container, tenant } => {
            let mut detail = match remove(engine, &container.id).await {
                Ok(()) => format!("removed {}", container.name),
                Err(e) => return (Status::Failed, e.to_string(), None),
            };
            detail.push_str(&purge_or_keep_data(engine, &tenant, opts.purge_data));
            (Status::Ok, detail, None)
        }
        Action::Start { current, .. } => {
            say("starting");
            if let Err(e) = engine.docker.start_container(&current.id, None).await {
                return (Status::Failed, format!("start failed: {e}"), None);
            }
            match verify::verify(engine, &current.id, None, &opts.verify, None).await {
                Ok(v) => (Status::Ok, v, Some(current.short_id().to_string())),
                Err(e) => (
                    Status::Failed,
                    e.to_string(),
                    Some(current.short_id().to_string()),
                ),
            }
        }
        Action::Create { desired, .. } => match image_ok(&desired.image) {
            Ok(()) => rollout::create(engine, &desired, opts, say).await,
            Err(e) => (Status::Failed, e, None),
        },
        Action::Update {
            desired, previous, ..
        } => match image_ok(&desired.image) {
            Ok(()) => rollout::update(engine, &desired, &previous, opts, say).await,
            Err(e) => (
                Status::Failed,
                format!("{e}; {} left as it was", previous.name),
                None,
            ),
        },
    }
}
