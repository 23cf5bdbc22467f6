//! One agent cycle: deliver what the spool holds, discover this host's tenants, read
//! what changed in each store, ship it with the tenant's health (or spool it when
//! Postgres is away), then a heartbeat. A failing tenant is counted and reported; it
//! never stops the others.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::discover::{self, TenantContainer};
use crate::health::{self, Health, StoreState};
use crate::reader;
use crate::sink::{is_unavailable, watermarks_after, Sink, Watermark};
use crate::spool::{Batch, Spool};

#[derive(Debug, Default)]
pub struct CycleReport {
    pub tenants: usize,
    /// Stores opened this cycle (the others' files had not changed).
    pub stores_read: usize,
    pub rows_changed: u64,
    pub regressions: usize,
    /// Batches written to the spool this cycle, and delivered from it.
    pub spooled: usize,
    pub unspooled: usize,
    /// Postgres could not be reached during the cycle.
    pub database_away: bool,
    /// Why, as the first failure said it (a refused TLS certificate, a password).
    pub database_error: Option<String>,
    pub inactive: Vec<String>,
    pub errors: Vec<String>,
    /// What was refused or set aside without failing the cycle: containers whose
    /// labels name no tenant, spooled batches that could not be read.
    pub warnings: Vec<String>,
    pub elapsed_ms: u64,
}

impl CycleReport {
    fn mark_away(&mut self, e: &sqlx::Error) {
        self.database_away = true;
        self.database_error.get_or_insert_with(|| e.to_string());
    }
}

/// What the agent remembers between cycles.
#[derive(Default)]
pub struct Memory {
    seen: HashMap<String, Seen>,
    /// Watermarks after the last batch shipped or spooled per tenant: reading goes on
    /// from them, also while Postgres is away (at start-up Postgres's are used).
    known: HashMap<String, HashMap<String, Watermark>>,
    /// Tenant id -> spec hash the last apply wanted, from the last cycle that could ask.
    desired: HashMap<String, String>,
    /// What one store read may cost.
    budget: reader::Budget,
    /// Reads abandoned past their budget (a file that blocks the opener), by tenant:
    /// set when the read thread ends. Such a store is not read again before then, so
    /// a hostile tenant holds at most one thread of the agent.
    stuck: HashMap<String, Arc<AtomicBool>>,
}

