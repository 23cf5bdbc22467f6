//! One agent cycle: discover this host's tenants, read what changed in each store,
//! ship it with the tenant's health, then a heartbeat. A failing tenant is counted
//! and reported; it never stops the others.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use bollard::Docker;

use crate::discover::{self, TenantContainer};
use crate::health::{self, Health, StoreState};
use crate::reader;
use crate::sink::Sink;

#[derive(Debug, Default)]
pub struct CycleReport {
    pub tenants: usize,
    /// Stores opened this cycle (the others' files had not changed).
    pub stores_read: usize,
    pub rows_changed: u64,
    pub regressions: usize,
    pub inactive: Vec<String>,
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
}

/// What the agent remembers of each tenant between cycles.
#[derive(Default)]
pub struct Memory {
    seen: HashMap<String, Seen>,
}

struct Seen {
    fingerprint: Fingerprint,
    store: StoreState,
    health: Health,
}

/// Identity, size and modification time of a store and its WAL: every SQLite commit
/// changes one of them, so an equal fingerprint means nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(u64, u64, i64, i64)>);

fn fingerprint(db: &Path) -> Option<Fingerprint> {
    let mut parts = Vec::new();
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", db.display());
        match std::fs::metadata(&path) {
            Ok(m) => parts.push((m.ino(), m.size(), m.mtime(), m.mtime_nsec())),
            Err(_) if !suffix.is_empty() => parts.push((0, 0, 0, 0)),
            Err(_) => return None,
        }
    }
    Some(Fingerprint(parts))
}

pub async fn run(
    docker: &Docker,
    sink: &Sink,
    host: &str,
    memory: &mut Memory,
) -> anyhow::Result<CycleReport> {
    let started = Instant::now();
    let containers = discover::tenant_containers(docker, host).await?;
    let desired = sink
        .desired()
        .await
        .context("reading the fleet database (has `controller migrate` run?)")?;
    let mut report = sync_tenants(sink, one_per_tenant(containers), &desired, memory).await?;
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

/// Reads and ships each tenant; `desired` maps tenant ids to the spec hash the last
/// apply wanted.
pub async fn sync_tenants(
    sink: &Sink,
    containers: Vec<TenantContainer>,
    desired: &HashMap<String, String>,
    memory: &mut Memory,
) -> anyhow::Result<CycleReport> {
    let ids: Vec<String> = containers.iter().map(|c| c.tenant.clone()).collect();
    let watermarks = sink.watermarks(&ids).await?;
    let mut report = CycleReport {
        tenants: containers.len(),
        ..CycleReport::default()
    };
    for c in containers {
        let in_spec = desired.get(&c.tenant).is_some_and(|h| *h == c.spec_hash);
        let db = c.data_dir.as_ref().map(|d| d.join("webui.db"));
        let print = db.as_deref().and_then(fingerprint);
        let unchanged = match (memory.seen.get(&c.tenant), &print) {
            (Some(seen), Some(p)) => seen.fingerprint == *p,
            _ => false,
        };
        let (result, health) = if unchanged {
            // Nothing written since the last cycle: health may still change (the
            // container stopped, env differs), the store need not be opened.
            let seen = memory
                .seen
                .get_mut(&c.tenant)
                .context("remembered tenant")?;
            let health = health::assess(&c, in_spec, &seen.store);
            if health == seen.health {
                (Ok(()), health)
            } else {
                seen.health = health.clone();
                (sink.record_health(&health).await, health)
            }
        } else {
            report.stores_read += 1;
            let previous = watermarks.get(&c.tenant).cloned().unwrap_or_default();
            let since: HashMap<String, i64> = previous
                .iter()
                .map(|(t, w)| (t.clone(), w.updated_at))
                .collect();
            let org = c.org_id.clone().unwrap_or_default();
            // SQLite reads block: keep them off the async workers.
            let path = db.clone();
            let snapshot = tokio::task::spawn_blocking(move || match path {
                Some(p) => reader::read(&p, &org, &since),
                None => Err(reader::ReadError::Missing("(no data mount)".into())),
            })
            .await?;
            let store = StoreState::of(&snapshot, c.data_dir.is_some());
            let health = health::assess(&c, in_spec, &store);
            let shipped = match &snapshot {
                Ok(snap) => sink
                    .ship(&c.tenant, snap, &previous, &health)
                    .await
                    .map(|s| {
                        report.rows_changed += s.rows_changed;
                        report.regressions += s.regressions;
                    }),
                Err(_) => sink.record_health(&health).await,
            };
            // Remembered only once shipped: a failed tenant is read again next cycle.
            match (&shipped, print) {
                (Ok(()), Some(fingerprint)) => {
                    memory.seen.insert(
                        c.tenant.clone(),
                        Seen {
                            fingerprint,
                            store,
                            health: health.clone(),
                        },
                    );
                }
                _ => {
                    memory.seen.remove(&c.tenant);
                }
            }
            (shipped, health)
        };
        if health.tracking == "inactive" {
            report
                .inactive
                .push(format!("{}: {}", c.tenant, health.reasons.join("; ")));
        }
        if let Err(e) = result {
            report.errors.push(format!("{}: {e}", c.tenant));
        }
    }
    Ok(report)
}

/// A tenant may briefly have two containers (an apply's parked previous one): the one
/// named `mai-<id>` is the tenant's.
fn one_per_tenant(mut containers: Vec<TenantContainer>) -> Vec<TenantContainer> {
    containers.sort_by_key(|c| (c.tenant.clone(), c.container != format!("mai-{}", c.tenant)));
    containers.dedup_by(|b, a| a.tenant == b.tenant);
    containers
}
