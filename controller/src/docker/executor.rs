//! A host's actions executed: tenants in parallel up to `--parallel`, each tenant's
//! own actions in order, images checked once per host, the fleet-wide failure budget.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

use futures_util::future::BoxFuture;

use super::data_dir::purge_or_keep_data;
use super::engine::{ensure_image, remove, Engine};
use super::rollout;
use super::{verify, ExecuteOptions, Outcome, Progress, Status};
use crate::execution::{schedule, Done, Launcher};
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
    let launcher = DockerLauncher {
        engine,
        opts,
        images: &images,
    };
    schedule(
        &engine.host.name,
        actions,
        opts,
        failures,
        progress,
        &launcher,
    )
    .await
}

struct DockerLauncher<'a> {
    engine: &'a Engine,
    opts: &'a ExecuteOptions,
    images: &'a Images,
}

impl Launcher for DockerLauncher<'_> {
    fn run<'a>(&'a self, action: Action, say: &'a (dyn Fn(&str) + Sync)) -> BoxFuture<'a, Done> {
        Box::pin(run_action(self.engine, action, self.opts, self.images, say))
    }
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