impl Memory {
    pub fn with_budget(budget: reader::Budget) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }
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
    source: &discover::Source,
    sink: &Sink,
    host: &str,
    memory: &mut Memory,
    spool: &mut Option<Spool>,
) -> anyhow::Result<CycleReport> {
    let started = Instant::now();
    let containers = source.tenants(host).await?;
    // A label is anybody's who can start a container here: one that names no valid
    // tenant id never becomes a path (spool file, data directory) or a row.
    let (containers, refused): (Vec<_>, Vec<_>) = containers
        .into_iter()
        .partition(|c| mai_fleet_core::check_tenant_id(&c.tenant).is_ok());
    let mut report = sync_tenants(sink, one_per_tenant(containers), memory, spool).await?;
    for c in refused {
        report.warnings.push(format!(
            "container {} ignored: its tenant label {:?} is not a tenant id",
            c.container, c.tenant
        ));
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    if !report.database_away {
        sink.heartbeat(
            report.elapsed_ms,
            report.tenants,
            report.rows_changed,
            report.errors.len(),
            spool.as_ref().map_or(0, Spool::used_bytes),
        )
        .await?;
    }
    Ok(report)
}

/// Delivers the spool, then reads and ships (or spools) each tenant.
pub async fn sync_tenants(
    sink: &Sink,
    containers: Vec<TenantContainer>,
    memory: &mut Memory,
    spool: &mut Option<Spool>,
) -> anyhow::Result<CycleReport> {
    let mut report = CycleReport {
        tenants: containers.len(),
        ..CycleReport::default()
    };
    // An error that spooling can wait out, if there is a spool; anything else fails
    // the cycle.
    let away = |e: &sqlx::Error, spool: &Option<Spool>| spool.is_some() && is_unavailable(e);

    if let Some(sp) = spool.as_mut() {
        deliver_spooled(sink, sp, &mut report).await?;
    }
    let ids: Vec<String> = containers.iter().map(|c| c.tenant.clone()).collect();
    let mut watermarks = HashMap::new();
    if !report.database_away {
        match sink.desired().await {
            Ok(d) => memory.desired = d,
            Err(e) if away(&e, spool) => report.mark_away(&e),
            Err(e) => {
                return Err(e).context("reading the fleet database (has `controller migrate` run?)")
            }
        }
    }
    if !report.database_away {
        match sink.watermarks(&ids).await {
            Ok(w) => watermarks = w,
            Err(e) if away(&e, spool) => report.mark_away(&e),
            Err(e) => return Err(e.into()),
        }
    }

    for c in containers {
        sync_tenant(sink, c, memory, spool, &watermarks, &mut report).await?;
    }
    Ok(report)
}

/// Batches spooled while Postgres was away, delivered in order; the first that finds
/// it away again stops the delivery (the rest wait for the next cycle).
async fn deliver_spooled(
    sink: &Sink,
    sp: &mut Spool,
    report: &mut CycleReport,
) -> anyhow::Result<()> {
    for path in sp.pending() {
        let batch = match Spool::load(&path) {
            Ok(b) => b,
            // Retrying would fail the same way every cycle: kept for a person.
            Err(e) => {
                sp.set_aside(&path)?;
                report.warnings.push(format!("{e}; set aside as .rejected"));
                continue;
            }
        };
        match sink
            .ship(
                &batch.tenant,
                &batch.snapshot,
                &batch.previous,
                &batch.health,
            )
            .await
        {
            Ok(s) => {
                sp.remove(&path)?;
                report.unspooled += 1;
                report.rows_changed += s.rows_changed;
                report.regressions += s.regressions;
            }
            Err(e) if is_unavailable(&e) => {
                report.mark_away(&e);
                break;
            }
            // Refused for good (e.g. this host's credentials may not write it):
            // set aside so that it does not block the batches behind it.
            Err(e) => {
                sp.set_aside(&path)?;
                report
                    .errors
                    .push(format!("{}: spooled batch rejected: {e}", batch.tenant));
            }
        }
    }
    Ok(())
}

/// One tenant: its health refreshed when its store is unchanged, else its store read
/// and shipped (or spooled while Postgres is away). A failing tenant is an error in
/// the report, never the cycle's.
async fn sync_tenant(
    sink: &Sink,
    c: TenantContainer,
    memory: &mut Memory,
    spool: &mut Option<Spool>,
    watermarks: &HashMap<String, HashMap<String, Watermark>>,
    report: &mut CycleReport,
) -> anyhow::Result<()> {
    let away = |e: &sqlx::Error, spool: &Option<Spool>| spool.is_some() && is_unavailable(e);
    let in_spec = memory
        .desired
        .get(&c.tenant)
        .is_some_and(|h| *h == c.spec_hash);
    let db = c
        .data_dir
        .as_ref()
        .map(|d| d.join(mai_fleet_core::contract::STORE_FILE));
    let print = db.as_deref().and_then(fingerprint);
    let unchanged = match (memory.seen.get(&c.tenant), &print) {
        (Some(seen), Some(p)) => seen.fingerprint == *p,
        _ => false,
    };
    if unchanged {
        return refresh_health(sink, &c, in_spec, memory, spool, report).await;
    }
    let previous = match (memory.known.get(&c.tenant), watermarks.get(&c.tenant)) {
        (Some(known), _) => known.clone(),
        (None, Some(w)) => w.clone(),
        // Postgres away and nothing known of what it holds: the store keeps the
        // rows until it is back.
        (None, None) if report.database_away => return Ok(()),
        (None, None) => HashMap::new(),
    };
    report.stores_read += 1;
    let since: HashMap<String, i64> = previous
        .iter()
        .map(|(t, w)| (t.clone(), w.updated_at))
        .collect();
    let org = c.org_id.clone().unwrap_or_default();
    let snapshot = read_store(memory, &c.tenant, db.clone(), org, since).await;
    let store = StoreState::of(&snapshot, c.data_dir.is_some());
    let health = health::assess(&c, in_spec, &store);
    note_inactive(report, &health);
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(_) => {
            memory.seen.remove(&c.tenant);
            if !report.database_away {
                match sink.record_health(&health).await {
                    Ok(()) => {}
                    Err(e) if away(&e, spool) => report.mark_away(&e),
                    Err(e) => report.errors.push(format!("{}: {e}", c.tenant)),
                }
            }
            return Ok(());
        }
    };
    let queued = spool
        .as_ref()
        .is_some_and(|sp| sp.has_pending_for(&c.tenant));
    let batch = Batch {
        tenant: c.tenant.clone(),
        snapshot,
        previous,
        health,
    };
    let shipped = !(report.database_away || queued)
        && ship(
            sink,
            &batch,
            memory,
            &print,
            &store,
            spool.is_some(),
            report,
        )
        .await;
    if !shipped && (report.database_away || queued) {
        if let Some(sp) = spool.as_mut() {
            spool_tenant(sp, batch, memory, print, store, report);
        }
    }
    Ok(())
}

/// A tenant's batch upserted into the fleet Postgres; what it holds is remembered.
/// `false` when it was not shipped: Postgres away (`report` says so, the batch waits
/// in the spool), or refused (an error of the tenant's).
async fn ship(
    sink: &Sink,
    batch: &Batch,
    memory: &mut Memory,
    print: &Option<Fingerprint>,
    store: &StoreState,
    spooling: bool,
    report: &mut CycleReport,
) -> bool {
    let tenant = batch.tenant.as_str();
    match sink
        .ship(tenant, &batch.snapshot, &batch.previous, &batch.health)
        .await
    {
        Ok(s) => {
            report.rows_changed += s.rows_changed;
            report.regressions += s.regressions;
            memory
                .known
                .insert(tenant.to_string(), watermarks_after(&batch.snapshot));
            remember(
                memory,
                tenant,
                print.clone(),
                store.clone(),
                batch.health.clone(),
            );
            true
        }
        Err(e) if spooling && is_unavailable(&e) => {
            report.mark_away(&e);
            false
        }
        Err(e) => {
            memory.seen.remove(tenant);
            memory.known.remove(tenant);
            report.errors.push(format!("{tenant}: {e}"));
            false
        }
    }
}

