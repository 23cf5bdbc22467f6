//! One agent cycle: discover this host's tenants, read what changed in each store,
//! ship it with the tenant's health, then a heartbeat. A failing tenant is counted
//! and reported; it never stops the others.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use bollard::Docker;

use crate::discover::{self, TenantContainer};
use crate::health::{self, Health};
use crate::reader;
use crate::sink::Sink;

#[derive(Debug, Default)]
pub struct CycleReport {
    pub tenants: usize,
    pub rows_changed: u64,
    pub regressions: usize,
    pub inactive: Vec<String>,
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
}

pub async fn run(docker: &Docker, sink: &Sink, host: &str) -> anyhow::Result<CycleReport> {
    let started = Instant::now();
    let containers = discover::tenant_containers(docker, host).await?;
    let desired = sink
        .desired()
        .await
        .context("reading the fleet database (has `controller migrate` run?)")?;
    let containers = one_per_tenant(containers);
    let ids: Vec<String> = containers.iter().map(|c| c.tenant.clone()).collect();
    let watermarks = sink.watermarks(&ids).await?;
    let mut report = CycleReport {
        tenants: containers.len(),
        ..CycleReport::default()
    };
    for c in containers {
        let previous = watermarks.get(&c.tenant).cloned().unwrap_or_default();
        let since: HashMap<String, i64> = previous
            .iter()
            .map(|(t, w)| (t.clone(), w.updated_at))
            .collect();
        let in_spec = desired.get(&c.tenant).is_some_and(|h| *h == c.spec_hash);
        // SQLite reads block: keep them off the async workers.
        let (path, org) = (
            c.data_dir.clone().map(|d| d.join("webui.db")),
            c.org_id.clone().unwrap_or_default(),
        );
        let snapshot = tokio::task::spawn_blocking(move || match path {
            Some(p) => reader::read(&p, &org, &since),
            None => Err(reader::ReadError::Missing("(no data mount)".into())),
        })
        .await?;
        let health: Health = health::assess(&c, in_spec, &snapshot);
        if health.tracking == "inactive" {
            report
                .inactive
                .push(format!("{}: {}", c.tenant, health.reasons.join("; ")));
        }
        let result = match &snapshot {
            Ok(snap) => sink
                .ship(&c.tenant, snap, &previous, &health)
                .await
                .map(|s| {
                    report.rows_changed += s.rows_changed;
                    report.regressions += s.regressions;
                }),
            Err(_) => sink.record_health(&health).await,
        };
        if let Err(e) = result {
            report.errors.push(format!("{}: {e}", c.tenant));
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    sink.heartbeat(
        report.elapsed_ms,
        report.tenants,
        report.rows_changed,
        report.errors.len(),
    )
    .await?;
    Ok(report)
}

/// A tenant may briefly have two containers (an apply's parked previous one): the one
/// named `mai-<id>` is the tenant's.
fn one_per_tenant(mut containers: Vec<TenantContainer>) -> Vec<TenantContainer> {
    containers.sort_by_key(|c| (c.tenant.clone(), c.container != format!("mai-{}", c.tenant)));
    containers.dedup_by(|b, a| a.tenant == b.tenant);
    containers
}
