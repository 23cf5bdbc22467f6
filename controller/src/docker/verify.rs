//! Verification at launch: the container runs, does not restart for a settle period,
//! and reports usage tracking initialised where it serves the health endpoint.

use std::time::{Duration, Instant};

use crate::execution::{Unverified, VerifyOptions};

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;

use super::health::{self, Health, HealthError};
use super::Engine;
use crate::plan::{Workload, APP_PORT};

/// `Ok` says how it was verified; `Err` says why not, with the container's last log
/// lines (secrets masked).
pub async fn verify(
    engine: &Engine,
    id: &str,
    port: Option<u16>,
    opts: &VerifyOptions,
    desired: Option<&Workload>,
) -> Result<String, Unverified> {
    let started = Instant::now();
    let mut baseline_restarts: Option<i64> = None;
    let mut running_since: Option<Instant> = None;
    let mut health: Option<Health> = None;
    let mut last_problem = String::from("not running yet");
    loop {
        let info = engine
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("inspect failed: {e}"))?;
        let state = info.state.unwrap_or_default();
        let restarts = info.restart_count.unwrap_or(0);
        let base = *baseline_restarts.get_or_insert(restarts);
        let port = port.or_else(|| {
            info.host_config
                .and_then(|h| h.port_bindings)
                .and_then(|p| p.get(&format!("{APP_PORT}/tcp")).cloned().flatten())
                .and_then(|b| b.first().and_then(|b| b.host_port.clone()))
                .and_then(|p| p.parse().ok())
        });
        if restarts > base || state.restarting == Some(true) {
            let logs = last_logs(engine, id, desired).await;
            return Err(format!("restarting (restart count {restarts}){logs}").into());
        }
        match state.status {
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                let logs = last_logs(engine, id, desired).await;
                return Err(
                    format!("exited with code {}{logs}", state.exit_code.unwrap_or(-1)).into(),
                );
            }
            Some(ContainerStateStatusEnum::RUNNING) => {
                running_since.get_or_insert_with(Instant::now);
            }
            _ => {}
        }
        if let (Some(since), Some(port)) = (running_since, port) {
            if !matches!(health, Some(Health::Active | Health::NoEndpoint)) {
                match probe(engine, port, opts.poll.max(Duration::from_secs(2))).await {
                    Ok(h) => health = Some(h),
                    Err(e) => last_problem = e.to_string(),
                }
            }
            let settled = since.elapsed() >= opts.settle;
            match &health {
                Some(Health::Active) if settled => {
                    return Ok(format!(
                        "verified in {:.1}s: running, usage tracking initialized",
                        started.elapsed().as_secs_f64()
                    ));
                }
                Some(Health::NoEndpoint) if settled => {
                    return Ok(format!(
                        "verified in {:.1}s: running (image serves no {})",
                        started.elapsed().as_secs_f64(),
                        health::PATH
                    ));
                }
                // The app may report before it finishes starting: fail only once settled.
                Some(Health::Inactive(status)) if settled => {
                    let logs = last_logs(engine, id, desired).await;
                    let status = crate::quote::Masker::new(desired).line(status, 100);
                    return Err(format!(
                        "{} says usage tracking is not initialized (status: {status}){logs}",
                        health::PATH
                    )
                    .into());
                }
                _ => {}
            }
        } else if running_since.is_some() {
            // No published port: running and stable is all that can be checked.
            if running_since.is_some_and(|s| s.elapsed() >= opts.settle) {
                return Ok(format!(
                    "verified in {:.1}s: running (no published port to probe)",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if started.elapsed() >= opts.timeout {
            let logs = last_logs(engine, id, desired).await;
            return Err(format!(
                "not verified within {}s: {last_problem}{logs}",
                opts.timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(opts.poll).await;
    }
}

/// The tenant's health answer: through the host's agent when one runs (it reaches
/// ports bound to the host's loopback), else over the published port.
async fn probe(engine: &Engine, port: u16, timeout: Duration) -> Result<Health, HealthError> {
    match &engine.probe_via {
        Some(agent) => {
            // A port published on every interface answers on the host's loopback.
            let address = match engine.host.publish_address.as_str() {
                "0.0.0.0" | "::" => "127.0.0.1",
                a => a,
            };
            let text = super::agent::probe(engine, agent, address, port, timeout).await?;
            health::parse(&text)
        }
        None => health::probe(&engine.tenant_address, port, timeout).await,
    }
}

/// The last `lines` lines a container printed (stdout and stderr), as text; empty
/// when they cannot be read. What is read is bounded (a tenant may print one line
/// without end): 16 KiB of each frame, 128 KiB in all.
pub(super) async fn log_tail(engine: &Engine, id: &str, lines: usize) -> String {
    const FRAME: usize = 16 << 10;
    const TOTAL: usize = 128 << 10;
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&lines.to_string())
        .build();
    let mut text = String::new();
    let mut stream = engine.docker.logs(id, Some(options));
    while let Some(Ok(frame)) = stream.next().await {
        let bytes = frame.into_bytes();
        let cut = &bytes[..bytes.len().min(FRAME)];
        text.push_str(&String::from_utf8_lossy(cut));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if text.len() >= TOTAL {
            break;
        }
    }
    text
}

/// The last lines the container printed, quoted (`crate::quote`: every secret of the
/// tenant masked, control characters gone, each line bounded).
pub async fn last_logs(engine: &Engine, id: &str, desired: Option<&Workload>) -> String {
    let text = log_tail(engine, id, 8).await;
    let lines = crate::quote::Masker::new(desired).last_lines(&text, 8);
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last log lines: {}", lines.join(" | "))
    }
}