/// A tenant whose store is unchanged since the last cycle: its health may still
/// change (the container stopped, env differs), the store need not be opened.
async fn refresh_health(
    sink: &Sink,
    c: &TenantContainer,
    in_spec: bool,
    memory: &mut Memory,
    spool: &Option<Spool>,
    report: &mut CycleReport,
) -> anyhow::Result<()> {
    let seen = memory
        .seen
        .get_mut(&c.tenant)
        .context("remembered tenant")?;
    let health = health::assess(c, in_spec, &seen.store);
    if health != seen.health && !report.database_away {
        match sink.record_health(&health).await {
            Ok(()) => seen.health = health.clone(),
            Err(e) if spool.is_some() && is_unavailable(&e) => report.mark_away(&e),
            Err(e) => report.errors.push(format!("{}: {e}", c.tenant)),
        }
    }
    note_inactive(report, &health);
    Ok(())
}

/// A tenant's batch kept on disk while Postgres is away (or behind batches already
/// waiting). Not spooled: the watermark does not move, so the store is read again.
fn spool_tenant(
    sp: &mut Spool,
    batch: Batch,
    memory: &mut Memory,
    print: Option<Fingerprint>,
    store: StoreState,
    report: &mut CycleReport,
) {
    let tenant = batch.tenant.as_str();
    match sp.push(&batch) {
        Ok(_) => {
            report.spooled += 1;
            memory
                .known
                .insert(tenant.to_string(), watermarks_after(&batch.snapshot));
            remember(memory, tenant, print, store, batch.health.clone());
        }
        // Not spooled: the watermark does not move, so the store is read
        // again once there is room or a database.
        Err(e) => {
            memory.seen.remove(tenant);
            report.errors.push(format!("{tenant}: {e}"));
        }
    }
}

/// Reads a store off the async workers, within its budget. SQLite interrupts itself
/// past the budget; what it cannot interrupt (an open(2) that blocks) is abandoned a
/// little later and the thread remembered, so that the tenant is skipped until it ends.
async fn read_store(
    memory: &mut Memory,
    tenant: &str,
    db: Option<std::path::PathBuf>,
    org: String,
    since: HashMap<String, i64>,
) -> Result<reader::Snapshot, reader::ReadError> {
    let abandoned = || {
        reader::ReadError::Refused(
            "a read of this store did not finish within its budget and was abandoned (the file blocks its reader?)"
                .into(),
        )
    };
    if let Some(done) = memory.stuck.get(tenant) {
        if !done.load(Ordering::SeqCst) {
            return Err(abandoned());
        }
        memory.stuck.remove(tenant);
    }
    let Some(path) = db else {
        return Err(reader::ReadError::Missing("(no data mount)".into()));
    };
    let budget = memory.budget;
    let done = Arc::new(AtomicBool::new(false));
    let finished = Arc::clone(&done);
    let task = tokio::task::spawn_blocking(move || {
        let r = reader::read(&path, &org, &since, &budget);
        finished.store(true, Ordering::SeqCst);
        r
    });
    let grace = budget.time + std::time::Duration::from_secs(5);
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(reader::ReadError::Unreadable(format!(
            "the read failed: {join}"
        ))),
        Err(_) => {
            memory.stuck.insert(tenant.to_string(), done);
            Err(abandoned())
        }
    }
}

fn remember(
    memory: &mut Memory,
    tenant: &str,
    print: Option<Fingerprint>,
    store: StoreState,
    health: Health,
) {
    match print {
        Some(fingerprint) => {
            memory.seen.insert(
                tenant.to_string(),
                Seen {
                    fingerprint,
                    store,
                    health,
                },
            );
        }
        None => {
            memory.seen.remove(tenant);
        }
    }
}

fn note_inactive(report: &mut CycleReport, health: &Health) {
    if health.tracking == mai_fleet_core::Tracking::Inactive {
        report
            .inactive
            .push(format!("{}: {}", health.tenant, health.reasons.join("; ")));
    }
}

/// A tenant may briefly have two containers (an apply's parked previous one): the one
/// named `mai-<id>` is the tenant's.
fn one_per_tenant(mut containers: Vec<TenantContainer>) -> Vec<TenantContainer> {
    containers.sort_by_key(|c| (c.tenant.clone(), c.container != format!("mai-{}", c.tenant)));
    containers.dedup_by(|b, a| a.tenant == b.tenant);
    containers
}
