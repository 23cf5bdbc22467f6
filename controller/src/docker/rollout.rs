//! One tenant's launch: a new container created and verified, or an update that keeps
//! the previous container (stopped, renamed) until the new one is verified and puts
//! it back when it is not.

use bollard::query_parameters::StopContainerOptionsBuilder;

use super::data_dir::prepare_data_dir;
use super::engine::{create_container, remove, rename, Engine};
use super::{verify, ExecuteOptions, Status};
use crate::plan::{Observed, Workload};

use crate::execution::Done;

pub(super) async fn create(
    engine: &Engine,
    d: &Workload,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    prepare_data_dir(engine, d);
    say("creating");
    let id = match create_container(engine, d, &d.name).await {
        Ok(id) => id,
        Err(e) => return (Status::Failed, e.to_string(), None),
    };
    let short = id[..12.min(id.len())].to_string();
    if let Err(e) = engine.docker.start_container(&id, None).await {
        let logs = verify::last_logs(engine, &id, Some(d)).await;
        let _ = remove(engine, &id).await;
        return (
            Status::Failed,
            format!("start failed: {e}{logs}; container removed"),
            None,
        );
    }
    say("verifying");
    match verify::verify(engine, &id, Some(d.port), &opts.verify, Some(d)).await {
        Ok(v) => (Status::Ok, v, Some(short)),
        Err(e) => {
            let _ = remove(engine, &id).await;
            (
                Status::Failed,
                format!("{e}; new container removed, nothing to roll back to"),
                None,
            )
        }
    }
}

/// Replaces `previous` by a container of `d`, keeping `previous` (stopped, renamed)
/// until the new one is verified.
pub(super) async fn update(
    engine: &Engine,
    d: &Workload,
    previous: &Observed,
    opts: &ExecuteOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Done {
    let docker = &engine.docker;
    // An interrupted apply may have left the wanted container parked under another
    // name: restore it. (A container under its own name with the wanted hash is one
    // that drifted: it is replaced like any update.)
    if previous.spec_hash() == d.hash_label() && previous.name != d.name {
        say("restoring the container an interrupted apply left");
        if let Err(e) = rename(engine, &previous.id, &d.name).await {
            return (Status::Failed, e.to_string(), None);
        }
        if let Err(e) = docker.start_container(&previous.id, None).await {
            return (Status::Failed, format!("start failed: {e}"), None);
        }
        return match verify::verify(engine, &previous.id, Some(d.port), &opts.verify, Some(d)).await
        {
            Ok(v) => (Status::Ok, v, Some(previous.short_id().to_string())),
            Err(e) => (
                Status::Failed,
                e.to_string(),
                Some(previous.short_id().to_string()),
            ),
        };
    }
    prepare_data_dir(engine, d);
    let parked = format!("{}.prev-{}", d.name, previous.short_id());
    say(&format!(
        "stopping {} (kept as {parked} until the new one is verified)",
        previous.name
    ));
    let stop = StopContainerOptionsBuilder::new()
        .t(opts.stop_timeout_s)
        .build();
    // Stopped whatever state the plan saw: after an interrupted apply, Docker may still
    // complete a start the killed controller had sent (stopping a stopped container
    // is a no-op).
    if let Err(e) = docker.stop_container(&previous.id, Some(stop)).await {
        return (
            Status::Failed,
            format!("stop failed: {e}; nothing changed"),
            None,
        );
    }
    if previous.name != parked {
        if let Err(e) = rename(engine, &previous.id, &parked).await {
            let _ = docker.start_container(&previous.id, None).await;
            return (Status::Failed, e.to_string(), None);
        }
    }
    say("creating");
    let started = match create_container(engine, d, &d.name).await {
        Ok(id) => match docker.start_container(&id, None).await {
            Ok(()) => Ok(id),
            Err(e) => {
                let logs = verify::last_logs(engine, &id, Some(d)).await;
                Err((Some(id), format!("start failed: {e}{logs}")))
            }
        },
        Err(e) => Err((None, e.to_string())),
    };
    let failure = match started {
        Ok(id) => {
            say("verifying");
            match verify::verify(engine, &id, Some(d.port), &opts.verify, Some(d)).await {
                Ok(v) => {
                    let _ = remove(engine, &previous.id).await;
                    return (Status::Ok, v, Some(id[..12.min(id.len())].to_string()));
                }
                Err(e) => (Some(id), e.0),
            }
        }
        Err(f) => f,
    };
    let (new_id, reason) = failure;
    say(&format!("verification failed, rolling back: {reason}"));
    if let Some(id) = new_id {
        let _ = remove(engine, &id).await;
    }
    let restored = async {
        rename(engine, &previous.id, &d.name)
            .await
            .map_err(|e| e.to_string())?;
        // A tenant is meant to run: the previous container serves again even when an
        // interrupted apply had left it stopped.
        docker
            .start_container(&previous.id, None)
            .await
            .map_err(|e| format!("restart of the previous container failed: {e}"))?;
        Ok::<(), String>(())
    }
    .await;
    match restored {
        Ok(()) => (
            Status::RolledBack,
            format!("{reason}; rolled back to the previous container"),
            Some(previous.short_id().to_string()),
        ),
        Err(e) => (
            Status::Failed,
            format!("{reason}; ROLLBACK FAILED: {e} (previous container is {parked})"),
            None,
        ),
    }
}
