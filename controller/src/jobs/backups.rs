//! `serve`'s backup job: every tenant of the spec backed up on a schedule.

use crate::ops::backup::{self, BackupOptions};
use crate::spec::FleetSpec;
use crate::store::Store;

/// The nightly default: 03:00 Warsaw time, every day.
pub const DEFAULT_CRON: &str = "0 0 3 * * *";

/// `serve`'s backup job: every tenant of the spec backed up on `schedule` (Warsaw
/// time). A tenant that fails is logged and left for the next round (and for
/// `backup_missing`); the others are taken.
pub async fn run_schedule(
    spec: FleetSpec,
    store: Store,
    opts: BackupOptions,
    schedule: cron::Schedule,
    ctx: crate::supervisor::JobContext,
) -> Result<(), crate::schedule::NoNextTime> {
    loop {
        let Some(wait) = crate::schedule::until_next(&schedule, chrono_tz::Europe::Warsaw) else {
            return Err(crate::schedule::NoNextTime("backup"));
        };
        ctx.beat();
        if !ctx.sleep(wait).await {
            return Ok(());
        }
        for t in &spec.tenants {
            match backup::backup(&spec, &store, &t.id, &opts).await {
                Ok(b) => tracing::info!(
                    tenant = t.id.as_str(),
                    backup = b.id,
                    path = %b.path.display(),
                    bytes = b.manifest.bytes,
                    removed = b.removed.len(),
                    "backup taken"
                ),
                Err(e) => tracing::warn!(tenant = t.id.as_str(), error = %e, "backup failed"),
            }
            if ctx.stopping() {
                return Ok(());
            }
        }
        ctx.beat();
    }
}
